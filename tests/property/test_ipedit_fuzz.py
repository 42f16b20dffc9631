"""tunnel/dataplane/ipedit.py on random and mutated packets: no function ever raises, each returns its documented
kind of value, and on a valid IPv4 header every edit leaves a valid header checksum (checked with
scapy's RFC 1071 implementation). Fragmentation and MSS clamping are also compared with naive models
over random sizes and option layouts."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_LSRR, IPOption_Router_Alert, IPOption_RR, in4_chksum
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.packet import Raw
from scapy.utils import checksum

from tunnel.dataplane.ipedit import (
    _checksum,
    _checksum_replace,
    clamp_mss,
    decapsulate_tos,
    dont_fragment,
    fragment_ipv4,
    icmp_too_big,
    outer_tos,
    set_dscp,
    tos_of,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TCP_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (5, 6)), ("NOP", None), ("WScale", 7), ("SAck", (1, 2))]


def seeds() -> list[bytes]:
    """Valid packets of every shape the functions look into, to mutate."""
    syn = TCP(sport=1, dport=2, flags="S", options=TCP_OPTIONS)
    out = [
        bytes(IP(src="10.2.0.1", dst="10.1.0.1", tos=0xB9) / syn),
        bytes(IP(src="10.2.0.1", dst="10.1.0.1", flags=0, options=[IPOption_LSRR(routers=["1.2.3.4"]), IPOption_RR()])
              / UDP() / Raw(bytes(300))),
        bytes(IP(src="10.2.0.1", dst="10.1.0.1", flags="MF", frag=10) / Raw(bytes(200))),
        bytes(IP(src="10.2.0.1", dst="10.1.0.1") / ICMP(type=3) / Raw(bytes(60))),
        bytes(IPv6(src="fd00::1", dst="fd00::2", tc=0x8B) / syn),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=[])
              / IPv6ExtHdrDestOpt() / syn),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest() / Raw(bytes(100))),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach() / Raw(bytes(100))),
    ]
    return out


SEEDS = seeds()


def exercise(packet: bytes) -> None:
    """Every function on one packet; each result of the documented type."""
    original = bytes(packet)
    clamped = clamp_mss(packet, 1200, 1200)
    assert clamped is None or (isinstance(clamped, bytes) and len(clamped) == len(packet))
    assert isinstance(dont_fragment(packet), bool)
    for mtu in (0, 28, 68, 576, 1280):
        pieces = fragment_ipv4(packet, mtu)
        assert pieces is None or all(isinstance(p, bytes) and len(p) <= max(mtu, len(packet)) for p in pieces)
    for source in (None, 0x0A000001):
        error = icmp_too_big(packet, 1280, source, None if source is None else source)
        assert error is None or (isinstance(error, bytes) and len(error) <= 1280)
    for outer in range(4):
        for copy in (False, True):
            out = decapsulate_tos(packet, 0xB8 | outer, copy)
            assert out is None or isinstance(out, bytes)
    assert isinstance(set_dscp(packet, 46), bytes)
    assert 0 <= tos_of(packet) <= 255
    assert packet == original


@SETTINGS
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(st.sampled_from([b"\x45", b"\x46", b"\x4f", b"\x60", b"\x6f"]), st.binary(min_size=0, max_size=100))
def test_random_bytes_behind_a_version_never_raise(first: bytes, rest: bytes) -> None:
    exercise(first + rest)


NEXT = st.sampled_from([0, 1, 6, 17, 43, 44, 50, 51, 58, 59, 60])
SMALL = st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 0x12, 0x3A, 0x80, 0xFF]), max_size=40).map(bytes)


@st.composite
def tcp_like(draw) -> bytes:
    """A TCP header that reaches the option walk: SYN set, a data offset, options from a small alphabet."""
    head = bytearray(draw(st.binary(min_size=20, max_size=20)))
    head[12] = draw(st.integers(0, 15)) << 4
    head[13] |= 0x02
    return bytes(head) + draw(SMALL)


@st.composite
def plausible(draw) -> bytes:
    """Header-shaped bytes: version, lengths that mostly agree with the data, interesting protocol
    numbers, IPv6 extension-header chains, SYNs; the rest random. Reaches the deep branches that plain
    random bytes almost never do."""
    if draw(st.booleans()):
        head = bytearray(draw(st.binary(min_size=20, max_size=20)))
        head[0] = 0x40 | draw(st.integers(0, 15))
        head[9] = draw(NEXT)
        if draw(st.booleans()):
            head[6] &= 0xC0
            head[7] = 0
        data = head + draw(SMALL) + (draw(tcp_like()) if head[9] == 6 else draw(SMALL))
        total = len(data) if draw(st.booleans()) else draw(st.integers(0, len(data) + 8))
    else:
        head = bytearray(draw(st.binary(min_size=40, max_size=40)))
        head[0] = 0x60 | (head[0] & 0x0F)
        head[6] = draw(NEXT)
        data = head
        for nh in draw(st.lists(NEXT, max_size=3)):
            units = draw(st.integers(0, 2))
            data += bytes((nh, units)) + draw(st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units))
        data += draw(tcp_like()) if draw(st.booleans()) else draw(SMALL)
        total = len(data) - 40 if draw(st.booleans()) else draw(st.integers(0, len(data)))
    at = 2 if data[0] >> 4 == 4 else 4
    data[at:at + 2] = (total & 0xFFFF).to_bytes(2, "big")
    return bytes(data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible())
def test_plausible_headers_never_raise(data: bytes) -> None:
    exercise(data)


def mutate(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    return bytes(data[:cut] if cut is not None else data)


MUTATIONS = dict(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=5),
    cut=st.none() | st.integers(0, 400),
)


@SETTINGS
@given(**MUTATIONS)
def test_mutated_packets_never_raise(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    exercise(mutate(seed, flips, cut))


def header_ok(packet: bytes) -> bool:
    return checksum(packet[:(packet[0] & 0x0F) * 4]) == 0


def fix_checksum(packet: bytes) -> bytes:
    """A mutated IPv4 header with its checksum made right again (by scapy's implementation)."""
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[10:12] = b"\0\0"
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[ihl:]


@SETTINGS
@given(**MUTATIONS, dscp=st.integers(0, 63), outer=st.integers(0, 255), copy=st.booleans())
def test_edits_keep_a_valid_ipv4_header_checksum(seed, flips, cut, dscp: int, outer: int, copy: bool) -> None:
    packet = mutate(seed, flips, cut)
    assume(len(packet) >= 20 and packet[0] >> 4 == 4 and 20 <= (packet[0] & 0x0F) * 4 <= len(packet))
    packet = fix_checksum(packet)
    assert header_ok(packet)
    for out in (clamp_mss(packet, 1000, 1000), set_dscp(packet, dscp), decapsulate_tos(packet, outer, copy)):
        if out is not None:
            assert header_ok(out)
    for piece in fragment_ipv4(packet, 100) or []:
        assert header_ok(piece)
    error = icmp_too_big(packet, 576, None, None)
    assert error is None or (header_ok(error) and checksum(error[20:]) == 0)


@SETTINGS
@given(
    tos=st.integers(0, 255),
    ttl=st.integers(1, 255),
    ident=st.integers(0, 0xFFFF),
    options=st.lists(st.sampled_from(TCP_OPTIONS + [("MSS", 536), ("MSS", 9000), ("EOL", None)]), max_size=6),
    flags=st.sampled_from(["S", "SA", "A", "SE", "SR"]),
    payload=st.binary(max_size=64),
    limit=st.integers(0, 65535),
    v6=st.booleans(),
)
def test_clamp_matches_a_model(tos, ttl, ident, options, flags, payload, limit, v6) -> None:
    """Naive model: a SYN's first MSS option (before any EOL) becomes min(mss, limit); nothing else."""
    tcp = TCP(sport=1234, dport=80, flags=flags, options=options) / Raw(payload)
    if v6:
        packet = bytes(IPv6(src="fd00::1", dst="fd00::2", tc=tos, hlim=ttl) / tcp)
        parsed_in = IPv6(packet)
    else:
        packet = bytes(IP(src="10.0.0.1", dst="10.0.0.2", tos=tos, ttl=ttl, id=ident) / tcp)
        parsed_in = IP(packet)
    first = next((o for o in parsed_in[TCP].options if o[0] in ("MSS", "EOL")), None)
    mss = first[1] if first is not None and first[0] == "MSS" else None
    out = clamp_mss(packet, limit if not v6 else 0, limit if v6 else 0)
    if "S" not in flags or mss is None or mss <= limit:
        assert out is None
        return
    parsed = IPv6(out) if v6 else IP(out)
    before, after = parsed_in[TCP].options, parsed[TCP].options
    at = before.index(first)
    assert after[at] == ("MSS", limit) and after[:at] + after[at + 1:] == before[:at] + before[at + 1:]
    # scapy's pseudo-header checksum over the raw segment (bytes after an EOL included) sums to zero
    assert (in6_chksum(6, parsed, out[40:]) if v6 else in4_chksum(6, parsed, out[20:])) == 0
    assert bytes(parsed[TCP].payload) == payload


@SETTINGS
@given(
    size=st.integers(0, 4000),
    mtu=st.integers(28, 1500),
    with_options=st.booleans(),
    offset=st.integers(0, 100),
    more=st.booleans(),
)
def test_fragments_match_a_model(size: int, mtu: int, with_options: bool, offset: int, more: bool) -> None:
    """Naive model: the fragments' data, placed at their offsets, is the original data at its offset;
    every fragment fits, MF on all but the last (which keeps the original's), offsets in 8-byte units."""
    options = [IPOption_LSRR(routers=["1.2.3.4"]), IPOption_RR(), IPOption_Router_Alert()] if with_options else []
    packet = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF" if more else 0, frag=offset, options=options)
                   / Raw(bytes((i * 7) & 0xFF for i in range(size))))
    ihl = (packet[0] & 0x0F) * 4
    pieces = fragment_ipv4(packet, mtu)
    if mtu - ihl < 8 and len(packet) > mtu:
        assert pieces is None
        return
    assert pieces is not None
    data = bytearray()
    for i, piece in enumerate(pieces):
        parsed = IP(piece)
        assert len(piece) <= max(mtu, len(packet)) and header_ok(piece) and parsed.len == len(piece)
        assert parsed.frag * 8 == offset * 8 + len(data)
        assert bool(parsed.flags.MF) == (i < len(pieces) - 1 or more)
        if i:
            assert all(o.copy_flag for o in parsed.options if o.option)
        data += piece[parsed.ihl * 4:]
        if i < len(pieces) - 1:
            assert len(data) % 8 == 0
    assert bytes(data) == packet[ihl:]


