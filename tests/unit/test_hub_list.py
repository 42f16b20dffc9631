"""peer.address as a list (scale-out: a branch and several hubs): tried in order, the next one after each
attempt or IKE SA that fails, and the IKE retransmission settings that decide how soon a hub counts as
gone. Two sites back to back (test_keying.py's harness): real IKE and ESP, a hand-driven clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_keying import ADDR, Link
from tunnel.app.assemble import ike_configs
from tunnel.config.loader import load_config
from tunnel.errors import ConfigError

DEAD = "198.18.9.9"  # a hub that does not answer
FAST = "1\n      retransmit_timeout: 0.5\n      retransmit_tries: 2"  # dpd 1 s; a request gives up after 1.5 s



def test_the_first_hub_that_answers_is_used_and_a_dead_one_is_left(tmp_path: Path) -> None:
    link = Link(tmp_path, dpd=FAST, peers=(f"[{DEAD}, {ADDR['branch1']}]", None))  # type: ignore[arg-type]
    config = load_config(tmp_path / "hq" / "config.yaml")
    peer = config.tunnels[0].peer
    assert [str(a) for a in peer.addresses] == [DEAD, ADDR["branch1"]] and str(peer) == f"{DEAD}, {ADDR['branch1']}"
    assert config.tunnels[0].ike is not None and config.tunnels[0].ike.retransmit_tries == 2
    assert ike_configs(config, 1)[0][1] is None  # known by identity: it may answer from any of its hubs
    backoff = ike_configs(config, 1)[0][0].backoff
    assert (backoff.initial, backoff.tries, backoff.span) == (0.5, 2, 1.5)
    targets: list[str] = []
    real = link.hq.keying.dispatcher.initiate

    def spy(tunnel: str, now: float, port: int = 500, address: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
        targets.append(str(address))
        return real(tunnel, now, port, address, **kw)  # type: ignore[arg-type]

    link.hq.keying.dispatcher.initiate = spy  # type: ignore[method-assign]
    link.hq.keying.start(link.now)
    link.pump()
    assert targets == [DEAD] and not link.send(link.hq, 1)
    for _ in range(8):  # 1.5 s of retransmissions, then the next hub at once (no back-off in between)
        link.advance(0.25)
    assert targets == [DEAD, ADDR["branch1"]]
    assert link.send(link.hq, 2) and link.send(link.br, 3)
    # the hub in use dies: DPD gives up on it and the list starts over, now with the back-off
    del link.sites[ADDR["branch1"]]
    for _ in range(40):
        link.advance(0.25)
    assert targets[2:3] == [DEAD], targets
    assert link.hq.keying.tunnels["branch1"].hub in (0, 1)


@pytest.mark.parametrize(("value", "message"), [
    ("[198.18.2.2, gw.example]", "IP addresses only"),
    ("[198.18.2.2, 198.18.2.2]", "different IP addresses of one family"),
    ("[198.18.2.2, 'fd00::1']", "different IP addresses of one family"),
    ("[]", "empty"),
])
def test_bad_hub_lists_are_config_errors(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Link(tmp_path, peers=(value, None))
    found = info.value.problems
    assert any("tunnels[0].peer.address" in p and message in p for p in found), found


@pytest.mark.parametrize(("value", "message"), [("0.05", "within 0.1..30"), ("fast", "expected a number of seconds")])
def test_retransmit_timeout_is_checked(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Link(tmp_path, dpd=f"0\n      retransmit_timeout: {value}")  # type: ignore[arg-type]
    found = info.value.problems
    assert any("ike.retransmit_timeout" in p and message in p for p in found), found


def test_the_subnets_of_tunnels_up_are_what_a_hub_announces(tmp_path: Path) -> None:
    link = Link(tmp_path, dpd=FAST)  # type: ignore[arg-type]
    keying = link.hq.keying
    assert not keying.take_up_changed() and keying.up_subnets() == []
    keying.start(link.now)
    link.pump()
    assert keying.take_up_changed() and [str(n) for n in keying.up_subnets()] == ["10.2.0.0/24"]
    assert not keying.take_up_changed()  # asked once per change
    del link.sites[ADDR["branch1"]]  # the branch goes away: DPD ends the tunnel here
    for _ in range(20):
        link.advance(0.25)
    assert keying.take_up_changed() and keying.up_subnets() == []


@pytest.mark.parametrize(("table", "message"), [("254", "the main table"), ("0", "out of range"),
                                                ("5174", "full tunnel")])
def test_announce_needs_a_table_of_its_own(tmp_path: Path, table: str, message: str) -> None:
    Link(tmp_path)
    path = tmp_path / "hq" / "config.yaml"
    path.write_text(path.read_text().replace("gateway:\n", f"gateway:\n  announce: {{table: {table}}}\n", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("gateway.announce.table" in p and message in p for p in info.value.problems), info.value.problems
