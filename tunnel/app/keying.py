"""Glue between the IKE cores and the data plane: builds each tunnel's IkeConfig from the gateway config
and turns IKE events into ESP SAs. No sockets here; gateway.py moves the bytes.

The data plane is one or more workers (gateway.workers), each a forwarder with Child SAs of its own: a
Child SA belongs to worker spi_in % workers (the IKE core picks SPIs that way), and each worker has its
own outbound SA per tunnel, so sequence numbers never need sharing. Worker 0 is the forwarder in this
process; the others are reached through a DataPlane proxy (tunnel/app/workers.py).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from policy.ts import ranges
from tunnel.config.model import GatewayConfig, StartMode, Tunnel
from tunnel.dataplane.forwarder import Forwarder
from tunnel.esp.sa import InboundSa, OutboundSa
from tunnel.app.reload import ReloadPlan
from tunnel.ike.certs import CertVerifier, PeerIdentity
from tunnel.ike.config import CertAuth, IkeConfig, PskAuth
from tunnel.ike.constants import NotifyType
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.session import IkeSession
from tunnel.ike.events import (
    ChildSaDeleted, ChildSaEstablished, ChildSaFailed, Event, IkeSaDeleted, IkeSaEstablished, IkeSaFailed,
    IkeSaRekeyed,
)

log = logging.getLogger("sitelink.ike")

RETRY_DELAY = 5.0  # seconds before an initiating tunnel tries again after a failed or deleted IKE SA
MAX_RETRY_DELAY = 60.0  # the delay doubles after each failure up to this, and resets once a Child SA is up
UNKNOWN_SPI_HOLDOFF = 5.0  # at most one IKE SA started per tunnel this often because of unknown-SPI ESP
KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §2.3 NAT keepalive period
VOLUME_CHECK_INTERVAL = 1.0  # how often byte/packet/sequence-number use of outbound SAs is looked at
SEQ_SOFT_LIMIT = 3 * 2**30  # rekey long before the 32-bit sequence numbers run out (RFC 4303 §3.3.3)
HARD_VOLUME_FACTOR = 1.1  # past soft * this without a new SA, the outbound SA is dropped (fail closed)
VOLUME_GRACE = 5.0  # ... but only when the rekey asked for at the soft limit has had this long
# A deleted Child SA's inbound half keeps accepting this long, for packets the peer sealed before it
# switched to the new SA and that the network delivers late (make-before-break, RFC 7296 §2.8).
INBOUND_GRACE = 2.0
KeyLogger = Callable[[ChildSaEstablished], None]


class DataPlane(Protocol):
    """What the control plane needs of one worker's forwarder (LocalPlane here, a proxy for others)."""

    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None: ...
    def install_outbound(self, tunnel: str, spi: int, key: bytes) -> None: ...
    def remove_inbound(self, spi: int) -> None: ...
    def remove_outbound(self, tunnel: str) -> None: ...
    def set_peer(self, tunnel: str, peer: tuple[str, int]) -> None: ...
    def peer(self, tunnel: str) -> tuple[str, int]: ...
    def inbound_used(self, spi: int) -> bool: ...
    def rx_packets(self, tunnel: str) -> int: ...
    def tx_bytes(self, tunnel: str) -> int: ...
    def outbound_state(self, tunnel: str) -> tuple[int, int] | None: ...  # (SPI, last sequence number)


class LocalPlane:
    """A Forwarder in this process as a DataPlane."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None:
        self.forwarder.install_inbound(tunnel, InboundSa(spi, key, window))

    def install_outbound(self, tunnel: str, spi: int, key: bytes) -> None:
        self.forwarder.install_outbound(tunnel, OutboundSa(spi, key))

    def remove_inbound(self, spi: int) -> None:
        self.forwarder.remove_inbound(spi)

    def remove_outbound(self, tunnel: str) -> None:
        self.forwarder.remove_outbound(tunnel)

    def set_peer(self, tunnel: str, peer: tuple[str, int]) -> None:
        self.forwarder.tunnels[tunnel].peer = peer

    def peer(self, tunnel: str) -> tuple[str, int]:
        return self.forwarder.tunnels[tunnel].peer

    def inbound_used(self, spi: int) -> bool:
        return self.forwarder.inbound_used(spi)

    def rx_packets(self, tunnel: str) -> int:
        return self.forwarder.tunnels[tunnel].counters.rx_packets

    def tx_bytes(self, tunnel: str) -> int:
        return self.forwarder.tunnels[tunnel].counters.tx_bytes

    def outbound_state(self, tunnel: str) -> tuple[int, int] | None:
        sa = self.forwarder.tunnels[tunnel].outbound
        return None if sa is None else (sa.spi, sa.seq)


@dataclass
class Lane:
    """One worker's side of a tunnel: its outbound SA and the state that goes with it."""

    outbound_spi: int | None = None
    tx_bytes_base: int = 0  # the worker's tx_bytes for the tunnel when this outbound SA was installed
    volume_rekey_spi: int | None = None  # outbound SPI a volume rekey was already asked for
    volume_rekey_at: float = 0.0
    # The new SA of a rekey the peer asked for: (its inbound SPI, its outbound SPI and key, the outbound
    # SPI it replaces). Outbound switches when the peer deletes the old SA or sends on the new one.
    pending_out: tuple[int, int, bytes, int] | None = field(default=None, repr=False)


