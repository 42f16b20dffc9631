"""UDP encapsulation demultiplexing, RFC 3948 §2.

One UDP port carries three things: a one-byte NAT keepalive (0xFF), IKE messages behind a four-byte
zero non-ESP marker, and ESP packets (whose SPI is never zero).
"""

from __future__ import annotations

import enum

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"


class Kind(enum.IntEnum):
    ESP = 1
    IKE = 2
    KEEPALIVE = 3
    MALFORMED = 4


def classify(datagram: bytes) -> Kind:
    """What a UDP payload received on the encapsulation port is (RFC 3948 §2.2, §2.3)."""
    n = len(datagram)
    if n == 1:
        return Kind.KEEPALIVE if datagram == NAT_KEEPALIVE else Kind.MALFORMED
    if n < 8:
        return Kind.MALFORMED  # shorter than an ESP header or a marker plus anything
    if datagram[:4] == NON_ESP_MARKER:
        return Kind.IKE
    return Kind.ESP


def ike_payload(datagram: bytes) -> bytes:
    """The IKE message behind the non-ESP marker."""
    return datagram[4:]


def frame_ike(message: bytes) -> bytes:
    """Prefix an IKE message sent on the encapsulation port with the non-ESP marker (RFC 3948 §2.2)."""
    return NON_ESP_MARKER + message
