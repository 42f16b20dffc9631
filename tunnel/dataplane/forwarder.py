"""The pure forwarder: IP packets from the TUN become ESP datagrams to peers, and ESP datagrams from
peers become IP packets for the TUN, with every refusal counted under a named reason.

Fail closed (RFC 4301 §5.1): a packet whose destination a tunnel covers leaves only encrypted with
that tunnel's SA; without a usable SA it is dropped and a NeedSa event asks the control plane for one.
Inbound, the inner source and destination must lie inside the SA's selectors (RFC 4301 §5.2), so a
peer cannot inject traffic for subnets it was not given.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from policy.flow import addresses, flow_key
from policy.match import Matcher
from policy.model import Action
from policy.qos import DSCP_CLASS, QosClass, dscp_of_class
from policy.prefixes import Network, PrefixTable, SubnetSet
from tunnel.dataplane import ipedit
from tunnel.esp.drops import DropReason
from tunnel.esp.encap import Kind, classify, ike_payload
from tunnel.esp.sa import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    EspDrop,
    InboundSa,
    OutboundSa,
    SaExhausted,
)

PeerAddress = tuple  # (host, port) as the socket layer gives it
_NEXT_HEADER = {4: NEXT_HEADER_IPV4, 6: NEXT_HEADER_IPV6}
_DROP_SLOTS = max(DropReason) + 1


class Counters:
    """Plain integers read at scrape time; nothing on the packet path allocates for them."""

    # Events that are not drops: packets fragmented before encryption (DF clear, too big for the
    # tunnel), TCP SYNs whose MSS was lowered, ICMP "too big" errors sent back to a sender.
    SCALARS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "keepalives", "fragmented", "mss_clamped",
               "icmp_too_big")
    __slots__ = (*SCALARS, "drops")

    def __init__(self) -> None:
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = self.keepalives = 0
        self.fragmented = self.mss_clamped = self.icmp_too_big = 0
        self.drops = [0] * _DROP_SLOTS

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1

    def drops_by_reason(self) -> dict[str, int]:
        return {reason.label: self.drops[reason] for reason in DropReason if self.drops[reason]}

    def as_dict(self) -> dict[str, object]:
        return {**{name: getattr(self, name) for name in self.SCALARS}, "drops": self.drops_by_reason()}


class NeedSaReason(enum.Enum):
    NO_SA = "no_sa"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class NeedSa:
    """The control plane should establish (or replace) the tunnel's outbound SA."""

    tunnel: str
    reason: NeedSaReason


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


class TunnelState:
    __slots__ = ("name", "peer", "local", "remote", "outbound", "counters", "peer_changes", "_asked",
                 "firewall", "qos_rules", "outer_dscp", "decap_copy_dscp", "mtu", "mss4", "mss6",
                 "icmp_source4", "icmp_source6")

    def __init__(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network],
                 policy: TunnelPolicy | None = None) -> None:
        self.name = name
        self.peer = peer
        self.local = SubnetSet(local)
        self.remote = SubnetSet(remote)
        self.outbound: OutboundSa | None = None
        self.counters = Counters()
        self.peer_changes = 0  # times authenticated ESP arrived from a new address (NAT rebinding)
        self._asked = False  # a NeedSa is outstanding; do not repeat it for every packet
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


