"""tunnel/dataplane/ipedit.py checked against scapy as the independent implementation: packets are built with
scapy, edited, parsed back with scapy, and every checksum is compared with scapy's own.

MSS: RFC 9293 §3.2 (option format), RFC 1624 (incremental checksum). Fragmentation: RFC 791 §3.1-3.2.
Too big: RFC 792, RFC 1191 §4, RFC 1812 §4.3.2.3/§4.3.2.7, RFC 1122 §3.2.2, RFC 4443 §2.4(e)/§3.2.
DSCP/ECN: RFC 2983 §3, RFC 6040 §4.1 and §4.2 Figure 4.
"""

from __future__ import annotations

import ast
import ipaddress
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_LSRR, IPOption_Router_Alert, IPOption_RR, defragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_Redirect,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.packet import Raw
from scapy.plist import PacketList
from scapy.utils import checksum

from tunnel.dataplane import ipedit
from tunnel.dataplane.ipedit import (
    clamp_mss,
    decapsulate_tos,
    dont_fragment,
    fragment_ipv4,
    icmp_too_big,
    outer_tos,
    set_dscp,
    tos_of,
)

SRC4, DST4 = "10.2.0.10", "10.1.0.10"
SRC6, DST6 = "fd00:2::10", "fd00:1::10"
MSS4, MSS6 = 1360, 1340
FULL = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


def v4(l4, *, tos: int = 0, flags: str | int = "DF", options=None, frag: int = 0, ident: int = 1, src: str = SRC4,
       dst: str = DST4) -> bytes:
    ip = IP(src=src, dst=dst, tos=tos, flags=flags, id=ident, frag=frag, options=options or [])
    return bytes(ip / l4)


def v6(l4, *, tc: int = 0, ext=None, src: str = SRC6, dst: str = DST6) -> bytes:
    ip = IPv6(src=src, dst=dst, tc=tc, fl=0xABCDE)  # a flow label next to the traffic class
    for header in ext or []:
        ip = ip / header
    return bytes(ip / l4)


def syn(options, flags: str = "S", size: int = 0):
    return TCP(sport=40000, dport=5061, seq=1000, flags=flags, options=options) / Raw(b"x" * size)


def ipv4_header_ok(packet: bytes) -> bool:
    return checksum(packet[:(packet[0] & 0x0F) * 4]) == 0  # scapy's RFC 1071 over a whole header is 0


def tcp_checksum_ok(packet: bytes) -> bool:
    """scapy recomputes the TCP checksum of the parsed packet from scratch; it must equal the one sent."""
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    sent = parsed[TCP].chksum
    del parsed[TCP].chksum
    rebuilt = IP(bytes(parsed)) if packet[0] >> 4 == 4 else IPv6(bytes(parsed))
    return rebuilt[TCP].chksum == sent


def mss_of(packet: bytes) -> int | None:
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    return dict(parsed[TCP].options).get("MSS")


def diff_positions(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]]


# --- MSS clamping ----------------------------------------------------------------------------------

