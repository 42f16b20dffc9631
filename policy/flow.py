"""Read the addresses of an IP packet straight from its header bytes: the forwarder needs only these to
pick a tunnel and to check selectors, so no packet object is ever built. flow_key() adds what policy
matching and QoS need (protocol, ports, TOS, the fragment flag) in the same style: one struct unpack."""

from __future__ import annotations

import struct
from typing import NamedTuple

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40


def ip_version(packet: bytes) -> int:
    return packet[0] >> 4 if packet else 0


def addresses(packet: bytes) -> tuple[int, int, int] | None:
    """(IP version, source, destination) as integers, or None for a packet too short to be IP."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_MIN_HEADER or (packet[0] & 0x0F) < 5:
            return None
        return 4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
    if version == 6:
        if len(packet) < IPV6_HEADER:
            return None
        return 6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
    return None


# --- The flow key: what the policy matcher and the QoS classifier need, read in one pass -----------------

_PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite: ports in the first 4 bytes
# RFC 8200 §4 (and RFC 4302 for AH): extension headers walked to reach the upper-layer protocol.
_HOP_BY_HOP, _ROUTING, _FRAGMENT, _DEST_OPTIONS, _AH = 0, 43, 44, 60, 51
_EXTENSION_HEADERS = frozenset({_HOP_BY_HOP, _ROUTING, _FRAGMENT, _DEST_OPTIONS, _AH})
MAX_EXTENSION_HEADERS = 8
# One unpack per header instead of slices: IPv4 version/IHL, TOS, flags+offset, protocol, src, dst;
# IPv6 version/class/flow label, next header, src and dst as two 64-bit halves each.
_IPV4 = struct.Struct("!BB4xHxB2xII")
_IPV6 = struct.Struct("!I2xBxQQQQ")
_PORTS = struct.Struct("!HH")


class FlowKey(NamedTuple):
    """Field names for flow_key()'s plain tuple: FlowKey(*flow_key(packet))."""

    version: int
    protocol: int
    src: int
    dst: int
    sport: int
    dport: int
    tos: int  # IPv4 TOS / IPv6 traffic class: DSCP << 2 | ECN
    fragment: bool  # a non-first fragment: no ports visible


def flow_key(packet: bytes) -> tuple[int, int, int, int, int, int, int, bool] | None:
    """(version, protocol, src, dst, sport, dport, tos, fragment) from the header bytes, or None.

    Ports are 0 when the protocol has none and for a non-first fragment, which alone has fragment=True; a
    first fragment (offset 0, more-fragments set) carries the ports and has fragment=False. For IPv6 the
    extension headers (hop-by-hop, routing, fragment, destination options, AH; at most 8) are walked and
    protocol is the header after them. In a non-first IPv6 fragment it is the fragment header's next header.
    IPv4 options are skipped by the IHL; IPv4 extension protocols (AH 51) are not walked: protocol is 51.
    None for anything not IPv4/IPv6, too short, or whose headers (or the 4 port bytes) are cut off, and for
    more than 8 extension headers. Accepts bytes, bytearray or memoryview; never raises on any of them.
    """
    n = len(packet)
    if n < 20:
        return None
    b0 = packet[0]
    if b0 >> 4 == 4:
        ihl = (b0 & 0x0F) << 2
        if ihl < 20 or n < ihl:
            return None
        _, tos, frag, protocol, src, dst = _IPV4.unpack_from(packet)
        if frag & 0x1FFF:  # RFC 791: fragment offset != 0
            return 4, protocol, src, dst, 0, 0, tos, True
        if protocol in _PORT_PROTOCOLS:
            if n < ihl + 4:
                return None
            sport, dport = _PORTS.unpack_from(packet, ihl)
            return 4, protocol, src, dst, sport, dport, tos, False
        return 4, protocol, src, dst, 0, 0, tos, False
    if b0 >> 4 != 6 or n < 40:
        return None
    first, protocol, src_hi, src_lo, dst_hi, dst_lo = _IPV6.unpack_from(packet)
    src = (src_hi << 64) | src_lo
    dst = (dst_hi << 64) | dst_lo
    tclass = (first >> 20) & 0xFF
    offset = 40
    walked = 0
    while protocol in _EXTENSION_HEADERS:
        if walked == MAX_EXTENSION_HEADERS or n < offset + 8:
            return None
        walked += 1
        if protocol == _FRAGMENT:  # RFC 8200 §4.5: fixed 8 bytes; offset in the top 13 bits of bytes 2-3
            if ((packet[offset + 2] << 8) | packet[offset + 3]) & 0xFFF8:
                return 6, packet[offset], src, dst, 0, 0, tclass, True
            length = 8
        elif protocol == _AH:  # RFC 4302 §2.2: length in 4-byte units, minus 2
            length = (packet[offset + 1] + 2) << 2
        else:  # RFC 8200 §4.3-4.6: length in 8-byte units, not counting the first 8
            length = (packet[offset + 1] + 1) << 3
        protocol = packet[offset]
        offset += length
    if protocol in _PORT_PROTOCOLS:
        if n < offset + 4:
            return None
        sport, dport = _PORTS.unpack_from(packet, offset)
        return 6, protocol, src, dst, sport, dport, tclass, False
    if n < offset:
        return None
    return 6, protocol, src, dst, 0, 0, tclass, False
