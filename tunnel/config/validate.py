"""Cross-field checks: rules no single value can break, only a combination.

They run on whatever parts of the file parsed cleanly (a missing key file in one tunnel must not hide an
overlap in another) and report at the later of the conflicting nodes, the one an admin just added.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.config.model import (
    CallQuality,
    Endpoint,
    Firewall,
    GatewayQos,
    Ike,
    IPNetwork,
    ManualKeys,
    PeerEndpoint,
    StartMode,
    TunDevice,
    TunnelQos,
)
from tunnel.config.yamlnodes import Doc, quote
from tunnel.dataplane.scheduler import DEFAULT_LIMITS
from tunnel.esp.overhead import inner_mtu
from tunnel.ike.identity import PeerIdentity

IPV6_MIN_MTU = 1280  # RFC 8200 §5


@dataclass(frozen=True)
class IkeParts:
    """A tunnel's `ike:` section; a field is None when it failed to parse (already reported)."""

    auth: str | None
    remote_id: str | None
    remote_identity: PeerIdentity | None  # remote_id parsed: `@gw.example` and `gw.example` are one identity
    model: Ike | None  # only when the whole section parsed cleanly
    start: str | None = None  # ike.start as written, None when not given


@dataclass(frozen=True)
class TunnelParts:
    """One tunnel's values, each None when it failed to parse (already reported)."""

    path: str  # "tunnels[2]"
    name: str | None
    peer: PeerEndpoint | None
    local_subnets: tuple[IPNetwork, ...] | None
    remote_subnets: tuple[IPNetwork, ...] | None
    manual_keys: ManualKeys | None
    replay_window: int | None
    ike: IkeParts | None = None  # None also when the tunnel has no `ike:` (manual keys)
    mtu: int | None = None
    firewall: Firewall | None = None
    qos: TunnelQos = TunnelQos()
    call_quality: CallQuality = CallQuality()


def cross_check(doc: Doc, listen: Endpoint | None, tun: TunDevice | None, tunnels: list[TunnelParts],
                ike_port: int | None = None, has_pki: bool | None = None, workers: int | None = None) -> None:
    """ike_port: gateway.ike_port or its default (None if invalid); has_pki: whether gateway.pki is given
    (None when the gateway section itself could not be read, so nothing is known about it)."""
    _unique_names(doc, tunnels)
    _remote_subnets_disjoint(doc, tunnels)
    _remote_outside_local(doc, tunnels)
    _unique_inbound_spis(doc, tunnels)
    _dynamic_peers(doc, tunnels)
    _unique_remote_ids(doc, tunnels)
    if has_pki is False:
        _cert_needs_pki(doc, tunnels)
    if workers is not None and workers > 1:
        _workers_need_ike(doc, tunnels)
        if listen is not None and listen.dual is not None:
            doc.error_at("gateway.workers", "workers > 1 needs one listening address (for now): the workers' "
                                            "sockets share one family's SPI steering; use workers: 1 with "
                                            "a dual-stack listen.address")
    if listen is not None:
        _peer_family(doc, listen, tunnels)
        if ike_port is not None:
            _ike_port_distinct(doc, listen, ike_port)
        if tun is not None:
            _tun_mtu(doc, listen, tun, tunnels)


def _unique_names(doc: Doc, tunnels: list[TunnelParts]) -> None:
    first: dict[str, str] = {}
    for t in tunnels:
        if t.name is None:
            continue
        if t.name in first:
            doc.error_at(f"{t.path}.name", f"duplicate tunnel name {t.name!r} (also {first[t.name]}.name)")
        else:
            first[t.name] = t.path


def _remote_subnets_disjoint(doc: Doc, tunnels: list[TunnelParts]) -> None:
    """An outbound packet must select exactly one tunnel, so no two remote subnets may overlap, with one
    exception: a full tunnel's default route (0.0.0.0/0, ::/0) takes whatever no other tunnel's subnet
    does (the longest prefix wins, in the kernel and in the forwarder alike)."""
    if not _may_overlap(tunnels):  # the usual case, in O(n log n): a hub has a thousand tunnels
        return
    seen: list[tuple[IPNetwork, str, str]] = []
    for t in tunnels:
        for i, net in enumerate(t.remote_subnets or ()):
            here = f"{t.path}.remote_subnets[{i}]"
            for other, there, owner in seen:
                default = net.prefixlen == 0 or other.prefixlen == 0
                if default and owner != t.path and net != other:
                    continue
                if net.version == other.version and net.overlaps(other):
                    doc.error_at(here, f"{net} overlaps {other} ({there}); "
                                       "a packet must select exactly one tunnel")
                    break
            seen.append((net, here, t.path))


