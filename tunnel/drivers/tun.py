"""File descriptor side of the TUN device: attach, drain in batches, write."""

from __future__ import annotations

import fcntl
import os
import struct

from tunnel.errors import DriverError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535


class TunDevice:
    """An attached TUN queue. Reads raw IP packets (IFF_NO_PI) without blocking."""

    def __init__(self, name: str) -> None:
        try:
            self.fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DriverError(f"cannot open {TUN_PATH}: {exc.strerror}") from exc
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            # Offload flags outlive the fd on a persistent device: state ours (none) explicitly.
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError as exc:
            os.close(self.fd)
            raise DriverError(f"cannot attach to TUN device {name}: {exc.strerror}") from exc
        self.name = name

    def read_batch(self, limit: int) -> list[bytes]:
        """Up to `limit` packets, stopping early when the queue is empty."""
        packets = []
        read, fd = os.read, self.fd
        try:
            for _ in range(limit):
                packets.append(read(fd, MAX_PACKET))
        except BlockingIOError:
            pass
        return packets

    def write(self, packet: bytes) -> bool:
        try:
            os.write(self.fd, packet)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
