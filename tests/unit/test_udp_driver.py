"""The batching UDP driver on real loopback sockets: UDP_SEGMENT runs on send, UDP_GRO splitting on
receive, and the fallback when the kernel refuses GSO. What goes in must come out, datagram for datagram."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tunnel.drivers import udp


def _pair(gro: bool, zero_checksum: bool = False) -> tuple[socket.socket, socket.socket, bool]:
    rx = udp.open_socket("127.0.0.1", 0, 1 << 22)
    enabled = udp.enable_gro(rx) if gro else False
    tx = udp.open_socket("127.0.0.1", 0, 1 << 22, zero_checksum=zero_checksum)
    return tx, rx, enabled


def _drain(rx: socket.socket, gro: bool, expected: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 2
    while len(got) < expected and time.monotonic() < deadline:
        batch = udp.recv_gro_batch(rx, 64) if gro else udp.recv_batch(rx, 64)
        got += [item[0] for item in batch]
        if not batch:
            time.sleep(0.001)
    return got


def _datagrams(sizes: list[int]) -> list[bytes]:
    return [os.urandom(size) for size in sizes]


SHAPES = {
    "equal": [1400] * 10,
    "short last": [1400] * 7 + [333],
    "short in the middle": [1400] * 3 + [100] + [1400] * 4,
    "growing": [100, 200, 300, 1400, 1400],
    "many": [1000] * 150,  # more than MAX_SEGMENTS and more than MAX_GSO_BYTES in one run
    "single": [77],
}


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
@pytest.mark.parametrize("shape", SHAPES)
def test_segmented_sends_arrive_as_the_same_datagrams(shape: str, gro: bool) -> None:
    tx, rx, enabled = _pair(gro)
    try:
        sent = _datagrams(SHAPES[shape])
        sender = udp.SegmentingSender(tx)
        assert sender.send([(d, rx.getsockname(), 0) for d in sent]) == 0
        assert _drain(rx, enabled, len(sent)) == sent
        if SHAPES[shape].count(SHAPES[shape][0]) > 1:
            assert sender.gso_sends >= 1 and sender.segmentation
    finally:
        tx.close()
        rx.close()


def test_runs_break_at_a_change_of_peer() -> None:
    tx, rx1, _ = _pair(True)
    rx2 = udp.open_socket("127.0.0.1", 0, 1 << 22)
    udp.enable_gro(rx2)
    try:
        a, b = _datagrams([1200] * 4), _datagrams([1200] * 4)
        batch = [(a[0], rx1.getsockname(), 0), (a[1], rx1.getsockname(), 0), (b[0], rx2.getsockname(), 0),
                 (b[1], rx2.getsockname(), 0), (a[2], rx1.getsockname(), 0), (b[2], rx2.getsockname(), 0),
                 (b[3], rx2.getsockname(), 0), (a[3], rx1.getsockname(), 0)]
        assert udp.SegmentingSender(tx).send(batch) == 0
        assert _drain(rx1, True, 4) == a
        assert _drain(rx2, True, 4) == b
    finally:
        for s in (tx, rx1, rx2):
            s.close()


def test_gso_refused_falls_back_to_one_send_per_datagram() -> None:
    tx, rx, enabled = _pair(True, zero_checksum=True)  # the kernel refuses GSO without checksums
    try:
        sent = _datagrams([1300] * 6)
        sender = udp.SegmentingSender(tx)
        assert sender.send([(d, rx.getsockname(), 0) for d in sent]) == 0
        assert not sender.segmentation and sender.gso_sends == 0
        assert _drain(rx, enabled, 6) == sent
    finally:
        tx.close()
        rx.close()


def test_unreachable_peer_counts_failures_not_exceptions() -> None:
    tx, rx, _ = _pair(False)
    try:
        good = _datagrams([100] * 2)
        batch = [(b"y" * 100, ("::1", 4500, 0, 0), 0)] * 3 + [(d, rx.getsockname(), 0) for d in good]  # wrong family
        assert udp.SegmentingSender(tx).send(batch) == 3
        assert _drain(rx, False, 2) == good
    finally:
        tx.close()
        rx.close()


def test_reuseport_group_steers_esp_by_spi_and_the_rest_to_socket_0() -> None:
    first = udp.open_socket("127.0.0.1", 0, 1 << 20, reuseport=True)
    port = first.getsockname()[1]
    group = [first] + [udp.open_socket("127.0.0.1", port, 1 << 20, reuseport=True) for _ in range(2)]
    tx = udp.open_socket("127.0.0.1", 0, 1 << 20)
    try:
        udp.steer_by_spi(first, 3)
        spis = [0x1000, 0x1001, 0x1002, 0xFFFFFFF0, 7, 5]
        for spi in spis:
            tx.sendto(spi.to_bytes(4, "big") + bytes(40), ("127.0.0.1", port))
        tx.sendto(b"\xff", ("127.0.0.1", port))  # NAT keepalive
        tx.sendto(bytes(4) + b"IKE", ("127.0.0.1", port))  # non-ESP marker
        time.sleep(0.05)
        got = [[d for d, _ in udp.recv_batch(s, 64)] for s in group]
        for spi in spis:
            assert any(d[:4] == spi.to_bytes(4, "big") for d in got[spi % 3]), (hex(spi), got)
        assert b"\xff" in got[0] and bytes(4) + b"IKE" in got[0]
        assert sum(map(len, got)) == len(spis) + 2
    finally:
        for s in group + [tx]:
            s.close()


def test_tos_travels_per_datagram_and_splits_runs() -> None:
    """The outer DSCP/ECN of each ESP packet (RFC 2983 uniform model, RFC 6040) is set per datagram on one
    socket; a change of TOS ends a GSO run (GRO would not merge them either) and the receiver sees each."""
    tx, rx, _ = _pair(True)
    try:
        tos = [0, 0, 0xB8, 0xB8, 0x88, 0x01, 0x01, 0]  # EF, AF41, ECT(1)
        sent = _datagrams([1200] * len(tos))
        sender = udp.SegmentingSender(tx)
        assert sender.send([(d, rx.getsockname(), t) for d, t in zip(sent, tos)]) == 0
        got: list[tuple[bytes, int]] = []
        deadline = time.monotonic() + 2
        while len(got) < len(sent) and time.monotonic() < deadline:
            got += [(d, t) for d, _, t in udp.recv_gro_batch(rx, 64)]
        assert got == list(zip(sent, tos))
        assert sender.gso_sends == 3  # [0,0,0] [B8,B8] [01,01]; the AF41 one and the last go alone
    finally:
        tx.close()
        rx.close()


def test_a_dual_stack_sender_sends_each_datagram_through_its_peers_family() -> None:
    """A dual-stack gateway: one batch mixing IPv4 and IPv6 peers leaves through both sockets, each
    datagram through its own family's, none lost, the IPv4 run still segmented."""
    rx4, rx6 = udp.open_socket("127.0.0.1", 0, 1 << 22), udp.open_socket("::1", 0, 1 << 22)
    tx4, tx6 = udp.open_socket("127.0.0.1", 0, 1 << 22, zero_checksum=False), udp.open_socket("::1", 0, 1 << 22)
    try:
        sender = udp.FamilySender(udp.SegmentingSender(tx4), udp.SegmentingSender(tx6))
        to4, to6 = rx4.getsockname()[:2], rx6.getsockname()[:2]
        batch = [(d, to4, 0) for d in _datagrams([900] * 4)] + [(d, to6, 0) for d in _datagrams([700] * 3)]
        assert sender.send(batch) == 0
        assert _drain(rx4, False, 4) == [d for d, _, _ in batch[:4]]
        assert _drain(rx6, False, 3) == [d for d, _, _ in batch[4:]]
        assert sender.gso_sends >= 1
    finally:
        for sock in (rx4, rx6, tx4, tx6):
            sock.close()
