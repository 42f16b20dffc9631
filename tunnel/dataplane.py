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

from policy.flow import addresses
from policy.selectors import Network, PrefixTable, SubnetSet
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

    __slots__ = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "keepalives", "drops")

    def __init__(self) -> None:
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = self.keepalives = 0
        self.drops = [0] * _DROP_SLOTS

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1

    def drops_by_reason(self) -> dict[str, int]:
        return {reason.label: self.drops[reason] for reason in DropReason if self.drops[reason]}

    def as_dict(self) -> dict[str, object]:
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "keepalives": self.keepalives,
            "drops": self.drops_by_reason(),
        }


class NeedSaReason(enum.Enum):
    NO_SA = "no_sa"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class NeedSa:
    """The control plane should establish (or replace) the tunnel's outbound SA."""

    tunnel: str
    reason: NeedSaReason


class TunnelState:
    __slots__ = ("name", "peer", "local", "remote", "outbound", "counters", "peer_changes", "_asked")

    def __init__(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network]) -> None:
        self.name = name
        self.peer = peer
        self.local = SubnetSet(local)
        self.remote = SubnetSet(remote)
        self.outbound: OutboundSa | None = None
        self.counters = Counters()
        self.peer_changes = 0  # times authenticated ESP arrived from a new address (NAT rebinding)
        self._asked = False  # a NeedSa is outstanding; do not repeat it for every packet


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

    # -- configuration (control plane) ------------------------------------------------------------
    def add_tunnel(self, name: str, peer: PeerAddress, local: Iterable[Network], remote: Iterable[Network]) -> TunnelState:
        if name in self.tunnels:
            raise ValueError(f"tunnel {name!r} exists")
        remote = list(remote)
        state = TunnelState(name, peer, local, remote)
        entries = self._route_entries + [(net, state) for net in remote]
        self._routes = PrefixTable(entries)  # raises on a remote subnet claimed twice
        self._route_entries = entries
        self.tunnels[name] = state
        return state

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
        """An IP packet read from the TUN: (peer, ESP packet) to send, or None when dropped."""
        parsed = addresses(packet)
        if parsed is None:
            self.counters.drop(DropReason.MALFORMED)
            return None
        version, src, dst = parsed
        tunnel = self._routes.lookup(version, dst)
        if tunnel is None:
            self.counters.drop(DropReason.LINK_SCOPE if _link_scope(version, dst) else DropReason.NO_TUNNEL)
            return None
        counters = tunnel.counters
        if not tunnel.local.contains(version, src):
            counters.drop(DropReason.SELECTOR_MISMATCH)  # the peer would drop it; do not waste the WAN
            return None
        sa = tunnel.outbound
        if sa is None:
            counters.drop(DropReason.NO_SA)
            self._ask(tunnel, NeedSaReason.NO_SA)
            return None
        try:
            esp = sa.seal(packet, _NEXT_HEADER[version])
        except SaExhausted:
            counters.drop(DropReason.SA_EXHAUSTED)
            self._ask(tunnel, NeedSaReason.EXHAUSTED)
            return None
        counters.tx_packets += 1
        counters.tx_bytes += len(packet)
        return tunnel.peer, esp

    def inbound(self, datagram: bytes, peer: PeerAddress) -> bytes | None:
        """A UDP payload from the encapsulation port: the inner IP packet to deliver, or None."""
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
