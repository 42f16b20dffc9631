"""The encapsulation socket: one UDP socket carries ESP, IKE and keepalives (RFC 3948)."""

from __future__ import annotations

import socket

from tunnel.errors import DriverError

SO_NO_CHECK = 11  # Linux: send IPv4 UDP with a zero checksum
MAX_DATAGRAM = 65535


def open_socket(address: str, port: int, buffer_bytes: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _set_buffers(sock, buffer_bytes)
        if family == socket.AF_INET:
            # RFC 3948 §2.1: the UDP checksum SHOULD be zero; ESP's ICV protects the payload.
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise DriverError(f"cannot listen on UDP [{address}]:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def _set_buffers(sock: socket.socket, size: int) -> None:
    # The *FORCE variants pass net.core.[rw]mem_max when we have CAP_NET_ADMIN; receive-buffer
    # overruns were the main loss of userspace tunnels measured on this machine.
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def recv_batch(sock: socket.socket, limit: int) -> list[tuple[bytes, tuple]]:
    """Up to `limit` datagrams, stopping early when the socket is empty."""
    datagrams = []
    recv = sock.recvfrom
    try:
        for _ in range(limit):
            datagrams.append(recv(MAX_DATAGRAM))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass  # e.g. an ICMP error queued on the socket; the next read sees the next datagram
    return datagrams
