"""flow_key() against packets built by scapy (an independent implementation of RFC 791 / RFC 8200 headers):
ports, TOS / traffic class, IPv4 and IPv6 fragments (RFC 791 §3.2, RFC 8200 §4.5), IPv6 extension
header chains (RFC 8200 §4, AH per RFC 4302 §2.2), truncation, and random bytes."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from policy.flow import FlowKey, addresses, flow_key, ip_version

A4, B4 = "10.1.0.5", "10.2.0.9"
A6, B6 = "fd00:1::5", "fd00:2::9"


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def key(packet) -> FlowKey | None:
    k = flow_key(bytes(packet))
    return None if k is None else FlowKey(*k)


def test_ipv4_tcp_udp_sctp_ports_and_tos() -> None:
    assert key(IP(src=A4, dst=B4, tos=0xB8) / TCP(sport=40000, dport=5061)) == FlowKey(
        4, 6, ip(A4), ip(B4), 40000, 5061, 0xB8, False)
    assert key(IP(src=A4, dst=B4, tos=0x89) / UDP(sport=16384, dport=5004)) == FlowKey(
        4, 17, ip(A4), ip(B4), 16384, 5004, 0x89, False)
    assert key(IP(src=A4, dst=B4) / SCTP(sport=2905, dport=2906)) == FlowKey(
        4, 132, ip(A4), ip(B4), 2905, 2906, 0, False)


def test_ipv4_options_move_the_ports() -> None:
    packet = IP(src=A4, dst=B4, options=[b"\x94\x04\x00\x00"]) / UDP(sport=1, dport=2)  # router alert
    assert bytes(packet)[0] & 0x0F == 6
    assert key(packet)[4:6] == (1, 2)


def test_icmp_has_no_ports() -> None:
    assert key(IP(src=A4, dst=B4) / ICMP(id=0x1234, seq=7)) == FlowKey(4, 1, ip(A4), ip(B4), 0, 0, 0, False)
    assert key(IPv6(src=A6, dst=B6, tc=0xB8) / ICMPv6EchoRequest(id=5)) == FlowKey(
        6, 58, ip(A6), ip(B6), 0, 0, 0xB8, False)


def test_ipv4_fragments_first_has_ports_rest_are_marked() -> None:
    whole = IP(src=A4, dst=B4, tos=0xB8, id=77) / UDP(sport=10002, dport=20004) / Raw(b"v" * 3000)
    pieces = fragment(whole, 1400)
    assert len(pieces) == 3 and pieces[0].flags.MF
    assert key(pieces[0]) == FlowKey(4, 17, ip(A4), ip(B4), 10002, 20004, 0xB8, False)
    for piece in pieces[1:]:
        assert piece.frag > 0
        assert key(piece) == FlowKey(4, 17, ip(A4), ip(B4), 0, 0, 0xB8, True)


def test_ipv6_plain() -> None:
    assert key(IPv6(src=A6, dst=B6, tc=0x88) / UDP(sport=3478, dport=50000)) == FlowKey(
        6, 17, ip(A6), ip(B6), 3478, 50000, 0x88, False)


def test_ipv6_hop_by_hop_with_options() -> None:
    packet = IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop(options=[RouterAlert(), PadN(optdata=b"\x00" * 12)]) / \
        TCP(sport=5060, dport=5060)
    assert len(IPv6ExtHdrHopByHop(options=[RouterAlert(), PadN(optdata=b"\x00" * 12)])) == 24  # len field 2
    assert key(packet) == FlowKey(6, 6, ip(A6), ip(B6), 5060, 5060, 0, False)


def test_ipv6_chain_of_destination_options_routing_and_ah() -> None:
    # AH's length is in 4-byte units minus 2 (RFC 4302 §2.2): 12-byte header + 12-byte ICV -> 4.
    packet = IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["fd00:3::1"]) / \
        AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\x01" * 12) / TCP(sport=9, dport=4307)
    assert key(packet) == FlowKey(6, 6, ip(A6), ip(B6), 9, 4307, 0, False)


def test_ipv6_fragments_with_hop_by_hop() -> None:
    whole = IPv6(src=A6, dst=B6, tc=0xB8) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / \
        IPv6ExtHdrFragment(id=9) / UDP(sport=50010, dport=50011) / Raw(b"a" * 3000)
    pieces = fragment6(whole, 1400)
    assert len(pieces) == 3
    assert key(pieces[0]) == FlowKey(6, 17, ip(A6), ip(B6), 50010, 50011, 0xB8, False)
    for piece in pieces[1:]:
        assert piece[IPv6ExtHdrFragment].offset > 0
        assert key(piece) == FlowKey(6, 17, ip(A6), ip(B6), 0, 0, 0xB8, True)


def test_ipv6_atomic_fragment_is_not_a_fragment() -> None:
    # RFC 6946: offset 0 and M clear; the ports are all there.
    packet = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=1, offset=0, m=0) / UDP(sport=1, dport=2)
    assert key(packet) == FlowKey(6, 17, ip(A6), ip(B6), 1, 2, 0, False)


def test_ipv6_more_than_eight_extension_headers_is_refused() -> None:
    def chain(n: int):
        packet = IPv6(src=A6, dst=B6)
        for _ in range(n):
            packet = packet / IPv6ExtHdrDestOpt()
        return packet / UDP(sport=1, dport=2)

    assert key(chain(8))[4:6] == (1, 2)
    assert key(chain(9)) is None


def test_no_next_header_and_esp_are_upper_layers() -> None:
    assert key(IPv6(src=A6, dst=B6, nh=59)) == FlowKey(6, 59, ip(A6), ip(B6), 0, 0, 0, False)
    assert key(IP(src=A4, dst=B4, proto=50) / Raw(b"\x00" * 16))[1] == 50


SAMPLES = [
    IP(src=A4, dst=B4) / UDP(sport=1, dport=2),
    IP(src=A4, dst=B4) / TCP(sport=1, dport=2),
    IPv6(src=A6, dst=B6) / UDP(sport=1, dport=2),
    IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / IPv6ExtHdrFragment() / TCP(sport=1, dport=2),
]


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: p.summary())
def test_every_truncation_before_the_ports_is_none(packet) -> None:
    data = bytes(packet)
    needed = len(data) - len(bytes(packet.lastlayer())) + 4  # every header, then the two ports
    assert flow_key(data[:needed])[4:6] == (1, 2)
    for cut in range(needed):
        assert flow_key(data[:cut]) is None, cut


def test_bad_headers_are_none() -> None:
    data = bytearray(bytes(IP(src=A4, dst=B4) / UDP(sport=1, dport=2)))
    data[0] = 0x44  # IHL 4: below the minimum
    assert flow_key(bytes(data)) is None
    data[0] = 0x4F  # IHL 15: 60 bytes, more than the packet
    assert flow_key(bytes(data)) is None
    data[0] = 0x55  # version 5
    assert flow_key(bytes(data)) is None
    assert flow_key(b"") is None


def test_accepts_memoryview_and_bytearray() -> None:
    data = bytes(IP(src=A4, dst=B4) / UDP(sport=1, dport=2))
    assert flow_key(memoryview(data)) == flow_key(bytearray(data)) == flow_key(data)


def test_existing_helpers_unchanged() -> None:
    data = bytes(IP(src=A4, dst=B4) / UDP(sport=1, dport=2))
    assert ip_version(data) == 4 and ip_version(b"") == 0
    assert addresses(data) == (4, ip(A4), ip(B4))
    assert addresses(bytes(IPv6(src=A6, dst=B6))) == (6, ip(A6), ip(B6))
    assert addresses(data[:19]) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535), st.sampled_from([6, 17]),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans())
def test_random_fields_round_trip_through_scapy(tos, sport, dport, proto, src, dst, v6) -> None:
    l4 = TCP(sport=sport, dport=dport) if proto == 6 else UDP(sport=sport, dport=dport)
    if v6:
        s, d = (0xFD << 120) | src, (0xFD << 120) | dst
        packet = IPv6(src=str(ipaddress.IPv6Address(s)), dst=str(ipaddress.IPv6Address(d)), tc=tos) / l4
    else:
        s, d = src, dst
        packet = IP(src=str(ipaddress.IPv4Address(s)), dst=str(ipaddress.IPv4Address(d)), tos=tos) / l4
    assert flow_key(bytes(packet)) == (6 if v6 else 4, proto, s, d, sport, dport, tos, False)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = flow_key(data)
    assert result is None or (len(result) == 8 and result[0] in (4, 6))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([bytes(p) for p in SAMPLES]), st.data())
def test_mutated_headers_never_raise(data: bytes, draw) -> None:
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 6))):
        mutated[draw.draw(st.integers(0, len(mutated) - 1))] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(mutated)))
    result = flow_key(bytes(mutated[:cut]))
    assert result is None or result[0] in (4, 6)
