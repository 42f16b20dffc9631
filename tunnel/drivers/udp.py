"""The encapsulation socket: one UDP socket carries ESP, IKE and keepalives (RFC 3948)."""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

from tunnel.errors import DriverError

SO_NO_CHECK = 11  # Linux: send IPv4 UDP with a zero checksum
SOL_UDP = 17
UDP_SEGMENT = 103  # Linux: send one buffer as several datagrams of a given size (GSO); no Python constant
UDP_GRO = 104  # Linux: receive a run of same-size datagrams as one buffer, sizes in a control message
MAX_DATAGRAM = 65535
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of the kernel
MAX_GSO_BYTES = 65000  # one GSO send stays below the 64 KiB IP datagram limit
CMSG_SPACE = socket.CMSG_SPACE(4) * 2  # the GRO segment size and the TOS / traffic class
IP_RECVTOS = 13


def open_socket(address: str, port: int, buffer_bytes: int, zero_checksum: bool = True,
                reuseport: bool = False, mark: int = 0, freebind: bool = False) -> socket.socket:
    """zero_checksum: RFC 3948 §2.1 says the UDP checksum SHOULD be zero (ESP's ICV protects the payload),
    but the kernel refuses UDP_SEGMENT sends without checksums, so the batching data path turns it off:
    receivers MUST accept either, and the checksum is computed by offload, not by us. mark: SO_MARK, how
    the gateway's own datagrams escape a full tunnel's routing table (netlink.py). freebind: bind an
    address that is not (yet) local, the virtual address keepalived gives the active one of a pair; until it
    arrives nothing is received there and sends fail (the standby sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_buffers(sock, buffer_bytes)
        if family == socket.AF_INET and zero_checksum:
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if freebind:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise DriverError(f"cannot listen on UDP [{address}]:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


SO_MARK = 36  # socket.SO_MARK from Python 3.12 on
IP_FREEBIND = 15  # linux/in.h
IPV6_FREEBIND = 78  # linux/in6.h


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


def enable_gro(sock: socket.socket) -> bool:
    """Ask for UDP_GRO; False on kernels without it (then every datagram arrives alone). Also asks for
    each datagram's TOS / traffic class: the outer DSCP picks its queue, its ECN field is carried into
    the inner packet (RFC 6040)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def recv_gro_batch(sock: socket.socket, limit: int) -> list[tuple[bytes, tuple, int]]:
    """(datagram, peer, TOS) from a socket set up by enable_gro: a coalesced buffer is split back into its
    datagrams (the control message gives their size; only the last may be shorter; GRO only merges
    datagrams with equal TOS). `limit` counts receive calls, not datagrams."""
    datagrams: list[tuple[bytes, tuple, int]] = []
    recvmsg, append = sock.recvmsg, datagrams.append
    try:
        for _ in range(limit):
            data, ancdata, _flags, peer = recvmsg(MAX_DATAGRAM, CMSG_SPACE)
            size = tos = 0
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = int.from_bytes(value[:4], sys.byteorder)
                elif kind == socket.IP_TOS and level == socket.IPPROTO_IP:
                    tos = value[0]
                elif kind == socket.IPV6_TCLASS and level == socket.IPPROTO_IPV6:
                    tos = int.from_bytes(value[:4], sys.byteorder) & 0xFF
            if size and len(data) > size:
                for start in range(0, len(data), size):
                    append((data[start:start + size], peer, tos))
            else:
                append((data, peer, tos))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass  # e.g. an ICMP error queued on the socket; the next read sees the next datagram
    return datagrams


