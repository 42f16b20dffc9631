"""Byte-level edits of the inner IP packets a site gateway forwards: TCP MSS clamping, IPv4 fragmentation,
ICMP "too big" errors back to a sender, and the DSCP/ECN rules of tunnel encapsulation and
decapsulation (RFC 2983, RFC 6040).

Pure and stdlib only. Packets are `bytes` in and new `bytes` out; an input is never mutated. Nothing
here raises on a malformed packet: each function returns its documented "no change" value (None, the
same object, or 0), and the data plane counts what it then drops. The per-packet paths (a non-SYN TCP
segment in clamp_mss, an outer Not-ECT in decapsulate_tos) are decided in a few byte operations.
Checksums are updated incrementally (RFC 1624) where one field changes, computed afresh (RFC 1071) for
headers this module builds.
"""

from __future__ import annotations

_TCP, _ICMP, _ICMPV6 = 6, 1, 58
_SYN = 0x02
_MSS_OPTION = 2  # RFC 9293 §3.2: kind 2, length 4, 16-bit value
_IPV6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options: RFC 8200 §4.3-4.6
_IPV6_FRAGMENT = 44  # RFC 8200 §4.5
_NOT_FRAGMENT, _FIRST_FRAGMENT, _LATER_FRAGMENT = 0, 1, 2
_ERROR_TTL = 64
_ERROR_TOS = 0xC0  # RFC 1812 §4.3.2.5: precedence 6 (INTERNETWORK CONTROL), TOS bits zero (RFC 1122 §3.2.2)
_ICMP4_LIMIT = 576  # RFC 1812 §4.3.2.3: the whole ICMP datagram at most 576 bytes
_ICMP6_LIMIT = 1280  # RFC 4443 §3.2: without exceeding the minimum IPv6 MTU
# RFC 792 / RFC 950 queries; any other type (known errors 3, 4, 5, 11, 12 and anything unknown) is
# treated as an error, never answered (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7).
_ICMP4_QUERIES = frozenset((0, 8, 9, 10, 13, 14, 15, 16, 17, 18))
_ICMPV6_REDIRECT = 137  # RFC 4443 §2.4(e.2)
_LOOPBACK6 = bytes(15) + b"\x01"
_UNSPECIFIED6 = bytes(16)

# RFC 3168 §5 ECN codepoints
NOT_ECT, ECT_1, ECT_0, CE = 0, 1, 2, 3
# RFC 6040 §4.2 Figure 4: the outgoing inner ECN at [inner ECN * 4 + outer ECN]; -1 = drop.
#            outer: Not-ECT ECT(1) ECT(0)  CE
_DECAP = (NOT_ECT, NOT_ECT, NOT_ECT, -1,  # inner Not-ECT
          ECT_1, ECT_1, ECT_1, CE,  # inner ECT(1) (outer ECT(0) is the "(!)" cell)
          ECT_0, ECT_1, ECT_0, CE,  # inner ECT(0)
          CE, CE, CE, CE)  # inner CE
# The "(!!!)" cells of Figure 4, (inner ECN, outer ECN): currently unused combinations, forwarded (or
# dropped) as the table says; RFC 6040 §4.2 says the decapsulator SHOULD log them, so a caller may count.
ECN_ALARMS = frozenset(((NOT_ECT, ECT_1), (NOT_ECT, ECT_0), (NOT_ECT, CE), (CE, ECT_1)))


# --- checksums -------------------------------------------------------------------------------------


def _checksum(data: bytes | bytearray) -> int:
    """RFC 1071 Internet checksum. A big-endian integer of the bytes is congruent to the sum of its
    16-bit words modulo 0xffff; the folded one's-complement sum is that residue, written 0xffff rather
    than 0 unless every byte is zero (so the result matches a word-by-word implementation)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # pad to a whole word
    residue = value % 0xFFFF
    if residue:
        return 0xFFFF - residue
    return 0 if value else 0xFFFF


def _checksum_replace(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), the checksum after one 16-bit word changes."""
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_with_checksum(header: bytearray) -> bytes:
    header[10] = header[11] = 0
    check = _checksum(header)
    header[10], header[11] = check >> 8, check & 0xFF
    return bytes(header)


# --- TCP MSS clamping ------------------------------------------------------------------------------


