"""From config to the forwarder's compiled policy and the gateway's queues: shared by the gateway and its
worker processes, so every process enforces the same rules."""

from __future__ import annotations

from policy.match import compile_rules
from policy.qos import QosClass
from tunnel.config.model import GatewayConfig, Tunnel
from tunnel.dataplane.forwarder import Forwarder, TunnelPolicy
from tunnel.esp.overhead import inner_mtu
from tunnel.dataplane.scheduler import PriorityScheduler


def tunnel_mtu(config: GatewayConfig, tunnel: Tunnel) -> int:
    """The largest inner packet one ESP packet to this peer carries over the WAN path."""
    return tunnel.mtu or inner_mtu(config.tun.wan_mtu, tunnel.peer.address.version == 6)


def tunnel_policy(config: GatewayConfig, tunnel: Tunnel) -> TunnelPolicy:
    firewall = None
    if tunnel.firewall is not None:
        firewall = compile_rules(tunnel.firewall.rules, tunnel.firewall.default)
    qos_rules = None
    if tunnel.qos.classify == "rules":
        qos_rules = compile_rules(tunnel.qos.rules, QosClass.DEFAULT)
    # Our ICMP errors come from the TUN's address (the gateway's inside address) when it has one.
    sources = {}
    for iface in config.tun.addresses:
        sources.setdefault(iface.version, int(iface.ip))
    return TunnelPolicy(firewall=firewall, qos_rules=qos_rules, outer_dscp=tunnel.qos.outer_dscp,
                        decap_copy_dscp=tunnel.qos.copy_dscp_inward, mtu=tunnel_mtu(config, tunnel),
                        icmp_source4=sources.get(4), icmp_source6=sources.get(6))


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
            forwarder.add_tunnel(tunnel.name, (str(tunnel.peer.address), tunnel.peer.port), tunnel.local_subnets,
                                 tunnel.remote_subnets, policy)
        else:
            state.apply(policy)


def make_schedulers(config: GatewayConfig) -> tuple[PriorityScheduler, PriorityScheduler] | None:
    """(egress, ingress) queues, or None for FIFO."""
    qos = config.qos
    if qos.scheduler != "priority":
        return None
    limits = dict(qos.queue_packets)
    rate = qos.realtime_rate_mbit * 1_000_000
    # Shaping counts ESP-in-UDP bytes: the inner packet plus outer IP, UDP, ESP header, IV, trailer, ICV.
    overhead = (40 if config.listen.address.version == 6 else 20) + 8 + 8 + 8 + 2 + 16
    egress = PriorityScheduler(rate, limits, shape_bps=int(qos.wan_rate_mbit * 1_000_000), overhead=overhead)
    return egress, PriorityScheduler(rate, limits)
