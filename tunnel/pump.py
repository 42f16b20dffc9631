"""The data path between the OS and a Forwarder, one readiness event at a time, shared by the gateway's
own loop and its worker processes: drain a batch, push it through the forwarder, flush the results in as
few system calls as the batch allows. Never an await or a syscall per packet that a batch can replace."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tunnel.dataplane import Forwarder
from tunnel.drivers import udp
from tunnel.drivers.tun import TunDevice
from tunnel.esp.drops import DropReason

BATCH = 128  # packets per readiness callback: large enough to amortise, small enough to stay fair


def tun_to_udp(forwarder: Forwarder, tun: TunDevice, sender: udp.SegmentingSender) -> None:
    """IP packets from the TUN queue, sealed; runs of equal-size ESP packets leave in one UDP_SEGMENT
    send. A failure (socket buffer full, no route to the peer) is counted, never retried in clear."""
    outbound, out = forwarder.outbound, []
    append = out.append
    for packet in tun.read_batch(BATCH):
        result = outbound(packet)
        if result is not None:
            append((result[1], result[0]))
    failed = sender.send(out) if out else 0
    if failed:
        forwarder.counters.drops[DropReason.SEND_FAILED] += failed


def udp_to_tun(forwarder: Forwarder, sock: socket.socket, tun: TunDevice, gro: bool,
               on_ike: Callable[[], None] | None = None) -> None:
    """ESP-in-UDP from the socket, opened; delivered with one write per run of TCP segments or UDP
    datagrams of a flow (GSO). on_ike runs when an IKE message arrived, before the ESP behind it in
    the same batch is opened: a CREATE_CHILD_SA response must install its SAs first (make-before-break)."""
    inbound, inbox, delivered = forwarder.inbound, forwarder.ike_inbox, []
    deliver = delivered.append
    receive = udp.recv_gro_batch if gro else udp.recv_batch
    for datagram, peer in receive(sock, BATCH):
        inner = inbound(datagram, peer)
        if inner is not None:
            deliver(inner)
        elif inbox and on_ike is not None:
            on_ike()
    failed = tun.write_batch(delivered) if delivered else 0
    if failed:
        forwarder.counters.drops[DropReason.SEND_FAILED] += failed