def clamp_mss(packet: bytes, mss4: int, mss6: int) -> bytes | None:
    """The packet with its TCP MSS option lowered to mss4 (IPv4) or mss6 (IPv6) when it is a SYN (with
    or without ACK) announcing more; None when nothing changes: not TCP, not a SYN, a fragment, no MSS
    option, small enough already, or malformed. Limits are 0..65535."""
    p = packet
    n = len(p)
    if n < 40:
        return None
    b0 = p[0]
    version = b0 >> 4
    if version == 4:
        tcp = (b0 & 0x0F) << 2
        if p[9] != _TCP or n < tcp + 20 or not p[tcp + 13] & _SYN:
            return None
        end = p[2] << 8 | p[3]
        if tcp < 20 or end > n or p[6] & 0x3F or p[7]:
            return None  # bad header length, truncated, or a fragment (MF or an offset)
        return _clamp_tcp(p, tcp, end, mss4)
    if version == 6:
        if n < 60 or (p[6] == _TCP and not p[53] & _SYN):
            return None  # the common case: TCP right after the fixed header, not a SYN
        end = 40 + (p[4] << 8 | p[5])
        if end > n:
            return None
        upper = _ipv6_upper(p, end)
        if upper is None or upper[0] != _TCP or upper[2] != _NOT_FRAGMENT:
            return None
        tcp = upper[1]
        if tcp + 20 > end or not p[tcp + 13] & _SYN:
            return None
        return _clamp_tcp(p, tcp, end, mss6)
    return None


def _clamp_tcp(p: bytes, tcp: int, end: int, limit: int) -> bytes | None:
    """Walk the TCP options (RFC 9293 §3.2) of the segment at p[tcp:end]; lower the first MSS option."""
    header_end = tcp + ((p[tcp + 12] >> 4) << 2)
    if header_end < tcp + 20 or header_end > end:
        return None
    i = tcp + 20
    while i < header_end:
        kind = p[i]
        if kind == 0:  # End of Option List
            return None
        if kind == 1:  # No-Operation
            i += 1
            continue
        if i + 1 >= header_end:
            return None
        length = p[i + 1]
        if length < 2 or i + length > header_end:
            return None  # malformed: give the packet back untouched
        if kind == _MSS_OPTION:
            if length != 4:
                return None
            mss = p[i + 2] << 8 | p[i + 3]
            if mss <= limit:
                return None
            return _rewrite_mss(p, tcp, i + 2, mss, limit)
        i += length
    return None


def _rewrite_mss(p: bytes, tcp: int, at: int, old: int, new: int) -> bytes:
    out = bytearray(p)
    out[at], out[at + 1] = new >> 8, new & 0xFF
    if (at - tcp) & 1:
        # An odd offset in the segment: the value straddles two checksum words, so it adds to the sum
        # byte-swapped (RFC 1071 §2(B), byte order independence).
        old = (old >> 8) | ((old & 0xFF) << 8)
        new = (new >> 8) | ((new & 0xFF) << 8)
    check = _checksum_replace(p[tcp + 16] << 8 | p[tcp + 17], old, new)
    out[tcp + 16], out[tcp + 17] = check >> 8, check & 0xFF
    return bytes(out)


def _ipv6_upper(p: bytes, end: int) -> tuple[int, int, int] | None:
    """(upper-layer protocol, its offset, fragment kind) after the extension headers of the IPv6 packet
    p[:end] (RFC 8200 §4); None when a header runs past the end. Stops at the first header that is not
    hop-by-hop, routing, destination options or fragment (AH, ESP, no next header, transports)."""
    nh, off, fragment = p[6], 40, _NOT_FRAGMENT
    while True:
        if nh in _IPV6_EXT:
            if off + 8 > end:
                return None
            nh, off = p[off], off + ((p[off + 1] + 1) << 3)
        elif nh == _IPV6_FRAGMENT:
            if off + 8 > end:
                return None
            later = (p[off + 2] << 8 | p[off + 3]) & 0xFFF8
            fragment = _LATER_FRAGMENT if later else _FIRST_FRAGMENT
            nh, off = p[off], off + 8
        else:
            return nh, off, fragment


# --- fragmentation ---------------------------------------------------------------------------------


