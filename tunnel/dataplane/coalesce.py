"""Coalescing for the TUN write path: decrypted in-order segments of one TCP flow, or same-size datagrams
of one UDP flow (RTP media, iperf3), become one GSO super-packet with a virtio_net_hdr, written once; the
kernel cuts it back into the same packets (UDP keeps every datagram's boundary).

Why: delivering a packet through the TUN runs the kernel's receive path in the writer's time, and that
was half of the receiving gateway's time per packet (py-spy, iperf3 through the lab). One write per run
of segments pays it once. The rules follow the kernel's own GRO (net/ipv4/tcp_offload.c): same flow,
contiguous sequence numbers, same ACK, window, TCP options, TOS and TTL, flags ACK (PSH may end a run),
every segment but the last of one size, no IP options, fragments or IPv6 extension headers; for UDP the
same without the TCP parts, and never a datagram sent without a checksum (IPv4 checksum 0). Each TCP or
UDP checksum is verified before a packet joins (the kernel fills in new ones for the packets it cuts, so a
corrupted one would otherwise leave with a good checksum); one that fails is written alone, as is.

Pure: bytes in, (virtio_net_hdr, packet) pairs out, in an order that keeps every flow's own order.
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10  # struct virtio_net_hdr, the TUN's default vnet header size
NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 1, 4, 5  # VIRTIO_NET_HDR_GSO_*
TCP, UDP = 6, 17
PLAIN = bytes(VNET_HDR_LEN)  # GSO_NONE, checksums complete: the packet goes up as it is
MAX_TOTAL = 65535  # IPv4 total length / IPv6 payload length is 16 bits
MAX_SEGMENTS = 64
_ACK, _PSH = 0x10, 0x08
_HDR = struct.Struct("=BBHHHH")  # host byte order, as the TUN driver reads it on little-endian hosts


class _Run:
    """An open run of one flow's segments: the first packet's headers and the payload pieces."""

    __slots__ = ("first", "proto", "ihl", "hlen", "size", "next_seq", "pieces", "total", "ended", "psh", "index")

    def __init__(self, packet: bytes, proto: int, ihl: int, hlen: int, size: int, seq: int, index: int) -> None:
        self.first = packet
        self.proto = proto
        self.ihl = ihl  # IP header length (20 or 40)
        self.hlen = hlen  # IP + TCP header length
        self.size = size  # the GSO segment size: payload of the first segment
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.pieces: list[bytes | bytearray | memoryview] = [packet]
        self.total = len(packet)
        self.ended = False  # a shorter segment or PSH closed it
        self.psh = False
        self.index = index  # where its output goes


def coalesce(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(virtio_net_hdr, packet) per write, for the IP packets of one receive batch in arrival order."""
    out: list[tuple[bytes, bytes] | _Run] = []
    runs: dict[bytes, _Run] = {}
    for packet in packets:
        parsed = _parse(packet)
        if parsed is None:
            out.append((PLAIN, packet))
            continue
        key, proto, ihl, hlen, seq, flags = parsed
        size = len(packet) - hlen
        run = runs.get(key)
        if run is not None and _joins(run, packet, hlen, size, seq):
            if len(run.pieces) == 1 and not _checksum_ok(run.first, proto, ihl):
                out[run.index] = (PLAIN, run.first)  # the run's first segment is bad: it stays alone
                del runs[key]
            elif _checksum_ok(packet, proto, ihl):
                run.pieces.append(packet[hlen:])
                run.total += size
                run.next_seq = (seq + size) & 0xFFFFFFFF
                if flags & _PSH:
                    run.ended = run.psh = True
                elif size < run.size:
                    run.ended = True
                continue
            else:
                run.ended = True  # nothing of this flow may overtake the bad packet
                out.append((PLAIN, packet))
                continue
        run = _Run(packet, proto, ihl, hlen, size, seq, len(out))
        if flags & _PSH:
            run.ended = True  # PSH ends a run; it cannot start one that grows
        runs[key] = run
        out.append(run)
    return [item if isinstance(item, tuple) else _finish(item) for item in out]


