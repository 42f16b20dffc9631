"""From the configuration to the cores' settings, in one place for the gateway and its worker processes
(so every process enforces the same rules): each tunnel's peer address, compiled policy, IKE settings,
volume limits and manual SAs, and the gateway's queues."""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
from collections.abc import Callable

from policy.match import compile_rules
from policy.qos import QosClass
from policy.ts import ranges
from tunnel.config.model import GatewayConfig, Tunnel
from tunnel.dataplane.callquality import CallSettings, port_table
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.scheduler import PriorityScheduler
from tunnel.dataplane.tunnels import NO_LIMIT, TunnelPolicy, VolumeLimits
from tunnel.esp.overhead import inner_mtu
from tunnel.esp.sa import InboundSa, OutboundSa
from tunnel.ike.config import CertAuth, IkeConfig, PskAuth
from tunnel.ike.fragments import DEFAULT_FRAGMENT_SIZE
from tunnel.ike.identity import PeerIdentity
from tunnel.ike.window import Backoff

SEQ_SOFT_LIMIT = 3 * 2**30  # rekey long before the 32-bit sequence numbers run out (RFC 4303 §3.3.3)
HARD_VOLUME_FACTOR = 1.1  # past soft * this without a new SA, the outbound SA is dropped (fail closed)


def peer_of(tunnel: Tunnel) -> tuple[str, int]:
    """Where the tunnel's ESP (and IKE) goes until the peer is seen elsewhere; the host is "" while
    unknown (a peer at `any` or a DNS name: its first Child SA says where it is)."""
    address = tunnel.peer.address
    return ("" if address is None else str(address)), tunnel.peer.port


def tunnel_mtu(config: GatewayConfig, tunnel: Tunnel) -> int:
    """The largest inner packet one ESP packet to this peer carries over the WAN path (a peer known by
    name or identity only may come over IPv6 when the gateway listens on it: the larger overhead)."""
    address = tunnel.peer.address
    v6 = address.version == 6 if address is not None else config.listen.serves(6)
    return tunnel.mtu or inner_mtu(config.tun.wan_mtu, v6)


@functools.lru_cache(maxsize=32)
def _call_ports(ranges: tuple[tuple[int, int], ...]) -> bytes:
    """One 64 KB port table per distinct set of media ports, shared by the tunnels that have it."""
    return port_table(ranges)


def call_settings(tunnel: Tunnel) -> CallSettings | None:
    calls = tunnel.call_quality
    if not calls.enabled:
        return None
    return CallSettings(_call_ports(calls.ports), calls.max_streams)


def tunnel_policy(config: GatewayConfig, tunnel: Tunnel) -> TunnelPolicy:
    firewall = None
    if tunnel.firewall is not None:
        firewall = compile_rules(tunnel.firewall.rules, tunnel.firewall.default)
    qos_rules = None
    if tunnel.qos.classify == "rules":
        qos_rules = compile_rules(tunnel.qos.rules, QosClass.DEFAULT)
    # Our ICMP errors come from the TUN's address (the gateway's inside address) when it has one.
    sources: dict[int, int] = {}
    for iface in config.tun.addresses:
        sources.setdefault(iface.version, int(iface.ip))
    return TunnelPolicy(firewall=firewall, qos_rules=qos_rules, outer_dscp=tunnel.qos.outer_dscp,
                        decap_copy_dscp=tunnel.qos.copy_dscp_inward, mtu=tunnel_mtu(config, tunnel),
                        icmp_source4=sources.get(4), icmp_source6=sources.get(6), calls=call_settings(tunnel))


def build_forwarder(config: GatewayConfig, clock: Callable[[], float] = time.monotonic) -> Forwarder:
    """A forwarder with every tunnel of the configuration (no SAs yet); clock: for the call observers."""
    forwarder = Forwarder(clock)
    for tunnel in config.tunnels:
        forwarder.add_tunnel(tunnel.name, peer_of(tunnel), tunnel.local_subnets, tunnel.remote_subnets,
                             tunnel_policy(config, tunnel))
    return forwarder


def reconfigure_forwarder(forwarder: Forwarder, config: GatewayConfig, gone: tuple[str, ...]) -> None:
    """A reload, in one process's forwarder: forget the tunnels that went (and their SAs), add the new
    ones, and give every tunnel its policy compiled from the new configuration (SAs stay)."""
    for name in gone:
        if name in forwarder.tunnels:
            forwarder.remove_tunnel(name)
    for tunnel in config.tunnels:
        policy = tunnel_policy(config, tunnel)
        state = forwarder.tunnels.get(tunnel.name)
        if state is None:
            forwarder.add_tunnel(tunnel.name, peer_of(tunnel), tunnel.local_subnets, tunnel.remote_subnets, policy)
        else:
            state.apply(policy)


