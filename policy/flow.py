"""Read the addresses of an IP packet straight from its header bytes: the forwarder needs only these to
pick a tunnel and to check selectors, so no packet object is ever built."""

from __future__ import annotations

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
