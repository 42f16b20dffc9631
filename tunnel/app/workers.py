"""Data-plane worker processes (gateway.workers > 1): one Python process carries about one core's worth
of packets, so more cores need more processes. Each worker has a queue of the multi-queue TUN device (the
kernel spreads flows over the queues), a socket in the SO_REUSEPORT group (a socket filter steers ESP to
the worker owning its SPI), a Forwarder, and Child SAs of its own, so no sequence number or replay window
is ever shared. The main process is worker 0 and runs IKE; it sends each worker its keys over a
socketpair and reads back reports: counters for the metrics, and the worker's forwarder events (the same
typed stream as worker 0's: liveness, SAs in use, peers moved, volume limits, SAs needed). A worker whose
main process is gone exits (its TUN queue closes; traffic fails closed).
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import signal
import socket
import time
from typing import Any

from policy.qos import QosClass
from tunnel.app.assemble import build_forwarder, make_schedulers, reconfigure_forwarder
from tunnel.config.model import GatewayConfig
from tunnel.dataplane.callquality import CallReport
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.events import DataEvent
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.tunnels import VolumeLimits
from tunnel.drivers import pumps, udp
from tunnel.drivers.tun import TunDevice
from tunnel.esp.sa import InboundSa, OutboundSa

log = logging.getLogger("sitelink.worker")

STATS_INTERVAL = 0.25  # how often a worker reports its counters and events to the main process
MAX_MESSAGE = 1 << 20
MAX_UNSENT_EVENTS = 4096  # events kept for the next report while the main process has no room
# Streams a report lists for status (their counters always travel whole): a report is one SEQPACKET
# message, which the socket's send buffer (~200 KB) bounds.
MAX_REPORTED_STREAMS = 256


class WorkerProxy:
    """The main process's handle on one worker: a DataPlane (see keying.py) that forwards key changes,
    and the worker's latest counters and queue figures (for metrics). What happened in the worker
    arrives as its forwarder's events, in order, for keying to handle like those of worker 0."""

    def __init__(self, index: int, conn: socket.socket, pid: int, tunnels: list[str]) -> None:
        self.index, self.conn, self.pid = index, conn, pid
        self.counters = {name: Counters() for name in tunnels}
        self.global_counters = Counters()
        self.calls: dict[str, CallReport] = {}  # tunnel -> its call observer's report, as of the last report
        self.events: list[DataEvent] = []
        self.generation = 0  # reloads sent; per-tunnel news of reports from before the last one is stale
        # The worker's QoS queues as of its last report: {direction: [(depth, ClassStats values), ...]}
        self.queues: dict[str, list[tuple[int, tuple[Any, ...]]]] = {}

    # -- DataPlane ----------------------------------------------------------------------------------
    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None:
        self._send(("in", tunnel, spi, key, window))

    def install_outbound(self, tunnel: str, spi: int, key: bytes, limits: VolumeLimits) -> None:
        self._send(("out", tunnel, spi, key, limits))

    def remove_inbound(self, spi: int) -> None:
        self._send(("rm_in", spi))

    def remove_outbound(self, tunnel: str) -> None:
        self._send(("rm_out", tunnel))

    def set_peer(self, tunnel: str, peer: tuple[str, int]) -> None:
        self._send(("peer", tunnel, peer))

    def reconfigure(self, config: GatewayConfig, gone: tuple[str, ...]) -> None:
        """A reload: the worker drops the tunnels that went and adds the new ones (assemble.py)."""
        self.generation += 1
        for name in gone:
            self.counters.pop(name, None)
        for t in config.tunnels:
            self.counters.setdefault(t.name, Counters())
        self._send(("config", config, gone, self.generation))

    # -- reports ------------------------------------------------------------------------------------
    def receive(self) -> bool:
        """Take in every report waiting; False once the worker is gone."""
        reports, alive = _read(self.conn)
        for report in reports:
            self._apply(report)
        return alive

    def take_events(self) -> list[DataEvent]:
        events, self.events = self.events, []
        return events

    def _apply(self, report: tuple[Any, ...]) -> None:
        _, generation, tunnels, global_counters, events, queues, calls = report
        self.queues = queues
        current = generation == self.generation
        if current:
            self.calls = calls
        for name, counters in tunnels.items():
            if current and name in self.counters:  # else from before a reload the worker had not applied
                self.counters[name].load(counters)
        self.global_counters.load(global_counters)
        # News of a tunnel from before a reload may be about its replaced configuration: keep only news
        # that names no tunnel (IKE messages, unknown SPIs).
        self.events += events if current else [e for e in events if not hasattr(e, "tunnel")]

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.sendall(pickle.dumps(message))
        except OSError as exc:  # the worker died; the gateway notices on its next read and stops
            log.error("worker %d: cannot reach it: %s", self.index, exc)

    def stop(self, timeout: float = 3.0) -> None:
        self._send(("stop",))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.conn.close()


def _dump_queues(qos: pumps.QosPump | None) -> dict[str, list[tuple[int, tuple[Any, ...]]]]:
    if qos is None:
        return {}
    return {direction: [(scheduler.depth(cls), stats.values()) for cls, stats in zip(QosClass, scheduler.stats)]
            for direction, scheduler in (("egress", qos.egress), ("ingress", qos.ingress))}


