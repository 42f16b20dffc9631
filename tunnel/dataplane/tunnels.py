"""A tunnel as the forwarder sees it: its selectors, the policy compiled from the config, its outbound
SA with the volume marks seal_into looks at, and its counters. Plain attributes with __slots__: the
packet path reads them for every packet."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policy.match import Matcher
from policy.model import Action
from policy.prefixes import Network, SubnetSet
from policy.qos import QosClass
from tunnel.dataplane.callquality import CallQuality, CallSettings
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.events import PeerAddress
from tunnel.esp.sa import OutboundSa

NO_LIMIT = 1 << 62  # a volume no SA reaches
NEVER = 1 << 64  # a mark past every limit: nothing more to report for the SA


@dataclass(frozen=True)
class VolumeLimits:
    """When an outbound SA should be replaced (soft) and may no longer be used (hard), in packets sent
    (its sequence number) and inner bytes sealed (RFC 4301 §4.4.2.1); NO_LIMIT for none."""

    soft_packets: int = NO_LIMIT
    soft_bytes: int = NO_LIMIT
    hard_packets: int = NO_LIMIT
    hard_bytes: int = NO_LIMIT


@dataclass(frozen=True)
class TunnelPolicy:
    """What the forwarder does with a tunnel's packets beyond selectors, compiled from the config."""

    firewall: Matcher[Action] | None = None  # None: the selectors alone decide
    qos_rules: Matcher[QosClass] | None = None  # None: trust the inner DSCP; else classify and re-mark
    outer_dscp: int | None = None  # None: copy the inner DSCP outward (RFC 2983 uniform model); else pipe
    decap_copy_dscp: bool = False  # copy the outer DSCP into the inner packet on the way in
    mtu: int = 1438  # largest inner packet the tunnel carries in one ESP packet
    icmp_source4: int | None = None  # source of our ICMP errors; None: the unreachable destination
    icmp_source6: int | None = None
    calls: CallSettings | None = None  # the call-quality observer; None: off


class TunnelState:
    __slots__ = ("name", "peer", "local", "remote", "outbound", "counters", "peer_changes", "asked", "alive_reported",
                 "limits", "byte_base", "soft_reported", "packet_mark", "byte_mark", "firewall", "qos_rules",
                 "outer_dscp", "decap_copy_dscp", "mtu", "mss4", "mss6", "icmp_source4", "icmp_source6", "calls",
                 "clock")

    def __init__(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network],
                 policy: TunnelPolicy | None = None, clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.peer = peer
        self.local = SubnetSet(local)
        self.remote = SubnetSet(remote)
        self.outbound: OutboundSa | None = None
        self.counters = Counters()
        self.peer_changes = 0  # times authenticated ESP arrived from a new address (NAT rebinding)
        self.asked = False  # a NeedSa is outstanding; do not repeat it for every packet
        self.alive_reported = False  # a PeerAlive was reported since the last take
        # The outbound SA's volume limits, and the sequence number and tx_bytes at which seal_into next
        # looks at them (the soft limits, then the hard ones, then never): two compares per packet.
        self.limits = VolumeLimits()
        self.byte_base = 0  # tx_bytes when the outbound SA was installed
        self.soft_reported = False
        self.packet_mark = self.byte_mark = NEVER
        self.clock = clock  # read by the call-quality observer, for media packets only
        self.calls: CallQuality | None = None
        self.apply(policy or TunnelPolicy())

    def apply(self, policy: TunnelPolicy) -> None:
        self.firewall = policy.firewall
        self.qos_rules = policy.qos_rules
        self.outer_dscp = policy.outer_dscp
        self.decap_copy_dscp = policy.decap_copy_dscp
        self.mtu = policy.mtu
        self.mss4 = policy.mtu - 40  # IPv4 + TCP headers
        self.mss6 = policy.mtu - 60  # IPv6 + TCP headers
        self.icmp_source4 = policy.icmp_source4
        self.icmp_source6 = policy.icmp_source6
        settings = policy.calls
        if settings is None:
            self.calls = None
        elif self.calls is None or self.calls.settings != settings:  # a reload that changed it starts afresh
            if self.clock is None:
                raise ValueError("a tunnel that observes calls needs a clock")
            self.calls = CallQuality(settings, self.clock)
