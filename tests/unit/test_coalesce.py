"""TCP coalescing for GSO writes to the TUN, checked against scapy: what the kernel would cut a
super-packet into (re-segmented here with scapy from the virtio_net_hdr) must be exactly the segments that
went in, flow by flow and in order; anything that may not merge passes through untouched."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from tunnel.dataplane.coalesce import GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, MAX_SEGMENTS, NEEDS_CSUM, PLAIN, coalesce

TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]


def segment(seq: int, size: int, *, v6: bool = False, flags: str = "A", sport: int = 40000, ip_id: int = 1,
            options=TS, ack: int = 7, window: int = 500, tos: int = 0, fill: int = 0) -> bytes:
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=ack, flags=flags, window=window, options=options)
    data = Raw(bytes((fill + i) & 0xFF for i in range(size)))
    if v6:
        return bytes(IPv6(src="fd00:2::10", dst="fd00:1::10", tc=tos) / tcp / data)
    return bytes(IP(src="10.2.0.10", dst="10.1.0.10", id=ip_id, flags="DF", tos=tos) / tcp / data)


def stream(n: int, size: int = 1386, seq: int = 1000, **kw) -> list[bytes]:
    return [segment(seq + i * size, size, ip_id=1 + i, fill=i, **kw) for i in range(n)]


def datagram(size: int, *, v6: bool = False, sport: int = 5004, ip_id: int = 1, fill: int = 0, df: bool = True,
             chksum: int | None = None) -> bytes:
    udp = UDP(sport=sport, dport=5006, chksum=chksum) / Raw(bytes((fill + i) & 0xFF for i in range(size)))
    if v6:
        return bytes(IPv6(src="fd00:2::10", dst="fd00:1::10") / udp)
    return bytes(IP(src="10.2.0.10", dst="10.1.0.10", id=ip_id, flags="DF" if df else 0) / udp)


def media(n: int, size: int = 1200, **kw) -> list[bytes]:
    return [datagram(size, ip_id=1 + i, fill=i, **kw) for i in range(n)]


def resegment(hdr: bytes, packet: bytes) -> list[bytes]:
    """What the kernel makes of a write: the packet as is, or the GSO segments, rebuilt with scapy."""
    flags, gso, hlen, size, start, offset = struct.unpack("=BBHHHH", hdr)
    if gso == 0:
        assert hdr == PLAIN
        return [packet]
    assert flags == NEEDS_CSUM and start in (20, 40)
    v6 = start == 40
    big = IPv6(packet) if v6 else IP(packet)
    payload = packet[hlen:]
    out = []
    if gso == GSO_UDP_L4:
        assert offset == 6
        for i, at in enumerate(range(0, len(payload), size)):
            head = big.copy()
            head[UDP].remove_payload()
            head[UDP].len, head[UDP].chksum = None, None
            if v6:
                head.plen = None
            else:
                head.id, head.len, head.chksum = (big.id + i) & 0xFFFF, None, None
            out.append(bytes(head / Raw(payload[at:at + size])))
        return out
    assert offset == 16 and gso == (GSO_TCPV6 if v6 else GSO_TCPV4)
    for i, at in enumerate(range(0, len(payload), size)):
        head = big.copy()
        head[TCP].remove_payload()
        head[TCP].seq = (big[TCP].seq + at) & 0xFFFFFFFF
        head[TCP].chksum = None
        last = at + size >= len(payload)
        if not last:
            head[TCP].flags = big[TCP].flags & ~0x08  # PSH only on the last
        if v6:
            head.plen = None
        else:
            head.id, head.len, head.chksum = (big.id + i) & 0xFFFF, None, None
        out.append(bytes(head / Raw(payload[at:at + size])))
    return out


def flatten(writes: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [seg for hdr, packet in writes for seg in resegment(hdr, packet)]


def without_df_ids(packets: list[bytes]) -> list[bytes]:
    """IPv4 packets with DF set, their ID zeroed (and header checksum fixed): RFC 6864 gives the ID of an
    atomic datagram no meaning, and the kernel renumbers the segments it cuts."""
    out = []
    for p in packets:
        if p[0] >> 4 == 4 and p[6] & 0x40:
            ip = IP(p)
            ip.id, ip.chksum = 0, None
            p = bytes(ip)
        out.append(p)
    return out


def test_a_stream_becomes_one_write_and_comes_back_identical() -> None:
    packets = stream(20)
    writes = coalesce(packets)
    assert len(writes) == 1 and writes[0][0] != PLAIN
    assert flatten(writes) == packets


def test_ipv6_stream() -> None:
    packets = stream(10, size=1366, v6=True)
    writes = coalesce(packets)
    assert len(writes) == 1
    assert struct.unpack("=BBHHHH", writes[0][0])[1] == GSO_TCPV6
    assert flatten(writes) == packets


def test_shorter_last_segment_and_psh_end_the_run() -> None:
    packets = stream(5) + [segment(1000 + 5 * 1386, 300, ip_id=6, flags="PA")]
    writes = coalesce(packets)
    assert len(writes) == 1 and flatten(writes) == packets
    nxt = stream(3, seq=1000 + 5 * 1386 + 300)
    writes = coalesce(packets + nxt)
    assert len(writes) == 2 and flatten(writes) == packets + nxt  # nothing joins after PSH


def test_interleaved_flows_keep_their_own_order() -> None:
    a, b = stream(6, sport=1111), stream(6, sport=2222, size=1000)
    mixed = [p for pair in zip(a, b) for p in pair]
    writes = coalesce(mixed)
    assert len(writes) == 2
    out = flatten(writes)
    assert [p for p in out if TCP(p[20:]).sport == 1111] == a
    assert [p for p in out if TCP(p[20:]).sport == 2222] == b


def test_what_may_not_merge_passes_through_untouched() -> None:
    base = 1000
    cases = {
        "gap in sequence numbers": [segment(base, 1000), segment(base + 1001, 1000)],
        "different ACK": [segment(base, 1000), segment(base + 1000, 1000, ack=8)],
        "different window": [segment(base, 1000), segment(base + 1000, 1000, window=501)],
        "different timestamps": [segment(base, 1000), segment(base + 1000, 1000,
                                                             options=[("Timestamp", (1001, 2000))])],
        "different TOS (an ECN mark)": [segment(base, 1000), segment(base + 1000, 1000, tos=3)],
        "SYN": [segment(base, 0, flags="S"), segment(base + 1, 1000)],
        "FIN": [segment(base, 1000, flags="FA"), segment(base + 1000, 1000)],
        "pure ACKs": [segment(base, 0), segment(base, 0)],
        "larger after smaller": [segment(base, 500), segment(base + 500, 1000)],
        "UDP without DF, IP IDs not consecutive": [datagram(1000, df=False, ip_id=1)] * 2,
        "UDP sent without a checksum": [datagram(1000, chksum=0, ip_id=i) for i in (1, 2)],
        "UDP larger after smaller": [datagram(500), datagram(1000, ip_id=2)],
        "UDP different ports": [datagram(1000), datagram(1000, sport=5005, ip_id=2)],
        "ICMP": [bytes(IP(src="10.2.0.10", dst="10.1.0.10") / Raw(b"\x08\0\0\0" + b"x" * 100))] * 2,
    }
    for name, packets in cases.items():
        writes = coalesce(packets)
        assert [h for h, _ in writes] == [PLAIN] * len(packets), name
        assert [p for _, p in writes] == packets, name


def test_fragments_and_ip_options_are_left_alone() -> None:
    frag = IP(src="10.2.0.10", dst="10.1.0.10", flags="MF") / TCP(flags="A", seq=1) / Raw(b"x" * 1000)
    opts = IP(src="10.2.0.10", dst="10.1.0.10", options=[b"\x01\x01\x01\x00"]) / TCP(flags="A") / Raw(b"x" * 100)
    packets = [bytes(frag), bytes(frag), bytes(opts), bytes(opts)]
    assert coalesce(packets) == [(PLAIN, p) for p in packets]


def test_a_segment_with_a_bad_checksum_is_not_merged() -> None:
    """The kernel would compute fresh checksums for a merged run: a corrupted segment must not get one."""
    packets = stream(6)
    bad = bytearray(packets[3])
    bad[-1] ^= 0xFF
    packets[3] = bytes(bad)
    writes = coalesce(packets)
    assert (PLAIN, packets[3]) in writes
    assert flatten(writes) == packets
    first_bad = stream(3)
    corrupt = bytearray(first_bad[0])
    corrupt[100] ^= 1
    first_bad[0] = bytes(corrupt)
    writes = coalesce(first_bad)
    assert writes[0] == (PLAIN, first_bad[0]) and flatten(writes) == first_bad


def test_odd_sized_segments_are_checked_right() -> None:
    packets = stream(4, size=1385)  # odd TCP length: the checksum pads a zero byte
    assert len(coalesce(packets)) == 1 and flatten(coalesce(packets)) == packets


def test_runs_stop_at_the_size_and_count_limits() -> None:
    packets = stream(MAX_SEGMENTS + 5, size=500)
    writes = coalesce(packets)
    assert len(writes) == 2 and flatten(writes) == packets
    big = stream(60, size=1386)  # 60 * 1386 > 65535 bytes
    writes = coalesce(big)
    assert all(len(p) <= 65535 for _, p in writes) and len(writes) == 2 and flatten(writes) == big


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1111, 2222, 3333, 4444]), st.integers(1, 1400),
                          st.sampled_from(["A", "A", "A", "PA", "FA"]), st.booleans(), st.booleans()),
                max_size=40))
def test_resegmenting_the_writes_gives_back_every_packet_per_flow_in_order(spec) -> None:
    seqs = {1111: 1, 2222: 2**32 - 3000, 3333: 99, 4444: 0}  # one flow wraps its sequence numbers; 4444 is UDP
    packets = []
    for sport, size, flags, gap, corrupt in spec:
        seq = seqs[sport] + (7 if gap else 0)
        if sport == 4444:
            p = datagram(size if gap else 1000, sport=sport, ip_id=len(packets), fill=len(packets))
        else:
            p = segment(seq & 0xFFFFFFFF, size, sport=sport, flags=flags, ip_id=len(packets), fill=len(packets))
        seqs[sport] = seq + size
        if corrupt:
            b = bytearray(p)
            b[-1] ^= 0x55
            p = bytes(b)
        packets.append(p)
    out, packets = without_df_ids(flatten(coalesce(packets))), without_df_ids(packets)
    assert sorted(out) == sorted(packets)
    for sport in seqs:
        assert [p for p in out if UDP(p[20:]).sport == sport] == [p for p in packets if UDP(p[20:]).sport == sport]


def test_without_df_only_consecutive_ip_ids_merge() -> None:
    def seg(seq: int, ip_id: int) -> bytes:
        return bytes(IP(src="10.2.0.10", dst="10.1.0.10", id=ip_id) / TCP(sport=1, dport=2, seq=seq, flags="A")
                     / Raw(b"z" * 1000))
    numbered = [seg(1000 * i, 50 + i) for i in range(4)]
    writes = coalesce(numbered)
    assert len(writes) == 1 and flatten(writes) == numbered
    jumbled = [seg(0, 50), seg(1000, 52), seg(2000, 53)]
    writes = coalesce(jumbled)
    assert [h == PLAIN for h, _ in writes] == [True, False] and flatten(writes) == jumbled


def test_a_udp_media_stream_becomes_one_write_with_every_datagram_kept() -> None:
    packets = media(30) + [datagram(700, ip_id=31, fill=9)]  # a shorter last one joins, then ends the run
    writes = coalesce(packets)
    assert len(writes) == 1
    flags, gso, hlen, size, start, offset = struct.unpack("=BBHHHH", writes[0][0])
    assert (gso, hlen, size, start, offset) == (GSO_UDP_L4, 28, 1200, 20, 6)
    assert flatten(writes) == packets
    v6 = [datagram(1000, v6=True, fill=i) for i in range(5)]
    writes = coalesce(v6)
    assert len(writes) == 1 and flatten(writes) == v6


def test_udp_with_a_bad_checksum_is_written_alone() -> None:
    packets = media(5)
    bad = bytearray(packets[2])
    bad[40] ^= 0x10
    packets[2] = bytes(bad)
    writes = coalesce(packets)
    assert (PLAIN, packets[2]) in writes and flatten(writes) == packets


def test_udp_runs_stop_at_the_segment_limit() -> None:
    packets = media(MAX_SEGMENTS + 3, size=200)
    writes = coalesce(packets)
    assert len(writes) == 2 and flatten(writes) == packets
