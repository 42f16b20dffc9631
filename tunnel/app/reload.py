"""What a hot reload (SIGHUP, `sitelink reload`) changes: the difference between the running configuration
and the new one, decided before anything is touched, so a reload is applied whole or refused whole.

Tunnels whose configuration is equal keep their SAs (and lose no packets). A change limited to what the
data path enforces (firewall, QoS classification and marking, MTU, call-quality observation) is applied in
place, SAs kept. Any
other change to a tunnel (peer, subnets, keys, identities, proposals, lifetimes, replay window) is what
IKE negotiated, so its SAs are deleted at the peer and the tunnel is set up again. Gateway settings that
belong to an open socket, device or process (listen address, TUN, workers, metrics endpoint, ...) need a
restart; a reload that changes them is refused with the list, and nothing is applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tunnel.config.model import CallQuality, GatewayConfig, Tunnel, TunnelQos
from tunnel.errors import ReloadRefused

# GatewayConfig fields a running gateway cannot change; every other field is applied by a reload
# (tunnels, services, pki for the next IKE SAs, log_level).
RESTART_FIELDS = ("name", "listen", "tun", "socket_buffer_bytes", "log_format", "ike_port", "workers", "qos",
                  "metrics", "control_socket", "key_log", "state_dir", "ha", "announce")
LIVE_FIELDS = ("path", "tunnels", "services", "pki", "log_level")


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[Tunnel, ...] = ()
    removed: tuple[Tunnel, ...] = ()
    replaced: tuple[Tunnel, ...] = ()  # the new configuration of tunnels set up again
    updated: tuple[Tunnel, ...] = ()  # the new configuration of tunnels whose policy changed in place
    unchanged: tuple[Tunnel, ...] = ()

    @property
    def kept(self) -> tuple[Tunnel, ...]:
        """Tunnels whose SAs survive the reload (in their new configuration)."""
        return self.updated + self.unchanged

    @property
    def gone(self) -> tuple[str, ...]:
        """Names whose running tunnel (and SAs) goes away: removed, or replaced by a new one."""
        return tuple(t.name for t in self.removed + self.replaced)

    @property
    def new(self) -> tuple[Tunnel, ...]:
        """Tunnels to set up from scratch."""
        return self.added + self.replaced

    def summary(self) -> str:
        parts = [f"{label} {', '.join(t.name for t in tunnels)}" for label, tunnels in (
            ("added", self.added), ("removed", self.removed), ("re-established", self.replaced),
            ("policy updated", self.updated), ("unchanged", self.unchanged)) if tunnels]
        return "; ".join(parts) or "no tunnels"


def plan_reload(running: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """ReloadRefused when the new configuration needs a restart."""
    restart = [f"gateway.{name}" for name in RESTART_FIELDS if getattr(running, name) != getattr(new, name)]
    if restart:
        raise ReloadRefused(f"{', '.join(restart)} changed: that needs a restart (systemctl restart); "
                            "the running configuration stays")
    if not any(t.ike for t in running.tunnels) and any(t.ike for t in new.tunnels):
        raise ReloadRefused("the first IKEv2 tunnel needs a restart (the IKE socket on gateway.ike_port and "
                            "the IKE timers start with the gateway); the running configuration stays")
    old = {t.name: t for t in running.tunnels}
    added, replaced, updated, unchanged = [], [], [], []
    for tunnel in new.tunnels:
        before = old.get(tunnel.name)
        if before is None:
            added.append(tunnel)
        elif before == tunnel:
            unchanged.append(tunnel)
        elif _negotiated(before) == _negotiated(tunnel):
            updated.append(tunnel)
        else:
            replaced.append(tunnel)
    names = {t.name for t in new.tunnels}
    removed = tuple(t for t in running.tunnels if t.name not in names)
    return ReloadPlan(tuple(added), removed, tuple(replaced), tuple(updated), tuple(unchanged))


def _negotiated(tunnel: Tunnel) -> Tunnel:
    """The tunnel without the settings the forwarder applies per packet, nor the pre-shared keys, which
    only the next authentication uses (a key change keeps the SAs: README "Changing a PSK"); what is
    left, IKE agreed on."""
    ike = tunnel.ike and dataclasses.replace(tunnel.ike, psk=None, accept_psk=None)
    return dataclasses.replace(tunnel, mtu=None, firewall=None, qos=TunnelQos(), call_quality=CallQuality(), ike=ike)