def _may_overlap(tunnels: list[TunnelParts]) -> bool:
    """Whether _remote_subnets_disjoint has anything to report: any two remote subnets nest (found by
    sorting them, since two prefixes overlap only if one contains the other), or a default route shares
    its tunnel or its family's default with another subnet. False means certainly nothing to report."""
    nets: list[tuple[int, int, int, int]] = []  # (version, first address, prefix length, last address)
    defaults: dict[int, int] = {}
    for t in tunnels:
        own = t.remote_subnets or ()
        for net in own:
            if net.prefixlen == 0:
                defaults[net.version] = defaults.get(net.version, 0) + 1
                if sum(other.version == net.version for other in own) > 1:
                    return True
            else:
                nets.append((net.version, int(net.network_address), net.prefixlen, int(net.broadcast_address)))
    if any(count > 1 for count in defaults.values()):
        return True
    nets.sort()
    for before, after in zip(nets, nets[1:]):
        if before[0] == after[0] and after[1] <= before[3]:  # sorted by start: nesting shows in neighbours
            return True
    return False


def _remote_outside_local(doc: Doc, tunnels: list[TunnelParts]) -> None:
    """A remote subnet equal to a local one is a mistake. One that contains a local subnet (a full tunnel's
    0.0.0.0/0, a branch's 10.0.0.0/8 to reach HQ and the other branches), or lies inside one (HQ's
    0.0.0.0/0 as the local side of a full tunnel), is a topology: the longer prefix wins, as in any
    routing table, so the local subnet stays on the LAN."""
    for t in tunnels:
        for i, net in enumerate(t.remote_subnets or ()):
            if net in (t.local_subnets or ()):
                doc.error_at(f"{t.path}.remote_subnets[{i}]",
                             f"{net} is also this tunnel's local subnet; local and remote must differ")


def _unique_inbound_spis(doc: Doc, tunnels: list[TunnelParts]) -> None:
    """The receiver finds the SA by SPI alone (RFC 4303 §2.1), so inbound SPIs must be unique.
    The message names the tunnels, never the SPI."""
    first: dict[int, TunnelParts] = {}
    for t in tunnels:
        if t.manual_keys is None:
            continue
        other = first.setdefault(t.manual_keys.inbound.spi, t)
        if other is not t and other.manual_keys is not None:
            doc.error_at(f"{t.path}.manual_keys",
                         f"the inbound SPI in {t.manual_keys.path} is also the inbound SPI of {other.path} "
                         f"({other.manual_keys.path}); the receiver tells tunnels apart by SPI")


def _dynamic_peers(doc: Doc, tunnels: list[TunnelParts]) -> None:
    """Tunnels may share a peer address (branches behind one NAT): the IKE responder tells them apart by
    the authenticated IDi (unique, _unique_remote_ids). A peer at `any` can only be answered, and manual
    keys, which have no IKE, need a literal address to send to."""
    for t in tunnels:
        if t.peer is not None and t.peer.more and t.manual_keys is not None:
            doc.error_at(f"{t.path}.peer.address", "manual keys need one peer address: several hubs take IKE, "
                                                   "which finds the hub that answers")
        if t.peer is None or t.peer.address is not None:
            continue
        if t.manual_keys is not None:
            doc.error_at(f"{t.path}.peer.address", f"manual keys need the peer's IP address (not {t.peer}): "
                                                   "without IKE nothing learns where the peer is")
        elif t.ike is not None and t.peer.is_any and t.ike.start not in (None, StartMode.RESPOND.value):
            doc.error_at(f"{t.path}.ike.start", f"start: {t.ike.start} needs an address to initiate to, and "
                                                "peer.address is any (the tunnel only responds); use start: "
                                                "respond or give the peer's address or DNS name")


def _unique_remote_ids(doc: Doc, tunnels: list[TunnelParts]) -> None:
    """The responder identifies the peer (and so the tunnel and its credentials) by the IDi it sends."""
    first: dict[PeerIdentity, str] = {}
    for t in tunnels:
        if t.ike is None or t.ike.remote_identity is None:
            continue
        other = first.setdefault(t.ike.remote_identity, t.path)
        if other != t.path:
            doc.error_at(f"{t.path}.ike.remote_id",
                         f"{quote(t.ike.remote_id or '')} is the same identity as {other}.ike.remote_id; "
                         "the IKE responder identifies peers by their remote_id, so each must be unique")


def queues_fit_replay_window(doc: Doc, qos: GatewayQos | None, tunnels: list[TunnelParts]) -> None:
    """With priority queues, datagrams of one SA are opened out of order (a real-time one overtakes the
    queued bulk), by at most as many packets as the queues hold; the replay window must be wider
    (RFC 4301 §4.1 warns about exactly this), or valid packets would be counted as replays."""
    if qos is None or qos.scheduler != "priority":
        return
    held = sum({**DEFAULT_LIMITS, **dict(qos.queue_packets)}.values())
    for t in tunnels:
        if t.replay_window is not None and t.replay_window <= held:
            where = f"{t.path}.replay_window" if f"{t.path}.replay_window" in doc.where else t.path
            doc.error_at(where, f"replay window {t.replay_window} must be larger than the {held} packets the "
                                "priority queues can hold (gateway.qos.queue_packets): packets reordered between "
                                "classes would be dropped as replays")


