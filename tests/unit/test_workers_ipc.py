"""The socketpair between the gateway and a data-plane worker, without forking: what the main process
asks through a WorkerProxy must be what the worker's Forwarder holds, and what the worker's forwarder
reports must reach the main process as the same event stream, in order, with its counters."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tunnel.app.workers import WorkerProxy, _commands, _report
from tunnel.dataplane.events import NeedSa, NeedSaReason, PeerAlive, PeerMoved, SaInUse, UnknownSpi
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.tunnels import VolumeLimits
from tunnel.esp.sa import OutboundSa

PEER = ("198.18.2.2", 4500)
LOCAL, REMOTE = ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("10.2.0.0/24")
LIMITS = VolumeLimits(soft_packets=1000, soft_bytes=10_000_000, hard_packets=1100, hard_bytes=11_000_000)


@pytest.fixture
def pair():
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    forwarder = Forwarder()
    forwarder.add_tunnel("branch1", PEER, [LOCAL], [REMOTE])
    proxy = WorkerProxy(1, main_end, os.getpid(), ["branch1"])
    yield proxy, forwarder, worker_end
    main_end.close()
    worker_end.close()


def packet(src: str, dst: str) -> bytes:
    header = bytes.fromhex("4500001c000040004011") + bytes(2) + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return header + bytes(8)


def unknown_spi(forwarder: Forwarder, host: str) -> None:
    forwarder.inbound(b"\x00\x00\x99\x99" + bytes(40), (host, 4500))


def test_key_changes_reach_the_worker_forwarder(pair) -> None:
    proxy, forwarder, conn = pair
    key_in, key_out = os.urandom(36), os.urandom(36)
    proxy.install_inbound("branch1", 0x1001, key_in, 1024)
    proxy.install_outbound("branch1", 0x2001, key_out, LIMITS)
    proxy.set_peer("branch1", ("198.18.2.9", 41000))
    assert _commands(forwarder, conn, [0])
    assert 0x1001 in forwarder._inbound and forwarder._inbound[0x1001][1].window.size == 1024
    assert forwarder.tunnels["branch1"].outbound.spi == 0x2001 and forwarder.tunnels["branch1"].limits == LIMITS
    assert forwarder.tunnels["branch1"].peer == ("198.18.2.9", 41000)
    # the same keys seal here and open there: the worker really holds them
    sealed = OutboundSa(0x1001, key_in).seal(packet("10.2.0.5", "10.1.0.5"), 4)
    assert forwarder.inbound(sealed, ("198.18.2.9", 41000)) == packet("10.2.0.5", "10.1.0.5")
    proxy.install_inbound("branch1", 0x1001, key_in, 1024)  # sent again: idempotent, no exception
    proxy.remove_outbound("branch1")
    proxy.remove_inbound(0x1001)
    assert _commands(forwarder, conn, [0])
    assert 0x1001 not in forwarder._inbound and forwarder.tunnels["branch1"].outbound is None


def test_the_worker_s_events_come_back_in_order_with_its_counters(pair) -> None:
    proxy, forwarder, conn = pair
    key_in, key_out = os.urandom(36), os.urandom(36)
    proxy.install_inbound("branch1", 0x1001, key_in, 64)
    proxy.install_outbound("branch1", 0x2001, key_out, LIMITS)
    assert _commands(forwarder, conn, [0])
    assert forwarder.outbound(packet("10.1.0.5", "10.2.0.5")) is not None
    sealed = OutboundSa(0x1001, key_in).seal(packet("10.2.0.5", "10.1.0.5"), 4)
    assert forwarder.inbound(sealed, ("203.0.113.7", 40001)) is not None  # the peer's NAT moved
    unknown_spi(forwarder, PEER[0])
    forwarder.remove_outbound("branch1")
    forwarder.outbound(packet("10.1.0.5", "10.2.0.5"))  # no SA: NeedSa
    assert _report(forwarder, conn, 0, None, []) == []
    assert proxy.receive()
    assert proxy.take_events() == [
        PeerMoved("branch1", ("203.0.113.7", 40001)), PeerAlive("branch1"), SaInUse("branch1", 0x1001),
        UnknownSpi(PEER[0]), NeedSa("branch1", NeedSaReason.NO_SA)]
    assert proxy.take_events() == []
    assert proxy.counters["branch1"].rx_packets == 1 and proxy.counters["branch1"].tx_packets == 1
    assert proxy.counters["branch1"].drops_by_reason() == {"no_sa": 1}
    assert proxy.global_counters.drops_by_reason() == {"unknown_spi": 1}


def test_a_stale_report_brings_no_news_of_tunnels(pair) -> None:
    """A report the worker made before applying a reload may describe a tunnel the reload replaced:
    its tunnel events are dropped; news that names no tunnel still counts."""
    proxy, forwarder, conn = pair
    forwarder.set_peer("branch1", ("198.18.2.2", 4500))
    proxy.install_inbound("branch1", 0x1001, key := os.urandom(36), 64)
    assert _commands(forwarder, conn, [0])
    forwarder.inbound(OutboundSa(0x1001, key).seal(packet("10.2.0.5", "10.1.0.5"), 4), ("203.0.113.7", 40001))
    unknown_spi(forwarder, "198.18.9.9")
    _report(forwarder, conn, 0, None, [])  # taken before the reload, read after it
    proxy.generation += 1  # the main process sent a reload meanwhile
    assert proxy.receive()
    assert proxy.take_events() == [UnknownSpi("198.18.9.9")]


def test_events_wait_for_a_report_the_main_process_has_room_for(pair) -> None:
    """When the socketpair is full the report is dropped but not its events: the next one carries them,
    so none is lost or repeated."""
    proxy, forwarder, conn = pair
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    unsent: list = []
    for i in range(2000):
        unknown_spi(forwarder, f"198.18.{i // 256}.{i % 256}")
        unsent = _report(forwarder, conn, 0, None, unsent)
        if len(unsent) > 3:
            break
    assert len(unsent) > 3, "the socketpair never filled"
    assert proxy.receive()
    assert _report(forwarder, conn, 0, None, unsent) == []
    assert proxy.receive()
    hosts = [event.host for event in proxy.take_events()]
    assert hosts == [f"198.18.{i // 256}.{i % 256}" for i in range(len(hosts))] and len(hosts) == i + 1


def test_either_end_going_away_is_noticed(pair) -> None:
    proxy, forwarder, conn = pair
    proxy._send(("stop",))
    assert not _commands(forwarder, conn, [0])  # asked to stop
    conn.close()
    assert not proxy.receive()  # the worker is gone


def test_main_process_gone_stops_the_worker() -> None:
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    main_end.close()
    try:
        assert not _commands(Forwarder(), worker_end, [0])
    finally:
        worker_end.close()