def dont_fragment(packet: bytes) -> bool:
    """The IPv4 DF bit. True for IPv6 (RFC 8200 §5: routers never fragment) and for anything that is not
    an IPv4 header, since it cannot be fragmented either."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bool(packet[6] & 0x40)
    return True


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes] | None:
    """RFC 791 §3.2 fragmentation of an IPv4 packet with DF clear into packets of at most `mtu` bytes:
    every fragment's data but the last is a multiple of 8 bytes; the first keeps all options, the others
    only those with the copied flag; an existing offset and MF (a fragment fragmented again) carry over;
    each header gets a fresh checksum. [packet] when it fits already. None when DF is set, the packet is
    not well-formed IPv4, or mtu leaves less than 8 bytes of data per fragment."""
    p = packet
    n = len(p)
    if n < 20 or p[0] >> 4 != 4 or p[6] & 0x40:
        return None
    ihl = (p[0] & 0x0F) << 2
    total = p[2] << 8 | p[3]
    if ihl < 20 or total < ihl or total > n:
        return None
    if total <= mtu:
        return [p if total == n else p[:total]]
    if mtu - ihl < 8:
        return None
    word = p[6] << 8 | p[7]
    base = (word & 0x1FFF) << 3
    if base + total > 0xFFFF:
        return None  # RFC 791: the reassembled datagram would exceed 65535 bytes
    copied = _copied_options(p, ihl)
    if copied is None:
        return None
    keep = word & 0xA000  # the reserved bit and an existing MF (RFC 791 §3.2: MF of the original)
    later = bytearray(p[:20]) + copied
    out = []
    header, start, chunk = bytearray(p[:ihl]), ihl, (mtu - ihl) & ~7
    view = memoryview(p)
    while start < total:
        stop = min(start + chunk, total)
        header[0] = 0x40 | (len(header) >> 2)
        length = len(header) + stop - start
        header[2], header[3] = length >> 8, length & 0xFF
        flags = keep | (0x2000 if stop < total else 0) | ((base + start - ihl) >> 3)
        header[6], header[7] = flags >> 8, flags & 0xFF
        out.append(b"".join((_ipv4_with_checksum(header), view[start:stop])))
        header, start, chunk = later, stop, (mtu - len(later)) & ~7
    return out


def _copied_options(p: bytes, ihl: int) -> bytes | None:
    """The options of an IPv4 header with the copied flag set (RFC 791 §3.1), padded with End of Option
    List to a whole 32-bit word; None when an option's length is malformed."""
    out = bytearray()
    i = 20
    while i < ihl:
        kind = p[i]
        if kind == 0:  # End of Option List
            break
        if kind == 1:  # No Operation: not copied
            i += 1
            continue
        if i + 1 >= ihl:
            return None
        length = p[i + 1]
        if length < 2 or i + length > ihl:
            return None
        if kind & 0x80:
            out += p[i:i + length]
        i += length
    out += bytes(-len(out) & 3)
    return bytes(out)


# --- ICMP "too big" --------------------------------------------------------------------------------