def _workers_need_ike(doc: Doc, tunnels: list[TunnelParts]) -> None:
    for t in tunnels:
        if t.manual_keys is not None:
            doc.error_at(f"{t.path}.manual_keys", "gateway.workers > 1 needs IKEv2 tunnels: each worker has Child "
                                                  "SAs of its own, and manual keys are one SA")


def _cert_needs_pki(doc: Doc, tunnels: list[TunnelParts]) -> None:
    for t in tunnels:
        if t.ike is not None and t.ike.auth == "cert":
            doc.error_at(f"{t.path}.ike.auth",
                         "auth: cert needs gateway.pki (ca, certificate and private_key of this gateway)")


def _ike_port_distinct(doc: Doc, listen: Endpoint, ike_port: int) -> None:
    """Both sockets bind listen.address: IKE_SA_INIT on ike_port, ESP and the rest of IKE on listen.port."""
    if ike_port != listen.port:
        return
    if "gateway.ike_port" in doc.where:
        doc.error_at("gateway.ike_port", f"{ike_port} is also gateway.listen.port; IKE_SA_INIT needs its own port "
                                         "(the rest of IKE and ESP share listen.port)")
    else:
        doc.error_at("gateway.listen.port", f"{ike_port} is the IKE port (gateway.ike_port, default {ike_port}); "
                                            "choose another listen port or set a different ike_port")


def _peer_family(doc: Doc, listen: Endpoint, tunnels: list[TunnelParts]) -> None:
    """A UDP socket serves one address family, wildcard or not: a peer needs a listening address of its
    family (a dual-stack gateway lists one of each)."""
    for t in tunnels:
        if t.peer is not None and t.peer.address is not None and not listen.serves(t.peer.address.version):
            doc.error_at(f"{t.path}.peer.address",
                         f"peer is IPv{t.peer.address.version} but gateway.listen.address {listen.address} is "
                         f"IPv{listen.address.version}; a socket serves one address family (list one address "
                         "of each family in gateway.listen.address for both)")


def _tun_mtu(doc: Doc, listen: Endpoint, tun: TunDevice, tunnels: list[TunnelParts]) -> None:
    """Each tunnel's MTU (the largest inner packet one ESP packet carries) fits the WAN path; the TUN
    device's may be larger: the gateway fragments or answers ICMP for what does not fit, and counts it."""
    outer_ipv6 = listen.serves(6)  # the larger overhead, when some peer may be reached over IPv6
    ceiling = inner_mtu(tun.wan_mtu, outer_ipv6)
    wan = f"a {tun.wan_mtu}-byte IPv{6 if outer_ipv6 else 4} WAN path"
    for t in tunnels:
        v6 = outer_ipv6 if t.peer is None or t.peer.address is None else t.peer.address.version == 6
        ceiling, wan = inner_mtu(tun.wan_mtu, v6), f"a {tun.wan_mtu}-byte IPv{6 if v6 else 4} WAN path"
        if t.mtu is not None and t.mtu > ceiling:
            doc.error_at(f"{t.path}.mtu", f"{t.mtu} exceeds {ceiling}, the largest inner packet that fits {wan} "
                                          "after ESP-in-UDP overhead; lower mtu or raise gateway.tun.wan_mtu")
        elif t.mtu is not None and t.mtu < IPV6_MIN_MTU and _carries_ipv6(tun, [t]):
            doc.error_at(f"{t.path}.mtu", f"{t.mtu} is below {IPV6_MIN_MTU}, the minimum IPv6 link MTU "
                                          "(RFC 8200 §5), and this tunnel carries IPv6")
    if not _carries_ipv6(tun, tunnels):
        return
    ceiling, wan = inner_mtu(tun.wan_mtu, outer_ipv6), f"a {tun.wan_mtu}-byte IPv{6 if outer_ipv6 else 4} WAN path"
    if tun.mtu is not None and tun.mtu < IPV6_MIN_MTU:
        doc.error_at("gateway.tun.mtu", f"{tun.mtu} is below {IPV6_MIN_MTU}, the minimum IPv6 link MTU "
                                        "(RFC 8200 §5), and this gateway carries IPv6")
    elif ceiling < IPV6_MIN_MTU and any(t.mtu is None for t in tunnels):
        wan_mtu = tun.wan_mtu
        while inner_mtu(wan_mtu, outer_ipv6) < IPV6_MIN_MTU:
            wan_mtu += 1
        where = "gateway.tun.wan_mtu" if "gateway.tun.wan_mtu" in doc.where else "gateway.tun"
        doc.error_at(where, f"the derived inner MTU {ceiling} of {wan} is below {IPV6_MIN_MTU}, the minimum IPv6 "
                            f"link MTU (RFC 8200 §5); raise wan_mtu to at least {wan_mtu}")


def _carries_ipv6(tun: TunDevice, tunnels: list[TunnelParts]) -> bool:
    """IPv6 subnets or TUN addresses: the kernel disables IPv6 on a link below 1280 bytes."""
    nets = [n for t in tunnels for n in (t.local_subnets or ()) + (t.remote_subnets or ())]
    return any(n.version == 6 for n in nets) or any(a.version == 6 for a in tun.addresses)
