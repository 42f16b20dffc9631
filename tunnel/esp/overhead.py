"""ESP-in-UDP size arithmetic (RFC 4303 §2, RFC 4106 §3, RFC 3948 §2.1)."""

from __future__ import annotations

ESP_HEADER = 8  # SPI + sequence number
GCM_IV = 8  # RFC 4106 §3.1 explicit IV
GCM_ICV = 16  # RFC 4106 §3.3, the 16-octet ICV
ESP_TRAILER = 2  # pad length + next header
UDP_HEADER = 8
IPV4_HEADER = 20
IPV6_HEADER = 40


def inner_mtu(wan_mtu: int, outer_ipv6: bool = False) -> int:
    """Largest inner packet that fits one outer packet of wan_mtu bytes.

    The padded payload plus trailer must be a multiple of 4 (RFC 4303 §2.4), so the answer is
    1438 on a 1500-byte IPv4 path and 1418 over IPv6.
    """
    outer = (IPV6_HEADER if outer_ipv6 else IPV4_HEADER) + UDP_HEADER + ESP_HEADER + GCM_IV + GCM_ICV
    room = wan_mtu - outer
    return (room // 4) * 4 - ESP_TRAILER
