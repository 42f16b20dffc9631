"""Keying: the glue between the IKE cores and the data plane. It turns IKE events into ESP SAs in every
worker, and the data plane's events (app: one stream from each forwarder) into IKE actions. No sockets
here; gateway.py moves the bytes.

The data plane is one or more workers, each a forwarder with Child SAs of its own: a Child SA belongs to
worker spi_in % workers (the IKE core picks SPIs that way), and each worker has its own outbound SA per
tunnel, so sequence numbers never need sharing. Worker 0 is the forwarder in this process; the others
are reached through a DataPlane proxy (app/workers.py).

Past the ~400-line guideline because both directions of the glue live here on purpose: what an IKE event
does to the data plane and what a data-plane event does to IKE share the per-tunnel runtime (lanes,
pending switches, retries), and splitting them would put that state in two places again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tunnel.app.assemble import ike_configs, volume_limits
from tunnel.app.reload import ReloadPlan
from tunnel.config.model import GatewayConfig, HaRole, IPNetwork, StartMode, Tunnel
from tunnel.dataplane.events import (
    DataEvent,
    IkeMessage,
    NeedSa,
    PeerAlive,
    PeerMoved,
    SaInUse,
    UnknownSpi,
    VolumeLimit,
)
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.tunnels import VolumeLimits
from tunnel.esp.sa import InboundSa, OutboundSa
from tunnel.ike.config import CertAuth, IkeConfig
from tunnel.ike.constants import NAT_T_PORT, NotifyType
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.errors import AuthenticationFailed
from tunnel.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    ReauthDue,
    RevocationQuery,
)
from tunnel.ike.keys import IkeKeys
from tunnel.ike.sa import IkeState
from tunnel.ike.session import IkeSession
from tunnel.ops.readout import IkeStats

if TYPE_CHECKING:  # HA state sync is imported only by a gateway configured for it
    from tunnel.app.hasync import StateSync

log = logging.getLogger("sitelink.ike")

RETRY_DELAY = 5.0  # seconds before an initiating tunnel tries again after a failed or deleted IKE SA
MAX_RETRY_DELAY = 60.0  # the delay doubles after each failure up to this, and resets once a Child SA is up
REAUTH_RETRY = 30  # seconds before a re-authentication that failed for want of an answer is tried again
UNKNOWN_SPI_HOLDOFF = 5.0  # at most one IKE SA started per tunnel this often because of unknown-SPI ESP
KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §2.3 NAT keepalive period
VOLUME_GRACE = 5.0  # past its hard volume, an outbound SA goes once the rekey asked for at the soft limit had this long
# A deleted Child SA's inbound half keeps accepting this long, for packets the peer sealed before it
# switched to the new SA and that the network delivers late (make-before-break, RFC 7296 §2.8).
INBOUND_GRACE = 2.0
KeyLogger = Callable[[ChildSaEstablished], None]
IkeKeyLogger = Callable[[bytes, bytes, IkeKeys, int], None]
Peer = tuple[str, int]


class DataPlane(Protocol):
    """The commands keying gives one worker's forwarder (LocalPlane here, a proxy for the others); what
    happens there comes back as the forwarder's events."""

    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None: ...
    def install_outbound(self, tunnel: str, spi: int, key: bytes, limits: VolumeLimits) -> None: ...
    def remove_inbound(self, spi: int) -> None: ...
    def remove_outbound(self, tunnel: str) -> None: ...
    def set_peer(self, tunnel: str, peer: Peer) -> None: ...


class LocalPlane:
    """A Forwarder in this process as a DataPlane."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None:
        self.forwarder.install_inbound(tunnel, InboundSa(spi, key, window))

    def install_outbound(self, tunnel: str, spi: int, key: bytes, limits: VolumeLimits) -> None:
        self.forwarder.install_outbound(tunnel, OutboundSa(spi, key), limits)

    def remove_inbound(self, spi: int) -> None:
        self.forwarder.remove_inbound(spi)

    def remove_outbound(self, tunnel: str) -> None:
        self.forwarder.remove_outbound(tunnel)

    def set_peer(self, tunnel: str, peer: Peer) -> None:
        self.forwarder.set_peer(tunnel, peer)


@dataclass
class Lane:
    """One worker's side of a tunnel: its outbound SA and the state that goes with it."""

    outbound_spi: int | None = None
    volume_rekey_spi: int | None = None  # outbound SPI a volume rekey was asked for (its soft limit)
    volume_rekey_at: float = 0.0
    drop_at: float | None = None  # past its hard volume too: dropped then unless replaced (VOLUME_GRACE)
    # The new SA of a rekey the peer asked for: (its inbound SPI, its outbound SPI and key, the outbound
    # SPI it replaces). Outbound switches when the peer deletes the old SA or sends on the new one.
    pending_out: tuple[int, int, bytes, int] | None = field(default=None, repr=False)
    # Every Child SA of the lane we may send on, newest last: {inbound SPI: (outbound SPI, key)}. When
    # the one in use goes while another is up (a redundant SA of a simultaneous start, two IKE SAs for
    # a moment), outbound moves to the newest one left instead of failing closed for nothing.
    usable: dict[int, tuple[int, bytes]] = field(default_factory=dict, repr=False)


