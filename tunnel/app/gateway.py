"""Composition root: wires the pure forwarder to the TUN device and the UDP socket.

The only place that owns the event loop and the OS resources. The data path never awaits per packet:
each readiness callback drains a batch, pushes it through the forwarder and flushes the results.
Past the ~400-line guideline because it sequences every OS-facing step (start-up, the data path's
callbacks, hot reload, shutdown) in one place; what to do at each step is decided in the pure modules it
calls (reload.py, keying.py, assemble.py and the cores).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from policy.qos import QosClass
from tunnel.app.announce import Announcer
from tunnel.app.assemble import build_forwarder, install_manual_keys, make_schedulers, reconfigure_forwarder
from tunnel.app.keying import KEEPALIVE_INTERVAL, DataPlane, Keying, LocalPlane
from tunnel.app.readout import GatewayReadout
from tunnel.app.reload import ReloadPlan, plan_reload
from tunnel.config.ledger import ManualKeyLedger
from tunnel.config.loader import load_config
from tunnel.config.model import GatewayConfig, Tunnel
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.events import DataEvent
from tunnel.dataplane.scheduler import ClassStats
from tunnel.drivers import pumps, udp
from tunnel.drivers.netlink import FULL_TUNNEL_MARK, Netlink
from tunnel.drivers.tun import TunDevice
from tunnel.errors import ConfigError, DriverError, KeyFileError, ReloadFailed, ReloadRefused, SitelinkError
from tunnel.esp.encap import NAT_KEEPALIVE, frame_ike
from tunnel.ike.constants import NAT_T_PORT
from tunnel.ike.events import RevocationQuery
from tunnel.ops.control_socket import ControlServer, default_path
from tunnel.ops.keylog import EspKeyLog, IkeKeyLog
from tunnel.ops.metrics import MetricsServer

if TYPE_CHECKING:  # data-plane workers and HA sync are imported only by gateways configured for them
    from tunnel.app import workers
    from tunnel.app.hasync import SyncChannel

log = logging.getLogger("sitelink.gateway")
RESOLVE_TIMEOUT = 10.0  # seconds for the system resolver to name a DNS-named peer's address


def tun_mtu(config: GatewayConfig) -> int:
    return config.tun.mtu or config.tun.wan_mtu


def full_tunnel(config: GatewayConfig) -> bool:
    """A tunnel takes the default route (0.0.0.0/0 or ::/0): the gateway's own sockets must bypass it."""
    return any(net.prefixlen == 0 for t in config.tunnels for net in t.remote_subnets)


def socket_mark(config: GatewayConfig) -> int:
    return FULL_TUNNEL_MARK if full_tunnel(config) else 0


def format_counters(name: str, counters: Counters) -> str:
    drops = ",".join(f"{k}:{v}" for k, v in counters.drops_by_reason().items()) or "none"
    scalars = " ".join(f"{field}={getattr(counters, field)}" for field in Counters.SCALARS)
    return f"tunnel={name} {scalars} drops={drops}"


def format_queues(rows: list[tuple[int, ClassStats]]) -> str:
    parts = []
    for cls, (_, stats) in zip(QosClass, rows):
        mean = stats.sojourn_sum / stats.dequeued * 1000 if stats.dequeued else 0.0
        parts.append(f"{cls.label}={stats.dequeued}/{stats.dropped}/{mean:.3f}ms")
    return "class=dequeued/dropped/mean_sojourn " + " ".join(parts)


@dataclass
class _Io:
    """The OS resources of an open gateway: open() makes them, close() releases them."""

    netlink: Netlink
    tun_index: int
    tun: TunDevice
    sock: socket.socket  # ESP-in-UDP, and IKE after IKE_SA_INIT (listen.port)
    sender: pumps.Sender  # by the peer's family, on a dual-stack gateway
    ike_sock: socket.socket | None  # IKE_SA_INIT (ike_port), when any tunnel uses IKE
    # A dual-stack gateway's sockets of the other family (listen.dual), at the same ports.
    dual_sock: socket.socket | None = None
    dual_ike_sock: socket.socket | None = None

    @property
    def esp_socks(self) -> list[socket.socket]:
        return [self.sock] if self.dual_sock is None else [self.sock, self.dual_sock]

    @property
    def ike_socks(self) -> list[socket.socket]:
        return [s for s in (self.ike_sock, self.dual_ike_sock) if s is not None]

    def socket_for(self, host: str, local_port: int, listen_port: int) -> socket.socket | None:
        """The socket that sends to `host` from `local_port` (listen.port, or the IKE port)."""
        v6 = ":" in host
        for sock, ike in ((self.sock, self.ike_sock), (self.dual_sock, self.dual_ike_sock)):
            if sock is not None and (sock.family == socket.AF_INET6) == v6:
                return sock if local_port == listen_port else ike
        return None