# -- the worker process ------------------------------------------------------------------------------
def spawn(config: GatewayConfig, index: int, tun: TunDevice, sock: socket.socket,
          close_in_child: list) -> WorkerProxy:
    """Fork worker `index` with its TUN queue and socket; the caller closes them afterwards (the worker
    holds them). close_in_child: the parent's other descriptors the worker must not keep."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            parent_end.close()
            for resource in close_in_child:
                resource.close()
            code = run_worker(config, index, tun, sock, child_end)
        except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)
    child_end.close()
    # Blocking for sends, so a key install waits for room instead of being lost while the worker is busy;
    # reads never block (MSG_DONTWAIT in _read).
    return WorkerProxy(index, parent_end, pid, [t.name for t in config.tunnels])


def run_worker(config: GatewayConfig, index: int, tun: TunDevice, sock: socket.socket, conn: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the main process's (it sends us the result)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    forwarder = build_forwarder(config)
    sender = udp.SegmentingSender(sock)
    udp.enable_gro(sock)
    schedulers = make_schedulers(config)
    qos = pumps.QosPump(forwarder, tun, [sock], sender, *schedulers) if schedulers is not None else None
    selector = selectors.DefaultSelector()
    selector.register(tun.fd, selectors.EVENT_READ, "tun")
    selector.register(sock, selectors.EVENT_READ, "udp")
    selector.register(conn, selectors.EVENT_READ, "conn")
    log.info("worker %d up (pid %d)", index, os.getpid())
    next_report = time.monotonic()
    generation = [0]  # reloads applied (reports carry it, so the main process can tell stale ones)
    unsent: list[DataEvent] = []
    while not stopping:
        now = time.monotonic()
        wait = max(0.0, next_report - now)
        if qos is not None:
            wake = qos.wake_at(now)
            wait = 0.0 if qos.pending(now) else wait if wake is None else min(wait, max(0.0, wake - now))
        for key, _ in selector.select(wait):
            if key.data == "tun":
                if qos is not None:
                    qos.service(time.monotonic, woke="tun")
                else:
                    pumps.tun_to_udp(forwarder, tun, sender)
            elif key.data == "udp":
                # Keys first: the main process sent a new SA's keys before its IKE answer left, so they
                # are waiting whenever ESP on that SA can have arrived (no unknown-SPI drops at a rekey).
                if not _commands(forwarder, conn, generation):
                    return 0
                if qos is not None:
                    qos.service(time.monotonic, woke="udp")
                else:
                    pumps.udp_to_tun(forwarder, sock, tun)
            elif not _commands(forwarder, conn, generation):
                return 0  # stop asked for, or the main process is gone
        if qos is not None and (qos.pending(now := time.monotonic()) or qos.wake_at(now) is not None):
            qos.service(time.monotonic)
        now = time.monotonic()
        if now >= next_report:
            unsent = _report(forwarder, conn, generation[0], qos, unsent)
            next_report = now + STATS_INTERVAL
    return 0


def _read(conn: socket.socket) -> tuple[list[tuple[Any, ...]], bool]:
    """Every message waiting on the socketpair, and whether the other end is still there."""
    messages: list[tuple[Any, ...]] = []
    while True:
        try:
            data = conn.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return messages, True
        except OSError:
            return messages, False
        if not data:
            return messages, False
        messages.append(pickle.loads(data))


def _commands(forwarder: Forwarder, conn: socket.socket, generation: list[int]) -> bool:
    """Apply the main process's key and configuration changes; False when it asks us to stop or is gone."""
    messages, alive = _read(conn)
    for message in messages:
        kind = message[0]
        if kind in ("in", "out", "rm_out", "peer") and message[1] not in forwarder.tunnels:
            continue  # about a tunnel a reload has removed since
        if kind == "in":
            _, tunnel, spi, key, window = message
            forwarder.remove_inbound(spi)  # idempotent: a resent install must not raise
            forwarder.install_inbound(tunnel, InboundSa(spi, key, window))
        elif kind == "out":
            _, tunnel, spi, key, limits = message
            forwarder.install_outbound(tunnel, OutboundSa(spi, key), limits)
        elif kind == "rm_in":
            forwarder.remove_inbound(message[1])
        elif kind == "rm_out":
            forwarder.remove_outbound(message[1])
        elif kind == "peer":
            forwarder.set_peer(message[1], message[2])
        elif kind == "config":
            _, config, gone, generation[0] = message
            reconfigure_forwarder(forwarder, config, gone)
            logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
        elif kind == "stop":
            return False
    return alive


def _report(forwarder: Forwarder, conn: socket.socket, generation: int, qos: pumps.QosPump | None,
            unsent: list[DataEvent]) -> list[DataEvent]:
    """Counters and queue figures (for metrics), and the forwarder's events (for keying); returns the
    events still to send when the main process had no room for this report."""
    tunnels = {name: state.counters.values() for name, state in forwarder.tunnels.items()}
    events = unsent + forwarder.take_events()
    calls = {name: state.calls.report() for name, state in forwarder.tunnels.items()
             if state.calls is not None and state.calls.seen}
    budget = MAX_REPORTED_STREAMS
    for part in calls.values():
        part.streams = part.streams[:budget]
        budget -= len(part.streams)
    report = ("stats", generation, tunnels, forwarder.counters.values(), events, _dump_queues(qos), calls)
    try:
        conn.send(pickle.dumps(report), socket.MSG_DONTWAIT)
    except BlockingIOError:
        return events[-MAX_UNSENT_EVENTS:]  # the main process is busy; the next report carries them
    return []