@given(st.integers(0, 255), st.none() | st.integers(0, 63))
def test_outer_tos_model(inner: int, fixed: int | None) -> None:
    out = outer_tos(inner, fixed)
    assert out & 3 == inner & 3
    assert out >> 2 == (inner >> 2 if fixed is None else fixed)


@SETTINGS
@given(st.binary(max_size=64))
def test_checksum_is_rfc_1071(data: bytes) -> None:
    assert _checksum(data) == checksum(data)  # scapy's word-by-word implementation


@SETTINGS
@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12)
    | st.lists(st.sampled_from([0, 0x7FFF, 0x8000, 0xFFFF]), min_size=1, max_size=6),
    at=st.integers(0, 11),
    new=st.integers(0, 0xFFFF) | st.sampled_from([0, 0x7FFF, 0x8000, 0xFFFF]),
)
def test_incremental_update_equals_recomputation(words: list[int], at: int, new: int) -> None:
    """RFC 1624 eqn. 3 gives exactly the checksum computed afresh, including the 0x0000/0xffff corner."""
    at %= len(words)
    data = b"".join(w.to_bytes(2, "big") for w in words)
    changed = data[:2 * at] + new.to_bytes(2, "big") + data[2 * at + 2:]
    assume(any(changed))  # all zeros: -0 and +0 are both right, and no header is all zeros
    assert _checksum_replace(_checksum(data), words[at], new) == checksum(changed)