@dataclass
class TunnelRuntime:
    config: Tunnel
    lanes: list[Lane]
    limits: VolumeLimits
    inbound_spis: list[int] = field(default_factory=list)
    retry_at: float | None = None
    retry_delay: float = RETRY_DELAY
    established_at: float | None = None
    unknown_spi_at: float | None = None
    peer: Peer | None = None  # where ESP goes; a worker that sees the peer move tells the others
    stats: IkeStats = field(default_factory=IkeStats)
    # Terminated by the operator: stay down (no restart, no on-demand or unknown-SPI initiation) until
    # `sitelink initiate`, or until the peer sets the tunnel up again.
    held: bool = False
    resolved: str | None = None  # a DNS-named peer's address as last resolved
    hub: int = 0  # which of peer.address's hubs the next attempt goes to (a list: scale-out)
    # Re-authentication in progress (make-before-break): the new IKE SA, and the ones it replaces.
    reauth: IkeSession | None = None
    reauth_old: list[IkeSession] = field(default_factory=list)

    @property
    def outbound_spi(self) -> int | None:
        """Worker 0's outbound SPI (with one worker: the tunnel's)."""
        return self.lanes[0].outbound_spi


class Keying:
    def __init__(self, config: GatewayConfig, forwarder: Forwarder | Sequence[DataPlane],
                 random_bytes: Callable[[int], bytes], key_logger: KeyLogger | None = None,
                 ike_key_logger: IkeKeyLogger | None = None) -> None:
        """forwarder: this process's Forwarder (one worker), or one DataPlane per worker."""
        self.config = config
        self.planes: list[DataPlane] = [LocalPlane(forwarder)] if isinstance(forwarder, Forwarder) else list(forwarder)
        self.key_logger = key_logger
        self.ike_key_logger = ike_key_logger  # opt-in (debugging): IKE SA keys for Wireshark
        self.tunnels = {t.name: self._runtime(t) for t in config.tunnels if t.ike is not None}
        self.dispatcher = IkeDispatcher(self.ike_configs(config), random_bytes)
        self._retiring: list[tuple[float, int, int, str]] = []  # (remove at, worker, inbound SPI, tunnel)
        # Tunnels whose peer is a DNS name and that want to initiate: the gateway resolves the name
        # (take_resolves) and hands the answer to resolved(), which initiates.
        self._resolve: dict[str, str] = {}
        self._ocsp_queries: list[RevocationQuery] = []  # for the gateway to send (take_ocsp_queries)
        # Tunnels that may have a retry_at or a lane's drop_at: the timers look at these, not at every
        # tunnel (a hub with a thousand of them asks for its next deadline after every IKE message).
        self._timed: set[str] = set()
        # One of an HA pair (gateway.ha): the standby initiates nothing and holds no SA (set_role).
        self.standby = config.ha is not None and config.ha.role is HaRole.STANDBY
        self._up_changed = False  # a tunnel got its first outbound SA or lost its last (take_up_changed)
        self.random_bytes = random_bytes
        # gateway.ha.sync: the state the active streams to the standby, which adopts it on takeover
        self.sync: StateSync | None = None
        if config.ha is not None and config.ha.sync is not None and isinstance(self.planes[0], LocalPlane):
            from tunnel.app.hasync import StateSync

            self.sync = StateSync(self, self.planes[0].forwarder)
        self._accept_ike()

    def _runtime(self, tunnel: Tunnel) -> TunnelRuntime:
        return TunnelRuntime(tunnel, [Lane() for _ in self.planes], volume_limits(tunnel))

    def _accept_ike(self) -> None:
        for plane in self.planes:
            if self.tunnels and isinstance(plane, LocalPlane):
                plane.forwarder.accept_ike = True

    def ike_configs(self, config: GatewayConfig) -> list[tuple[IkeConfig, str | None]]:
        """Each IKE tunnel's IkeConfig (reading the PKI files when a tunnel uses certificates)."""
        return ike_configs(config, len(self.planes))

    def reconfigure(self, config: GatewayConfig, plan: ReloadPlan, now: float,
                    configs: list[tuple[IkeConfig, str | None]] | None = None) -> None:
        """A reload (app/reload.py): the IKE SAs of removed and replaced tunnels are deleted at the
        peer, kept tunnels keep theirs, new IKE SAs use the new configuration (and PKI files), new tunnels
        that initiate start now. configs: ike_configs(config) if already made (it raises, changing
        nothing, when the new PKI files cannot be used)."""
        if configs is None:
            configs = self.ike_configs(config)
        for name in plan.gone:
            if self.tunnels.pop(name, None) is not None:
                log.info("tunnel %s: deleting its IKE SA(s) (reload)", name)
                self.dispatcher.retire_tunnel(name, now)
        self._retiring = [entry for entry in self._retiring if entry[3] not in plan.gone]
        self.config = config
        self.dispatcher.set_configs(configs)
        for tunnel in plan.kept:
            if tunnel.name in self.tunnels:
                self.tunnels[tunnel.name].config = tunnel
        self._recheck_peers([t.name for t in plan.kept], configs, now)
        for tunnel in plan.new:
            if tunnel.ike is not None:
                self.tunnels[tunnel.name] = self._runtime(tunnel)
        self._accept_ike()
        for tunnel in plan.new:
            if tunnel.ike is not None and tunnel.ike.start is StartMode.INITIATE:
                self.initiate(tunnel.name, now)

    def _recheck_peers(self, names: Iterable[str], configs: list[tuple[IkeConfig, str | None]], now: float) -> None:
        """A reload may bring a CRL that revokes a peer's certificate, or drop the CA that issued it: the
        IKE SAs that peer authenticated with it end now (deleted at the peer), not at their next
        re-authentication; the tunnel's next attempt meets the same refusal, counted."""
        by_name = {config.tunnel: config for config, _ in configs}
        for name in names:
            config = by_name.get(name)
            if config is None or not isinstance(config.auth, CertAuth) or config.wall_clock is None:
                continue
            for session in self.dispatcher.sessions_for(name):
                if not session.peer_chain:
                    continue
                try:
                    config.auth.verify_peer(session.peer_chain, *config.remote_id, config.wall_clock())
                except AuthenticationFailed as exc:
                    session.refused(exc)
                    log.warning("tunnel %s: the peer's certificate is no longer accepted (%s); deleting its "
                                "IKE SA(s)", name, exc)
                    self.dispatcher.delete_tunnel(name, now)
                    break

    # -- commands -----------------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        if self.standby:
            log.info("standby of an HA pair: initiating nothing until made active (sitelink role active)")
            return
        for name, runtime in self.tunnels.items():
            if runtime.config.ike is not None and runtime.config.ike.start is StartMode.INITIATE:
                self.initiate(name, now)

    def initiate(self, name: str, now: float, operator: bool = False) -> None:
        runtime = self.tunnels[name]
        if operator:
            runtime.held = False
        elif runtime.held:
            return
        if self.standby:
            runtime.retry_at = None  # set_role(active) starts every tunnel
            return
        if self.dispatcher.sessions_for(name):
            return  # one IKE SA at a time per tunnel (until rekeying arrives)
        runtime.retry_at = None
        host = runtime.config.peer.host
        if host is not None:  # resolved before every attempt: a branch on a dynamic address is followed
            self._resolve[name] = host
            return
        hubs = runtime.config.peer.addresses
        if len(hubs) > 1:
            address = str(hubs[runtime.hub % len(hubs)])
            log.info("tunnel %s: initiating IKE SA with %s (hub %d of %d)", name, address,
                     runtime.hub % len(hubs) + 1, len(hubs))
            self.dispatcher.initiate(name, now, self.config.ike_port, address=address)
            return
        log.info("tunnel %s: initiating IKE SA with %s", name, runtime.config.peer.address)
        self.dispatcher.initiate(name, now, self.config.ike_port)

    def take_ocsp_queries(self) -> list[RevocationQuery]:
        """OCSP requests to send now (the gateway POSTs them, off the event loop's thread)."""
        queries, self._ocsp_queries = self._ocsp_queries, []
        return queries

    def ocsp_answer(self, key: bytes, response: bytes | None, problem: str = "") -> None:
        """The responder's answer (None: none, problem says why) for the caches that asked; the IKE_AUTH
        that waited for it is handled again when it (or its answer) comes again."""
        caches = {id(c.auth.ocsp): c.auth.ocsp for c, _ in self.dispatcher.configs()
                  if isinstance(c.auth, CertAuth) and c.auth.ocsp is not None}
        for cache in caches.values():  # one per gateway.pki (a reload makes a new one)
            if cache.answer(key, response, dt.datetime.now(dt.UTC), problem) and response is None:
                log.warning("OCSP: no usable answer (%s)", problem)

    def take_resolves(self) -> dict[str, str]:
        """{tunnel: DNS name} to resolve now (the gateway does, off the event loop's thread)."""
        wanted, self._resolve = self._resolve, {}
        return wanted

    def resolved(self, name: str, address: str | None, now: float, error: str = "") -> None:
        """The answer for a DNS-named peer: initiate to it (a changed address is followed and logged), or
        try again later (backoff, as after a failed IKE SA)."""
        runtime = self.tunnels.get(name)
        if runtime is None or runtime.held or self.standby or self.dispatcher.sessions_for(name):
            return  # removed by a reload, terminated or made standby meanwhile, or the peer came to us first
        host = runtime.config.peer.host
        if address is None:
            log.warning("tunnel %s: cannot resolve %s (%s); trying again in %.0f s", name, host, error,
                        runtime.retry_delay)
            failed = runtime.stats.handshakes_failed  # sitelink_ike_handshakes_total{result="failure",notify="dns"}
            failed["dns"] = failed.get("dns", 0) + 1
            runtime.retry_at = now + runtime.retry_delay
            runtime.retry_delay = min(runtime.retry_delay * 2, MAX_RETRY_DELAY)
            self._timed.add(name)
            return
        if address != runtime.resolved:
            if runtime.resolved is None:
                log.info("tunnel %s: %s resolves to %s", name, host, address)
            else:
                log.warning("tunnel %s: %s now resolves to %s (was %s); following it", name, host, address,
                            runtime.resolved)
            runtime.resolved = address
        log.info("tunnel %s: initiating IKE SA with %s (%s)", name, host, address)
        self.dispatcher.initiate(name, now, self.config.ike_port, address=address)

    def set_role(self, active: bool, now: float) -> str:
        """keepalived made this gateway the active one of its pair, or the standby (README "High
        availability"). Active: every tunnel with a known peer is initiated at once, each first IKE SA
        carrying INITIAL_CONTACT so the peers drop the SAs they hold with the gateway that went away,
        without waiting for their dead-peer detection. Standby: every SA is forgotten without a word (the
        address and the peers belong to the other gateway now) and nothing is initiated."""
        if active != self.standby:
            return f"already {'active' if active else 'standby'}"
        if not active:
            self.standby = True
            for runtime in self.tunnels.values():
                runtime.retry_at, runtime.retry_delay = None, RETRY_DELAY
            self.dispatcher.forget_all("this gateway became the standby of its pair", now)
            if self.sync is not None:
                self.sync.held.clear()  # the new active's state arrives from now on
            log.warning("HA: now standby; every SA forgotten, nothing initiated")
            return "standby"
        self.standby = False
        self.dispatcher.forget_contacts()
        adopted = self.sync.adopt(now) if self.sync is not None else set()
        started = []
        for name, runtime in self.tunnels.items():
            runtime.retry_at, runtime.retry_delay = None, RETRY_DELAY
            if name not in adopted and not runtime.config.peer.is_any and not runtime.held:
                self.initiate(name, now)
                started.append(name)
        log.warning("HA: now active; %d tunnel(s) taken over with their SAs, %d initiated with INITIAL_CONTACT",
                    len(adopted), len(started))
        return f"active: {len(adopted)} tunnel(s) taken over, initiating {len(started)} tunnel(s)"

    def terminate(self, name: str, now: float) -> int:
        """Delete the tunnel's IKE SAs (and their Child SAs) at the peer; traffic fails closed until it is
        initiated again by the operator or by the peer (no restart, no on-demand initiation meanwhile)."""
        sessions = self.dispatcher.sessions_for(name)
        log.info("tunnel %s: terminating %d IKE SA(s) on request; it stays down until initiated", name,
                 len(sessions))
        self.tunnels[name].retry_at = None
        self.tunnels[name].held = True
        self.dispatcher.delete_tunnel(name, now)
        return len(sessions)

    def rekey(self, name: str, kind: str, now: float) -> int:
        sessions = [s for s in self.dispatcher.sessions_for(name) if s.established]
        log.info("tunnel %s: %s rekey on request", name, kind)
        (self.dispatcher.rekey_ike if kind == "ike" else self.dispatcher.rekey_child)(name, now)
        return len(sessions)

    def take_up_changed(self) -> bool:
        """Whether a tunnel came up or went down since last asked (the gateway then re-reads up_subnets)."""
        changed, self._up_changed = self._up_changed, False
        return changed

    def up_subnets(self) -> list[IPNetwork]:
        """The remote subnets of the tunnels with an outbound SA (traffic to them flows from here)."""
        return [net for r in self.tunnels.values() if any(lane.outbound_spi is not None for lane in r.lanes)
                for net in r.config.remote_subnets]

    def current_ike(self, name: str) -> IkeSession | None:
        """The tunnel's established IKE SA (the one status and metrics describe), if any."""
        return next((s for s in self.dispatcher.sessions_for(name) if s.established), None)

    def keepalive_targets(self) -> list[Peer]:
        """Where to send a NAT keepalive (RFC 3948 §2.3): peers of tunnels with an outbound SA."""
        return [r.peer for r in self.tunnels.values()
                if r.peer is not None and any(lane.outbound_spi is not None for lane in r.lanes)]

    # -- the data plane's events --------------------------------------------------------------------------
    def on_data_events(self, events: Iterable[DataEvent], now: float) -> bool:
        """Everything a forwarder reported (this process's, or a worker's), in the order it happened.
        True when IKE may have something to send or a new deadline (PeerAlive only moves DPD later)."""
        ike = False
        for event in events:
            ike = ike or not isinstance(event, (PeerAlive, SaInUse, PeerMoved))
            if isinstance(event, IkeMessage):
                self.dispatcher.receive_datagram(event.data, event.peer, NAT_T_PORT, now)
            elif isinstance(event, PeerAlive):
                self.dispatcher.note_esp_received(event.tunnel, now)  # no DPD while ESP flows (§2.4)
            elif isinstance(event, SaInUse):
                self._sa_in_use(event.tunnel, event.spi)
            elif isinstance(event, PeerMoved):
                self._peer_moved(event.tunnel, event.peer)
            elif isinstance(event, VolumeLimit):
                self._volume_limit(event, now)
            elif isinstance(event, NeedSa):
                self.on_need_sa(event.tunnel, now, event.reason.value)
            elif isinstance(event, UnknownSpi):
                self._unknown_spi(event.host, now)
        return ike

    def on_need_sa(self, name: str, now: float, reason: str = "no_sa") -> None:
        runtime = self.tunnels.get(name)
        if runtime is None:
            if any(t.name == name for t in self.config.tunnels):  # manually keyed: no new SA can be made
                log.error("tunnel %s needs a new SA (%s); with manual keys, install new keys and reload", name, reason)
            return  # or removed by a reload
        if runtime.config.ike is not None and runtime.config.ike.start is not StartMode.RESPOND:
            self.initiate(name, now)

    def _unknown_spi(self, host: str, now: float) -> None:
        """ESP for SPIs we do not know, from a configured peer that has no IKE SA with us: the peer
        still uses SAs from before we restarted. Start a new IKE SA (with INITIAL_CONTACT, so the peer
        drops the stale ones) instead of waiting for its dead-peer detection. Also in respond mode. On
        the standby of a pair it means more: the virtual address is ours now (nothing reaches a socket on
        an address that is not local), so take over at once rather than when keepalived's notify runs."""
        if self.standby and any(_known_at(r, host) for r in self.tunnels.values()):
            log.warning("HA: ESP from %s reaches the virtual address here: taking over (before keepalived's "
                        "notify)", host)
            self.set_role(True, now)
            return
        for name, runtime in self.tunnels.items():
            if not _known_at(runtime, host) or self.dispatcher.sessions_for(name):
                continue
            if runtime.unknown_spi_at is not None and now - runtime.unknown_spi_at < UNKNOWN_SPI_HOLDOFF:
                continue
            runtime.unknown_spi_at = now
            log.info("tunnel %s: ESP with unknown SPIs from %s (did we restart?)", name, host)
            self.initiate(name, now)

    def _sa_in_use(self, name: str, spi: int) -> None:
        """ESP on the new SA of a rekey we answered shows the peer has it: our outbound moves there too."""
        runtime = self.tunnels.get(name)
        if runtime is None:
            return
        for worker, lane in enumerate(runtime.lanes):
            if lane.pending_out is not None and lane.pending_out[0] == spi:
                self._switch_outbound(runtime, worker, lane.pending_out[1], lane.pending_out[2])

    def _peer_moved(self, name: str, peer: Peer) -> None:
        """NAT rebinding seen by one worker (authenticated ESP from a new address): all send there."""
        runtime = self.tunnels.get(name)
        if runtime is None or peer == runtime.peer:
            return
        log.info("tunnel %s: peer moved to %s:%d (authenticated ESP)", name, *peer)
        runtime.peer = peer
        for plane in self.planes:
            plane.set_peer(name, peer)

    def _volume_limit(self, event: VolumeLimit, now: float) -> None:
        """Volume lifetimes (RFC 4301 §4.4.2.1) and sequence-number exhaustion: ask for a rekey at the
        soft limit; past the hard limit, drop the outbound SA (traffic fails closed until a new one
        exists) once the rekey asked for at the soft limit had VOLUME_GRACE seconds."""
        runtime = self.tunnels.get(event.tunnel)
        if runtime is None:
            return
        worker = next((w for w, lane in enumerate(runtime.lanes) if lane.outbound_spi == event.spi), None)
        if worker is None:
            return  # already replaced
        lane = runtime.lanes[worker]
        if not event.hard:
            lane.volume_rekey_spi, lane.volume_rekey_at = event.spi, now
            log.info("tunnel %s: rekeying after the volume limit of SA %#010x", event.tunnel, event.spi)
            self.dispatcher.rekey_child(event.tunnel, now)
        else:
            lane.drop_at = max(now, lane.volume_rekey_at + VOLUME_GRACE)
            self._timed.add(event.tunnel)
            self._drop_over_volume(now)

    def _drop_over_volume(self, now: float) -> None:
        for name, runtime in self._timed_tunnels():
            for worker, lane in enumerate(runtime.lanes):
                if lane.drop_at is not None and lane.drop_at <= now:
                    lane.drop_at = None
                    if lane.outbound_spi is not None and lane.outbound_spi == lane.volume_rekey_spi:
                        log.warning("tunnel %s: outbound SA %#010x is past its hard volume limit and no new SA "
                                    "came within %.0f s; dropping it", name, lane.outbound_spi, VOLUME_GRACE)
                        self.planes[worker].remove_outbound(name)
                        lane.outbound_spi = None

    # -- timers -------------------------------------------------------------------------------------------
    def handle_timer(self, now: float) -> None:
        self.dispatcher.handle_timer(now)
        while self._retiring and self._retiring[0][0] <= now:
            _, worker, spi, _ = self._retiring.pop(0)
            self.planes[worker].remove_inbound(spi)
        self._drop_over_volume(now)
        for name, runtime in self._timed_tunnels():
            if runtime.retry_at is not None and now >= runtime.retry_at:
                self.initiate(name, now)

    def get_timer(self) -> float | None:
        times = [self.dispatcher.get_timer(), self._retiring[0][0] if self._retiring else None]
        for _, runtime in self._timed_tunnels():
            times.append(runtime.retry_at)
            times += [lane.drop_at for lane in runtime.lanes]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def _timed_tunnels(self) -> list[tuple[str, TunnelRuntime]]:
        """The tunnels with a retry or a volume drop pending (forgetting those that have none any more)."""
        found = []
        for name in list(self._timed):
            runtime = self.tunnels.get(name)
            if runtime is None or (runtime.retry_at is None and all(lane.drop_at is None for lane in runtime.lanes)):
                self._timed.discard(name)
            else:
                found.append((name, runtime))
        return found

    # -- IKE events ---------------------------------------------------------------------------------------
    def process_events(self, now: float) -> None:
        while (event := self.dispatcher.next_event()) is not None:
            self._apply(event, now)

    def _apply(self, event: Event, now: float) -> None:
        runtime = self.tunnels.get(event.tunnel)
        if runtime is None:  # a tunnel a reload removed, whose last words are still arriving
            log.debug("tunnel %s (removed): %s ignored", event.tunnel, type(event).__name__)
            return
        if isinstance(event, ReauthDue):
            return self._reauthenticate(runtime, event, now)
        if isinstance(event, RevocationQuery):
            log.info("tunnel %s: asking OCSP responder %s about the peer's certificate", event.tunnel, event.url)
            self._ocsp_queries.append(event)
            return None
        if isinstance(event, IkeSaEstablished):
            runtime.stats.handshakes_ok += 1
            session = self.dispatcher.find(event.spi_i, event.spi_r)
            if session is not None and session is runtime.reauth:
                self._reauthenticated(runtime, now)
            if session is not None and session.started_at is not None:
                runtime.stats.observe_handshake(now - session.started_at)
            self._log_ike_keys(event.spi_i, event.spi_r)
            log.info("tunnel %s: IKE SA established with %s (%s, %s)", event.tunnel, event.remote[0], event.suite,
                     "initiator" if event.initiator else "responder")
        elif isinstance(event, ChildSaEstablished):
            self._install(runtime, event, now)
        elif isinstance(event, ChildSaDeleted):
            self._remove(runtime, event.spi_in, event.spi_out, now)
            log.info("tunnel %s: Child SA deleted (SPI in %#010x, out %#010x)", event.tunnel, event.spi_in,
                     event.spi_out)
        elif isinstance(event, IkeSaRekeyed):
            runtime.stats.ike_rekeys += 1
            self._log_ike_keys(event.new_spi_i, event.new_spi_r)
            log.info("tunnel %s: IKE SA rekeyed (SPIs %s_i %s_r -> %s_i %s_r)", event.tunnel, event.old_spi_i.hex(),
                     event.old_spi_r.hex(), event.new_spi_i.hex(), event.new_spi_r.hex())
        elif isinstance(event, ChildSaFailed):
            log.warning("tunnel %s: Child SA not established: %s", event.tunnel, event.reason)
        else:
            self._ike_sa_gone(runtime, event, now)

    def _reauthenticate(self, runtime: TunnelRuntime, event: ReauthDue, now: float) -> None:
        """RFC 7296 §2.8.3, make-before-break as strongSwan does it: a new IKE SA (full IKE_SA_INIT and
        IKE_AUTH, certificates checked again as of now, no INITIAL_CONTACT) while the old one carries
        the traffic; _reauthenticated() deletes the old one once the new one stands."""
        name = event.tunnel
        old = self.dispatcher.find(event.spi_i, event.spi_r)
        if old is None or runtime.reauth is not None or runtime.held:
            return
        log.info("tunnel %s: re-authenticating (a new IKE SA with %s; the old one stays until it stands)",
                 name, old.remote[0])
        runtime.reauth_old = self.dispatcher.sessions_for(name)
        runtime.reauth = self.dispatcher.initiate(name, now, self.config.ike_port, address=old.remote[0],
                                                  initial_contact=False)

    def _reauthenticated(self, runtime: TunnelRuntime, now: float) -> None:
        old, runtime.reauth, runtime.reauth_old = runtime.reauth_old, None, []
        log.info("tunnel %s: re-authenticated; deleting the %d IKE SA(s) it replaces", runtime.config.name, len(old))
        self.dispatcher.delete_sessions(old, now)

    def _reauth_failed(self, runtime: TunnelRuntime, event: IkeSaFailed, now: float) -> None:
        """The new IKE SA failed. Refused authentication (a certificate expired or revoked since, a key
        withdrawn): the old SAs end now, as the peer would not be accepted again. Anything else (a lost
        exchange): the old SAs carry on and re-authentication is tried again in REAUTH_RETRY seconds."""
        old, runtime.reauth, runtime.reauth_old = runtime.reauth_old, None, []
        if event.notify == NotifyType.AUTHENTICATION_FAILED:
            log.warning("tunnel %s: re-authentication refused (%s); deleting the old IKE SA(s)",
                        runtime.config.name, event.reason)
            self.dispatcher.delete_sessions(old, now)
            return
        for session in old:
            session.reauth_requested = False
            session.reauth_at = now + REAUTH_RETRY
        self.dispatcher.reschedule(old, now)
        log.warning("tunnel %s: re-authentication failed (%s); trying again in %d s", runtime.config.name,
                    event.reason, REAUTH_RETRY)

    def _ike_sa_gone(self, runtime: TunnelRuntime, event: IkeSaFailed | IkeSaDeleted, now: float) -> None:
        reauth = runtime.reauth
        if isinstance(event, IkeSaFailed) and reauth is not None and reauth.state is IkeState.CLOSED:
            self._reauth_failed(runtime, event, now)
        if isinstance(event, IkeSaFailed):  # a set-up refused or timed out, or an SA that died (DPD)
            failed = runtime.stats.handshakes_failed
            key = _notify_name(event.notify)
            failed[key] = failed.get(key, 0) + 1
        level = logging.WARNING if isinstance(event, IkeSaFailed) else logging.INFO
        log.log(level, "tunnel %s: IKE SA %s: %s", event.tunnel,
                "failed" if isinstance(event, IkeSaFailed) else "deleted", event.reason)
        if _restarts(runtime.config) and not runtime.held and not self.dispatcher.sessions_for(event.tunnel):
            hubs = len(runtime.config.peer.addresses)
            if hubs > 1:  # the next hub, at once; the back-off only after the whole list failed
                runtime.hub = (runtime.hub + 1) % hubs
                log.warning("tunnel %s: trying hub %d of %d (%s) next", event.tunnel, runtime.hub + 1, hubs,
                            runtime.config.peer.addresses[runtime.hub])
                if runtime.hub != 0:
                    runtime.retry_at = now
                    self._timed.add(event.tunnel)
                    return
            runtime.retry_at = now + runtime.retry_delay
            runtime.retry_delay = min(runtime.retry_delay * 2, MAX_RETRY_DELAY)
            self._timed.add(event.tunnel)

    def _log_ike_keys(self, spi_i: bytes, spi_r: bytes) -> None:
        session = self.dispatcher.find(spi_i, spi_r)
        if self.ike_key_logger is not None and session is not None and session.crypto is not None:
            crypto = session.crypto
            self.ike_key_logger(session.spi_i, session.spi_r, crypto.keys, crypto.suite.key_bits)

    def _install(self, runtime: TunnelRuntime, event: ChildSaEstablished, now: float) -> None:
        """Inbound at once (the peer may use it as soon as it has our answer); outbound at once too,
        unless this answers the peer's rekey of the SA we still send on: make-before-break both ways."""
        name, worker = event.tunnel, event.spi_in % len(self.planes)
        plane, lane = self.planes[worker], runtime.lanes[worker]
        runtime.stats.children += 1
        runtime.held = False  # up again (the peer set it up): our usual policies apply once more
        if lane.outbound_spi is not None:
            runtime.stats.child_rekeys += 1
        plane.install_inbound(name, event.spi_in, event.key_in.reveal(), runtime.config.replay_window)
        if self.sync is not None:
            self.sync.keys[event.spi_in] = (event.key_in.reveal(), event.key_out.reveal())
        runtime.peer = (event.remote[0], event.remote[1])
        for each in self.planes:
            each.set_peer(name, runtime.peer)
        runtime.inbound_spis.append(event.spi_in)
        lane.usable[event.spi_in] = (event.spi_out, event.key_out.reveal())
        if event.replaces_out is not None and event.replaces_out == lane.outbound_spi:
            lane.pending_out = (event.spi_in, event.spi_out, event.key_out.reveal(), event.replaces_out)
        else:
            self._switch_outbound(runtime, worker, event.spi_out, event.key_out.reveal())
        runtime.established_at = now
        runtime.retry_delay = RETRY_DELAY
        if self.key_logger is not None:
            self.key_logger(event)
        workers = f", worker {worker}" if len(self.planes) > 1 else ""
        log.info("tunnel %s: Child SA established (%s, SPI in %#010x, out %#010x, %s === %s, ESP to %s:%d%s)",
                 name, event.suite, event.spi_in, event.spi_out, ",".join(map(str, event.local_ts)),
                 ",".join(map(str, event.remote_ts)), *event.remote, workers)

    def _switch_outbound(self, runtime: TunnelRuntime, worker: int, spi: int, key: bytes) -> None:
        name, plane, lane = runtime.config.name, self.planes[worker], runtime.lanes[worker]
        self._up_changed = self._up_changed or lane.outbound_spi is None
        plane.install_outbound(name, spi, key, runtime.limits)
        lane.outbound_spi = spi
        lane.pending_out = None
        lane.drop_at = None

    def adopt_child(self, runtime: TunnelRuntime, remote: Peer, spi_in: int, spi_out: int, key_in: bytes,
                    key_out: bytes, seq: int, highest: int) -> None:
        """A Child SA taken over from the other gateway of the pair (app/hasync.py): installed as _install
        does, its outbound sequence numbers from `seq` on, its replay window past `highest`."""
        plane = self.planes[0]
        assert isinstance(plane, LocalPlane)  # ha.sync needs workers: 1 (config/loader.py)
        name, lane = runtime.config.name, runtime.lanes[0]
        plane.install_inbound(name, spi_in, key_in, runtime.config.replay_window)
        inbound = plane.forwarder.inbound_sa(spi_in)
        if inbound is not None:
            inbound.window.skip_to(highest)
        runtime.peer = (remote[0], remote[1])
        plane.set_peer(name, runtime.peer)
        runtime.inbound_spis.append(spi_in)
        lane.usable[spi_in] = (spi_out, key_out)
        self._switch_outbound(runtime, 0, spi_out, key_out)
        outbound = plane.forwarder.outbound_sa(name)
        if outbound is not None:
            outbound.seq = min(seq, outbound.seq_limit - 1)

    def _remove(self, runtime: TunnelRuntime, spi_in: int, spi_out: int, now: float) -> None:
        worker = spi_in % len(self.planes)
        lane = runtime.lanes[worker]
        if self.sync is not None:
            self.sync.keys.pop(spi_in, None)
        if spi_in in runtime.inbound_spis:
            runtime.inbound_spis.remove(spi_in)
            self._retiring.append((now + INBOUND_GRACE, worker, spi_in, runtime.config.name))
        lane.usable.pop(spi_in, None)
        pending = lane.pending_out
        if pending is not None and pending[0] == spi_in:
            lane.pending_out = None  # the answered rekey's SA went first (a redundant collision SA)
        elif lane.outbound_spi == spi_out:
            if pending is not None and pending[3] == spi_out:
                self._switch_outbound(runtime, worker, pending[1], pending[2])  # the peer has the new one
            elif lane.usable:
                self._switch_outbound(runtime, worker, *list(lane.usable.values())[-1])  # the newest left
            else:
                self.planes[worker].remove_outbound(runtime.config.name)  # fail closed until a new SA exists
                lane.outbound_spi = None
                self._up_changed = True


def _known_at(runtime: TunnelRuntime, host: str) -> bool:
    """Whether the tunnel's peer may be at this address: configured (any of its hubs) or resolved."""
    return host == runtime.resolved or host in map(str, runtime.config.peer.addresses)


def _restarts(tunnel: Tunnel) -> bool:
    """dpd_action (default: restart when the tunnel initiates, else clear)."""
    ike = tunnel.ike
    if ike is None:
        return False
    return ike.dpd_action == "restart" if ike.dpd_action is not None else ike.start is StartMode.INITIATE


def _notify_name(notify: int | None) -> str:
    if notify is None:
        return "none"
    try:
        return NotifyType(notify).name.lower()
    except ValueError:
        return str(notify)