# Upper bounds (seconds) of the IKE handshake-duration histogram: a LAN-speed exchange takes a few ms,
# a lost message adds the 1 s retransmission timeout, a dead or refusing peer ends as a failure instead.
HANDSHAKE_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class IkeStats:
    """Plain tallies for the metrics exporter, kept where the events are applied."""

    handshakes_ok: int = 0
    # IKE_SA_INIT to IKE_AUTH done, per established IKE SA: counts per HANDSHAKE_BOUNDS bucket (+Inf last)
    handshake_buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDSHAKE_BOUNDS) + 1))
    handshake_seconds: float = 0.0
    # IKE SAs that failed (set-up refused or timed out, or a dead peer), by the IKE notify that said why
    # (lower-case name), "none" when none did (timeouts)
    handshakes_failed: dict[str, int] = field(default_factory=dict)
    children: int = 0  # Child SAs installed
    child_rekeys: int = 0  # ... of which replaced one of ours
    ike_rekeys: int = 0

    def observe_handshake(self, seconds: float) -> None:
        self.handshake_buckets[bisect.bisect_left(HANDSHAKE_BOUNDS, seconds)] += 1
        self.handshake_seconds += seconds


@dataclass
class TunnelRuntime:
    config: Tunnel
    lanes: list[Lane]
    inbound_spis: list[int] = field(default_factory=list)
    retry_at: float | None = None
    retry_delay: float = RETRY_DELAY
    established_at: float | None = None
    unknown_spi_at: float | None = None
    rx_seen: int = 0  # inbound ESP packets counted at the last liveness note
    peer: tuple[str, int] | None = None  # where ESP goes; a worker that sees the peer move tells the others
    stats: IkeStats = field(default_factory=IkeStats)
    # Terminated by the operator: stay down (no restart, no on-demand or unknown-SPI initiation) until
    # `sitelink initiate`, or until the peer sets the tunnel up again.
    held: bool = False

    @property
    def outbound_spi(self) -> int | None:
        """Worker 0's outbound SPI (with one worker: the tunnel's)."""
        return self.lanes[0].outbound_spi