class Gateway:
    def __init__(self, config: GatewayConfig, esp_key_log: Path | None = None, ike_key_log: Path | None = None) -> None:
        self.config = config
        self.forwarder = build_forwarder(config)
        self._open: _Io | None = None
        self._release: ExitStack | None = None  # undoes open(), in reverse order
        self.qos_pump: pumps.QosPump | None = None  # per-class queues (gateway.qos.scheduler: priority)
        self._qos_flush: asyncio.Handle | None = None
        self.worker_proxies: list[workers.WorkerProxy] = []
        self._worker_failed: str | None = None
        self._stopping = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._esp_key_log = esp_key_log or config.key_log.esp_sa
        self._ike_key_log = ike_key_log or config.key_log.ikev2_decryption_table
        self.keying: Keying | None = None
        self.readout = GatewayReadout(self)  # what operations (status, metrics, logs) read
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # reloads and DNS lookups in progress (referenced: kept alive)
        self._announcer: Announcer | None = None  # gateway.announce
        self._sync_sock: socket.socket | None = None  # gateway.ha.sync, and where the other gateway listens
        self._sync_peer: tuple[str, int] | None = None
        self.sync_channel: SyncChannel | None = None
        self._sync_interval: float | None = None  # tunnel.app.hasync.SYNC_INTERVAL, once sync is set up
        self._sync_timer: asyncio.TimerHandle | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    @property
    def _io(self) -> _Io:
        if self._open is None:
            raise RuntimeError("the gateway is not open")
        return self._open

    def open(self) -> None:
        """Set up keys, TUN, routes and sockets, workers, keying and metrics; on any failure undo what was
        done (in reverse order, as close() does)."""
        with ExitStack() as stack:
            ManualKeyLedger(self.config.state_dir, self.config.name).claim(list(self.config.tunnels))
            for tunnel in self.config.tunnels:
                self._log_tunnel(tunnel)
                if tunnel.manual_keys is not None:
                    install_manual_keys(self.forwarder, tunnel)
            key_log = None
            if self._esp_key_log is not None:
                key_log = stack.enter_context(closing(EspKeyLog(
                    self._esp_key_log, *map(str, self.config.listen.addresses))))
                log.warning("exporting ESP keys to %s: anyone who can read it can decrypt the tunnels",
                            self._esp_key_log)
            ike_key_log = None
            if self._ike_key_log is not None:
                ike_key_log = stack.enter_context(closing(IkeKeyLog(self._ike_key_log)))
                log.warning("exporting IKE SA keys to %s: anyone who can read it can decrypt IKE", self._ike_key_log)
            self._open = io = self._open_io(stack)
            stack.callback(setattr, self, "_open", None)
            sync = self.config.ha.sync if self.config.ha is not None else None
            if sync is not None:
                self._sync_sock = stack.enter_context(udp.open_socket(str(sync.local), sync.port, 1 << 22,
                                                                      zero_checksum=False))
                from tunnel.app.hasync import SYNC_INTERVAL, SyncChannel

                self.sync_channel = SyncChannel(sync.key)
                self._sync_interval = SYNC_INTERVAL
                self._sync_peer = (str(sync.peer), sync.port)
            if self.config.announce is not None:
                self._announcer = Announcer(io.tun_index, self.config.announce.table)
                stack.callback(self._announcer.close)
            schedulers = make_schedulers(self.config)
            if schedulers is not None:
                self.qos_pump = pumps.QosPump(self.forwarder, io.tun, io.esp_socks, io.sender, *schedulers)
            if self.config.workers > 1:
                stack.callback(self._stop_workers)
                self._spawn_workers(io, self.config.workers)
            planes: list[DataPlane] = [LocalPlane(self.forwarder), *self.worker_proxies]
            self.keying = Keying(self.config, planes, os.urandom, key_log, ike_key_log)
            metrics = self.config.metrics
            if metrics.enabled:  # a thread: only after the workers were forked
                server = MetricsServer(self.readout, str(metrics.address), metrics.port)
                stack.callback(server.close)
            self._release = stack.pop_all()
        listen = self.config.listen
        log.info(
            "gateway %s listening on udp %s, TUN %s mtu %d, %d tunnel(s)",
            self.config.name, listen, self.config.tun.name, tun_mtu(self.config), len(self.config.tunnels),
        )

    def _open_io(self, stack: ExitStack) -> _Io:
        """The sockets, then the TUN device with its address and routes; each undone by `stack`. The
        sockets first: a peer started at the same moment may send its IKE_SA_INIT while our netlink
        work runs, and the kernel keeps it for us only once the port is bound."""
        tun, listen = self.config.tun, self.config.listen
        mark = socket_mark(self.config)
        freebind = self.config.ha is not None  # one of a pair: the virtual address comes and goes (keepalived)
        sock = stack.enter_context(udp.open_socket(str(listen.address), listen.port, self.config.socket_buffer_bytes,
                                                   zero_checksum=False, reuseport=self.config.workers > 1, mark=mark,
                                                   freebind=freebind))
        udp.enable_gro(sock)  # and the TOS of each datagram
        ike = any(t.ike is not None for t in self.config.tunnels)
        ike_sock = None
        if ike:
            ike_sock = stack.enter_context(udp.open_socket(str(listen.address), self.config.ike_port, 1 << 20,
                                                           mark=mark, freebind=freebind))
        dual_sock = dual_ike_sock = None
        if listen.dual is not None:  # dual stack: the other family at the same ports
            dual_sock = stack.enter_context(udp.open_socket(
                str(listen.dual), listen.port, self.config.socket_buffer_bytes, zero_checksum=False, mark=mark,
                freebind=freebind))
            udp.enable_gro(dual_sock)
            if ike:
                dual_ike_sock = stack.enter_context(udp.open_socket(str(listen.dual), self.config.ike_port,
                                                                    1 << 20, mark=mark, freebind=freebind))
        netlink = stack.enter_context(closing(Netlink()))
        tun_index = netlink.ensure_tun(tun.name)
        device = stack.enter_context(closing(TunDevice(tun.name)))
        netlink.configure(tun_index, tun_mtu(self.config), tun.txqueuelen, tun.addresses)
        remote = [net for t in self.config.tunnels for net in t.remote_subnets]
        netlink.add_routes(tun_index, remote, self._route_sources())
        stale = netlink.stale_routes(tun_index, remote)
        if stale:  # tunnels removed from the configuration while the gateway was stopped: on purpose
            log.info("removing the routes of subnets no tunnel has any more: %s", ", ".join(map(str, stale)))
            netlink.delete_routes(tun_index, stale)
        io = _Io(netlink, tun_index, device, sock, udp.SegmentingSender(sock), ike_sock)
        if dual_sock is not None:
            io.dual_sock, io.dual_ike_sock = dual_sock, dual_ike_sock
            v4, v6 = sorted((io.sock, dual_sock), key=lambda s: s.family == socket.AF_INET6)
            io.sender = udp.FamilySender(udp.SegmentingSender(v4), udp.SegmentingSender(v6))
        return io

    def _spawn_workers(self, io: _Io, n: int) -> None:
        """Workers 1..n-1: a TUN queue and a socket each, joined in order (the SPI filter numbers the
        sockets by joining order), forked before the event loop exists."""
        from tunnel.app.workers import spawn as spawn_worker

        listen = self.config.listen
        extra = [(TunDevice(self.config.tun.name), udp.open_socket(
            str(listen.address), listen.port, self.config.socket_buffer_bytes, zero_checksum=False, reuseport=True,
            mark=socket_mark(self.config), freebind=self.config.ha is not None)) for _ in range(1, n)]
        udp.steer_by_spi(io.sock, n)
        for k, (tun, sock) in enumerate(extra, start=1):
            others: list[TunDevice | socket.socket] = [io.tun, io.sock, *([io.ike_sock] if io.ike_sock else [])]
            others += [r for j, pair in enumerate(extra, start=1) if j != k for r in pair]
            others += [w.conn for w in self.worker_proxies]
            self.worker_proxies.append(spawn_worker(self.config, k, tun, sock, others))
            tun.close()  # the worker holds its queue and socket now
            sock.close()
        log.info("%d data-plane workers: this process and pids %s", n,
                 ",".join(str(w.pid) for w in self.worker_proxies))

    def _stop_workers(self) -> None:
        for worker in self.worker_proxies:
            worker.stop()
        self.worker_proxies = []

    def close(self) -> None:
        """Stop the metrics server and the workers, close the sockets and the TUN queue. The TUN device
        and its routes stay, so tunnel-bound traffic is dropped until the gateway is back (fail closed,
        netlink.py); `sitelink down` removes them on purpose. Idempotent."""
        release, self._release = self._release, None
        if release is not None:
            release.close()

    async def serve(self) -> None:
        loop, io, keying = asyncio.get_running_loop(), self._io, self._keying()
        stopping = self._stopping
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, self.log_counters)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_reader(io.tun.fd, self._on_tun_readable)
        for sock in io.esp_socks:
            loop.add_reader(sock.fileno(), self._on_udp_readable, sock)
        for ike_sock in io.ike_socks:
            loop.add_reader(ike_sock.fileno(), self._on_ike_readable, ike_sock)
        for worker in self.worker_proxies:
            loop.add_reader(worker.conn.fileno(), self._on_worker_report, worker)
        if self._sync_sock is not None and self._sync_interval is not None:
            loop.add_reader(self._sync_sock.fileno(), self._on_sync_readable)
            self._sync_timer = loop.call_later(self._sync_interval, self._sync_tick)
        control = ControlServer(self.readout, self, self.config.control_socket or default_path(self.config.name))
        await control.start()
        keying.start(time.monotonic())
        self._after_ike()
        if keying.tunnels:
            self._keepalive = loop.call_later(KEEPALIVE_INTERVAL, self._send_keepalives)
        try:
            await stopping.wait()
        finally:
            loop.remove_reader(io.tun.fd)
            for sock in (*io.esp_socks, *io.ike_socks):
                loop.remove_reader(sock.fileno())
            for worker in self.worker_proxies:
                loop.remove_reader(worker.conn.fileno())
            if self._timer is not None:
                self._timer.cancel()
            if self._sync_sock is not None:
                loop.remove_reader(self._sync_sock.fileno())
            for handle in (self._keepalive, self._qos_flush, self._sync_timer):
                if handle is not None:
                    handle.cancel()
            keying.dispatcher.delete_all(time.monotonic())  # best effort: tell peers (§1.4.1)
            self._flush_ike()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in list(self._tasks):
                task.cancel()
            await control.close()
            self.log_counters()
        if self._worker_failed:
            raise DriverError(self._worker_failed)

    # -- hot reload -------------------------------------------------------------------------------------
    async def reload(self) -> str:
        """Re-read the configuration file and apply what changed (tunnel/app/reload.py); the summary of what
        was done. ConfigError (the file's problems) or ReloadRefused leave the running configuration as
        it was. Tunnels whose configuration is unchanged are not touched: no SA, route or queue of
        theirs changes, so their traffic flows on."""
        async with self._reload_lock:
            path = self.config.path
            log.info("reloading %s", path)
            new = load_config(path)
            plan = plan_reload(self.config, new)
            if full_tunnel(new) and not full_tunnel(self.config):
                raise ReloadRefused("a full tunnel (0.0.0.0/0 or ::/0) needs the gateway's sockets marked to bypass "
                                    "it; restart the gateway to add the first one")
            for tunnel in plan.new:
                owner = tunnel.manual_keys and self.forwarder.inbound_tunnel(tunnel.manual_keys.inbound.spi)
                if owner and owner not in plan.gone:
                    raise ReloadRefused(f"tunnel {tunnel.name}: its manual inbound SPI is in use by tunnel {owner}")
            try:
                ike_configs = self._keying().ike_configs(new)  # reads the PKI files: may fail
            except (SitelinkError, ValueError, OSError) as exc:
                raise ReloadRefused(f"cannot use the new configuration: {exc}; the running one stays") from None
            try:  # the last check: new manual SAs never reuse keys (config/ledger.py)
                ManualKeyLedger(new.state_dir, new.name).claim(list(plan.new))
            except KeyFileError as exc:
                raise ReloadRefused(f"{exc}; the running configuration stays") from None
            loop = asyncio.get_running_loop()
            old_routes = {net for t in self.config.tunnels for net in t.remote_subnets}
            new_routes = [net for t in plan.new for net in t.remote_subnets]
            added = [net for net in new_routes if net not in old_routes]
            try:  # routes first: until a tunnel exists in the forwarder its traffic is dropped (fail closed)
                await loop.run_in_executor(None, self._change_routes, new_routes, [])
            except DriverError as exc:
                await loop.run_in_executor(None, self._change_routes, [], added)
                raise ReloadRefused(f"{exc}; the running configuration stays") from None
            # From here on nothing is expected to fail (everything was checked above); if it does, say so
            # plainly: the gateway may be half way between the two configurations.
            try:
                self._apply_reload(new, plan, ike_configs)
            except Exception as exc:
                log.exception("reload failed half way")
                raise ReloadFailed(f"reload failed half way ({exc}); restart the gateway to be sure of its "
                                   "state") from None
            stale = sorted(old_routes - {net for t in new.tunnels for net in t.remote_subnets}, key=str)
            try:
                await loop.run_in_executor(None, self._change_routes, [], stale)
            except DriverError as exc:  # the tunnels are gone already: their traffic is dropped as no_tunnel
                log.warning("reload: stale routes not removed: %s", exc)
            summary = plan.summary()
            log.info("reloaded %s: %s", path, summary)
            return summary

    def _apply_reload(self, new: GatewayConfig, plan: ReloadPlan, ike_configs: list) -> None:
        self._keying().reconfigure(new, plan, time.monotonic(), ike_configs)
        reconfigure_forwarder(self.forwarder, new, plan.gone)
        for worker in self.worker_proxies:
            worker.reconfigure(new, plan.gone)
        for tunnel in plan.new:
            self._log_tunnel(tunnel)
            if tunnel.manual_keys is not None:
                install_manual_keys(self.forwarder, tunnel)
        self.config = new
        logging.getLogger().setLevel(getattr(logging, new.log_level.upper()))
        self._after_ike()

    def _change_routes(self, add: list, delete: list) -> None:
        """In a worker thread: pyroute2's synchronous API cannot run inside the event loop's thread."""
        if not add and not delete:
            return
        netlink = Netlink()
        try:
            netlink.add_routes(self._io.tun_index, add, self._route_sources())
            netlink.delete_routes(self._io.tun_index, delete)
        finally:
            netlink.close()

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload refused: %d problem(s) in the configuration; the running one stays", len(exc.problems))
        except ReloadRefused as exc:
            log.error("reload refused: %s", exc)
        except Exception as exc:  # noqa: BLE001 - ReloadFailed (logged with its traceback) or a DriverError
            log.error("%s", exc)

    # -- operator commands (tunnel.ops.control_socket.Commands) -------------------------------------------
    def ike_tunnels(self) -> list[str]:
        return list(self.keying.tunnels) if self.keying is not None else []

    def initiate(self, tunnel: str) -> str:
        if self._keying().standby:
            return f"not initiating {tunnel}: this gateway is the standby of its pair (sitelink role active)"
        self._keying().initiate(tunnel, time.monotonic(), operator=True)
        self._after_ike()
        return f"initiating {tunnel}"

    def set_role(self, role: str) -> str:
        """keepalived's notify script: `sitelink role active|standby` (README "High availability")."""
        if self.config.ha is None:
            raise ValueError("this gateway is not one of an HA pair (no gateway.ha in its configuration)")
        message = self._keying().set_role(role == "active", time.monotonic())
        self._after_ike()
        return message

    def terminate(self, tunnel: str) -> str:
        count = self._keying().terminate(tunnel, time.monotonic())
        self._after_ike()
        return f"terminating {count} IKE SA(s) of {tunnel}"

    def rekey(self, tunnel: str, kind: str) -> str:
        count = self._keying().rekey(tunnel, kind, time.monotonic())
        self._after_ike()
        return f"{kind} rekey of {tunnel} started on {count} IKE SA(s)"

    def _keying(self) -> Keying:
        assert self.keying is not None, "commands arrive once the gateway serves"
        return self.keying

    def _on_worker_report(self, worker: workers.WorkerProxy) -> None:
        if not worker.receive():
            if not self._stopping.is_set():
                self._worker_failed = f"data-plane worker {worker.index} (pid {worker.pid}) exited; stopping"
                log.error("%s", self._worker_failed)
                self._stopping.set()
            return
        self._data_events(worker.take_events())

    def _sync_tick(self) -> None:
        """The active gateway streams its SA state to the standby (app/hasync.py)."""
        keying, sock, channel, peer = self._keying(), self._sync_sock, self.sync_channel, self._sync_peer
        assert self._sync_interval is not None  # the timer runs only once sync is set up
        self._sync_timer = asyncio.get_running_loop().call_later(self._sync_interval, self._sync_tick)
        if keying.sync is None or sock is None or channel is None or peer is None:
            return
        messages = keying.sync.requests() if keying.standby else keying.sync.outgoing(time.monotonic())
        for message in messages:
            try:
                sock.sendto(channel.seal(message), peer)
            except OSError as exc:
                log.debug("HA sync datagram not sent: %s", exc)

    def _on_sync_readable(self) -> None:
        keying, sock, channel, peer = self._keying(), self._sync_sock, self.sync_channel, self._sync_peer
        if sock is None or channel is None or keying.sync is None or peer is None:
            return
        for data, addr in udp.recv_batch(sock, 64):
            if addr[0] != peer[0]:
                channel.dropped["stranger"] = channel.dropped.get("stranger", 0) + 1
                continue
            message = channel.open(data)
            if message is not None and keying.standby:
                keying.sync.receive(message)
            elif message is not None:
                keying.sync.on_request(message)

    def _send_keepalives(self) -> None:
        # A NAT between the gateways forgets an idle UDP mapping; one byte every 20 s keeps it (RFC 3948 §2.3).
        for peer in self._keying().keepalive_targets():
            sock = self._io.socket_for(peer[0], self.config.listen.port, self.config.listen.port)
            try:
                if sock is not None:
                    sock.sendto(NAT_KEEPALIVE, peer)
            except OSError:
                pass
        self._keepalive = asyncio.get_running_loop().call_later(KEEPALIVE_INTERVAL, self._send_keepalives)

    def _request_stop(self, sig: int) -> None:
        log.info("received %s, shutting down", signal.Signals(sig).name)
        self._stopping.set()

    def log_counters(self) -> None:
        """SIGUSR1: one line per tunnel (and one for drops no tunnel owns) summed over every worker, each
        worker's own lines, the queues and IKE."""
        tunnels = self.readout.tunnels()
        for view in tunnels:
            log.info("counters %s", format_counters(view.name, view.counters))
        log.info("counters %s", format_counters("(none)", self.readout.unowned()))
        if self.worker_proxies:
            for name, state in self.forwarder.tunnels.items():
                log.info("worker 0: %s", format_counters(name, state.counters))
            for worker in self.worker_proxies:
                for name, counters in worker.counters.items():
                    log.info("worker %d: %s", worker.index, format_counters(name, counters))
        for direction, rows in self.readout.queues().items():
            log.info("queues %s %s", direction, format_queues(rows))
        if self.keying is not None and self.keying.tunnels:
            sessions = list(self.keying.dispatcher.sessions.values())
            drops = {k: v for view in tunnels for k, v in view.ike_drops.items()}
            for reason, count in self.readout.unowned_ike_drops().items():
                drops[reason] = drops.get(reason, 0) + count
            log.info("ike sessions=%d established=%d drops=%s", len(sessions), sum(s.established for s in sessions),
                     ",".join(f"{k}:{v}" for k, v in sorted(drops.items())) or "none")

    # -- set-up helpers -------------------------------------------------------------------------------
    @staticmethod
    def _log_tunnel(tunnel: Tunnel) -> None:
        where = (tunnel.name, str(tunnel.peer), tunnel.peer.port, ",".join(map(str, tunnel.local_subnets)),
                 ",".join(map(str, tunnel.remote_subnets)))
        keys, ike = tunnel.manual_keys, tunnel.ike
        if ike is not None:
            log.info("tunnel %s: peer [%s]:%d, local %s, remote %s, IKEv2 %s auth, start %s", *where,
                     ike.auth, ike.start.value)
        elif keys is not None:
            log.info("tunnel %s: peer [%s]:%d, local %s, remote %s, manual keys (SPI out %#010x, in %#010x)", *where,
                     keys.outbound.spi, keys.inbound.spi)

    def _route_sources(self) -> dict[int, str]:
        """The preferred source per IP version of routes into the TUN: its first address of each."""
        sources: dict[int, str] = {}
        for iface in self.config.tun.addresses:
            sources.setdefault(iface.version, str(iface.ip))
        return sources

    # -- data path --------------------------------------------------------------------------------------
    def _on_tun_readable(self) -> None:
        if self.qos_pump is not None:
            self._serve_queues("tun")
            return
        pumps.tun_to_udp(self.forwarder, self._io.tun, self._io.sender)
        self._take_events()

    def _on_udp_readable(self, sock: socket.socket) -> None:
        if self.qos_pump is not None:
            self._serve_queues("udp")
            return
        pumps.udp_to_tun(self.forwarder, sock, self._io.tun, self._take_events)
        self._take_events()

    def _serve_queues(self, woke: pumps.Woke | None = None) -> None:
        """Both directions in short rounds (pumps.QosPump.service); queued packets are served on the next
        loop turn even if no device becomes readable."""
        if self._qos_flush is not None:
            self._qos_flush.cancel()
            self._qos_flush = None
        qos = self.qos_pump
        assert qos is not None  # this path serves only the priority scheduler
        qos.service(time.monotonic, self._take_events, woke)
        loop = asyncio.get_running_loop()
        if qos.pending(time.monotonic()):
            self._qos_flush = loop.call_soon(self._serve_queues)
        elif (wake := qos.wake_at(time.monotonic())) is not None:
            self._qos_flush = call_at(loop, wake, self._serve_queues)  # the shaper's next send
        self._take_events()

    def _take_events(self) -> None:
        """This process's forwarder reported something (also mid-batch, for an IKE message: its answer may
        install the SAs the ESP behind it in the batch needs)."""
        events = self.forwarder.take_events()
        if events:
            self._data_events(events)

    def _data_events(self, events: list[DataEvent]) -> None:
        """The one place the forwarders' events (this process's and the workers') reach keying."""
        if self._keying().on_data_events(events, time.monotonic()):
            self._after_ike()

    def _on_ike_readable(self, ike_sock: socket.socket) -> None:
        now = time.monotonic()
        for datagram, peer in udp.recv_batch(ike_sock, pumps.BATCH):
            self._keying().dispatcher.receive_datagram(datagram, peer[:2], self.config.ike_port, now)
        self._after_ike()

    def _on_ike_timer(self) -> None:
        self._timer = None
        self._keying().handle_timer(time.monotonic())
        self._after_ike()

    def _after_ike(self) -> None:
        """Apply the IKE cores' events, then send what they want sent (new SAs are in place, in every
        worker's queue too, before the answer that lets the peer use them leaves), re-arm the one timer."""
        self._keying().process_events(time.monotonic())
        self._flush_ike()
        if self._announcer is not None and self._keying().take_up_changed():
            self._announcer.update(self._keying().up_subnets())
        for name, host in self._keying().take_resolves().items():
            task = asyncio.get_running_loop().create_task(self._resolve(name, host))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for query in self._keying().take_ocsp_queries():
            task = asyncio.get_running_loop().create_task(self._ask_ocsp(query))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        deadline = self._keying().get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = call_at(asyncio.get_running_loop(), deadline, self._on_ike_timer)

    async def _resolve(self, name: str, host: str) -> None:
        """A DNS-named peer's address, of a family the gateway listens on (a dual-stack gateway takes the
        resolver's first choice, RFC 6724 order), by the system resolver (in a thread, so a slow DNS server
        never stalls the data path), then on to keying."""
        listen = self.config.listen
        family = socket.AF_UNSPEC if listen.dual is not None else (
            socket.AF_INET6 if listen.address.version == 6 else socket.AF_INET)
        address, error = None, ""
        try:
            found = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, None, family=family, type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT)
            served = [info for info in found if info[0] in (socket.AF_INET, socket.AF_INET6)]
            address = str(served[0][4][0]) if served else None
            error = "" if served else "no address"
        except TimeoutError:
            error = f"no answer within {RESOLVE_TIMEOUT:.0f} s"
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            error = str(exc)
        if self.keying is not None and not self._stopping.is_set():
            self.keying.resolved(name, address, time.monotonic(), error)
            self._after_ike()

    async def _ask_ocsp(self, query: RevocationQuery) -> None:
        """POST an OCSP request (in a thread: a slow responder never stalls the data path), then hand the
        answer to keying; the IKE_AUTH that waited for it is handled when it comes again."""
        from tunnel.drivers.ocsp_http import post as http_post  # urllib: only once a CA asks for OCSP

        timeout = float(self.config.pki.ocsp.timeout) if self.config.pki and self.config.pki.ocsp else 5.0
        try:
            response, problem = await asyncio.wait_for(
                asyncio.to_thread(http_post, query.url, query.request, timeout), timeout + 1)
        except TimeoutError:
            response, problem = None, f"no answer within {timeout:.0f} s"
        if self.keying is not None and not self._stopping.is_set():
            self.keying.ocsp_answer(query.key, response, problem)
            self._after_ike()

    def _flush_ike(self) -> None:
        for data, remote, local_port in self._keying().dispatcher.datagrams_to_send(time.monotonic()):
            if local_port == NAT_T_PORT:
                data = frame_ike(data)  # RFC 3948 §2.2: the non-ESP marker tells IKE from ESP
            sock = self._io.socket_for(remote[0], local_port, self.config.listen.port)
            if sock is None:
                continue
            try:
                sock.sendto(data, remote)
            except OSError as exc:
                log.debug("IKE datagram to %s not sent: %s", remote, exc)


