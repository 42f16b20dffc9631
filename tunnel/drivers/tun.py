"""File descriptor side of the TUN device: attach, drain in batches, write."""

from __future__ import annotations

import fcntl
import os
import struct

from tunnel.dataplane.coalesce import PLAIN, VNET_HDR_LEN, coalesce
from tunnel.errors import DriverError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
MAX_PACKET = 65535


class TunDevice:
    """An attached TUN queue. Reads raw IP packets (IFF_NO_PI) without blocking; with vnet_hdr (the
    default) writes carry a virtio_net_hdr, so runs of TCP segments go up as one GSO write."""

    def __init__(self, name: str, vnet_hdr: bool = True, multi_queue: bool = True) -> None:
        """multi_queue: attach one queue of a multi-queue device (the kernel spreads flows over the
        queues, one per worker); the device must have been created multi-queue (Netlink.ensure_tun)."""
        try:
            self.fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DriverError(f"cannot open {TUN_PATH}: {exc.strerror}") from exc
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            # Offload flags outlive the fd on a persistent device: state ours (none) explicitly. None means
            # the kernel hands us whole, checksummed packets; GSO is only what we write.
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError as exc:
            os.close(self.fd)
            raise DriverError(f"cannot attach to TUN device {name}: {exc.strerror}") from exc
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.gso_writes = 0  # coalesced writes, for the counters

    def read_batch(self, limit: int) -> list[bytes]:
        """Up to `limit` packets, stopping early when the queue is empty."""
        packets: list[bytes] = []
        read, fd, append = os.read, self.fd, packets.append
        try:
            if self.vnet_hdr:  # no offloads were asked for: the header says nothing; drop it
                for _ in range(limit):
                    append(read(fd, MAX_PACKET + VNET_HDR_LEN)[VNET_HDR_LEN:])
            else:
                for _ in range(limit):
                    append(read(fd, MAX_PACKET))
        except BlockingIOError:
            pass
        return packets

    def write_batch(self, packets: list[bytes]) -> int:
        """Write the packets of one receive batch, TCP runs coalesced; returns how many were not written."""
        if not self.vnet_hdr:
            return sum(not self.write(p) for p in packets)
        failed, writev, fd = 0, os.writev, self.fd
        for header, packet in coalesce(packets):
            try:
                writev(fd, (header, packet))
            except OSError:
                failed += 1 if header is PLAIN else _segments(header, packet)
            else:
                if header is not PLAIN:
                    self.gso_writes += 1
        return failed

    def write(self, packet: bytes) -> bool:
        try:
            if self.vnet_hdr:
                os.writev(self.fd, (PLAIN, packet))
            else:
                os.write(self.fd, packet)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _segments(header: bytes, packet: bytes) -> int:
    """How many packets a failed GSO write stood for (hdr_len, gso_size from the virtio_net_hdr)."""
    hdr_len, size = struct.unpack_from("=HH", header, 2)
    return -(-(len(packet) - hdr_len) // size) if size else 1