class ControlPlane:
    def __init__(self, config: GatewayConfig, forwarder: Forwarder | Sequence[DataPlane],
                 random_bytes: Callable[[int], bytes], key_logger: KeyLogger | None = None,
                 ike_key_logger: Callable[[bytes, bytes, object, int], None] | None = None) -> None:
        """forwarder: this process's Forwarder (one worker), or one DataPlane per worker."""
        self.config = config
        self.planes: list[DataPlane] = [LocalPlane(forwarder)] if isinstance(forwarder, Forwarder) else list(forwarder)
        self.key_logger = key_logger
        self.ike_key_logger = ike_key_logger  # opt-in (debugging): IKE SA keys for Wireshark
        self.tunnels = {t.name: self._runtime(t) for t in config.tunnels if t.ike is not None}
        self.dispatcher = IkeDispatcher(self.ike_configs(config), random_bytes)
        self._retiring: list[tuple[float, int, int, str]] = []  # (remove at, worker, inbound SPI, tunnel)
        self._accept_ike()

    def _runtime(self, tunnel: Tunnel) -> TunnelRuntime:
        return TunnelRuntime(tunnel, [Lane() for _ in self.planes])

    def _accept_ike(self) -> None:
        for plane in self.planes:
            if self.tunnels and isinstance(plane, LocalPlane):
                plane.forwarder.accept_ike = True

    def ike_configs(self, config: GatewayConfig) -> list[tuple[IkeConfig, str]]:
        """Each IKE tunnel's IkeConfig (reading the PKI files when a tunnel uses certificates)."""
        tunnels = [t for t in config.tunnels if t.ike is not None]
        cert_auth = _cert_auth(config) if any(t.ike.auth == "cert" for t in tunnels) else None
        return [(_ike_config(t, cert_auth, len(self.planes)), str(t.peer.address)) for t in tunnels]

    def reconfigure(self, config: GatewayConfig, plan: ReloadPlan, now: float,
                    configs: list[tuple[IkeConfig, str]] | None = None) -> None:
        """A reload (tunnel/app/reload.py): the IKE SAs of removed and replaced tunnels are deleted at the
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
        for tunnel in plan.new:
            if tunnel.ike is not None:
                self.tunnels[tunnel.name] = self._runtime(tunnel)
        self._accept_ike()
        for tunnel in plan.new:
            if tunnel.ike is not None and tunnel.ike.start is StartMode.INITIATE:
                self.initiate(tunnel.name, now)

    def start(self, now: float) -> None:
        for name, runtime in self.tunnels.items():
            if runtime.config.ike.start is StartMode.INITIATE:
                self.initiate(name, now)

    def initiate(self, name: str, now: float, operator: bool = False) -> None:
        runtime = self.tunnels[name]
        if operator:
            runtime.held = False
        elif runtime.held:
            return
        if self.dispatcher.sessions_for(name):
            return  # one IKE SA at a time per tunnel (until rekeying arrives)
        log.info("tunnel %s: initiating IKE SA with %s", name, self.tunnels[name].config.peer.address)
        self.tunnels[name].retry_at = None
        self.dispatcher.initiate(name, now, self.config.ike_port)

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

    def current_ike(self, name: str) -> IkeSession | None:
        """The tunnel's established IKE SA (the one status and metrics describe), if any."""
        return next((s for s in self.dispatcher.sessions_for(name) if s.established), None)

    def on_unknown_spi(self, peers: set[str], now: float) -> None:
        """ESP for SPIs we do not know, from a configured peer that has no IKE SA with us: the peer
        still uses SAs from before we restarted. Start a new IKE SA (with INITIAL_CONTACT, so the peer
        drops the stale ones) instead of waiting for its dead-peer detection. Also in respond mode."""
        for name, runtime in self.tunnels.items():
            if str(runtime.config.peer.address) not in peers or self.dispatcher.sessions_for(name):
                continue
            if runtime.unknown_spi_at is not None and now - runtime.unknown_spi_at < UNKNOWN_SPI_HOLDOFF:
                continue
            runtime.unknown_spi_at = now
            log.info("tunnel %s: ESP with unknown SPIs from %s (did we restart?)", name, runtime.config.peer.address)
            self.initiate(name, now)

    def check_volume(self, now: float) -> None:
        """Volume lifetimes (RFC 4301 §4.4.2.1) and sequence-number exhaustion: ask for a rekey at the
        soft limit; if no new SA has replaced this one VOLUME_GRACE seconds later and the hard limit is
        passed too, drop the outbound SA so traffic fails closed until a new one exists."""
        for name, runtime in self.tunnels.items():
            ike = runtime.config.ike
            for plane, lane in zip(self.planes, runtime.lanes):
                state = plane.outbound_state(name)
                if state is None or state[0] != lane.outbound_spi:
                    continue
                spi, seq = state
                used_bytes = plane.tx_bytes(name) - lane.tx_bytes_base
                if lane.volume_rekey_spi != spi:
                    if seq >= SEQ_SOFT_LIMIT or _over(seq, used_bytes, ike.rekey_packets, ike.rekey_bytes):
                        lane.volume_rekey_spi, lane.volume_rekey_at = spi, now
                        log.info("tunnel %s: rekeying after %d packets / %d bytes on SA %#010x", name, seq,
                                 used_bytes, spi)
                        self.dispatcher.rekey_child(name, now)
                elif now - lane.volume_rekey_at >= VOLUME_GRACE and _over(
                        seq, used_bytes, ike.rekey_packets * HARD_VOLUME_FACTOR, ike.rekey_bytes * HARD_VOLUME_FACTOR):
                    log.warning("tunnel %s: outbound SA %#010x is past its hard volume limit and no new SA came "
                                "within %.0f s; dropping it", name, spi, VOLUME_GRACE)
                    plane.remove_outbound(name)
                    lane.outbound_spi = None

    def keepalive_targets(self) -> list[tuple[str, int]]:
        """Where to send a NAT keepalive (RFC 3948 §2.3): peers of tunnels with an outbound SA."""
        return [self.planes[0].peer(name) for name, r in self.tunnels.items()
                if any(lane.outbound_spi is not None for lane in r.lanes)]

    def on_need_sa(self, name: str, now: float) -> None:
        runtime = self.tunnels.get(name)
        if runtime is None:
            return
        if runtime.config.ike.start is not StartMode.RESPOND:
            self.initiate(name, now)

    def handle_timer(self, now: float) -> None:
        self.dispatcher.handle_timer(now)
        while self._retiring and self._retiring[0][0] <= now:
            _, worker, spi, _ = self._retiring.pop(0)
            self.planes[worker].remove_inbound(spi)
        for name, runtime in self.tunnels.items():
            if runtime.retry_at is not None and now >= runtime.retry_at:
                self.initiate(name, now)

    def get_timer(self) -> float | None:
        times = [t for t in [self.dispatcher.get_timer(), *(r.retry_at for r in self.tunnels.values()),
                             self._retiring[0][0] if self._retiring else None] if t is not None]
        return min(times) if times else None

    def note_esp_received(self, now: float) -> None:
        """Authenticated ESP counts as liveness (RFC 7296 §2.4): no DPD while traffic flows. ESP on the
        new SA of a rekey we answered shows the peer has it: our outbound traffic moves there too."""
        for name, runtime in self.tunnels.items():
            rx = sum(plane.rx_packets(name) for plane in self.planes)
            if rx == runtime.rx_seen:
                continue
            runtime.rx_seen = rx
            self.dispatcher.note_esp_received(name, now)
            for worker, (plane, lane) in enumerate(zip(self.planes, runtime.lanes)):
                pending = lane.pending_out
                if pending is not None and plane.inbound_used(pending[0]):
                    self._switch_outbound(runtime, worker, pending[1], pending[2])
            self._follow_peer(name, runtime)

    def _follow_peer(self, name: str, runtime: TunnelRuntime) -> None:
        """NAT rebinding seen by one worker (authenticated ESP from a new address): all send there."""
        for plane in self.planes:
            peer = plane.peer(name)
            if runtime.peer is not None and peer != runtime.peer:
                runtime.peer = peer
                for other in self.planes:
                    if other is not plane:
                        other.set_peer(name, peer)
                return

    def process_events(self, now: float) -> None:
        while (event := self.dispatcher.next_event()) is not None:
            self._apply(event, now)

    def _apply(self, event: Event, now: float) -> None:
        runtime = self.tunnels.get(event.tunnel)
        if runtime is None:  # a tunnel a reload removed, whose last words are still arriving
            log.debug("tunnel %s (removed): %s ignored", event.tunnel, type(event).__name__)
            return
        if isinstance(event, IkeSaEstablished):
            runtime.stats.handshakes_ok += 1
            session = self.dispatcher.sessions.get(event.spi_i)
            if session is not None and session.started_at is not None:
                runtime.stats.observe_handshake(now - session.started_at)
            self._log_ike_keys(event.spi_i)
            log.info("tunnel %s: IKE SA established with %s (%s, %s)", event.tunnel, event.remote[0], event.suite,
                     "initiator" if event.initiator else "responder")
        elif isinstance(event, ChildSaEstablished):
            self._install(runtime, event, now)
        elif isinstance(event, ChildSaDeleted):
            self._remove(runtime, event.spi_in, event.spi_out, now)
            log.info("tunnel %s: Child SA deleted (SPI in %#010x, out %#010x)", event.tunnel, event.spi_in, event.spi_out)
        elif isinstance(event, IkeSaRekeyed):
            runtime.stats.ike_rekeys += 1
            self._log_ike_keys(event.new_spi_i)
            log.info("tunnel %s: IKE SA rekeyed (SPIs %s_i %s_r -> %s_i %s_r)", event.tunnel, event.old_spi_i.hex(),
                     event.old_spi_r.hex(), event.new_spi_i.hex(), event.new_spi_r.hex())
        elif isinstance(event, ChildSaFailed):
            log.warning("tunnel %s: Child SA not established: %s", event.tunnel, event.reason)
        elif isinstance(event, (IkeSaFailed, IkeSaDeleted)):
            if isinstance(event, IkeSaFailed):  # a set-up refused or timed out, or an SA that died (DPD)
                failed = runtime.stats.handshakes_failed
                key = _notify_name(event.notify)
                failed[key] = failed.get(key, 0) + 1
            level = logging.WARNING if isinstance(event, IkeSaFailed) else logging.INFO
            log.log(level, "tunnel %s: IKE SA %s: %s", event.tunnel,
                    "failed" if isinstance(event, IkeSaFailed) else "deleted", event.reason)
            if _restarts(runtime.config) and not runtime.held and not self.dispatcher.sessions_for(event.tunnel):
                runtime.retry_at = now + runtime.retry_delay
                runtime.retry_delay = min(runtime.retry_delay * 2, MAX_RETRY_DELAY)

    def _log_ike_keys(self, spi_i: bytes) -> None:
        session = self.dispatcher.sessions.get(spi_i)
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
        runtime.peer = (event.remote[0], event.remote[1])
        for each in self.planes:
            each.set_peer(name, runtime.peer)
        runtime.inbound_spis.append(event.spi_in)
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
        plane.install_outbound(name, spi, key)
        lane.outbound_spi = spi
        lane.pending_out = None
        lane.tx_bytes_base = plane.tx_bytes(name)

    def _remove(self, runtime: TunnelRuntime, spi_in: int, spi_out: int, now: float) -> None:
        worker = spi_in % len(self.planes)
        lane = runtime.lanes[worker]
        if spi_in in runtime.inbound_spis:
            runtime.inbound_spis.remove(spi_in)
            self._retiring.append((now + INBOUND_GRACE, worker, spi_in, runtime.config.name))
        pending = lane.pending_out
        if pending is not None and pending[0] == spi_in:
            lane.pending_out = None  # the answered rekey's SA went first (a redundant collision SA)
        elif lane.outbound_spi == spi_out:
            if pending is not None and pending[3] == spi_out:
                self._switch_outbound(runtime, worker, pending[1], pending[2])  # the peer has the new one
            else:
                self.planes[worker].remove_outbound(runtime.config.name)  # fail closed until a new SA exists
                lane.outbound_spi = None


