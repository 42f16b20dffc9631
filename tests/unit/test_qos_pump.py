"""The priority path's pump (tunnel/drivers/pumps.QosPump) with a real UDP socket and a TUN stand-in:
the device that woke it is served first, and one woken by the socket while its TUN is empty still
delivers (a worker once asked for the TUN's direction only, and its ESP was never read)."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Iterator

import pytest

from policy.qos import QosClass
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.scheduler import PriorityScheduler
from tunnel.drivers import udp
from tunnel.drivers.pumps import QosPump
from tunnel.esp.sa import InboundSa, OutboundSa

net = ipaddress.ip_network


class FakeTun:
    """What QosPump uses of a TunDevice: packets to read, packets written."""

    def __init__(self) -> None:
        self.to_read: list[bytes] = []
        self.written: list[bytes] = []

    def read_batch(self, limit: int) -> list[bytes]:
        batch, self.to_read = self.to_read[:limit], self.to_read[limit:]
        return batch

    def write(self, packet: bytes) -> bool:
        self.written.append(packet)
        return True

    def write_batch(self, packets: list[bytes]) -> int:
        self.written += packets
        return 0


def ipv4(src: str, dst: str, size: int = 84) -> bytes:
    header = bytes.fromhex("45000000000040004001") + bytes(2) + socket.inet_aton(src) + socket.inet_aton(dst)
    return header[:2] + size.to_bytes(2, "big") + header[4:] + bytes(size - 20)


@pytest.fixture
def sites() -> Iterator[tuple[Forwarder, QosPump, FakeTun, socket.socket, socket.socket]]:
    """hq's forwarder (seals toward branch), branch's pump on a loopback socket, and hq's socket."""
    key_in, key_out = os.urandom(36), os.urandom(36)
    branch_sock = udp.open_socket("127.0.0.1", 0, 1 << 20, zero_checksum=False)
    udp.enable_gro(branch_sock)
    hq_sock = udp.open_socket("127.0.0.1", 0, 1 << 20, zero_checksum=False)
    hq, branch = Forwarder(), Forwarder()
    hq.add_tunnel("branch", branch_sock.getsockname(), [net("10.1.0.0/24")], [net("10.2.0.0/24")])
    hq.install_outbound("branch", OutboundSa(0x1001, key_in))
    hq.install_inbound("branch", InboundSa(0x2002, key_out))
    branch.add_tunnel("hq", hq_sock.getsockname(), [net("10.2.0.0/24")], [net("10.1.0.0/24")])
    branch.install_inbound("hq", InboundSa(0x1001, key_in))
    branch.install_outbound("hq", OutboundSa(0x2002, key_out))
    tun = FakeTun()
    pump = QosPump(branch, tun, [branch_sock], udp.SegmentingSender(branch_sock),  # type: ignore[arg-type]
                   PriorityScheduler(50_000_000), PriorityScheduler(50_000_000))
    try:
        yield hq, pump, tun, hq_sock, branch_sock
    finally:
        branch_sock.close()
        hq_sock.close()


def _arrive(hq: Forwarder, hq_sock: socket.socket, branch_sock: socket.socket, packet: bytes) -> None:
    sealed = hq.outbound(packet)
    assert sealed is not None
    hq_sock.sendto(sealed[1], branch_sock.getsockname())
    time.sleep(0.02)  # loopback delivery


@pytest.mark.parametrize("woke", ["udp", None])
def test_esp_is_delivered_when_the_socket_woke_the_pump(sites, woke: str | None) -> None:
    hq, pump, tun, hq_sock, branch_sock = sites
    request = ipv4("10.1.0.10", "10.2.0.10")
    _arrive(hq, hq_sock, branch_sock, request)
    pump.service(time.monotonic, woke=woke)
    assert tun.written == [request]
    assert pump.ingress.stats[QosClass.DEFAULT].dequeued == 1  # accounted, though it skipped the queue


def test_a_lone_tun_packet_leaves_at_once_and_a_backlog_keeps_priority(sites) -> None:
    hq, pump, tun, hq_sock, branch_sock = sites
    hq_sock.setblocking(False)
    tun.to_read = [ipv4("10.2.0.10", "10.1.0.10")]
    pump.service(time.monotonic, woke="tun")
    time.sleep(0.02)
    assert hq.inbound(hq_sock.recv(2048), branch_sock.getsockname()) is not None
    assert not pump.egress.length
    # a batch of bulk and one EF packet, read together: EF (DSCP 46) leaves first
    bulk = [ipv4("10.2.0.10", "10.1.0.10", 1000) for _ in range(20)]
    ef = bytearray(ipv4("10.2.0.11", "10.1.0.10"))
    ef[1] = 46 << 2
    ef[10:12] = b"\0\0"  # (no checksum check on this path)
    tun.to_read = [*bulk, bytes(ef)]
    pump.service(time.monotonic, woke="tun")
    time.sleep(0.02)
    first = hq.inbound(hq_sock.recv(4096), branch_sock.getsockname())
    assert first is not None and first[1] == 46 << 2


def test_a_real_time_packet_arriving_mid_chunk_does_not_wait_for_the_chunk(sites) -> None:
    """A bulk backlog is being sealed when an EF packet reaches the TUN: the pump looks at the kernel
    queues every SUB packets and sends it right after what it had sealed so far, not after the chunk."""
    from tunnel.drivers.pumps import CHUNK, SUB

    hq, pump, tun, hq_sock, branch_sock = sites
    hq_sock.setblocking(False)
    bulk = [ipv4("10.2.0.10", "10.1.0.10", 1000) for _ in range(CHUNK)]
    now = time.monotonic()
    tun.to_read = bulk
    pump.pull_tun(now)  # the backlog, in our queue
    ef = bytearray(ipv4("10.2.0.11", "10.1.0.10"))
    ef[1] = 46 << 2
    tun.to_read = [bytes(ef)]  # arrives while the chunk is being worked on
    pump.push_egress(now)
    time.sleep(0.02)
    order = []
    while True:
        try:
            data = hq_sock.recv(65536)
        except BlockingIOError:
            break
        inner = hq.inbound(data, branch_sock.getsockname())
        assert inner is not None
        order.append(inner[1] >> 2)  # the inner DSCP
    assert order.index(46) == SUB  # after the first SUB bulk packets, before the other CHUNK - SUB
    assert len(order) == CHUNK + 1
