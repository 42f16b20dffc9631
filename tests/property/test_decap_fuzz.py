"""Random and mutated bytes fed to decapsulation end only as counted drops, never as an exception."""

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.dataplane.forwarder import Forwarder
from tunnel.esp.sa import InboundSa, OutboundSa

KEY = bytes(range(36))
SPI = 0x1001
PEER = ("198.18.1.2", 4500)
net = ipaddress.ip_network


def forwarder() -> Forwarder:
    fwd = Forwarder()
    fwd.add_tunnel("hq", PEER, [net("10.2.0.0/24")], [net("10.1.0.0/24")])
    fwd.install_inbound("hq", InboundSa(SPI, KEY, 64))
    fwd.install_outbound("hq", OutboundSa(0x2001, KEY))
    return fwd


def total_events(fwd: Forwarder) -> int:
    counted = sum(fwd.counters.drops) + fwd.counters.keepalives
    for t in fwd.tunnels.values():
        counted += sum(t.counters.drops) + t.counters.rx_packets + t.counters.tx_packets
    return counted


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_datagrams_are_counted_drops(datagrams: list[bytes]) -> None:
    fwd = forwarder()
    for d in datagrams:
        fwd.inbound(d, PEER)  # must not raise
    # Every datagram was accounted for exactly once.
    assert total_events(fwd) == len(datagrams)


def valid_esp(inner: bytes, seq: int = 1) -> bytes:
    out = OutboundSa(SPI, KEY)
    out.seq = seq - 1
    return out.seal(inner, 4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(min_size=0, max_size=120),
    seq=st.integers(min_value=1, max_value=2**32 - 1),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=255)), max_size=4),
    cut=st.integers(min_value=0, max_value=400),
)
def test_mutated_esp_is_counted(payload: bytes, seq: int, flips: list[tuple[int, int]], cut: int) -> None:
    inner = bytes.fromhex("4500") + (20 + len(payload)).to_bytes(2, "big") + bytes(8) + bytes([10, 1, 0, 10, 10, 2, 0, 10]) + payload
    data = bytearray(valid_esp(inner, seq))
    for pos, mask in flips:
        if pos < len(data):
            data[pos] ^= mask
    data = data[: max(cut, 0)] if cut < len(data) else data
    fwd = forwarder()
    result = fwd.inbound(bytes(data), PEER)
    assert total_events(fwd) == 1
    if result is not None:
        assert result == inner  # only an intact packet is ever delivered


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_random_outbound_packets_are_counted(packet: bytes) -> None:
    fwd = forwarder()
    result = fwd.outbound(packet)
    assert total_events(fwd) == 1
    assert result is None or result[0] == PEER
