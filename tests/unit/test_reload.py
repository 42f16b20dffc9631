"""Hot reload without sockets: what a new configuration changes (plan_reload), the forwarder forgetting a
tunnel, and two keyings back to back (real IKE between them) through a reload that keeps one
tunnel's SAs, re-establishes a changed one and deletes a removed one at the peer."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import socket
import time
from pathlib import Path

import pytest

from tests.unit.test_config_loader import GOOD, SECOND_TUNNEL, make_keys, write
from tests.unit.test_keying import Link, Site, _spi_out, _up
from tunnel.app.assemble import install_manual_keys, reconfigure_forwarder
from tunnel.app.gateway import Gateway
from tunnel.app.reload import LIVE_FIELDS, RESTART_FIELDS, plan_reload
from tunnel.app.workers import WorkerProxy, _commands, _report
from tunnel.config.loader import load_config
from tunnel.config.model import GatewayConfig
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.tunnels import VolumeLimits
from tunnel.errors import ConfigError, ReloadRefused
from tunnel.esp.sa import InboundSa, OutboundSa
from tunnel.ike.constants import ExchangeType
from tunnel.ike.message import parse_header

FIREWALL = """\
    firewall:
      default: deny
      rules:
        - {action: allow, services: [icmp]}
"""


TWO = GOOD + SECOND_TUNNEL


def _configs(tmp_path: Path, before: str, after: str) -> tuple[GatewayConfig, GatewayConfig]:
    make_keys(tmp_path, "b1", "b2")
    first = load_config(write(tmp_path, before))
    return first, load_config(write(tmp_path, after))


def test_every_gateway_setting_is_either_live_or_needs_a_restart() -> None:
    fields = {f.name for f in dataclasses.fields(GatewayConfig)}
    assert set(RESTART_FIELDS) | set(LIVE_FIELDS) == fields and not set(RESTART_FIELDS) & set(LIVE_FIELDS)


def test_an_identical_configuration_changes_nothing(tmp_path: Path) -> None:
    old, new = _configs(tmp_path, TWO, TWO)
    plan = plan_reload(old, new)
    assert [t.name for t in plan.unchanged] == ["branch1", "branch2"]
    assert not (plan.added or plan.removed or plan.replaced or plan.updated)
    assert plan.summary() == "unchanged branch1, branch2"


def test_added_removed_updated_and_replaced_tunnels(tmp_path: Path) -> None:
    # branch1 gets a firewall (a policy change), branch2 goes, branch9 comes
    added = (SECOND_TUNNEL.replace("branch2", "branch9").replace("198.18.3.2", "198.18.9.2")
             .replace("10.3.0.0/24", "10.9.0.0/24"))
    changed = GOOD.replace("    manual_keys: keys/b1.keys\n", FIREWALL + "    manual_keys: keys/b1.keys\n")
    assert changed != GOOD
    old, new = _configs(tmp_path, TWO, changed + added)
    plan = plan_reload(old, new)
    assert [t.name for t in plan.updated] == ["branch1"] and [t.name for t in plan.removed] == ["branch2"]
    assert [t.name for t in plan.added] == ["branch9"] and not plan.replaced and not plan.unchanged
    assert plan.gone == ("branch2",) and [t.name for t in plan.new] == ["branch9"]
    assert [t.name for t in plan.kept] == ["branch1"]
    assert plan.summary() == "added branch9; removed branch2; policy updated branch1"
    # a negotiated setting (the remote subnets) re-establishes the tunnel
    plan = plan_reload(old, load_config(write(tmp_path, TWO.replace("10.2.0.0/24", "10.2.8.0/24"))))
    assert [t.name for t in plan.replaced] == ["branch1"] and plan.gone == ("branch1",)
    assert plan.summary() == "re-established branch1; unchanged branch2"


@pytest.mark.parametrize("change,field", [
    (("address: 198.18.1.2", "address: 198.18.1.3"), "gateway.listen"),
    (("name: hq", "name: hq2"), "gateway.name"),
    (("  listen:", "  tun: {name: sl1}\n  listen:"), "gateway.tun"),
    (("  listen:", "  metrics: {port: 9999}\n  listen:"), "gateway.metrics"),
])
def test_settings_of_open_resources_refuse_the_reload(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    assert change[0] in GOOD, change
    old, new = _configs(tmp_path, GOOD, GOOD.replace(*change, 1))
    with pytest.raises(ReloadRefused, match=rf"{field} changed: that needs a restart"):
        plan_reload(old, new)


def test_log_level_and_services_are_live(tmp_path: Path) -> None:
    old, new = _configs(tmp_path, TWO, TWO.replace("  listen:", "  log_level: debug\n  listen:", 1))
    assert new.log_level == "debug" and len(plan_reload(old, new).unchanged) == 2


def _ip(src: str, dst: str) -> bytes:
    return (bytes.fromhex("4500001c000040004011") + bytes(2) + ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed + bytes(8))


def test_forwarder_forgets_a_removed_tunnel_and_fails_closed() -> None:
    forwarder = Forwarder()
    forwarder.add_tunnel("a", ("198.18.2.2", 4500), [ipaddress.ip_network("10.1.0.0/24")],
                         [ipaddress.ip_network("10.2.0.0/24")])
    forwarder.add_tunnel("b", ("198.18.3.2", 4500), [ipaddress.ip_network("10.1.0.0/24")],
                         [ipaddress.ip_network("10.3.0.0/24")])
    key = os.urandom(36)
    forwarder.install_outbound("b", OutboundSa(0x200, key))
    forwarder.install_inbound("b", InboundSa(0x201, key, 64))
    queued: list = []
    forwarder.classify_into(_ip("10.1.0.5", "10.3.0.5"), queued)
    assert len(queued) == 1
    forwarder.remove_tunnel("b")
    assert forwarder.inbound_tunnel(0x201) is None and "b" not in forwarder.tunnels
    assert forwarder.outbound(_ip("10.1.0.5", "10.3.0.5")) is None  # no route any more: dropped
    assert forwarder.counters.drops_by_reason() == {"no_tunnel": 1}
    sealed: list = []
    forwarder.seal_into(queued[0][1], queued[0][2], sealed)  # queued before the reload: dropped, not sent
    assert sealed == [] and forwarder.take_events() == []  # and no new SA is asked for
    assert forwarder.outbound(_ip("10.1.0.5", "10.2.0.5")) is None and forwarder.take_events()[0].tunnel == "a"
    forwarder.add_tunnel("b", ("198.18.3.2", 4500), [ipaddress.ip_network("10.1.0.0/24")],
                         [ipaddress.ip_network("10.3.0.0/24")])  # the subnet is free again


# -- two keyings -------------------------------------------------------------------------------
def _reload(link: Link, site: Site, config_text: str) -> None:
    """What Gateway.reload does, minus routes: plan, keying, forwarder; then IKE moves."""
    path = Path(site.keying.config.path)
    path.write_text(config_text)
    new = load_config(path)
    plan = plan_reload(site.keying.config, new)
    site.keying.reconfigure(new, plan, link.now)
    reconfigure_forwarder(site.forwarder, new, plan.gone)
    link.pump()


def test_reload_keeps_unchanged_and_policy_changed_tunnels_up(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    spis = _spi_out(link.hq), _spi_out(link.br)
    text = Path(link.hq.keying.config.path).read_text()
    _reload(link, link.hq, text)
    assert (_spi_out(link.hq), _spi_out(link.br)) == spis
    _reload(link, link.hq, text + FIREWALL)  # the test packets are UDP 5004: now denied, SAs kept
    assert (_spi_out(link.hq), _spi_out(link.br)) == spis
    assert not link.send(link.hq, 1)
    assert link.hq.forwarder.tunnels["branch1"].counters.drops_by_reason() == {"policy_deny": 1}
    _reload(link, link.hq, text + FIREWALL.replace("services: [icmp]", "protocol: udp, ports: [5004]"))
    assert (_spi_out(link.hq), _spi_out(link.br)) == spis
    assert link.send(link.hq, 2) and link.send(link.br, 3)
    assert [e for s, e, _ in link.ike_log if e == ExchangeType.INFORMATIONAL] == []  # no IKE traffic at all


def test_call_quality_changes_in_place(tmp_path: Path) -> None:
    """Turning the observer off or changing its ports is a policy update: SAs kept, no IKE traffic."""
    link = _up(Link(tmp_path))
    spis = _spi_out(link.hq), _spi_out(link.br)
    text = Path(link.hq.keying.config.path).read_text()
    observer = link.hq.forwarder.tunnels["branch1"].calls
    assert observer is not None
    _reload(link, link.hq, text + "    call_quality: {services: [teams]}\n")
    changed = link.hq.forwarder.tunnels["branch1"].calls
    assert changed is not None and changed is not observer and changed.ports[50000] and not changed.ports[10000]
    _reload(link, link.hq, text + "    call_quality: false\n")
    assert link.hq.forwarder.tunnels["branch1"].calls is None
    assert (_spi_out(link.hq), _spi_out(link.br)) == spis and link.send(link.hq, 1)
    assert [e for s, e, _ in link.ike_log if e == ExchangeType.INFORMATIONAL] == []


def test_reload_re_establishes_a_changed_tunnel(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    spis = _spi_out(link.hq), _spi_out(link.br)
    old_ike = link.hq.keying.dispatcher.sessions_for("branch1")[0].spi_i
    text = Path(link.hq.keying.config.path).read_text()
    _reload(link, link.hq, text.replace("rekey_time: 100", "rekey_time: 90"))
    session = link.hq.keying.dispatcher.sessions_for("branch1")
    assert len(session) == 1 and session[0].spi_i != old_ike and session[0].established
    assert old_ike not in link.hq.keying.dispatcher.sessions  # its Delete was answered
    assert _spi_out(link.hq) != spis[0] and _spi_out(link.br) != spis[1]
    assert link.send(link.hq, 1) and link.send(link.br, 2)
    assert link.hq.keying.tunnels["branch1"].stats.handshakes_ok == 1  # the new runtime's own tally


def _only_branch2(text: str) -> str:
    """hq's configuration with branch1 replaced by a tunnel to a third site (the tunnel list cannot be empty)."""
    return (text.replace("name: branch1", "name: branch2").replace("198.18.2.2", "198.18.3.2")
            .replace("10.2.0.0/24", "10.3.0.0/24").replace("gw.branch1.", "gw.branch2.")
            .replace("start: initiate", "start: respond"))


