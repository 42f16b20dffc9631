"""Data-plane worker processes (gateway.workers > 1): one Python process carries about one core's worth
of packets, so more cores need more processes. Each worker has a queue of the multi-queue TUN device (the
kernel spreads flows over the queues), a socket in the SO_REUSEPORT group (a socket filter steers ESP to
the worker owning its SPI), a Forwarder, and Child SAs of its own, so no sequence number or replay window
is ever shared. The main process is worker 0 and runs IKE; it sends each worker its keys over a
socketpair and reads back counters, which is also how liveness, rekey-switch and NAT-rebinding news
travel. A worker whose main process is gone exits (its TUN queue closes; traffic fails closed).
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import signal
import socket
import time

from policy.qos import QosClass
from tunnel.drivers import pumps
from tunnel.config.model import GatewayConfig
from tunnel.dataplane.forwarder import Counters, Forwarder
from tunnel.app.assemble import make_schedulers, reconfigure_forwarder, tunnel_policy
from tunnel.drivers import udp
from tunnel.drivers.tun import TunDevice
from tunnel.esp.sa import InboundSa, OutboundSa
from tunnel.dataplane.scheduler import ClassStats

log = logging.getLogger("sitelink.worker")

STATS_INTERVAL = 0.25  # how often a worker reports its counters to the main process
MAX_MESSAGE = 1 << 20


class WorkerProxy:
    """The main process's handle on one worker: a DataPlane (see control_plane.py) that forwards key
    changes and answers from the worker's latest report."""

    def __init__(self, index: int, conn: socket.socket, pid: int, peers: dict[str, tuple[str, int]]) -> None:
        self.index, self.conn, self.pid = index, conn, pid
        self.peers = dict(peers)
        self.counters = {name: Counters() for name in peers}
        self.global_counters = Counters()
        self.used: set[int] = set()
        self.outbound: dict[str, tuple[int, int] | None] = {name: None for name in peers}
        self.peer_changes = {name: 0 for name in peers}
        self.unknown_spi_peers: set[str] = set()
        self.need_sa: set[str] = set()
        self.generation = 0  # reloads sent; per-tunnel news of reports from before the last one is stale
        # The worker's QoS queues as of its last report: {direction: [(depth, ClassStats values), ...]}
        self.queues: dict[str, list[tuple[int, tuple]]] = {}

    # -- DataPlane ----------------------------------------------------------------------------------
    def install_inbound(self, tunnel: str, spi: int, key: bytes, window: int) -> None:
        self._send(("in", tunnel, spi, key, window))

    def install_outbound(self, tunnel: str, spi: int, key: bytes) -> None:
        self.outbound[tunnel] = (spi, 0)
        self._send(("out", tunnel, spi, key))

    def remove_inbound(self, spi: int) -> None:
        self.used.discard(spi)
        self._send(("rm_in", spi))

    def remove_outbound(self, tunnel: str) -> None:
        self.outbound[tunnel] = None
        self._send(("rm_out", tunnel))

    def set_peer(self, tunnel: str, peer: tuple[str, int]) -> None:
        self.peers[tunnel] = peer
        self._send(("peer", tunnel, peer))

    def peer(self, tunnel: str) -> tuple[str, int]:
        return self.peers[tunnel]

    def inbound_used(self, spi: int) -> bool:
        return spi in self.used

    def rx_packets(self, tunnel: str) -> int:
        return self.counters[tunnel].rx_packets

    def tx_bytes(self, tunnel: str) -> int:
        return self.counters[tunnel].tx_bytes

    def outbound_state(self, tunnel: str) -> tuple[int, int] | None:
        return self.outbound[tunnel]

    def reconfigure(self, config: GatewayConfig, gone: tuple[str, ...]) -> None:
        """A reload: the worker drops the tunnels that went and adds the new ones (policies.py)."""
        self.generation += 1
        for name in gone:
            for table in (self.counters, self.peers, self.outbound, self.peer_changes):
                table.pop(name, None)
        for t in config.tunnels:
            if t.name not in self.counters:
                self.counters[t.name] = Counters()
                self.peers[t.name] = (str(t.peer.address), t.peer.port)
                self.outbound[t.name] = None
                self.peer_changes[t.name] = 0
        self._send(("config", config, gone, self.generation))

    # -- reports ------------------------------------------------------------------------------------
    def receive(self) -> bool:
        """Take in every report waiting; False once the worker is gone."""
        reports, alive = _read(self.conn)
        for report in reports:
            self._apply(report)
        return alive

    def _apply(self, report: tuple) -> None:
        _, generation, tunnels, global_counters, used, unknown, need_sa, queues = report
        self.queues = queues
        for name, (counters, peer, changes, outbound) in tunnels.items():
            if generation != self.generation or name not in self.counters:
                continue  # from before a reload the worker had not applied yet
            _load(self.counters[name], counters)
            if changes != self.peer_changes[name]:  # the worker saw the peer move (authenticated ESP)
                self.peer_changes[name] = changes
                self.peers[name] = peer
            current = self.outbound[name]
            if outbound is not None and current is not None and outbound[0] == current[0]:
                self.outbound[name] = outbound  # the SPI we installed, with its sequence number now
        _load(self.global_counters, global_counters)
        self.used = set(used)
        self.unknown_spi_peers |= set(unknown)
        self.need_sa |= set(need_sa)

    def _send(self, message: tuple) -> None:
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


def _dump(counters: Counters) -> tuple:
    return (*(getattr(counters, name) for name in Counters.SCALARS), list(counters.drops))


