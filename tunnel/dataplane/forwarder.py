"""The pure forwarder: IP packets from the TUN become ESP datagrams to peers, and ESP datagrams from
peers become IP packets for the TUN, with every refusal counted under a named reason.

Fail closed (RFC 4301 §5.1): a packet whose destination a tunnel covers leaves only encrypted with
that tunnel's SA; without a usable SA it is dropped and a NeedSa event asks the control plane for one.
Inbound, the inner source and destination must lie inside the SA's selectors (RFC 4301 §5.2), so a
peer cannot inject traffic for subnets it was not given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from policy.flow import addresses, flow_key
from policy.model import Action
from policy.prefixes import Network, PrefixTable
from policy.qos import DSCP_CLASS, dscp_of_class
from tunnel.dataplane import ipedit
from tunnel.dataplane.callquality import EGRESS, INGRESS
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.events import (
    DataEvent,
    IkeMessage,
    NeedSa,
    NeedSaReason,
    PeerAddress,
    PeerAlive,
    PeerMoved,
    SaInUse,
    UnknownSpi,
    VolumeLimit,
)
from tunnel.dataplane.tunnels import NEVER, TunnelPolicy, TunnelState, VolumeLimits
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

_NEXT_HEADER = {4: NEXT_HEADER_IPV4, 6: NEXT_HEADER_IPV6}
Sealed = list[tuple[bytes, PeerAddress, int]]  # (ESP packet, peer, outer TOS) to send
Classified = list[tuple[int, "TunnelState", bytes]]  # (QoS class, tunnel, packet) to queue
MAX_UNKNOWN_SPI_HOSTS = 64  # distinct hosts reported between two takes; more are only counted


class Forwarder:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        """clock: monotonic seconds, for the tunnels that observe calls (callquality.py)."""
        self.clock = clock
        self.tunnels: dict[str, TunnelState] = {}
        self.counters = Counters()  # drops no tunnel can be blamed for (unknown SPI, no route)
        self._routes: PrefixTable[TunnelState] = PrefixTable()
        self._route_entries: list[tuple[Network, TunnelState]] = []
        self._inbound: dict[int, tuple[TunnelState, InboundSa]] = {}
        self._unused: set[int] = set()  # inbound SPIs no authenticated packet has arrived on yet
        self._events: list[DataEvent] = []
        self._unknown_hosts: set[str] = set()  # UnknownSpi reported since the last take
        self._alive: list[TunnelState] = []  # PeerAlive reported since the last take
        self.ike_pending = False  # an IkeMessage waits in the events: the driver hands it up before more ESP
        self.accept_ike = False  # without an IKE handler (a worker), IKE messages are counted drops
        self.to_tun: list[bytes] = []  # ICMP errors for local senders: data the driver writes to the TUN

    # -- configuration (control plane) ------------------------------------------------------------
    def add_tunnel(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network],
                   policy: TunnelPolicy | None = None) -> TunnelState:
        if name in self.tunnels:
            raise ValueError(f"tunnel {name!r} exists")
        remote = list(remote)
        state = TunnelState(name, peer, local, remote, policy, self.clock)
        self._routes.add((net, state) for net in remote)  # raises on a remote subnet claimed twice
        self._route_entries += [(net, state) for net in remote]
        self.tunnels[name] = state
        return state

    def remove_tunnel(self, name: str) -> None:
        """Forget a tunnel, its routes and its SAs (a reload removed it). Packets of it still queued for
        the scheduler are dropped as no_sa when dequeued, without asking for a new SA."""
        state = self.tunnels.pop(name)
        self._routes.remove(net for net, s in self._route_entries if s is state)
        self._route_entries = [(net, s) for net, s in self._route_entries if s is not state]
        for spi in [spi for spi, (owner, _) in self._inbound.items() if owner is state]:
            self.remove_inbound(spi)
        state.outbound = None
        state.asked = True

    def install_outbound(self, tunnel: str, sa: OutboundSa, limits: VolumeLimits | None = None) -> None:
        """limits: when to report VolumeLimit events for this SA (none: only sequence-number exhaustion)."""
        state = self.tunnels[tunnel]
        state.outbound = sa
        state.asked = False
        state.limits = limits or VolumeLimits()
        state.byte_base = state.counters.tx_bytes
        state.soft_reported = False
        state.packet_mark = state.limits.soft_packets
        state.byte_mark = state.byte_base + state.limits.soft_bytes

    def remove_outbound(self, tunnel: str) -> None:
        self.tunnels[tunnel].outbound = None

    def set_peer(self, tunnel: str, peer: PeerAddress) -> None:
        """Where the tunnel's ESP goes (told by IKE, or by another worker that saw the peer move)."""
        self.tunnels[tunnel].peer = peer

    def install_inbound(self, tunnel: str, sa: InboundSa) -> None:
        if sa.spi in self._inbound:
            raise ValueError(f"inbound SPI {sa.spi:#010x} is in use")
        self._inbound[sa.spi] = (self.tunnels[tunnel], sa)
        self._unused.add(sa.spi)

    def remove_inbound(self, spi: int) -> None:
        self._inbound.pop(spi, None)
        self._unused.discard(spi)

    def outbound_sa(self, tunnel: str) -> OutboundSa | None:
        """The tunnel's outbound SA (its sequence number: HA state sync)."""
        state = self.tunnels.get(tunnel)
        return None if state is None else state.outbound

    def inbound_sa(self, spi: int) -> InboundSa | None:
        """The inbound SA of this SPI (its replay window: HA state sync)."""
        entry = self._inbound.get(spi)
        return None if entry is None else entry[1]

    def inbound_tunnel(self, spi: int) -> str | None:
        """The tunnel an inbound SPI belongs to, if any."""
        entry = self._inbound.get(spi)
        return None if entry is None else entry[0].name

    def take_events(self) -> list[DataEvent]:
        """Everything to report upward since the last take, oldest first (see events.py)."""
        events, self._events = self._events, []
        self.ike_pending = False
        self._unknown_hosts.clear()
        for tunnel in self._alive:
            tunnel.alive_reported = False
        self._alive.clear()
        return events

    # -- packet path ---------------------------------------------------------------------------------
    def outbound(self, packet: bytes) -> tuple[PeerAddress, bytes] | None:
        """One IP packet in, its first ESP packet out (peer, ESP) or None: for callers that look at one
        packet at a time (tests, benchmarks). The data path uses outbound_into, which also carries the
        fragments of a packet too big for the tunnel and the outer TOS."""
        out: Sealed = []
        self.outbound_into(packet, out)
        return (out[0][1], out[0][0]) if out else None

    def outbound_into(self, packet: bytes, out: Sealed) -> None:
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

    def classify_into(self, packet: bytes, out: Classified) -> None:
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
        calls = tunnel.calls
        if calls is not None and packet[9 if version == 4 else 6] == 17:  # UDP: media from the LAN?
            calls.observe(packet, version, INGRESS, cls)
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

    def seal_into(self, tunnel: TunnelState, packet: bytes, out: Sealed) -> None:
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
        if sa.seq >= tunnel.packet_mark or counters.tx_bytes >= tunnel.byte_mark:
            self._volume(tunnel, sa)
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
            self._not_esp(kind, datagram, peer)
            return None
        spi = int.from_bytes(datagram[:4], "big")
        entry = self._inbound.get(spi)
        if entry is None:
            self.counters.drop(DropReason.UNKNOWN_SPI)
            self._unknown_spi(peer[0])  # a restarted peer still using old SAs: ask for a new one
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
        calls = tunnel.calls
        if calls is not None and inner[9 if version == 4 else 6] == 17:  # UDP: media to the LAN?
            tos = inner[1] if version == 4 else ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
            calls.observe(inner, version, EGRESS, DSCP_CLASS[tos >> 2])
        clamped = ipedit.clamp_mss(inner, tunnel.mss4, tunnel.mss6)
        if clamped is not None:
            inner = clamped
            counters.mss_clamped += 1
        counters.rx_packets += 1
        counters.rx_bytes += len(inner)
        known = tunnel.peer
        if (peer[0] != known[0] or peer[1] != known[1]) and sa.window.highest == int.from_bytes(datagram[4:8], "big"):
            # RFC 3948 §3.1 / RFC 7296 §2.23: behind a NAT, reply to where authenticated ESP comes from,
            # but only for the newest packet: a delayed or re-sent older one (inside the replay window)
            # must not pull our traffic back to an address the peer has left.
            tunnel.peer = (peer[0], peer[1])
            tunnel.peer_changes += 1
            self._events.append(PeerMoved(tunnel.name, tunnel.peer))
        if not tunnel.alive_reported:
            tunnel.alive_reported = True
            self._alive.append(tunnel)
            self._events.append(PeerAlive(tunnel.name))
        if self._unused and spi in self._unused:
            self._unused.discard(spi)
            self._events.append(SaInUse(tunnel.name, spi))
        return inner

    def _not_esp(self, kind: Kind, datagram: bytes, peer: PeerAddress) -> None:
        if kind is Kind.KEEPALIVE:
            self.counters.keepalives += 1
        elif kind is Kind.IKE:
            if self.accept_ike:
                self._events.append(IkeMessage(ike_payload(datagram), (peer[0], peer[1])))
                self.ike_pending = True
            else:
                self.counters.drop(DropReason.IKE_UNHANDLED)
        else:
            self.counters.drop(DropReason.MALFORMED)
        return None

    def _ask(self, tunnel: TunnelState, reason: NeedSaReason) -> None:
        if not tunnel.asked:
            tunnel.asked = True
            self._events.append(NeedSa(tunnel.name, reason))

    def _unknown_spi(self, host: str) -> None:
        hosts = self._unknown_hosts
        if host not in hosts and len(hosts) < MAX_UNKNOWN_SPI_HOSTS:
            hosts.add(host)
            self._events.append(UnknownSpi(host))

    def _volume(self, tunnel: TunnelState, sa: OutboundSa) -> None:
        """The outbound SA reached its mark: report the soft limit, then the hard one, once each."""
        hard = tunnel.soft_reported
        if hard:
            tunnel.packet_mark = tunnel.byte_mark = NEVER
        else:
            tunnel.soft_reported = True
            tunnel.packet_mark = tunnel.limits.hard_packets
            tunnel.byte_mark = tunnel.byte_base + tunnel.limits.hard_bytes
        self._events.append(VolumeLimit(tunnel.name, sa.spi, hard))


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