def _restarts(tunnel: Tunnel) -> bool:
    """dpd_action (default: restart when the tunnel initiates, else clear)."""
    action = tunnel.ike.dpd_action
    return action == "restart" if action is not None else tunnel.ike.start is StartMode.INITIATE


def _over(packets: int, used_bytes: int, packet_limit: float, byte_limit: float) -> bool:
    return bool(packet_limit and packets >= packet_limit) or bool(byte_limit and used_bytes >= byte_limit)


def _ike_config(tunnel: Tunnel, cert_auth: CertAuth | None, workers: int = 1) -> IkeConfig:
    ike = tunnel.ike
    local, remote = PeerIdentity.parse(ike.local_id), PeerIdentity.parse(ike.remote_id)
    auth = PskAuth(ike.psk.reveal()) if ike.auth == "psk" else cert_auth
    return IkeConfig(
        tunnel=tunnel.name,
        local_id=(local.id_type, local.data),
        remote_id=(remote.id_type, remote.data),
        auth=auth,
        ike_suites=ike.ike_proposals,
        esp_suites=ike.esp_proposals,
        local_ts=ranges(tunnel.local_subnets),
        remote_ts=ranges(tunnel.remote_subnets),
        wall_clock=lambda: dt.datetime.now(dt.timezone.utc),
        child_rekey_time=float(ike.rekey_time),
        child_lifetime=float(ike.lifetime) if ike.lifetime else None,
        ike_rekey_time=float(ike.ike_rekey_time),
        ike_lifetime=float(ike.ike_lifetime) if ike.ike_lifetime else None,
        dpd_delay=float(ike.dpd_delay),
        workers=workers,
    )


def _cert_auth(config: GatewayConfig) -> CertAuth:
    from tunnel.config.pkifiles import load_certificate, load_private_key

    pki = config.pki
    ca = load_certificate(pki.ca)
    cert = load_certificate(pki.certificate)
    key = load_private_key(pki.private_key)
    verifier = CertVerifier([ca])
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify_peer(chain, id_type: int, data: bytes, now: dt.datetime):
        return verifier.verify(chain, PeerIdentity(id_type, data), now)

    return CertAuth(key, (cert.public_bytes(serialization.Encoding.DER),), verify_peer, hashlib.sha1(spki).digest())


def _notify_name(notify: int | None) -> str:
    if notify is None:
        return "none"
    try:
        return NotifyType(notify).name.lower()
    except ValueError:
        return str(notify)
