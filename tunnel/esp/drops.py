"""Named reasons for every packet the data plane refuses. Each maps to a counter (and later a metric
label), so an admin can tell an attack (auth failures) from a misconfiguration (selector mismatch)."""

from __future__ import annotations

import enum


class DropReason(enum.IntEnum):
    MALFORMED = 1  # too short, bad IP header, bad padding or trailer after decryption
    UNKNOWN_SPI = 2  # no inbound SA with this SPI
    REPLAY = 3  # sequence number already seen or left of the window (RFC 4303 §3.4.3)
    AUTH_FAILED = 4  # ICV did not verify (RFC 4303 §3.4.4): forged, corrupted or wrong key
    SELECTOR_MISMATCH = 5  # inner addresses outside the SA's traffic selectors (RFC 4301 §5.2)
    NO_SA = 6  # packet for a configured tunnel that has no usable outbound SA: fail closed
    NO_TUNNEL = 7  # outbound packet whose destination no tunnel covers
    SA_EXHAUSTED = 8  # outbound sequence numbers used up; a new SA is needed (RFC 4303 §3.3.3)
    BAD_NEXT_HEADER = 9  # inner protocol other than IPv4 (4) / IPv6 (41)
    DUMMY = 10  # TFC dummy packet, next header 59 (RFC 4303 §2.6): discarded by design
    SEND_FAILED = 11  # the OS refused the datagram or the TUN write (buffer full, no route)
    IKE_UNHANDLED = 12  # IKE message arrived but no IKE handler is configured yet
    LINK_SCOPE = 13  # multicast/link-local packets the kernel itself sends on the TUN (e.g. MLD): never tunnelled
    POLICY_DENY = 14  # a firewall rule (or the tunnel's default action) denies the flow
    QUEUE_FULL = 15  # the QoS class's queue in the gateway was full (drop-tail)
    TOO_BIG = 16  # larger than the tunnel MTU with DF set (or IPv6): an ICMP error went back instead
    ECN_NOT_ECT = 17  # congestion-marked (CE) on the WAN but the inner packet is not ECN-capable (RFC 6040)

    @property
    def label(self) -> str:
        return self.name.lower()