def icmp_too_big(packet: bytes, mtu: int, source4: int | None, source6: int | None) -> bytes | None:
    """The error a router returns for a packet it cannot forward because it exceeds `mtu`: ICMP
    destination unreachable, fragmentation needed (RFC 792, RFC 1191 §4) or ICMPv6 Packet Too Big
    (RFC 4443 §3.2), from source4/source6 (the packet's destination when None) to the packet's source.
    None when the rules forbid an answer (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)) or the
    packet is malformed."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        return _too_big4(packet, mtu, source4)
    if version == 6 and len(packet) >= 40:
        return _too_big6(packet, mtu, source6)
    return None


def _too_big4(p: bytes, mtu: int, source: int | None) -> bytes | None:
    ihl = (p[0] & 0x0F) << 2
    total = p[2] << 8 | p[3]
    if ihl < 20 or total < ihl or total > len(p):
        return None
    # RFC 1122 §3.2.2: not for a non-initial fragment; not to a source that is no single host (zero
    # network, loopback, multicast, class E, broadcast); not for a datagram to multicast or broadcast.
    if p[6] & 0x1F or p[7] or p[12] == 0 or p[12] == 127 or p[12] >= 224 or p[16] >= 224:
        return None
    if p[9] == _ICMP and (total == ihl or p[ihl] not in _ICMP4_QUERIES):
        return None  # never an error about an ICMP error (or an ICMP message whose type is unknown)
    quote = p[:min(total, _ICMP4_LIMIT - 28)]  # RFC 1812 §4.3.2.3
    # RFC 1191 §4: type 3, code 4, checksum, 16 unused bits, the next-hop MTU
    message = bytearray(b"\x03\x04\x00\x00\x00\x00") + (mtu & 0xFFFF).to_bytes(2, "big") + quote
    check = _checksum(message)
    message[2], message[3] = check >> 8, check & 0xFF
    src = source.to_bytes(4, "big") if source is not None else p[16:20]
    length = 20 + len(message)
    # ID: a pure function keeps no counter; the offending packet's ID varies per packet, and the error
    # (at most 576 bytes) is never fragmented in practice.
    header = bytearray((0x45, _ERROR_TOS, length >> 8, length & 0xFF, p[4], p[5], 0, 0, _ERROR_TTL, _ICMP, 0, 0))
    header += src + p[12:16]
    return _ipv4_with_checksum(header) + message


def _too_big6(p: bytes, mtu: int, source: int | None) -> bytes | None:
    end = 40 + (p[4] << 8 | p[5])
    if end > len(p):
        return None
    origin = p[8:24]
    # RFC 4443 §2.4(e.6): not to a source that is no single node; loopback never crosses a router
    # (RFC 4291 §2.5.3). A multicast destination is answered: Packet Too Big is the exception (e.3).
    if p[8] == 0xFF or origin == _UNSPECIFIED6 or origin == _LOOPBACK6:
        return None
    upper = _ipv6_upper(p, end)
    if upper is None:
        return None
    nh, off, fragment = upper
    if fragment == _LATER_FRAGMENT:
        return None  # its ICMPv6 type is unknowable; the first fragment, never smaller, gets the answer
    if nh == _ICMPV6 and (off >= end or p[off] < 128 or p[off] == _ICMPV6_REDIRECT):
        return None  # RFC 4443 §2.4(e.1), (e.2): not about an error or a redirect
    quote = p[:min(end, _ICMP6_LIMIT - 48)]
    length = 8 + len(quote)
    # RFC 4443 §3.2: type 2, code 0, checksum, MTU (32 bits)
    message = bytearray(b"\x02\x00\x00\x00") + (mtu & 0xFFFFFFFF).to_bytes(4, "big") + quote
    src = source.to_bytes(16, "big") if source is not None else p[24:40]
    # RFC 4443 §2.3: the checksum covers the RFC 8200 §8.1 pseudo-header
    pseudo = src + origin + length.to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    check = _checksum(pseudo + message)
    message[2], message[3] = check >> 8, check & 0xFF
    header = bytes((0x60 | _ERROR_TOS >> 4, (_ERROR_TOS & 0x0F) << 4, 0, 0, length >> 8, length & 0xFF,
                    _ICMPV6, _ERROR_TTL))
    return b"".join((header, src, origin, message))


# --- DSCP and ECN ----------------------------------------------------------------------------------


def tos_of(packet: bytes) -> int:
    """The IPv4 TOS / IPv6 traffic class octet (DSCP << 2 | ECN); 0 when malformed."""
    tos = _traffic_class(packet)
    return tos if tos >= 0 else 0


def outer_tos(inner_tos: int, fixed_dscp: int | None) -> int:
    """The outer header's TOS for an inner packet's: RFC 2983 §3 uniform model (fixed_dscp None: the
    inner DSCP is copied so the WAN can honour it) or pipe model (the tunnel's own fixed_dscp); the ECN
    field is copied either way, CE included (RFC 6040 §4.1 normal mode)."""
    dscp = inner_tos >> 2 if fixed_dscp is None else fixed_dscp
    return (dscp & 0x3F) << 2 | (inner_tos & 3)


def decapsulate_tos(inner: bytes, outer_tos: int, copy_dscp: bool) -> bytes | None:
    """RFC 6040 §4.2 decapsulation: the inner packet's ECN field becomes the Figure 4 entry for its own
    ECN and the outer's (congestion marked on the WAN reaches the receiver); with copy_dscp the outer
    DSCP is copied in too (RFC 2983 uniform model). The same `inner` object when nothing changes (also
    when malformed), a rewritten packet, or None: drop (inner Not-ECT, outer CE)."""
    outer_ecn = outer_tos & 3
    if not outer_ecn and not copy_dscp:
        return inner  # the Not-ECT column changes nothing
    tos = _traffic_class(inner)
    if tos < 0:
        return inner
    ecn = _DECAP[(tos & 3) << 2 | outer_ecn]
    if ecn < 0:
        return None
    new = ((outer_tos if copy_dscp else tos) & 0xFC) | ecn
    return inner if new == tos else _with_traffic_class(inner, new)


def set_dscp(packet: bytes, dscp: int) -> bytes:
    """The packet re-marked with DSCP `dscp` (RFC 2474 §3), its ECN field kept; the same object when it
    is marked so already or malformed."""
    tos = _traffic_class(packet)
    if tos < 0:
        return packet
    new = (dscp & 0x3F) << 2 | (tos & 3)
    return packet if new == tos else _with_traffic_class(packet, new)


def _traffic_class(p: bytes) -> int:
    """The TOS / traffic class octet of an IPv4 or IPv6 header, -1 when p does not start with one."""
    n = len(p)
    if n >= 20:
        b0 = p[0]
        if b0 >> 4 == 4:
            ihl = (b0 & 0x0F) << 2
            return p[1] if 20 <= ihl <= n else -1
        if b0 >> 4 == 6 and n >= 40:
            return (b0 & 0x0F) << 4 | p[1] >> 4
    return -1


def _with_traffic_class(p: bytes, tos: int) -> bytes:
    """p (a header _traffic_class accepted) with a new TOS / traffic class octet. One mutable copy is
    cheaper here than joining slices."""
    out = bytearray(p)
    if p[0] >> 4 == 4:
        word = p[0] << 8
        check = _checksum_replace(p[10] << 8 | p[11], word | p[1], word | tos)  # RFC 1624
        out[1], out[10], out[11] = tos, check >> 8, check & 0xFF
    else:
        # IPv6 (RFC 8200 §3): the class straddles the first two bytes; no header checksum.
        out[0], out[1] = (p[0] & 0xF0) | tos >> 4, (tos & 0x0F) << 4 | (p[1] & 0x0F)
    return bytes(out)