def install_manual_keys(forwarder: Forwarder, tunnel: Tunnel) -> None:
    """The tunnel's manually keyed SAs (testing and bring-up; they are never rekeyed)."""
    keys = tunnel.manual_keys
    assert keys is not None
    forwarder.install_outbound(tunnel.name, OutboundSa(keys.outbound.spi, keys.outbound.key.reveal()))
    forwarder.install_inbound(tunnel.name, InboundSa(keys.inbound.spi, keys.inbound.key.reveal(),
                                                     tunnel.replay_window))


def volume_limits(tunnel: Tunnel) -> VolumeLimits:
    """Rekey at the configured packet or byte volume, and before the sequence numbers run short; stop
    using the SA at HARD_VOLUME_FACTOR times the configured volume (RFC 4301 §4.4.2.1)."""
    ike = tunnel.ike
    packets = ike.rekey_packets if ike is not None and ike.rekey_packets else None
    octets = ike.rekey_bytes if ike is not None and ike.rekey_bytes else None
    return VolumeLimits(
        soft_packets=min(SEQ_SOFT_LIMIT, packets) if packets else SEQ_SOFT_LIMIT,
        soft_bytes=octets or NO_LIMIT,
        hard_packets=math.ceil(packets * HARD_VOLUME_FACTOR) if packets else NO_LIMIT,
        hard_bytes=math.ceil(octets * HARD_VOLUME_FACTOR) if octets else NO_LIMIT,
    )


def make_schedulers(config: GatewayConfig) -> tuple[PriorityScheduler, PriorityScheduler] | None:
    """(egress, ingress) queues, or None for FIFO."""
    qos = config.qos
    if qos.scheduler != "priority":
        return None
    limits = dict(qos.queue_packets)
    rate = qos.realtime_rate_mbit * 1_000_000
    # Shaping counts ESP-in-UDP bytes: the inner packet plus outer IP, UDP, ESP header, IV, trailer, ICV.
    overhead = (40 if config.listen.serves(6) else 20) + 8 + 8 + 8 + 2 + 16
    egress = PriorityScheduler(rate, limits, shape_bps=int(qos.wan_rate_mbit * 1_000_000), overhead=overhead)
    return egress, PriorityScheduler(rate, limits)


def ike_configs(config: GatewayConfig, workers: int) -> list[tuple[IkeConfig, str | None]]:
    """Each IKE tunnel's IkeConfig and peer address, None when the peer may come from anywhere (`any`, a
    DNS name) and is told by its identity (reading the PKI files when a tunnel uses certificates:
    raises when they cannot be used)."""
    tunnels = [t for t in config.tunnels if t.ike is not None]
    uses_certs = any(t.ike is not None and t.ike.auth == "cert" for t in tunnels)
    cert_auth = None
    if uses_certs:  # X.509 (cryptography.x509, the PKI files) only for a gateway that uses certificates
        from tunnel.app import credentials

        cert_auth = credentials.cert_auth(config)
    # A peer with several hub addresses is, like one at `any`, known by its identity: it may answer from any
    return [(ike_config(t, cert_auth, workers), (peer_of(t)[0] or None) if not t.peer.more else None)
            for t in tunnels]


def ike_config(tunnel: Tunnel, cert_auth: CertAuth | None, workers: int = 1) -> IkeConfig:
    ike = tunnel.ike
    assert ike is not None
    local, remote = PeerIdentity.parse(ike.local_id), PeerIdentity.parse(ike.remote_id)
    if ike.auth == "psk":
        assert ike.psk is not None
        accepted = (ike.accept_psk.reveal(),) if ike.accept_psk is not None else ()
        auth: PskAuth | CertAuth = PskAuth(ike.psk.reveal(), accepted)
    else:
        assert cert_auth is not None
        auth = cert_auth
    return IkeConfig(
        tunnel=tunnel.name,
        local_id=(local.id_type, local.data),
        remote_id=(remote.id_type, remote.data),
        auth=auth,
        ike_suites=ike.ike_proposals,
        esp_suites=ike.esp_proposals,
        local_ts=ranges(tunnel.local_subnets),
        remote_ts=ranges(tunnel.remote_subnets),
        wall_clock=lambda: dt.datetime.now(dt.UTC),
        child_rekey_time=float(ike.rekey_time),
        child_lifetime=float(ike.lifetime) if ike.lifetime else None,
        ike_rekey_time=float(ike.ike_rekey_time),
        ike_lifetime=float(ike.ike_lifetime) if ike.ike_lifetime else None,
        reauth_time=float(ike.reauth_time),
        dpd_delay=float(ike.dpd_delay),
        fragment_size=DEFAULT_FRAGMENT_SIZE if ike.fragmentation else 0,
        workers=workers,
        backoff=Backoff(initial=ike.retransmit_timeout, tries=ike.retransmit_tries),
    )