def call_at(loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    """`callback` at time.monotonic() `when`, never early: uvloop keeps whole milliseconds (rounded down)
    of a clock it reads once per turn, so the delay is rounded up to the next millisecond (a timer that
    fired early would only be armed again, turn after turn, until its time came)."""
    delay = when - time.monotonic()
    return loop.call_later(math.ceil(delay * 1000) / 1000 if delay > 0 else 0.0, callback)


def take_down(config: GatewayConfig) -> list[str]:
    """`sitelink down`: remove the (stopped) gateway's TUN device, its routes and their backstops, on
    purpose: the tunnels' subnets then follow the host's other routes, in clear. Returns one line per
    subnet saying where its traffic goes now."""
    remote = [net for t in config.tunnels for net in t.remote_subnets]
    netlink = Netlink()
    try:
        index = netlink.index(config.tun.name)
        if index is not None:
            netlink.delete_routes(index, [*remote, *netlink.stale_routes(index, remote)])
            netlink.delete_link(index)
        else:
            netlink.delete_routes(0, remote)  # the backstops of a device deleted by hand
        return [f"{net}: now {netlink.route_to(str(net.network_address + 1))}" for net in remote]
    finally:
        netlink.close()


def run(config: GatewayConfig, esp_key_log: Path | None = None, ike_key_log: Path | None = None) -> None:
    """Set up, serve until SIGINT/SIGTERM, tear down. Netlink work stays outside the event loop:
    pyroute2's synchronous IPRoute runs its own loop and cannot be used inside a running one."""
    gateway = Gateway(config, esp_key_log, ike_key_log)
    gateway.open()
    # Everything allocated so far (modules, config, keys) lives as long as the process: keep it out of
    # the cyclic collector's full passes, which would otherwise walk it in the middle of the data path.
    gc.freeze()
    try:
        # uvloop: libuv's loop in C instead of asyncio's in Python, a sixth less CPU per packet on an idle
        # tunnel, where each packet is a loop turn of its own (issue 17: 155 -> 130 µs per packet for both
        # gateways at 1000 datagrams/s)
        uvloop.run(gateway.serve())
    finally:
        gateway.close()