def test_reload_deletes_a_removed_tunnel_at_the_peer(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    text = Path(link.hq.keying.config.path).read_text()
    _reload(link, link.hq, _only_branch2(text))
    assert list(link.hq.keying.tunnels) == ["branch2"] and list(link.hq.forwarder.tunnels) == ["branch2"]
    assert link.hq.keying.dispatcher.sessions == {}
    # branch heard the Delete: no IKE SA and no outbound SA left (it fails closed and waits)
    assert link.br.keying.dispatcher.sessions_for("hq") == [] and link.br.forwarder.tunnels["hq"].outbound is None
    assert not link.send(link.br, 1)


def test_a_lost_delete_is_retransmitted_and_nothing_is_reported(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    text = Path(link.hq.keying.config.path).read_text()
    lost: list[bytes] = []
    link.lose_ike = lambda sender, data: sender == "hq" and not lost and not lost.append(data)
    _reload(link, link.hq, _only_branch2(text))
    assert len(lost) == 1 and len(link.hq.keying.dispatcher.sessions) == 1  # retired, awaiting the answer
    assert link.br.keying.dispatcher.sessions_for("hq")  # branch has not heard yet
    link.advance(3)  # retransmitted
    assert link.hq.keying.dispatcher.sessions == {} and link.hq.keying.dispatcher.next_event() is None
    assert link.br.keying.dispatcher.sessions_for("hq") == []


def test_worker_applies_a_reload(tmp_path: Path) -> None:
    make_keys(tmp_path, "b1", "b2")
    config = load_config(write(tmp_path, TWO))
    names = [t.name for t in config.tunnels]
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forwarder = Forwarder(time.monotonic)
        reconfigure_forwarder(forwarder, config, ())
        proxy = WorkerProxy(1, main_end, os.getpid(), names)
        _report(forwarder, worker_end, 0, None, [])  # a report from before the reload, read after it
        smaller = dataclasses.replace(config, tunnels=config.tunnels[:1])
        proxy.reconfigure(smaller, (names[1],))
        proxy.install_outbound(names[1], 0x99, os.urandom(36), VolumeLimits())  # about a removed tunnel: ignored
        generation = [0]
        assert _commands(forwarder, worker_end, generation)
        assert list(forwarder.tunnels) == names[:1] and generation == [1]
        assert proxy.receive() and list(proxy.counters) == names[:1]  # the stale report changed nothing
        _report(forwarder, worker_end, generation[0], None, [])
        assert proxy.receive() and proxy.counters[names[0]].tx_packets == 0
    finally:
        main_end.close()
        worker_end.close()


# -- the gateway refuses, and keeps running what it has ----------------------------------------------
def test_gateway_refuses_a_broken_or_restart_only_configuration(tmp_path: Path) -> None:
    make_keys(tmp_path, "b1", "b2")
    path = write(tmp_path, TWO)
    gateway = Gateway(load_config(path))
    for tunnel in gateway.config.tunnels:  # what Gateway.open does before it opens devices and sockets
        install_manual_keys(gateway.forwarder, tunnel)
    from tunnel.app.keying import Keying

    gateway.keying = Keying(gateway.config, gateway.forwarder, os.urandom)
    running = gateway.config
    path.write_text(TWO.replace("remote_subnets: [10.3.0.0/24]", "remote_subnets: [10.3.0.0/33]"))
    with pytest.raises(ConfigError) as error:
        asyncio.run(gateway.reload())
    assert all(p.startswith(f"{path}:") for p in error.value.problems), error.value.problems
    path.write_text(TWO.replace("address: 198.18.1.2", "address: 198.18.1.3", 1))
    with pytest.raises(ReloadRefused, match="gateway.listen changed"):
        asyncio.run(gateway.reload())
    assert gateway.config is running and list(gateway.forwarder.tunnels) == [t.name for t in running.tunnels]
    assert all(state.outbound is not None for state in gateway.forwarder.tunnels.values())


def test_the_first_ike_tunnel_needs_a_restart(tmp_path: Path) -> None:
    """A gateway started with manual keys only has no IKE socket or IKE timers to give a new IKE tunnel."""
    make_keys(tmp_path, "b1", "b2")
    (tmp_path / "b2.psk").write_bytes(b"a-pre-shared-key-of-enough-length-0123\n")
    (tmp_path / "b2.psk").chmod(0o600)
    ike = SECOND_TUNNEL.replace("    manual_keys: keys/b2.keys\n", "    ike: {auth: psk, psk_file: b2.psk, "
                                "local_id: gw.hq.example, remote_id: gw.b2.example}\n")
    old, new = load_config(write(tmp_path, TWO)), load_config(write(tmp_path, GOOD + ike))
    with pytest.raises(ReloadRefused, match="the first IKEv2 tunnel needs a restart"):
        plan_reload(old, new)


def test_a_removed_tunnel_busy_with_a_rekey_is_still_deleted_at_the_peer(tmp_path: Path) -> None:
    """Our CREATE_CHILD_SA is outstanding when the reload removes the tunnel: the Delete waits for its
    answer (one request at a time, RFC 7296 §2.3) instead of being skipped."""
    link = _up(Link(tmp_path))
    link.hq.keying.dispatcher.rekey_child("branch1", link.now)  # request queued, not delivered yet
    assert link.hq.keying.dispatcher.sessions_for("branch1")[0].requests.busy
    text = Path(link.hq.keying.config.path).read_text()
    _reload(link, link.hq, _only_branch2(text))  # pumps: the rekey's answer, then our Delete
    assert link.hq.keying.dispatcher.sessions == {}
    assert link.br.keying.dispatcher.sessions_for("hq") == [] and link.br.forwarder.tunnels["hq"].outbound is None
    exchanges = [(s, e, r) for s, e, r in link.ike_log if e in (ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL)]
    assert exchanges[:2] == [("hq", ExchangeType.CREATE_CHILD_SA, False), ("branch1", ExchangeType.CREATE_CHILD_SA, True)]
    assert ("hq", ExchangeType.INFORMATIONAL, False) in exchanges[2:]


def test_a_replaced_tunnel_tells_the_peer_to_drop_the_old_sas(tmp_path: Path) -> None:
    """The replacement's IKE_AUTH carries INITIAL_CONTACT again (RFC 7296 §2.4), so even an old IKE SA
    whose Delete was lost is dropped by the peer."""
    link = _up(Link(tmp_path))
    text = Path(link.hq.keying.config.path).read_text()
    link.lose_ike = lambda sender, data: sender == "hq" and parse_header(data).exchange == ExchangeType.INFORMATIONAL
    _reload(link, link.hq, text.replace("rekey_time: 100", "rekey_time: 90"))
    sessions = link.br.keying.dispatcher.sessions_for("hq")
    assert len(sessions) == 1 and sessions[0].spi_i == link.hq.keying.dispatcher.sessions_for("branch1")[0].spi_i
    assert link.send(link.hq, 1) and link.send(link.br, 2)
