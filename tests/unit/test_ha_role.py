"""One of an HA pair (gateway.ha): the standby initiates nothing and holds no SA; made active it
initiates every tunnel at once with INITIAL_CONTACT, so the peer drops the SAs it holds with the gateway
that went away; made standby again it forgets every SA without a word. Two sites back to back (the
harness of test_keying.py): real IKE messages, real ESP, a hand-driven clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_config_ike import write_file
from tests.unit.test_keying import Link, Site
from tunnel.app.assemble import build_forwarder
from tunnel.app.keying import Keying
from tunnel.config.loader import load_config
from tunnel.config.model import HaRole
from tunnel.errors import ConfigError
from tunnel.ike.constants import ExchangeType


def make_ha(site: Site, directory: Path, role: str = "standby") -> Site:
    """The same site's gateway as one of an HA pair: its configuration with gateway.ha, a fresh
    forwarder and keying (a gateway process of its own)."""
    path = directory / "config.yaml"
    text = path.read_text()
    assert "gateway:\n" in text
    path.write_text(text.replace("gateway:\n", f"gateway:\n  ha: {{role: {role}}}\n", 1))
    config = load_config(path)
    assert config.ha is not None and config.ha.role is HaRole(role)
    site.forwarder = build_forwarder(config)
    site.forwarders = [site.forwarder]
    site.keying = Keying(config, site.forwarder, os.urandom)
    return site


def ike_inits(link: Link, sender: str) -> int:
    return sum(1 for who, exchange, response in link.ike_log
               if who == sender and exchange == ExchangeType.IKE_SA_INIT and not response)


def test_a_standby_initiates_nothing_until_made_active(tmp_path: Path) -> None:
    link = Link(tmp_path)
    make_ha(link.hq, tmp_path / "hq")
    link.hq.keying.start(link.now)
    link.pump()
    assert not link.send(link.hq, 1)  # no SA: dropped (fail closed), and no IKE started for it
    link.advance(120)  # retries and on-demand would have fired by now
    assert ike_inits(link, "hq") == 0 and link.ike_log == []
    assert link.hq.keying.set_role(True, link.now).startswith("active: 0 tunnel(s) taken over, initiating 1 tunnel")
    link.pump()
    assert ike_inits(link, "hq") == 1
    assert link.send(link.hq, 2) and link.send(link.br, 3)
    assert link.hq.keying.set_role(True, link.now) == "already active"


@pytest.mark.parametrize("signal", ["notify", "esp"])
def test_takeover_replaces_the_peers_sas_at_once(tmp_path: Path, signal: str) -> None:
    """The active gateway dies (its state with it); the standby, made active, brings the tunnel back with
    INITIAL_CONTACT: the branch closes the IKE SA it had with the dead one at once, not after DPD. Made
    active by keepalived's notify, or sooner: the branch's ESP reaching it shows the address is here."""
    link = Link(tmp_path)
    active = make_ha(link.hq, tmp_path / "hq", role="active")
    active.keying.start(link.now)
    link.pump()
    assert link.send(active, 1) and link.send(link.br, 2)
    old = link.br.keying.dispatcher.sessions_for("hq")
    assert len(old) == 1
    # the standby, a gateway of its own with the same configuration, at the same (virtual) address
    (tmp_path / "hq2").mkdir()
    (tmp_path / "hq2" / "config.yaml").write_text((tmp_path / "hq" / "config.yaml").read_text()
                                                  .replace("  ha: {role: active}\n", ""))
    write_file(tmp_path / "hq2" / "hq.psk", (tmp_path / "hq" / "hq.psk").read_bytes())
    standby = Site.__new__(Site)
    standby.name, standby.peer = "hq", "branch1"
    make_ha(standby, tmp_path / "hq2")
    link.hq = link.sites["198.18.1.2"] = standby  # the virtual address moved; the dead one says nothing
    link.advance(1)
    if signal == "notify":
        assert standby.keying.set_role(True, link.now).startswith("active")
    else:
        assert not link.send(link.br, 3)  # the branch still sends on the dead gateway's SA: lost, but heard
        assert not standby.keying.standby
    link.pump()
    now = link.br.keying.dispatcher.sessions_for("hq")
    assert len(now) == 1 and now[0] is not old[0]  # INITIAL_CONTACT closed the old one at once
    assert link.send(link.br, 4) and link.send(standby, 5)


def test_made_standby_it_forgets_every_sa_without_a_word(tmp_path: Path) -> None:
    link = Link(tmp_path)
    make_ha(link.hq, tmp_path / "hq", role="active")
    link.hq.keying.start(link.now)
    link.pump()
    assert link.send(link.hq, 1)
    def sent() -> int:
        return sum(1 for who, _, _ in link.ike_log if who == "hq")

    before = sent()
    assert link.hq.keying.set_role(False, link.now) == "standby"
    link.pump()
    assert sent() == before  # no Delete: the address and the peer belong to the other gateway
    assert link.hq.keying.dispatcher.sessions_for("branch1") == []
    assert not link.send(link.hq, 2)  # its outbound SA is gone: fail closed
    link.advance(300)
    assert sent() == before  # and nothing is initiated, not even by the restart timer
    assert link.hq.keying.set_role(False, link.now) == "already standby"


def test_ha_role_is_checked_in_the_config(tmp_path: Path) -> None:
    Link(tmp_path)  # writes the two sites' configurations
    path = tmp_path / "hq" / "config.yaml"
    path.write_text(path.read_text().replace("gateway:\n", "gateway:\n  ha: {role: master}\n", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "gateway.ha.role" in str(info.value) and "standby" in str(info.value)
