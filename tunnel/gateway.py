"""Composition root: wires the pure forwarder to the TUN device and the UDP socket.

The only place that owns the event loop and the OS resources. The data path never awaits per packet:
each readiness callback drains a batch, pushes it through the forwarder and flushes the results.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from tunnel.config.model import GatewayConfig, Tunnel
from tunnel.dataplane import Counters, Forwarder, NeedSa
from tunnel.drivers import udp
from tunnel.drivers.netlink import Netlink
from tunnel.drivers.tun import TunDevice
from tunnel.esp.drops import DropReason
from tunnel.esp.overhead import inner_mtu
from tunnel.esp.sa import InboundSa, OutboundSa

log = logging.getLogger("sitelink.gateway")

BATCH = 128  # packets per readiness callback: large enough to amortise, small enough to stay fair


def tun_mtu(config: GatewayConfig) -> int:
    return config.tun.mtu or inner_mtu(config.tun.wan_mtu, config.listen.address.version == 6)


def format_counters(name: str, counters: Counters) -> str:
    drops = ",".join(f"{k}:{v}" for k, v in counters.drops_by_reason().items()) or "none"
    return (
        f"tunnel={name} tx_packets={counters.tx_packets} tx_bytes={counters.tx_bytes} "
        f"rx_packets={counters.rx_packets} rx_bytes={counters.rx_bytes} keepalives={counters.keepalives} drops={drops}"
    )


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.forwarder = Forwarder()
        self._netlink: Netlink | None = None
        self._tun: TunDevice | None = None
        self._tun_index: int | None = None
        self._sock: socket.socket | None = None
        self._stopping: asyncio.Event | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Set up keys, TUN, routes and socket; on any failure undo what was done."""
        try:
            for tunnel in self.config.tunnels:
                self._add_tunnel(tunnel)
            self._open_tun()
            listen = self.config.listen
            self._sock = udp.open_socket(str(listen.address), listen.port, self.config.socket_buffer_bytes)
        except BaseException:
            self.close()
            raise
        log.info(
            "gateway %s listening on udp [%s]:%d, TUN %s mtu %d, %d tunnel(s)",
            self.config.name, listen.address, listen.port, self.config.tun.name, tun_mtu(self.config),
            len(self.config.tunnels),
        )

    def close(self) -> None:
        """Remove the TUN device (and with it its routes) and close the socket. Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun is not None:
            self._tun.close()
            self._tun = None
        if self._netlink is not None:
            if self._tun_index is not None:
                self._netlink.delete_link(self._tun_index)
                log.info("removed TUN device %s and its routes", self.config.tun.name)
                self._tun_index = None
            self._netlink.close()
            self._netlink = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, self.log_counters)
        loop.add_reader(self._tun.fd, self._on_tun_readable)
        loop.add_reader(self._sock.fileno(), self._on_udp_readable)
        try:
            await self._stopping.wait()
        finally:
            loop.remove_reader(self._tun.fd)
            loop.remove_reader(self._sock.fileno())
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            self.log_counters()

    def _request_stop(self, sig: int) -> None:
        log.info("received %s, shutting down", signal.Signals(sig).name)
        self._stopping.set()

    def log_counters(self) -> None:
        for name, state in self.forwarder.tunnels.items():
            log.info("counters %s", format_counters(name, state.counters))
        log.info("counters %s", format_counters("(none)", self.forwarder.counters))

    # -- set-up helpers -------------------------------------------------------------------------------
    def _add_tunnel(self, tunnel: Tunnel) -> None:
        peer = (str(tunnel.peer.address), tunnel.peer.port)
        self.forwarder.add_tunnel(tunnel.name, peer, tunnel.local_subnets, tunnel.remote_subnets)
        keys = tunnel.manual_keys
        self.forwarder.install_outbound(tunnel.name, OutboundSa(keys.outbound.spi, keys.outbound.key.reveal()))
        self.forwarder.install_inbound(
            tunnel.name, InboundSa(keys.inbound.spi, keys.inbound.key.reveal(), tunnel.replay_window)
        )
        log.info(
            "tunnel %s: peer [%s]:%d, local %s, remote %s, manual keys (SPI out %#010x, in %#010x)",
            tunnel.name, *peer, ",".join(map(str, tunnel.local_subnets)), ",".join(map(str, tunnel.remote_subnets)),
            keys.outbound.spi, keys.inbound.spi,
        )

    def _open_tun(self) -> None:
        tun = self.config.tun
        self._netlink = Netlink()
        self._tun_index = self._netlink.ensure_tun(tun.name)
        self._tun = TunDevice(tun.name)
        self._netlink.configure(self._tun_index, tun_mtu(self.config), tun.txqueuelen, tun.addresses)
        sources: dict[int, str] = {}
        for iface in tun.addresses:
            sources.setdefault(iface.version, str(iface.ip))
        remote = [net for t in self.config.tunnels for net in t.remote_subnets]
        self._netlink.add_routes(self._tun_index, remote, sources)

    # -- data path --------------------------------------------------------------------------------------
    def _on_tun_readable(self) -> None:
        outbound, sendto, failed = self.forwarder.outbound, self._sock.sendto, 0
        for packet in self._tun.read_batch(BATCH):
            result = outbound(packet)
            if result is not None:
                try:
                    sendto(result[1], result[0])
                except OSError:
                    failed += 1  # socket buffer full or no route to the peer: counted, never retried in clear
        if failed:
            self.forwarder.counters.drops[DropReason.SEND_FAILED] += failed
        self._handle_events()

    def _on_udp_readable(self) -> None:
        inbound, write, failed = self.forwarder.inbound, self._tun.write, 0
        for datagram, peer in udp.recv_batch(self._sock, BATCH):
            inner = inbound(datagram, peer)
            if inner is not None and not write(inner):
                failed += 1
        if failed:
            self.forwarder.counters.drops[DropReason.SEND_FAILED] += failed

    def _handle_events(self) -> None:
        while (event := self.forwarder.next_event()) is not None:
            self._on_need_sa(event)

    def _on_need_sa(self, event: NeedSa) -> None:
        # Manually keyed tunnels cannot make a new SA; IKE (next issue) answers this event.
        log.error("tunnel %s needs a new SA (%s); with manual keys, install new keys and restart",
                  event.tunnel, event.reason.value)


def run(config: GatewayConfig) -> None:
    """Set up, serve until SIGINT/SIGTERM, tear down. Netlink work stays outside the event loop:
    pyroute2's synchronous IPRoute runs its own loop and cannot be used inside a running one."""
    gateway = Gateway(config)
    gateway.open()
    try:
        asyncio.run(gateway.serve())
    finally:
        gateway.close()