OPTION_LAYOUTS = [
    [("MSS", 1460)],
    FULL,
    [("NOP", None), ("MSS", 1460), ("NOP", None), ("NOP", None), ("NOP", None)],  # MSS value at an odd offset
    [("NOP", None), ("NOP", None), ("Timestamp", (7, 9)), ("MSS", 8960), ("SAckOK", b"")],
    [("WScale", 14), ("MSS", 1460), ("SAck", (1, 2))],  # value at an odd offset after a 3-byte option
    [("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7), ("MSS", 65535)],
]


@pytest.mark.parametrize("options", OPTION_LAYOUTS)
@pytest.mark.parametrize("flags", ["S", "SA"])
@pytest.mark.parametrize("family", [4, 6])
def test_clamp_lowers_mss_and_keeps_checksum(options, flags: str, family: int) -> None:
    packet = v4(syn(options, flags, 9)) if family == 4 else v6(syn(options, flags, 9))
    limit = MSS4 if family == 4 else MSS6
    out = clamp_mss(packet, MSS4, MSS6)
    assert out is not None and isinstance(out, bytes)
    assert mss_of(out) == limit
    assert tcp_checksum_ok(out)
    if family == 4:
        assert ipv4_header_ok(out) and out[:20] == packet[:20]
    # Only the MSS value and the TCP checksum changed.
    tcp = 20 if family == 4 else 40
    allowed = {tcp + 16, tcp + 17}
    at = bytes(out).find((limit).to_bytes(2, "big"), tcp + 20)
    allowed |= {at, at + 1}
    assert set(diff_positions(packet, out)) <= allowed
    # the other options survive as they were
    parse = IP if family == 4 else IPv6
    others = [[o for o in parse(p)[TCP].options if o[0] != "MSS"] for p in (packet, out)]
    assert others[0] == others[1]


def test_clamp_through_ipv6_extension_headers() -> None:
    ext = [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=[]), IPv6ExtHdrDestOpt()]
    out = clamp_mss(v6(syn(FULL), ext=ext), MSS4, MSS6)
    assert out is not None and mss_of(out) == MSS6 and tcp_checksum_ok(out)


def test_clamp_ipv4_with_ip_options() -> None:
    out = clamp_mss(v4(syn(FULL), options=[IPOption_Router_Alert()]), MSS4, MSS6)
    assert out is not None and mss_of(out) == MSS4 and tcp_checksum_ok(out) and ipv4_header_ok(out)


@pytest.mark.parametrize("packet", [
    v4(syn([("MSS", 1200)])),  # small enough already
    v4(syn([("MSS", MSS4)])),  # equal
    v6(syn([("MSS", MSS6)])),
    v4(syn([("WScale", 7), ("SAckOK", b"")])),  # no MSS option
    v4(syn([])),
    v4(syn(FULL, "A", 100)),  # not a SYN
    v4(syn(FULL, "PA", 100)),
    v6(syn(FULL, "A", 100)),
    v4(syn([("EOL", None), ("MSS", 1460)])),  # MSS after End of Option List is not an option
    v4(UDP(sport=5004, dport=5006) / Raw(b"\x02\x04\x05\xb4" * 8)),
    v6(UDP(sport=5004, dport=5006) / Raw(b"\x02\x04\x05\xb4" * 8)),
    v4(syn(FULL), flags="MF"),  # a fragment
    v6(syn(FULL), ext=[IPv6ExtHdrFragment(m=1)]),
    bytes(IP(src=SRC4, dst=DST4, proto=6, frag=100) / Raw(bytes(syn(FULL)))),
    v4(ICMP() / Raw(bytes(60))),
    b"",
    b"\x45" * 39,
    bytes(60),
    b"\x4f" + bytes(8) + b"\x06" + bytes(30),  # header length 60 in a 40-byte packet
    bytes(IPv6(src=SRC6, dst=DST6, nh=6)) + bytes(syn(FULL)),  # payload length 0: the SYN is outside it
])
def test_clamp_leaves_alone(packet: bytes) -> None:
    assert clamp_mss(packet, MSS4, MSS6) is None


def test_clamp_uses_the_family_limit() -> None:
    assert mss_of(clamp_mss(v4(syn(FULL)), 1000, 1200)) == 1000
    assert mss_of(clamp_mss(v6(syn(FULL)), 1000, 1200)) == 1200
    assert clamp_mss(v4(syn(FULL)), 1460, 1000) is None
    assert clamp_mss(v6(syn(FULL)), 1000, 1460) is None


def malformed(options: bytes) -> bytes:
    """A SYN whose TCP option bytes are given raw (padded to a whole word)."""
    options += bytes(-len(options) & 3)
    tcp = TCP(sport=1, dport=2, flags="S", dataofs=5 + len(options) // 4) / Raw(options)
    return v4(tcp)


@pytest.mark.parametrize("options", [
    b"\x02\x00\x05\xb4",  # length 0
    b"\x02\x01\x05\xb4",  # length 1
    b"\x02\x03\x05\xb4",  # MSS with length 3
    b"\x02\x06\x05\xb4\x00\x00",  # MSS with length 6
    b"\x03\x09\x07\x02\x04\x05\xb4\x00",  # window scale running past the header
    b"\x01\x01\x01\x02",  # a kind with no room for its length
    b"\x08\x00\x02\x04\x05\xb4\x00\x00",  # length 0 before a good MSS: the walk must stop
])
def test_clamp_malformed_options(options: bytes) -> None:
    assert clamp_mss(malformed(options), MSS4, MSS6) is None


def test_clamp_raw_options_are_read_right() -> None:
    """The helper above builds what it says: a well-formed raw MSS option is clamped."""
    out = clamp_mss(malformed(b"\x01\x02\x04\x05\xb4"), MSS4, MSS6)
    assert out is not None and mss_of(out) == MSS4 and tcp_checksum_ok(out)


def test_clamp_truncated_header_length() -> None:
    packet = bytearray(v4(syn(FULL)))
    packet[2:4] = (40).to_bytes(2, "big")  # IP total length ends before the TCP options
    assert clamp_mss(bytes(packet), MSS4, MSS6) is None
    packet = bytearray(v4(syn(FULL)))
    packet[32] = 0xF0  # data offset 60 > segment
    assert clamp_mss(bytes(packet), MSS4, MSS6) is None


# --- fragmentation ---------------------------------------------------------------------------------


def udp_datagram(size: int, **kw) -> bytes:
    return v4(UDP(sport=5004, dport=5006) / Raw(bytes(i & 0xFF for i in range(size))), flags=0, ident=0x1234, **kw)


def reassemble(fragments: list[bytes]) -> bytes:
    """scapy's defragment of the fragments as one datagram."""
    whole = defragment(PacketList([IP(f) for f in fragments]))
    assert len(whole) == 1
    return bytes(whole[0])


def check_fragments(fragments: list[bytes], mtu: int) -> None:
    for i, f in enumerate(fragments):
        parsed = IP(f)
        assert len(f) <= mtu and parsed.len == len(f)
        assert ipv4_header_ok(f)
        if i < len(fragments) - 1:
            assert parsed.flags.MF and (len(f) - parsed.ihl * 4) % 8 == 0
        assert not parsed.flags.DF
    offsets = [IP(f).frag * 8 for f in fragments]
    sizes = [len(f) - IP(f).ihl * 4 for f in fragments]
    assert all(offsets[i] + sizes[i] == offsets[i + 1] for i in range(len(fragments) - 1))


@pytest.mark.parametrize("mtu", [68, 576, 1000, 1280, 1399])
@pytest.mark.parametrize("size", [100, 1372, 3000])
def test_fragments_reassemble(mtu: int, size: int) -> None:
    packet = udp_datagram(size)
    fragments = fragment_ipv4(packet, mtu)
    assert fragments is not None
    if len(packet) <= mtu:
        assert fragments == [packet]
        return
    assert len(fragments) >= 2
    check_fragments(fragments, mtu)
    assert not IP(fragments[-1]).flags.MF and IP(fragments[0]).frag == 0
    assert reassemble(fragments) == packet
    assert all(IP(f).id == 0x1234 and IP(f).ttl == IP(packet).ttl for f in fragments)


def test_only_copied_options_after_the_first() -> None:
    # LSRR (type 0x83) and router alert (0x94) carry the copied flag; record route (0x07) does not.
    options = [IPOption_LSRR(routers=["10.9.9.9"]), IPOption_RR(routers=["0.0.0.0"]), IPOption_Router_Alert()]
    packet = udp_datagram(1000, options=options)
    header = packet[:(packet[0] & 0x0F) * 4]
    fragments = fragment_ipv4(packet, 400)
    check_fragments(fragments, 400)
    assert fragments[0][20:len(header)] == header[20:]
    for f in fragments[1:]:
        parsed = IP(f)
        assert [type(o) for o in parsed.options if o.option] == [IPOption_LSRR, IPOption_Router_Alert]
        assert parsed.options[0].routers == ["10.9.9.9"]
        assert (f[0] & 0x0F) * 4 == 20 + 12  # LSRR 7 + alert 4, padded to 12
    whole = IP(reassemble(fragments))
    assert bytes(whole[UDP]) == bytes(IP(packet)[UDP])


def test_refragmenting_fragments_keeps_offsets() -> None:
    packet = udp_datagram(3000)
    fragments = fragment_ipv4(packet, 1400)
    again = []
    for f in fragments:
        pieces = fragment_ipv4(f, 300)
        check_fragments(pieces, 300)
        assert IP(pieces[0]).frag == IP(f).frag
        assert bool(IP(pieces[-1]).flags.MF) == bool(IP(f).flags.MF)  # MF of the fragment carries over
        again += pieces
    assert all(IP(p).flags.MF for p in again[:-1]) and not IP(again[-1]).flags.MF
    assert reassemble(again) == packet


def test_reserved_bit_and_trailing_bytes() -> None:
    packet = bytes(IP(src=SRC4, dst=DST4, flags="evil") / UDP() / Raw(bytes(1000)))
    fragments = fragment_ipv4(packet + b"pad", 500)
    assert all(IP(f).flags.evil for f in fragments)
    assert reassemble(fragments) == packet


@pytest.mark.parametrize("packet, mtu", [
    (v4(UDP() / Raw(bytes(1400)), flags="DF"), 1000),  # DF set
    (udp_datagram(1400), 27),  # less than 8 bytes of data per fragment
    (udp_datagram(1400, options=[IPOption_Router_Alert()]), 31),
    (v6(UDP() / Raw(bytes(1400))), 1000),
    (udp_datagram(1400)[:1000], 500),  # truncated: total length > bytes
    (b"\x45" + bytes(18), 10),
    (b"", 1000),
])
def test_fragment_refuses(packet: bytes, mtu: int) -> None:
    assert fragment_ipv4(packet, mtu) is None


def test_fragment_smallest_mtu() -> None:
    fragments = fragment_ipv4(udp_datagram(100), 28)
    check_fragments(fragments, 28)
    assert all(len(f) - 20 == 8 for f in fragments[:-1])
    assert reassemble(fragments) == udp_datagram(100)


def test_fragment_malformed_options() -> None:
    packet = bytearray(udp_datagram(1000, options=[IPOption_Router_Alert()]))
    packet[21] = 9  # option length past the header
    assert fragment_ipv4(bytes(packet), 500) is None


def test_fragment_offset_overflow() -> None:
    packet = bytes(IP(src=SRC4, dst=DST4, flags=0, frag=8000) / Raw(bytes(2000)))
    assert fragment_ipv4(packet, 1000) is None


def test_dont_fragment() -> None:
    assert dont_fragment(v4(UDP(), flags="DF"))
    assert not dont_fragment(v4(UDP(), flags=0))
    assert not dont_fragment(v4(UDP(), flags="MF"))
    assert dont_fragment(v6(UDP()))
    assert dont_fragment(b"") and dont_fragment(b"\x45")


# --- ICMP too big ----------------------------------------------------------------------------------


def icmp4_ok(out: bytes) -> bool:
    return ipv4_header_ok(out) and checksum(out[20:]) == 0


@pytest.mark.parametrize("size", [28, 100, 548, 549, 1400])
def test_too_big_ipv4(size: int) -> None:
    packet = v4(UDP(sport=5004, dport=5006) / Raw(bytes(size - 28)), ident=77)
    out = icmp_too_big(packet, 1438, None, None)
    parsed = IP(out)
    assert parsed.src == DST4 and parsed.dst == SRC4 and parsed.ttl == 64 and parsed.proto == 1
    assert parsed.len == len(out) == 28 + min(size, 548) <= 576
    assert icmp4_ok(out)
    icmp = ICMP(out[20:28])
    assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, 1438)
    assert out[28:] == packet[:548]


def test_too_big_ipv4_source_and_tcp() -> None:
    packet = v4(syn(FULL, "A", 1400))
    out = icmp_too_big(packet, 1400, int(ipaddress.IPv4Address("192.0.2.1")), None)
    assert IP(out).src == "192.0.2.1" and IP(out).dst == SRC4 and icmp4_ok(out)
    assert IP(out)[ICMP].nexthopmtu == 1400
    assert out[28:] == packet[:548]


@pytest.mark.parametrize("size", [48, 500, 1232, 1233, 1500])
def test_too_big_ipv6(size: int) -> None:
    packet = v6(UDP(sport=5004, dport=5006) / Raw(bytes(size - 48)))
    out = icmp_too_big(packet, 1418, None, None)
    parsed = IPv6(out)
    assert parsed.src == DST6 and parsed.dst == SRC6 and parsed.hlim == 64 and parsed.nh == 58
    assert parsed.plen == len(out) - 40 and len(out) == 48 + min(size, 1232) <= 1280
    assert parsed[ICMPv6PacketTooBig].mtu == 1418 and parsed[ICMPv6PacketTooBig].code == 0
    assert in6_chksum(58, parsed, out[40:]) == 0
    sent = parsed[ICMPv6PacketTooBig].cksum
    del parsed[ICMPv6PacketTooBig].cksum
    assert IPv6(bytes(parsed))[ICMPv6PacketTooBig].cksum == sent
    assert out[48:] == packet[:1232]


def test_too_big_ipv6_source_and_multicast_destination() -> None:
    # RFC 4443 §2.4(e.3): Packet Too Big is the one error sent for a multicast destination.
    packet = v6(UDP() / Raw(bytes(1400)), dst="ff0e::101")
    out = icmp_too_big(packet, 1280, None, int(ipaddress.IPv6Address("2001:db8::1")))
    assert IPv6(out).src == "2001:db8::1" and IPv6(out).dst == SRC6
    assert in6_chksum(58, IPv6(out), out[40:]) == 0


def test_too_big_answers_queries_and_first_fragments() -> None:
    assert icmp_too_big(v4(ICMP(type=8) / Raw(bytes(1400))), 1000, None, None) is not None
    assert icmp_too_big(v4(Raw(bytes(1400)), flags="MF"), 1000, None, None) is not None
    assert icmp_too_big(v6(ICMPv6EchoRequest() / Raw(bytes(1400))), 1280, None, None) is not None
    ext = [IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(m=1, offset=0)]
    assert icmp_too_big(v6(ICMPv6EchoRequest() / Raw(bytes(1400)), ext=ext), 1280, None, None) is not None


@pytest.mark.parametrize("packet", [
    v4(ICMP(type=3, code=4) / Raw(bytes(1400))),  # an ICMP error
    v4(ICMP(type=11) / Raw(bytes(1400))),
    v4(ICMP(type=5) / Raw(bytes(1400))),
    v4(ICMP(type=42) / Raw(bytes(1400))),  # unknown type: could be an error
    bytes(IP(src=SRC4, dst=DST4, proto=1)),  # ICMP without a type
    v4(UDP() / Raw(bytes(1400)), frag=100, flags=0),  # non-initial fragment
    v4(UDP() / Raw(bytes(1400)), src="0.0.0.0"),
    v4(UDP() / Raw(bytes(1400)), src="0.1.2.3"),
    v4(UDP() / Raw(bytes(1400)), src="127.0.0.1"),
    v4(UDP() / Raw(bytes(1400)), src="224.0.0.5"),
    v4(UDP() / Raw(bytes(1400)), src="240.0.0.1"),  # class E
    v4(UDP() / Raw(bytes(1400)), src="255.255.255.255"),
    v4(UDP() / Raw(bytes(1400)), dst="239.1.1.1"),  # to multicast
    v4(UDP() / Raw(bytes(1400)), dst="255.255.255.255"),  # to broadcast
    v6(ICMPv6DestUnreach() / Raw(bytes(1400))),  # ICMPv6 errors (type < 128)
    v6(ICMPv6PacketTooBig() / Raw(bytes(1400))),
    v6(ICMPv6DestUnreach() / Raw(bytes(1400)), ext=[IPv6ExtHdrDestOpt()]),
    v6(ICMPv6ND_Redirect() / Raw(bytes(1400))),  # RFC 4443 §2.4(e.2)
    v6(UDP() / Raw(bytes(1400)), src="::"),
    v6(UDP() / Raw(bytes(1400)), src="::1"),
    v6(UDP() / Raw(bytes(1400)), src="ff02::1"),
    v6(Raw(bytes(1400)), ext=[IPv6ExtHdrFragment(m=1, offset=100)]),  # non-first fragment
    v4(UDP() / Raw(bytes(1400)))[:1000],  # truncated
    v6(UDP() / Raw(bytes(1400)))[:1000],
    v6(Raw(bytes(40)), ext=[IPv6ExtHdrHopByHop()])[:44],  # extension header past the end
    bytes(IPv6(src=SRC6, dst=DST6, nh=58)),  # ICMPv6 without a type
    bytes(IPv6(src=SRC6, dst=DST6, nh=58)) + b"\x01",  # ... and one beyond the payload length
    b"\x45" + bytes(18),
    b"\x60" + bytes(30),
    b"",
])
def test_too_big_never_answers(packet: bytes) -> None:
    assert icmp_too_big(packet, 1000, None, None) is None


# --- DSCP and ECN ----------------------------------------------------------------------------------

NAMES = {0: "Not-ECT", 1: "ECT(1)", 2: "ECT(0)", 3: "CE"}
CODE = {name: code for code, name in NAMES.items()}
# RFC 6040 §4.2 Figure 4, written out by name: (arriving inner, arriving outer) -> outgoing
FIGURE_4 = {
    "Not-ECT": {"Not-ECT": "Not-ECT", "ECT(0)": "Not-ECT", "ECT(1)": "Not-ECT", "CE": "drop"},
    "ECT(0)": {"Not-ECT": "ECT(0)", "ECT(0)": "ECT(0)", "ECT(1)": "ECT(1)", "CE": "CE"},
    "ECT(1)": {"Not-ECT": "ECT(1)", "ECT(0)": "ECT(1)", "ECT(1)": "ECT(1)", "CE": "CE"},
    "CE": {"Not-ECT": "CE", "ECT(0)": "CE", "ECT(1)": "CE", "CE": "CE"},
}
CELLS = [(i, o) for i in FIGURE_4 for o in FIGURE_4[i]]


def inner(family: int, tos: int) -> bytes:
    l4 = UDP(sport=5004, dport=5006) / Raw(bytes(100))
    return v4(l4, tos=tos) if family == 4 else v6(l4, tc=tos)


@pytest.mark.parametrize("copy_dscp", [False, True])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("inner_ecn, outer_ecn", CELLS)
def test_decapsulation_table(inner_ecn: str, outer_ecn: str, family: int, copy_dscp: bool) -> None:
    inner_dscp, outer_dscp = 46, 10
    packet = inner(family, inner_dscp << 2 | CODE[inner_ecn])
    out = decapsulate_tos(packet, outer_dscp << 2 | CODE[outer_ecn], copy_dscp)
    want = FIGURE_4[inner_ecn][outer_ecn]
    if want == "drop":
        assert out is None
        return
    want_tos = (outer_dscp if copy_dscp else inner_dscp) << 2 | CODE[want]
    parsed = IP(out) if family == 4 else IPv6(out)
    assert (parsed.tos if family == 4 else parsed.tc) == want_tos == tos_of(out)
    if want_tos == tos_of(packet):
        assert out is packet
    if family == 4:
        assert ipv4_header_ok(out)
        assert set(diff_positions(packet, out)) <= {1, 10, 11}
    else:
        assert set(diff_positions(packet, out)) <= {0, 1}
        assert parsed.fl == IPv6(packet).fl and parsed.version == 6
    assert bytes(parsed[UDP]) == bytes((IP(packet) if family == 4 else IPv6(packet))[UDP])


def test_decapsulation_alarm_cells() -> None:
    marked = {(CODE[i], CODE[o]) for i, o in [("Not-ECT", "ECT(0)"), ("Not-ECT", "ECT(1)"), ("Not-ECT", "CE"),
                                               ("CE", "ECT(1)")]}
    assert ipedit.ECN_ALARMS == marked


def test_decapsulation_fast_path_and_malformed() -> None:
    packet = inner(4, 0x02)
    assert decapsulate_tos(packet, 0xB8, False) is packet  # outer Not-ECT, no DSCP copy
    for junk in (b"", b"\x45", b"\x60" + bytes(20), b"\x42" + bytes(30), b"\x15" + bytes(40)):
        assert decapsulate_tos(junk, 3, True) is junk


def test_outer_tos() -> None:
    # RFC 2983 uniform model copies the DSCP; pipe model sets the tunnel's own; ECN copied (RFC 6040 §4.1)
    for ecn in range(4):
        assert outer_tos(46 << 2 | ecn, None) == 46 << 2 | ecn
        assert outer_tos(46 << 2 | ecn, 0) == ecn
        assert outer_tos(0 << 2 | ecn, 34) == 34 << 2 | ecn


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("ecn", range(4))
def test_set_dscp(family: int, ecn: int) -> None:
    packet = inner(family, 8 << 2 | ecn)
    out = set_dscp(packet, 46)
    parsed = IP(out) if family == 4 else IPv6(out)
    assert (parsed.tos if family == 4 else parsed.tc) == 46 << 2 | ecn
    if family == 4:
        assert ipv4_header_ok(out)
    assert set_dscp(out, 46) is out


def test_set_dscp_malformed_same_object() -> None:
    for junk in (b"", b"\x45" * 10, b"\x70" + bytes(60), b"\x44" + bytes(30)):
        assert set_dscp(junk, 46) is junk


def test_tos_of() -> None:
    assert tos_of(inner(4, 0xB9)) == 0xB9
    assert tos_of(inner(6, 0x8B)) == 0x8B
    assert tos_of(b"") == 0 and tos_of(b"\x60" + bytes(10)) == 0 and tos_of(b"\x50" + bytes(60)) == 0


def test_ipedit_is_pure() -> None:
    """Stdlib only and nothing impure (ARCHITECTURE.md ring 1): ipedit imports only __future__."""
    path = pathlib.Path(ipedit.__file__)
    imports = {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
               for alias in node.names}
    imports |= {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
    assert imports == {"__future__"}
