"""gateway.ha.sync: the active streams its SA state to the standby, which takes over with the same SAs.
Two gateways of one pair and a branch back to back (test_keying.py's harness): real IKE and ESP, the
sync messages sealed and opened by real SyncChannels, a hand-driven clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_config_ike import write_file
from tests.unit.test_keying import ADDR, Link, Site
from tunnel.app.assemble import build_forwarder
from tunnel.app.hasync import ESP_SEQ_JUMP, SyncChannel
from tunnel.app.keying import Keying
from tunnel.config.loader import load_config
from tunnel.errors import ConfigError
from tunnel.ike.constants import ExchangeType
from tunnel.secret import Secret

KEY = b"ha-sync-test-key-0123456789abcdef"


def ha_site(site: Site, directory: Path, role: str, local: str, peer: str) -> Site:
    write_file(directory / "sync.key", KEY + b"\n")
    path = directory / "config.yaml"
    text = path.read_text()
    text = text.replace("gateway:\n", f"gateway:\n  ha: {{role: {role}, sync: {{local: {local}, peer: {peer}, "
                                      "key_file: sync.key}}\n", 1)
    path.write_text(text)
    config = load_config(path)
    site.forwarder = build_forwarder(config)
    site.forwarders = [site.forwarder]
    site.keying = Keying(config, site.forwarder, os.urandom)
    assert site.keying.sync is not None
    return site


def standby_of(tmp_path: Path) -> Site:
    (tmp_path / "hq2").mkdir()
    text = (tmp_path / "hq" / "config.yaml").read_text()
    (tmp_path / "hq2" / "config.yaml").write_text("gateway:\n" + text.split("gateway:\n", 1)[1].split("\n", 1)[1]
                                                  if text.startswith("gateway:\n  ha:") else text)
    write_file(tmp_path / "hq2" / "hq.psk", (tmp_path / "hq" / "hq.psk").read_bytes())
    site = Site.__new__(Site)
    site.name, site.peer = "hq", "branch1"
    return ha_site(site, tmp_path / "hq2", "standby", "10.9.0.2", "10.9.0.1")


def sync(active: Site, standby: Site, tx: SyncChannel, rx: SyncChannel, now: float) -> int:
    sent = 0
    assert active.keying.sync is not None and standby.keying.sync is not None
    for message in active.keying.sync.outgoing(now):
        opened = rx.open(tx.seal(message))
        assert opened is not None
        standby.keying.sync.receive(opened)
        sent += 1
    return sent


def test_the_standby_takes_over_with_the_same_sas(tmp_path: Path) -> None:
    link = Link(tmp_path, dpd=5)
    active = ha_site(link.hq, tmp_path / "hq", "active", "10.9.0.1", "10.9.0.2")
    standby = standby_of(tmp_path)
    tx, rx = SyncChannel(Secret(KEY)), SyncChannel(Secret(KEY))
    active.keying.start(link.now)
    link.pump()
    for n in range(50):
        assert link.send(active, n) and link.send(link.br, n)
    assert sync(active, standby, tx, rx, link.now) == 1
    branch_sas = link.br.keying.dispatcher.sessions_for("hq")
    assert len(branch_sas) == 1
    spis = (branch_sas[0].spi_i, branch_sas[0].spi_r)
    for n in range(20):  # after the last sync: the standby must jump past these
        assert link.send(active, 100 + n)
    link.hq = link.sites[ADDR["hq"]] = standby  # the active dies; the address moves
    before = len(link.ike_log)
    message = standby.keying.set_role(True, link.now)
    assert message.startswith("active: 1 tunnel(s) taken over, initiating 0"), message
    link.pump()
    assert link.send(standby, 1) and link.send(link.br, 2)  # both ways, at once, with the same SAs
    out = standby.forwarder.outbound_sa("branch1")
    assert out is not None and out.seq > ESP_SEQ_JUMP
    # the peer saw no new IKE SA, and the taken-over one keeps working: DPD, a Child rekey, an IKE rekey
    link.advance(8)  # silence > dpd_delay: liveness checks both ways with the message IDs each expects
    for kind in ("child", "ike"):
        standby.keying.rekey("branch1", kind, link.now)
        link.pump()
        assert link.send(standby, 3) and link.send(link.br, 4)
    now = link.br.keying.dispatcher.sessions_for("hq")
    assert len(now) == 1 and now[0].established
    exchanges = {exchange for _, exchange, _ in link.ike_log[before:]}
    assert exchanges == {ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA}, exchanges  # no new IKE SA
    assert branch_sas[0].spi_i == spis[0] and (now[0].spi_i, now[0].spi_r) != spis  # ... until its IKE rekey


def test_replays_from_before_the_takeover_are_refused(tmp_path: Path) -> None:
    link = Link(tmp_path)
    active = ha_site(link.hq, tmp_path / "hq", "active", "10.9.0.1", "10.9.0.2")
    standby = standby_of(tmp_path)
    tx, rx = SyncChannel(Secret(KEY)), SyncChannel(Secret(KEY))
    active.keying.start(link.now)
    link.pump()
    captured = [link.br.forwarders[0].outbound(link.br.packet(n)) for n in range(5)]
    for packet in captured:  # the active receives them
        assert packet is not None and active.forwarder.inbound(packet[1], (ADDR["branch1"], 4500)) is not None
    sync(active, standby, tx, rx, link.now)
    link.hq = link.sites[ADDR["hq"]] = standby
    standby.keying.set_role(True, link.now)
    for packet in captured:  # an attacker replays them to the new active
        assert standby.forwarder.inbound(packet[1], (ADDR["branch1"], 4500)) is None
    assert link.send(link.br, 9)


def test_the_channel_refuses_forgeries_replays_and_stale_messages() -> None:
    clock = [1000.0]
    tx = SyncChannel(Secret(KEY), wall_clock=lambda: clock[0])
    rx = SyncChannel(Secret(KEY), wall_clock=lambda: clock[0])
    other = SyncChannel(Secret(b"another-key-of-the-right-length!!"), wall_clock=lambda: clock[0])
    sealed = tx.seal({"snaps": {}})
    assert rx.open(sealed) == {"time": 1000.0, "snaps": {}}
    assert rx.open(sealed) is None  # replayed
    forged = bytearray(tx.seal({"snaps": {}}))
    forged[-1] ^= 1
    assert rx.open(bytes(forged)) is None
    assert rx.open(other.seal({"snaps": {}})) is None  # another key
    late = tx.seal({"snaps": {}})
    clock[0] += 60
    assert rx.open(late) is None  # stale
    assert rx.open(tx.seal({"x": 1})) is not None
    assert rx.open(b"garbage") is None and rx.open(rx.seal({})) is None  # our own back
    assert rx.dropped == {"replay": 1, "auth_failed": 2, "stale": 1, "malformed": 1, "own": 1}


@pytest.mark.parametrize(("extra", "peer", "message"), [("  workers: 2\n", "10.9.0.2", "workers: 1"),
                                                     ("", "10.9.0.1", "two gateways' own addresses")])
def test_sync_needs_one_worker_and_two_addresses(tmp_path: Path, extra: str, peer: str, message: str) -> None:
    Link(tmp_path)
    directory = tmp_path / "hq"
    write_file(directory / "sync.key", KEY + b"\n")
    path = directory / "config.yaml"
    path.write_text(path.read_text().replace("gateway:\n", f"gateway:\n{extra}  ha: {{sync: {{local: 10.9.0.1, "
                                             f"peer: {peer}, key_file: sync.key}}}}\n", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("gateway.ha.sync" in p and message in p for p in info.value.problems), info.value.problems


def test_a_restarted_standby_asks_for_what_it_lacks(tmp_path: Path) -> None:
    link = Link(tmp_path)
    active = ha_site(link.hq, tmp_path / "hq", "active", "10.9.0.1", "10.9.0.2")
    standby = standby_of(tmp_path)
    assert active.keying.sync is not None and standby.keying.sync is not None
    tx, rx = SyncChannel(Secret(KEY)), SyncChannel(Secret(KEY))
    active.keying.start(link.now)
    link.pump()
    assert link.send(active, 1)
    assert active.keying.sync.outgoing(link.now)[0]["snaps"]  # the first goes to nobody (no standby yet)
    assert link.send(active, 2)
    positions_only = active.keying.sync.outgoing(link.now + 0.1)
    assert positions_only and not positions_only[0]["snaps"] and positions_only[0]["pos"]
    standby.keying.sync.receive(rx.open(tx.seal(positions_only[0])) or {})
    assert standby.keying.sync.held == {}
    asks = standby.keying.sync.requests()
    assert asks == [{"want": ["branch1"]}]
    active.keying.sync.on_request(asks[0])
    again = active.keying.sync.outgoing(link.now + 0.2)
    standby.keying.sync.receive(rx.open(tx.seal(again[0])) or {})
    assert list(standby.keying.sync.held) == ["branch1"]


def test_damaged_state_never_breaks_a_takeover(tmp_path: Path) -> None:
    """Whatever an authenticated but broken (or hostile) peer sends, receive() and the takeover neither
    raise nor adopt half an SA: the tunnel is then initiated afresh."""
    import json
    import random

    link = Link(tmp_path)
    active = ha_site(link.hq, tmp_path / "hq", "active", "10.9.0.1", "10.9.0.2")
    active.keying.start(link.now)
    link.pump()
    assert link.send(active, 1)
    assert active.keying.sync is not None
    good = active.keying.sync.outgoing(link.now)[0]
    text = json.dumps(good)
    rng = random.Random(7)
    exercised = 0
    for trial in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            chars[rng.randrange(len(chars))] = rng.choice('0123456789abcdef"[]{},:-.nulltrue ')
        try:
            damaged = json.loads("".join(chars))
        except ValueError:
            continue
        site = Site.__new__(Site)
        site.name, site.peer = "hq", "branch1"
        directory = tmp_path / f"s{trial}"
        directory.mkdir()
        (directory / "config.yaml").write_text((tmp_path / "hq" / "config.yaml").read_text()
                                               .replace("role: active", "role: standby")
                                               .replace("local: 10.9.0.1, peer: 10.9.0.2", "local: 10.9.0.2, peer: 10.9.0.1"))
        write_file(directory / "hq.psk", (tmp_path / "hq" / "hq.psk").read_bytes())
        write_file(directory / "sync.key", KEY + b"\n")
        config = load_config(directory / "config.yaml")
        site.forwarder = build_forwarder(config)
        site.keying = Keying(config, site.forwarder, os.urandom)
        assert site.keying.sync is not None
        if isinstance(damaged, dict):
            site.keying.sync.receive(damaged)
            exercised += bool(site.keying.sync.held)
        message = site.keying.set_role(True, link.now)
        assert message.startswith("active: "), message
    assert exercised > 50  # most damaged messages still parsed and reached the takeover