class Forwarder:
    def __init__(self) -> None:
        self.tunnels: dict[str, TunnelState] = {}
        self.counters = Counters()  # drops no tunnel can be blamed for (unknown SPI, no route)
        self._routes: PrefixTable[TunnelState] = PrefixTable()
        self._route_entries: list[tuple[Network, TunnelState]] = []
        self._inbound: dict[int, tuple[TunnelState, InboundSa]] = {}
        self._events: deque[NeedSa] = deque()
        self.ike_inbox: deque[tuple[bytes, PeerAddress]] = deque()
        self.unknown_spi_peers: set[str] = set()  # drained by the control plane
        self.accept_ike = False  # until an IKE handler drains ike_inbox, IKE messages are counted drops
        self.to_tun: list[bytes] = []  # ICMP errors for local senders, written to the TUN by the driver

    # -- configuration (control plane) ------------------------------------------------------------
    def add_tunnel(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network],
                   policy: TunnelPolicy | None = None) -> TunnelState:
        if name in self.tunnels:
            raise ValueError(f"tunnel {name!r} exists")
        remote = list(remote)
        state = TunnelState(name, peer, local, remote, policy)
        entries = self._route_entries + [(net, state) for net in remote]
        self._routes = PrefixTable(entries)  # raises on a remote subnet claimed twice
        self._route_entries = entries
        self.tunnels[name] = state
        return state

    def remove_tunnel(self, name: str) -> None:
        """Forget a tunnel, its routes and its SAs (a reload removed it). Packets of it still queued for
        the scheduler are dropped as no_sa when dequeued, without asking for a new SA."""
        state = self.tunnels.pop(name)
        entries = [(net, s) for net, s in self._route_entries if s is not state]
        self._routes = PrefixTable(entries)
        self._route_entries = entries
        for spi in [spi for spi, (owner, _) in self._inbound.items() if owner is state]:
            del self._inbound[spi]
        state.outbound = None
        state._asked = True

    def install_outbound(self, tunnel: str, sa: OutboundSa) -> None:
        state = self.tunnels[tunnel]
        state.outbound = sa
        state._asked = False

    def remove_outbound(self, tunnel: str) -> None:
        self.tunnels[tunnel].outbound = None

    def install_inbound(self, tunnel: str, sa: InboundSa) -> None:
        if sa.spi in self._inbound:
            raise ValueError(f"inbound SPI {sa.spi:#010x} is in use")
        self._inbound[sa.spi] = (self.tunnels[tunnel], sa)

    def remove_inbound(self, spi: int) -> None:
        self._inbound.pop(spi, None)

    def inbound_tunnel(self, spi: int) -> str | None:
        """The tunnel an inbound SPI belongs to, if any."""
        entry = self._inbound.get(spi)
        return None if entry is None else entry[0].name

    def used_inbound_spis(self) -> list[int]:
        """Inbound SAs on which an authenticated packet has arrived."""
        return [spi for spi, (_, sa) in self._inbound.items() if sa.window.highest > 0]

    def inbound_used(self, spi: int) -> bool:
        """Whether an authenticated packet has arrived on this inbound SA (the peer sends on it)."""
        entry = self._inbound.get(spi)
        return entry is not None and entry[1].window.highest > 0

    def next_event(self) -> NeedSa | None:
        return self._events.popleft() if self._events else None

    # -- packet path ---------------------------------------------------------------------------------
    def outbound(self, packet: bytes) -> tuple[PeerAddress, bytes] | None:
        """One IP packet in, its first ESP packet out (peer, ESP) or None: for callers that look at one
        packet at a time (tests, benchmarks). The data path uses outbound_into, which also carries the
        fragments of a packet too big for the tunnel and the outer TOS."""
        out: list[tuple[bytes, PeerAddress, int]] = []
        self.outbound_into(packet, out)
        return (out[0][1], out[0][0]) if out else None

    def outbound_into(self, packet: bytes, out: list) -> None:
        """An IP packet read from the TUN: appends (ESP packet, peer, outer TOS) for each packet to send;
        nothing when it is dropped (counted)."""
        admitted = self.admit(packet)
        if admitted is None:
            return
        tunnel, packet, _ = admitted
        if len(packet) <= tunnel.mtu:
            self.seal_into(tunnel, packet, out)
        else:
            for piece in self._fit(tunnel, packet):
                self.seal_into(tunnel, piece, out)

    def classify_into(self, packet: bytes, out: list) -> None:
        """Like outbound_into up to encryption, for the priority scheduler: appends (QoS class, tunnel,
        packet) for each packet to queue; seal_into encrypts them once they are dequeued, so sequence
        numbers follow the order packets leave in and the peer sees no reordering."""
        admitted = self.admit(packet)
        if admitted is None:
            return
        tunnel, packet, cls = admitted
        if len(packet) <= tunnel.mtu:
            out.append((cls, tunnel, packet))
        else:
            for piece in self._fit(tunnel, packet):
                out.append((cls, tunnel, piece))

    def admit(self, packet: bytes) -> tuple[TunnelState, bytes, int] | None:
        """Tunnel selection, selector and firewall checks, QoS class (and re-marking), MSS clamping:
        (tunnel, packet as it will be sent, class), or None when dropped (counted)."""
        parsed = addresses(packet)
        if parsed is None:
            self.counters.drop(DropReason.MALFORMED)
            return None
        version, src, dst = parsed
        tunnel = self._routes.lookup(version, dst)
        if tunnel is None:
            self.counters.drop(DropReason.LINK_SCOPE if _link_scope(version, dst) else DropReason.NO_TUNNEL)
            return None
        if not tunnel.local.contains(version, src):
            tunnel.counters.drop(DropReason.SELECTOR_MISMATCH)  # the peer would drop it; do not waste the WAN
            return None
        if tunnel.firewall is None and tunnel.qos_rules is None:
            tos = packet[1] if version == 4 else ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
            cls = DSCP_CLASS[tos >> 2]
        else:
            key = flow_key(packet)
            if key is None:
                tunnel.counters.drop(DropReason.MALFORMED)
                return None
            if tunnel.firewall is not None and tunnel.firewall.lookup_flow(key) is Action.DENY:
                tunnel.counters.drop(DropReason.POLICY_DENY)
                return None
            if tunnel.qos_rules is not None:
                cls = tunnel.qos_rules.lookup_flow(key)
                packet = ipedit.set_dscp(packet, dscp_of_class(cls))  # the trust boundary: re-mark
            else:
                cls = DSCP_CLASS[key[6] >> 2]
        clamped = ipedit.clamp_mss(packet, tunnel.mss4, tunnel.mss6)
        if clamped is not None:
            packet = clamped
            tunnel.counters.mss_clamped += 1
        return tunnel, packet, cls

    def _fit(self, tunnel: TunnelState, packet: bytes) -> list[bytes]:
        """A packet larger than the tunnel MTU: fragmented before encryption when it may be (IPv4, DF
        clear), else dropped with an ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying the
        tunnel MTU back to its sender (RFC 1191, RFC 8201). Never silently."""
        counters = tunnel.counters
        if not ipedit.dont_fragment(packet):
            pieces = ipedit.fragment_ipv4(packet, tunnel.mtu)
            if pieces:
                counters.fragmented += 1
                return pieces
        error = ipedit.icmp_too_big(packet, tunnel.mtu, tunnel.icmp_source4, tunnel.icmp_source6)
        if error is not None:
            self.to_tun.append(error)
            counters.icmp_too_big += 1
        counters.drop(DropReason.TOO_BIG)
        return []

    def seal_into(self, tunnel: TunnelState, packet: bytes, out: list) -> None:
        counters = tunnel.counters
        sa = tunnel.outbound
        if sa is None:
            counters.drop(DropReason.NO_SA)
            self._ask(tunnel, NeedSaReason.NO_SA)
            return
        first = packet[0]
        version = first >> 4
        try:
            esp = sa.seal(packet, _NEXT_HEADER[version])
        except SaExhausted:
            counters.drop(DropReason.SA_EXHAUSTED)
            self._ask(tunnel, NeedSaReason.EXHAUSTED)
            return
        counters.tx_packets += 1
        counters.tx_bytes += len(packet)
        # RFC 2983 uniform model (copy the inner DSCP) or pipe model (the tunnel's own); RFC 6040 §4.1:
        # the ECN field is copied either way.
        tos = packet[1] if version == 4 else ((first & 0x0F) << 4) | (packet[1] >> 4)
        if tunnel.outer_dscp is not None:
            tos = (tunnel.outer_dscp << 2) | (tos & 3)
        out.append((esp, tunnel.peer, tos))

    def inbound(self, datagram: bytes, peer: PeerAddress, tos: int = 0) -> bytes | None:
        """A UDP payload from the encapsulation port, with the outer TOS it arrived with: the inner IP
        packet to deliver, or None."""
        kind = classify(datagram)
        if kind is not Kind.ESP:
            return self._not_esp(kind, datagram, peer)
        entry = self._inbound.get(int.from_bytes(datagram[:4], "big"))
        if entry is None:
            self.counters.drop(DropReason.UNKNOWN_SPI)
            self.unknown_spi_peers.add(peer[0])  # a restarted peer still using old SAs: ask for a new one
            return None
        tunnel, sa = entry
        counters = tunnel.counters
        try:
            next_header, inner = sa.open(datagram)
        except EspDrop as drop:
            counters.drop(drop.reason)
            return None
        parsed = addresses(inner)
        if parsed is None or _NEXT_HEADER[parsed[0]] != next_header:
            counters.drop(_bad_inner(next_header))
            return None
        version, src, dst = parsed
        if not (tunnel.remote.contains(version, src) and tunnel.local.contains(version, dst)):
            counters.drop(DropReason.SELECTOR_MISMATCH)
            return None
        if tos & 3 or tunnel.decap_copy_dscp:
            # RFC 6040 §4.2: congestion marked on the WAN reaches the receiver; CE on a packet that
            # does not speak ECN is dropped.
            decapsulated = ipedit.decapsulate_tos(inner, tos, tunnel.decap_copy_dscp)
            if decapsulated is None:
                counters.drop(DropReason.ECN_NOT_ECT)
                return None
            inner = decapsulated
        if tunnel.firewall is not None:
            key = flow_key(inner)
            if key is None or tunnel.firewall.lookup_flow(key) is Action.DENY:
                counters.drop(DropReason.POLICY_DENY if key is not None else DropReason.MALFORMED)
                return None
        clamped = ipedit.clamp_mss(inner, tunnel.mss4, tunnel.mss6)
        if clamped is not None:
            inner = clamped
            counters.mss_clamped += 1
        counters.rx_packets += 1
        counters.rx_bytes += len(inner)
        known = tunnel.peer
        if peer[0] != known[0] or peer[1] != known[1]:
            # RFC 3948 §3.1 / RFC 7296 §2.23: behind a NAT, reply to where authenticated ESP comes from.
            tunnel.peer = peer[:2]
            tunnel.peer_changes += 1
        return inner

    def _not_esp(self, kind: Kind, datagram: bytes, peer: PeerAddress) -> None:
        if kind is Kind.KEEPALIVE:
            self.counters.keepalives += 1
        elif kind is Kind.IKE:
            if self.accept_ike:
                self.ike_inbox.append((ike_payload(datagram), peer))
            else:
                self.counters.drop(DropReason.IKE_UNHANDLED)
        else:
            self.counters.drop(DropReason.MALFORMED)
        return None

    def _ask(self, tunnel: TunnelState, reason: NeedSaReason) -> None:
        if not tunnel._asked:
            tunnel._asked = True
            self._events.append(NeedSa(tunnel.name, reason))


def _link_scope(version: int, dst: int) -> bool:
    """Multicast or link-local destinations: traffic selectors cover unicast subnets only."""
    if version == 6:
        return dst >> 120 == 0xFF or dst >> 118 == 0x3FA  # ff00::/8, fe80::/10
    return dst >> 28 == 0xE or dst == 0xFFFFFFFF  # 224.0.0.0/4, limited broadcast


def _bad_inner(next_header: int) -> DropReason:
    if next_header == NEXT_HEADER_NONE:
        return DropReason.DUMMY
    if next_header not in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6):
        return DropReason.BAD_NEXT_HEADER
    return DropReason.MALFORMED
