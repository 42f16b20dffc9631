"""TCP segment coalescing for the TUN write path: decrypted in-order segments of one TCP flow become one
GSO super-packet with a virtio_net_hdr, written once; the kernel cuts it back into the same segments.

Why: delivering a packet through the TUN runs the kernel's receive path in the writer's time, and that
was half of the receiving gateway's time per packet (py-spy, iperf3 through the lab). One write per run
of segments pays it once. The rules follow the kernel's own GRO (net/ipv4/tcp_offload.c): same flow,
contiguous sequence numbers, same ACK, window, TCP options, TOS and TTL, flags ACK (PSH may end a run),
every segment but the last of one size, no IP options, fragments or IPv6 extension headers. Each TCP
checksum is verified before a segment joins (the kernel fills in new ones for the segments it cuts, so a
corrupted segment would otherwise leave with a good checksum); one that fails is written alone, as is.

Pure: bytes in, (virtio_net_hdr, packet) pairs out, in an order that keeps every flow's own order.
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10  # struct virtio_net_hdr, the TUN's default vnet header size
NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_TCPV4, GSO_TCPV6 = 1, 4  # VIRTIO_NET_HDR_GSO_*
PLAIN = bytes(VNET_HDR_LEN)  # GSO_NONE, checksums complete: the packet goes up as it is
MAX_TOTAL = 65535  # IPv4 total length / IPv6 payload length is 16 bits
MAX_SEGMENTS = 64
_ACK, _PSH = 0x10, 0x08
_HDR = struct.Struct("=BBHHHH")  # host byte order, as the TUN driver reads it on little-endian hosts


class _Run:
    """An open run of one flow's segments: the first packet's headers and the payload pieces."""

    __slots__ = ("first", "ihl", "hlen", "size", "next_seq", "pieces", "total", "ended", "psh", "index")

    def __init__(self, packet: bytes, ihl: int, hlen: int, size: int, seq: int, index: int) -> None:
        self.first = packet
        self.ihl = ihl  # IP header length (20 or 40)
        self.hlen = hlen  # IP + TCP header length
        self.size = size  # the GSO segment size: payload of the first segment
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.pieces = [packet]
        self.total = len(packet)
        self.ended = False  # a shorter segment or PSH closed it
        self.psh = False
        self.index = index  # where its output goes


def coalesce(packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(virtio_net_hdr, packet) per write, for the IP packets of one receive batch in arrival order."""
    out: list[tuple[bytes, bytes] | _Run] = []
    runs: dict[bytes, _Run] = {}
    for packet in packets:
        parsed = _tcp(packet)
        if parsed is None:
            out.append((PLAIN, packet))
            continue
        key, ihl, hlen, seq, flags = parsed
        size = len(packet) - hlen
        run = runs.get(key)
        if run is not None and _joins(run, packet, hlen, size, seq):
            if len(run.pieces) == 1 and not _checksum_ok(run.first, run.ihl):
                out[run.index] = (PLAIN, run.first)  # the run's first segment is bad: it stays alone
                del runs[key]
            elif _checksum_ok(packet, ihl):
                run.pieces.append(packet[hlen:])
                run.total += size
                run.next_seq = (seq + size) & 0xFFFFFFFF
                if flags & _PSH:
                    run.ended = run.psh = True
                elif size < run.size:
                    run.ended = True
                continue
            else:
                out.append((PLAIN, packet))
                continue
        run = _Run(packet, ihl, hlen, size, seq, len(out))
        if flags & _PSH:
            run.ended = True  # PSH ends a run; it cannot start one that grows
        runs[key] = run
        out.append(run)
    return [item if isinstance(item, tuple) else _finish(item) for item in out]


def _tcp(p: bytes) -> tuple[bytes, int, int, int, int] | None:
    """(flow key, IP header length, IP+TCP header length, seq, flags) of a data-carrying TCP segment
    that may coalesce, else None."""
    n = len(p)
    if n < 40:
        return None
    b0 = p[0]
    if b0 == 0x45:
        if p[9] != 6 or (p[2] << 8 | p[3]) != n or p[6] & 0x3F or p[7]:
            return None  # not TCP, length mismatch, or a fragment (MF or offset)
        ihl = 20
    elif b0 >> 4 == 6:
        if n < 60 or p[6] != 6 or (p[4] << 8 | p[5]) != n - 40:
            return None  # extension headers or a length mismatch
        ihl = 40
    else:
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
    return key, ihl, hlen, int.from_bytes(p[ihl + 4:ihl + 8], "big"), flags


def _joins(run: _Run, packet: bytes, hlen: int, size: int, seq: int) -> bool:
    if run.ended or seq != run.next_seq or hlen != run.hlen or size > run.size:
        return False
    if len(run.pieces) >= MAX_SEGMENTS or run.total + size > MAX_TOTAL:
        return False
    first = run.first
    if run.ihl == 20 and not first[6] & 0x40:
        # Without DF the IP ID matters (RFC 6864): the kernel numbers the segments it cuts first.id + i,
        # so only a run that is numbered that way already may merge. With DF it carries no meaning.
        return (packet[4] << 8 | packet[5]) == ((first[4] << 8 | first[5]) + len(run.pieces)) & 0xFFFF
    return True


def _checksum_ok(p: bytes, ihl: int) -> bool:
    """The TCP checksum over the pseudo header (RFC 793, RFC 8200 §8.1) is right. Sums of 16-bit words
    taken modulo 0xffff: a big-endian integer of the bytes is congruent to the sum of its words."""
    tcp_len = len(p) - ihl
    if ihl == 20:
        # The whole packet: its IPv4 header sums to 0 (mod 0xffff) when its own checksum is right,
        # so what is left is the TCP part; add the pseudo header (addresses, protocol, length).
        words = int.from_bytes(p, "big")
        pseudo = int.from_bytes(p[12:20], "big")
    else:
        words = int.from_bytes(p[40:], "big")
        pseudo = int.from_bytes(p[8:40], "big")
    if tcp_len & 1:
        words <<= 8  # pad to a whole word
    return (words + pseudo + 6 + tcp_len) % 0xFFFF == 0


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
    tcp_len = run.total - ihl
    if ihl == 20:
        header[2:4] = run.total.to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = (0xFFFF - _fold(_word_sum(header[:20]))).to_bytes(2, "big")
        pseudo = _word_sum(header[12:20]) + 6 + tcp_len
        gso = GSO_TCPV4
    else:
        header[4:6] = tcp_len.to_bytes(2, "big")
        pseudo = _word_sum(header[8:40]) + 6 + tcp_len
        gso = GSO_TCPV6
    if run.psh:
        header[ihl + 13] |= _PSH
    # CHECKSUM_PARTIAL convention: the checksum field holds the folded pseudo-header sum, not inverted;
    # the kernel adds the rest for every segment it cuts.
    header[ihl + 16:ihl + 18] = _fold(pseudo).to_bytes(2, "big")
    run.pieces[0] = memoryview(first)[hlen:]
    run.pieces.insert(0, header)
    return _HDR.pack(NEEDS_CSUM, gso, hlen, run.size, ihl, 16), b"".join(run.pieces)


def _word_sum(data: bytes | bytearray) -> int:
    return sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