class SegmentingSender:
    """Sends a batch of (datagram, peer, TOS) with as few system calls as it can: each run of datagrams
    to the same peer with the same TOS whose sizes are equal (the last may be shorter) goes out as one
    UDP_SEGMENT send, which the kernel (or the NIC) cuts into the same datagrams on the wire. Falls back
    to one send per datagram for good if the kernel refuses GSO. A non-zero TOS (the outer DSCP and ECN
    of RFC 2983 / RFC 6040) travels as a control message, so one socket serves every class."""

    def __init__(self, sock: socket.socket, segmentation: bool = True) -> None:
        self.sock = sock
        self.segmentation = segmentation
        self.gso_sends = 0  # UDP_SEGMENT sends, for the counters
        if sock.family == socket.AF_INET6:
            self._tos_level, self._tos_type = socket.IPPROTO_IPV6, socket.IPV6_TCLASS
        else:
            self._tos_level, self._tos_type = socket.IPPROTO_IP, socket.IP_TOS

    def send(self, batch: list[tuple[bytes, tuple, int]]) -> int:
        """Returns the number of datagrams that could not be sent (buffer full, no route)."""
        failed, n, i = 0, len(batch), 0
        sendto = self.sock.sendto
        while i < n:
            data, peer, tos = batch[i]
            size, j = len(data), i + 1
            if self.segmentation:
                total = size
                while j < n and j - i < MAX_SEGMENTS:
                    more, to, more_tos = batch[j]
                    length = len(more)
                    if to != peer or more_tos != tos or length > size or total + length > MAX_GSO_BYTES:
                        break
                    total += length
                    j += 1
                    if length < size:
                        break  # a shorter datagram ends a GSO run
            try:
                if j - i == 1:
                    if tos:
                        self.sock.sendmsg([data], [self._tos(tos)], 0, peer)
                    else:
                        sendto(data, peer)
                else:
                    self._send_run(batch, i, j, size, peer, tos)
            except (OSError, TypeError, ValueError):  # TypeError/ValueError: a peer of the wrong family
                failed += j - i
            i = j
        return failed

    def _tos(self, tos: int) -> tuple[int, int, bytes]:
        return self._tos_level, self._tos_type, tos.to_bytes(4, sys.byteorder)

    def _send_run(self, batch: list[tuple[bytes, tuple, int]], i: int, j: int, size: int, peer: tuple,
                  tos: int) -> None:
        payload = b"".join([batch[k][0] for k in range(i, j)])
        cmsgs = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        if tos:
            cmsgs.append(self._tos(tos))
        try:
            self.sock.sendmsg([payload], cmsgs, 0, peer)
            self.gso_sends += 1
        except OSError as exc:
            if exc.errno not in (22, 5, 95):  # EINVAL, EIO, EOPNOTSUPP: GSO not possible here
                raise
            self.segmentation = False
            for k in range(i, j):
                self.sock.sendmsg([batch[k][0]], cmsgs[1:], 0, peer)


class FamilySender:
    """A dual-stack gateway's sender: each datagram leaves through the socket of its peer's family (an
    IPv6 peer's host has a colon), each socket's SegmentingSender batching as usual."""

    def __init__(self, v4: SegmentingSender, v6: SegmentingSender) -> None:
        self.v4, self.v6 = v4, v6

    @property
    def gso_sends(self) -> int:
        return self.v4.gso_sends + self.v6.gso_sends

    def send(self, batch: list[tuple[bytes, tuple, int]]) -> int:
        v4 = [item for item in batch if ":" not in item[1][0]]
        if len(v4) == len(batch):
            return self.v4.send(batch)
        v6 = [item for item in batch if ":" in item[1][0]]
        return (self.v4.send(v4) if v4 else 0) + self.v6.send(v6)


SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16


def steer_by_spi(sock: socket.socket, workers: int) -> None:
    """Attach to the SO_REUSEPORT group of `sock` a classic BPF program that hands each datagram to
    socket number (first 32-bit word of the UDP payload) % workers: ESP goes to the worker owning its
    SPI, IKE (non-ESP marker 0) to socket 0; a datagram shorter than 4 bytes (NAT keepalive) fails the
    load, which returns 0, so socket 0 too. Sockets are numbered in the order they joined the group."""
    program = [(_BPF_LD_W_ABS, 0, 0, 0), (_BPF_ALU_MOD_K, 0, 0, workers), (_BPF_RET_A, 0, 0, 0)]
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise DriverError(f"cannot steer ESP to workers by SPI (SO_ATTACH_REUSEPORT_CBPF): {exc.strerror}") from exc
