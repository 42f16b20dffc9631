"""The socketpair between the gateway and a data-plane worker, without forking: what the main process
asks through a WorkerProxy must be what the worker's Forwarder holds, and what the worker reports must be
what the control plane reads back (counters, used SPIs, sequence numbers, NAT rebinding, NeedSa)."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tunnel.dataplane.forwarder import Forwarder
from tunnel.esp.sa import OutboundSa
from tunnel.app.workers import WorkerProxy, _commands, _report

PEER = ("198.18.2.2", 4500)
LOCAL, REMOTE = ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("10.2.0.0/24")


@pytest.fixture
def pair():
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    forwarder = Forwarder()
    forwarder.add_tunnel("branch1", PEER, [LOCAL], [REMOTE])
    proxy = WorkerProxy(1, main_end, os.getpid(), {"branch1": PEER})
    yield proxy, forwarder, worker_end
    main_end.close()
    worker_end.close()


def packet(src: str, dst: str) -> bytes:
    header = bytes.fromhex("4500001c000040004011") + bytes(2) + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return header + bytes(8)


def test_key_changes_reach_the_worker_forwarder(pair) -> None:
    proxy, forwarder, conn = pair
    key_in, key_out = os.urandom(36), os.urandom(36)
    proxy.install_inbound("branch1", 0x1001, key_in, 1024)
    proxy.install_outbound("branch1", 0x2001, key_out)
    proxy.set_peer("branch1", ("198.18.2.9", 41000))
    assert _commands(forwarder, conn, [0])
    assert 0x1001 in forwarder._inbound and forwarder._inbound[0x1001][1].window.size == 1024
    assert forwarder.tunnels["branch1"].outbound.spi == 0x2001
    assert forwarder.tunnels["branch1"].peer == ("198.18.2.9", 41000)
    # the same keys seal here and open there: the worker really holds them
    sealed = OutboundSa(0x1001, key_in).seal(packet("10.2.0.5", "10.1.0.5"), 4)
    assert forwarder.inbound(sealed, ("198.18.2.9", 41000)) == packet("10.2.0.5", "10.1.0.5")
    proxy.install_inbound("branch1", 0x1001, key_in, 1024)  # sent again: idempotent, no exception
    proxy.remove_outbound("branch1")
    proxy.remove_inbound(0x1001)
    assert _commands(forwarder, conn, [0])
    assert 0x1001 not in forwarder._inbound and forwarder.tunnels["branch1"].outbound is None
    assert proxy.outbound_state("branch1") is None


def test_reports_come_back_to_the_control_plane(pair) -> None:
    proxy, forwarder, conn = pair
    key_in, key_out = os.urandom(36), os.urandom(36)
    proxy.install_inbound("branch1", 0x1001, key_in, 64)
    proxy.install_outbound("branch1", 0x2001, key_out)
    assert _commands(forwarder, conn, [0])
    assert forwarder.outbound(packet("10.1.0.5", "10.2.0.5")) is not None
    sealed = OutboundSa(0x1001, key_in).seal(packet("10.2.0.5", "10.1.0.5"), 4)
    assert forwarder.inbound(sealed, ("203.0.113.7", 40001)) is not None  # the peer's NAT moved
    forwarder.inbound(os.urandom(4) + bytes(40), PEER)  # unknown SPI
    forwarder.remove_outbound("branch1")
    forwarder.outbound(packet("10.1.0.5", "10.2.0.5"))  # no SA: NeedSa
    forwarder.install_outbound("branch1", OutboundSa(0x2001, key_out))
    forwarder.outbound(packet("10.1.0.5", "10.2.0.5"))
    _report(forwarder, conn, 0)
    assert proxy.receive()
    assert proxy.rx_packets("branch1") == 1 and proxy.counters["branch1"].tx_packets == 2
    assert proxy.inbound_used(0x1001)
    assert proxy.outbound_state("branch1") == (0x2001, 1)
    assert proxy.peer("branch1") == ("203.0.113.7", 40001)
    assert proxy.unknown_spi_peers == {PEER[0]} and proxy.need_sa == {"branch1"}
    assert proxy.counters["branch1"].drops_by_reason() == {"no_sa": 1}
    assert proxy.global_counters.drops_by_reason() == {"unknown_spi": 1}


def test_a_stale_report_does_not_undo_newer_news(pair) -> None:
    proxy, forwarder, conn = pair
    proxy.install_outbound("branch1", 0x2001, os.urandom(36))
    assert _commands(forwarder, conn, [0])
    _report(forwarder, conn, 0)  # taken while 0x2001 was current, read after the main process moved on
    proxy.install_outbound("branch1", 0x3001, os.urandom(36))
    proxy.set_peer("branch1", ("198.18.2.9", 4500))
    assert proxy.receive()
    assert proxy.outbound_state("branch1") == (0x3001, 0)  # not the old SA's sequence number
    assert proxy.peer("branch1") == ("198.18.2.9", 4500)  # no rebinding reported: the main's word stands


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