def _load(counters: Counters, values: tuple) -> None:
    for name, value in zip(Counters.SCALARS, values[:-1]):
        setattr(counters, name, value)
    drops = values[-1]
    counters.drops[:len(drops)] = drops


QUEUE_FIELDS = ("enqueued", "dequeued", "dropped", "bytes", "demoted", "sojourn_sum")


def queue_values(stats: ClassStats) -> tuple:
    """One class's queue statistics as plain values (what a worker reports; add_queue sums them)."""
    return (*(getattr(stats, f) for f in QUEUE_FIELDS), list(stats.sojourn_buckets))


def _dump_queues(qos: pumps.QosPump | None) -> dict[str, list[tuple[int, tuple]]]:
    if qos is None:
        return {}
    return {direction: [(scheduler.depth(cls), queue_values(stats)) for cls, stats in zip(QosClass, scheduler.stats)]
            for direction, scheduler in (("egress", qos.egress), ("ingress", qos.ingress))}


def add_queue(total: ClassStats, values: tuple) -> None:
    """Sum a worker's reported queue statistics for one class into a total."""
    for name, value in zip(QUEUE_FIELDS, values):
        setattr(total, name, getattr(total, name) + value)
    for i, n in enumerate(values[-1]):
        total.sojourn_buckets[i] += n


def add(total: Counters, part: Counters) -> None:
    """Sum a worker's counters into a total (the gateway's counter lines cover every worker)."""
    for name in Counters.SCALARS:
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for i, n in enumerate(part.drops):
        total.drops[i] += n


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
    peers = {t.name: (str(t.peer.address), t.peer.port) for t in config.tunnels}
    return WorkerProxy(index, parent_end, pid, peers)


def run_worker(config: GatewayConfig, index: int, tun: TunDevice, sock: socket.socket, conn: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the main process's (it sends us the result)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    forwarder = Forwarder()
    for t in config.tunnels:
        forwarder.add_tunnel(t.name, (str(t.peer.address), t.peer.port), t.local_subnets, t.remote_subnets,
                             tunnel_policy(config, t))
    sender = udp.SegmentingSender(sock)
    udp.enable_gro(sock)
    schedulers = make_schedulers(config)
    qos = pumps.QosPump(forwarder, tun, sock, sender, *schedulers) if schedulers is not None else None
    selector = selectors.DefaultSelector()
    selector.register(tun.fd, selectors.EVENT_READ, "tun")
    selector.register(sock, selectors.EVENT_READ, "udp")
    selector.register(conn, selectors.EVENT_READ, "conn")
    log.info("worker %d up (pid %d)", index, os.getpid())
    next_report = time.monotonic()
    generation = [0]  # reloads applied (reports carry it, so the main process can tell stale ones)
    while not stopping:
        now = time.monotonic()
        wait = max(0.0, next_report - now)
        if qos is not None:
            wake = qos.wake_at(now)
            wait = 0.0 if qos.pending(now) else wait if wake is None else min(wait, max(0.0, wake - now))
        for key, _ in selector.select(wait):
            if key.data == "tun":
                if qos is not None:
                    qos.service(time.monotonic)
                else:
                    pumps.tun_to_udp(forwarder, tun, sender)
            elif key.data == "udp":
                # Keys first: the main process sent a new SA's keys before its IKE answer left, so they
                # are waiting whenever ESP on that SA can have arrived (no unknown-SPI drops at a rekey).
                if not _commands(forwarder, conn, generation):
                    return 0
                if qos is not None:
                    qos.service(time.monotonic)
                else:
                    pumps.udp_to_tun(forwarder, sock, tun)
            elif not _commands(forwarder, conn, generation):
                return 0  # stop asked for, or the main process is gone
        if qos is not None and (qos.pending(now := time.monotonic()) or qos.wake_at(now) is not None):
            qos.service(time.monotonic)
        now = time.monotonic()
        if now >= next_report:
            _report(forwarder, conn, generation[0], qos)
            next_report = now + STATS_INTERVAL
    return 0


def _read(conn: socket.socket) -> tuple[list[tuple], bool]:
    """Every message waiting on the socketpair, and whether the other end is still there."""
    messages = []
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
            _, tunnel, spi, key = message
            forwarder.install_outbound(tunnel, OutboundSa(spi, key))
        elif kind == "rm_in":
            forwarder.remove_inbound(message[1])
        elif kind == "rm_out":
            forwarder.remove_outbound(message[1])
        elif kind == "peer":
            forwarder.tunnels[message[1]].peer = message[2]
        elif kind == "config":
            _, config, gone, generation[0] = message
            reconfigure_forwarder(forwarder, config, gone)
            logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
        elif kind == "stop":
            return False
    return alive


def _report(forwarder: Forwarder, conn: socket.socket, generation: int, qos: pumps.QosPump | None = None) -> None:
    tunnels = {}
    for name, state in forwarder.tunnels.items():
        sa = state.outbound
        tunnels[name] = (_dump(state.counters), state.peer, state.peer_changes, None if sa is None else (sa.spi, sa.seq))
    need_sa = []
    while (event := forwarder.next_event()) is not None:
        need_sa.append(event.tunnel)
    unknown = list(forwarder.unknown_spi_peers)
    forwarder.unknown_spi_peers.clear()
    report = ("stats", generation, tunnels, _dump(forwarder.counters), forwarder.used_inbound_spis(), unknown, need_sa,
              _dump_queues(qos))
    try:
        conn.send(pickle.dumps(report), socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass  # the main process is busy; the next report carries the same news