def _parse(p: bytes) -> tuple[bytes, int, int, int, int, int] | None:
    """(flow key, protocol, IP header length, IP+TCP/UDP header length, TCP seq, TCP flags) of a packet
    that may coalesce, else None."""
    n = len(p)
    if n < 29:
        return None
    b0 = p[0]
    if b0 == 0x45:
        proto = p[9]
        if (proto != TCP and proto != UDP) or (p[2] << 8 | p[3]) != n or p[6] & 0x3F or p[7]:
            return None  # not TCP/UDP, length mismatch, or a fragment (MF or offset)
        ihl = 20
    elif b0 >> 4 == 6:
        proto = p[6]
        if n < 49 or (proto != TCP and proto != UDP) or (p[4] << 8 | p[5]) != n - 40:
            return None  # extension headers or a length mismatch
        ihl = 40
    else:
        return None
    if proto == UDP:
        if (p[ihl + 4] << 8 | p[ihl + 5]) != n - ihl or (ihl == 20 and not (p[26] | p[27])) or n == ihl + 8:
            return None  # UDP length mismatch, sent without a checksum, or empty
        # flow: addresses and ports, plus TOS/TC (and flow label), TTL/hop limit, DF
        if ihl == 20:
            key = b"U" + p[12:24] + p[1:2] + p[8:9] + (b"D" if p[6] & 0x40 else b"")
        else:
            key = b"U" + p[8:44] + p[0:4] + p[7:8]
        return key, UDP, ihl, ihl + 8, 0, 0
    if n < ihl + 20:
        return None
    thl = (p[ihl + 12] >> 4) * 4
    flags = p[ihl + 13]
    hlen = ihl + thl
    if thl < 20 or hlen >= n or (flags != _ACK and flags != _ACK | _PSH):
        return None
    # flow: addresses and ports, plus what must be equal to merge (TOS/TC, TTL, ACK, window, options)
    if ihl == 20:
        key = p[12:24] + p[28:32] + p[34:36] + p[1:2] + p[8:9] + p[40:hlen] + (b"D" if p[6] & 0x40 else b"")
    else:
        key = p[8:44] + p[48:52] + p[54:56] + p[0:4] + p[7:8] + p[60:hlen]
    return key, TCP, ihl, hlen, int.from_bytes(p[ihl + 4:ihl + 8], "big"), flags


def _joins(run: _Run, packet: bytes, hlen: int, size: int, seq: int) -> bool:
    if run.ended or hlen != run.hlen or size > run.size or (run.proto == TCP and seq != run.next_seq):
        return False
    if len(run.pieces) >= MAX_SEGMENTS or run.total + size > MAX_TOTAL:
        return False
    first = run.first
    if run.ihl == 20 and not first[6] & 0x40:
        # Without DF the IP ID matters (RFC 6864): the kernel numbers the segments it cuts first.id + i,
        # so only a run that is numbered that way already may merge. With DF it carries no meaning.
        return (packet[4] << 8 | packet[5]) == ((first[4] << 8 | first[5]) + len(run.pieces)) & 0xFFFF
    return True


def _checksum_ok(p: bytes, proto: int, ihl: int) -> bool:
    """The TCP or UDP checksum over the pseudo header (RFC 793, RFC 768, RFC 8200 §8.1) is right. Sums
    of 16-bit words taken modulo 0xffff: a big-endian integer of the bytes is congruent to the sum of its
    words. The packet's big integer is reduced once, first; the rest is small-integer arithmetic (a third
    of the receiving gateway's checksum time went to adding and shifting the big one, issue 17)."""
    tcp_len = len(p) - ihl
    if ihl == 20:
        # The whole packet: its IPv4 header sums to 0 (mod 0xffff) when its own checksum is right,
        # so what is left is the TCP part; add the pseudo header (addresses, protocol, length).
        words = int.from_bytes(p, "big") % 0xFFFF
        pseudo = int.from_bytes(p[12:20], "big")
    else:
        words = int.from_bytes(p[40:], "big") % 0xFFFF
        pseudo = int.from_bytes(p[8:40], "big")
    if tcp_len & 1:
        words <<= 8  # pad to a whole word
    return (words + pseudo + proto + tcp_len) % 0xFFFF == 0


def _fold(value: int) -> int:
    while value > 0xFFFF:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def _finish(run: _Run) -> tuple[bytes, bytes]:
    first = run.first
    if len(run.pieces) == 1:
        return PLAIN, first
    ihl, hlen = run.ihl, run.hlen
    header = bytearray(first[:hlen])
    proto, l4_len = run.proto, run.total - ihl
    if ihl == 20:
        header[2:4] = run.total.to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = (0xFFFF - _fold(_word_sum(header[:20]))).to_bytes(2, "big")
        pseudo = _word_sum(header[12:20]) + proto + l4_len
    else:
        header[4:6] = l4_len.to_bytes(2, "big")
        pseudo = _word_sum(header[8:40]) + proto + l4_len
    if proto == UDP:
        gso, check_at = GSO_UDP_L4, ihl + 6
        header[ihl + 4:ihl + 6] = l4_len.to_bytes(2, "big")  # the kernel swaps it per datagram, and the sum
    else:
        gso, check_at = (GSO_TCPV4 if ihl == 20 else GSO_TCPV6), ihl + 16
        if run.psh:
            header[ihl + 13] |= _PSH
    # CHECKSUM_PARTIAL convention: the checksum field holds the folded pseudo-header sum, not inverted;
    # the kernel adds the rest for every packet it cuts.
    header[check_at:check_at + 2] = _fold(pseudo).to_bytes(2, "big")
    run.pieces[0] = memoryview(first)[hlen:]
    run.pieces.insert(0, header)
    return _HDR.pack(NEEDS_CSUM, gso, hlen, run.size, ihl, check_at - ihl), b"".join(run.pieces)


def _word_sum(data: bytes | bytearray) -> int:
    return sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
