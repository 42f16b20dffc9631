"""One-way latency probe for a DSCP-marked UDP stream (stdlib only).

``send`` emits ``--rate`` datagrams a second for ``--seconds`` on an absolute schedule (packet k is due
at start + k / rate, so a late wake-up does not shift the packets after it), each carrying a magic, its
sequence number (from 0) and ``time.clock_gettime_ns(CLOCK_MONOTONIC)`` at sending, with IP_TOS (IPv6:
IPV6_TCLASS) set to ``dscp << 2``. It prints one JSON line: sent, late (sent more than one interval
behind schedule), duration.

``recv`` receives for exactly ``--seconds`` and prints one JSON line: received, duplicates, reordered,
the longest silence between two arrivals (an outage, with its start and end), max sequence seen, lost (sequence numbers 0..max missing; a loss after the last received packet cannot be
seen), p50/p95/p99/max one-way delay in ms, and the DSCP each datagram arrived with (from IP_RECVTOS /
IPV6_RECVTCLASS ancillary data) as a count per value. Every lab namespace shares the host's
CLOCK_MONOTONIC, so the one-way delay is exact (receive time is taken when recvmsg returns).

Run it with any python3, in a lab namespace for example::

    ip netns exec NS python3 netns-lab/netnslab/udpprobe.py recv --bind 10.2.0.10 --port 7000 --seconds 6
    ip netns exec NS python3 netns-lab/netnslab/udpprobe.py send --to 10.2.0.10:7000 --rate 50 --seconds 5 --dscp 46
"""

from __future__ import annotations

import argparse
import json
import math
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

MAGIC = b"SLpr"
HEADER = struct.Struct("!4sQQ")  # magic, sequence, send time (CLOCK_MONOTONIC ns)
MIN_SIZE = HEADER.size

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_IP_TOS = getattr(socket, "IP_TOS", 1)
_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)


# --------------------------------------------------------------------------
# pure helpers


def encode(seq: int, send_ns: int, size: int = MIN_SIZE) -> bytes:
    """A probe datagram of ``size`` bytes (zero padded)."""
    if size < MIN_SIZE:
        raise ValueError(f"a probe datagram needs at least {MIN_SIZE} bytes, got {size}")
    return HEADER.pack(MAGIC, seq, send_ns).ljust(size, b"\0")


def decode(data: bytes) -> tuple[int, int] | None:
    """(sequence, send time ns) of a probe datagram, None for anything else."""
    if len(data) < MIN_SIZE:
        return None
    magic, seq, send_ns = HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    return seq, send_ns


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: the value reported was measured); None if empty."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def sequence_report(seqs: Iterable[int]) -> dict[str, int | None]:
    """Gap accounting for sequence numbers (sender starts at 0) in arrival order.

    ``lost`` counts the numbers in 0..max never received; ``duplicates`` the repeats; ``reordered`` the
    packets that arrived after a higher sequence number (and were not duplicates).
    """
    seen: set[int] = set()
    received = duplicates = reordered = 0
    highest: int | None = None
    for s in seqs:
        received += 1
        if s in seen:
            duplicates += 1
            continue
        seen.add(s)
        if highest is not None and s < highest:
            reordered += 1
        highest = s if highest is None else max(highest, s)
    lost = 0 if highest is None else highest + 1 - len(seen)
    return {"received": received, "unique": len(seen), "duplicates": duplicates,
            "reordered": reordered, "max_seq": highest, "lost": lost}


def delay_report(delays_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/min of one-way delays in ms (rounded to microseconds)."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)
    return {"delay_p50_ms": r(percentile(delays_ms, 50)), "delay_p95_ms": r(percentile(delays_ms, 95)),
            "delay_p99_ms": r(percentile(delays_ms, 99)), "delay_max_ms": r(max(delays_ms, default=None)),
            "delay_min_ms": r(min(delays_ms, default=None))}


def schedule(start_ns: int, rate: float, k: int) -> int:
    """When packet ``k`` is due: an absolute schedule, so lateness never accumulates."""
    return start_ns + round(k * 1e9 / rate)


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or (":" in host and not text.startswith("[")):
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    return host, int(port)


class ProbeReceiver:
    """Accumulates received probes: feed ``add(recv_ns, data, dscp)``, read ``summary()``."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.delays_ms: list[float] = []
        self.dscp: dict[int, int] = {}
        self.foreign = 0
        self._last_ns: int | None = None
        self.gap: tuple[int, int] = (0, 0)  # the longest silence between two probes: (start, end) ns

    def add(self, recv_ns: int, data: bytes, dscp: int | None = None) -> None:
        decoded = decode(data)
        if decoded is None:
            self.foreign += 1
            return
        seq, send_ns = decoded
        if self._last_ns is not None and recv_ns - self._last_ns > self.gap[1] - self.gap[0]:
            self.gap = (self._last_ns, recv_ns)
        self._last_ns = recv_ns
        self.seqs.append(seq)
        self.delays_ms.append((recv_ns - send_ns) / 1e6)
        if dscp is not None:
            self.dscp[dscp] = self.dscp.get(dscp, 0) + 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = sequence_report(self.seqs)
        out.update(delay_report(self.delays_ms))
        out["foreign"] = self.foreign
        # an outage as the stream's receiver saw it: the longest time without a probe (CLOCK_MONOTONIC ns)
        out["longest_gap_ms"] = round((self.gap[1] - self.gap[0]) / 1e6, 3)
        out["gap_start_ns"], out["gap_end_ns"] = self.gap
        out["dscp"] = {str(k): v for k, v in sorted(self.dscp.items())}
        return out


# --------------------------------------------------------------------------
# sockets


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def dscp_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The DSCP (upper six bits of the TOS / traffic class byte) from recvmsg ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == _IP_TOS and len(data) >= 1:
            return data[0] >> 2
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_TCLASS and len(data) >= 4:
            return (int.from_bytes(data[:4], sys.byteorder) & 0xFF) >> 2
    return None


def send(to: str, rate: float, seconds: float, dscp: int, size: int = 200) -> dict[str, Any]:
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be within 0..63, got {dscp}")
    host, port = parse_hostport(to)
    family = _family(host)
    count = round(rate * seconds)
    late = 0
    interval_ns = 1e9 / rate
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_TCLASS, dscp << 2)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_TOS, dscp << 2)
        sock.connect((host, port))
        start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for k in range(count):
            due = schedule(start, rate, k)
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if due > now:
                time.sleep((due - now) / 1e9)
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            if now - due > interval_ns:
                late += 1
            try:
                sock.send(encode(k, now, size))
            except ConnectionRefusedError:
                pass  # an ICMP port unreachable for an earlier datagram; keep the schedule
        duration = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - start) / 1e9
    return {"sent": count, "late": late, "duration_s": round(duration, 6), "dscp": dscp, "size": size}


def open_receiver(bind: str, port: int, rcvbuf: int = 4 << 20) -> socket.socket:
    """A UDP socket bound to bind:port that reports each datagram's TOS / traffic class."""
    family = _family(bind)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVTCLASS, 1)
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTOS, 1)
            except OSError:
                pass
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTOS, 1)
        sock.bind((bind, port))
    except BaseException:
        sock.close()
        raise
    return sock


def receive_for(sock: socket.socket, seconds: float, handle: Callable[[int, bytes, int | None], None],
                bufsize: int = 65535) -> None:
    """Call ``handle(monotonic_ns, payload, dscp)`` per datagram until ``seconds`` have passed (never earlier)."""
    deadline = time.monotonic() + seconds
    ancsize = socket.CMSG_SPACE(4) * 2
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        while True:  # drain what is queued without another select
            try:
                data, anc, _flags, _addr = sock.recvmsg(bufsize, ancsize, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            handle(time.clock_gettime_ns(time.CLOCK_MONOTONIC), data, dscp_from_ancdata(anc))


def recv(bind: str, port: int, seconds: float) -> dict[str, Any]:
    rx = ProbeReceiver()
    with open_receiver(bind, port) as sock:
        print(f"udpprobe: listening on {bind} port {port}", file=sys.stderr, flush=True)
        receive_for(sock, seconds, rx.add)
    return rx.summary()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="udpprobe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send the probe stream")
    s.add_argument("--to", required=True, help="HOST:PORT or [IPv6]:PORT")
    s.add_argument("--rate", type=float, default=50.0, help="datagrams per second")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--dscp", type=int, default=46)
    s.add_argument("--size", type=int, default=200, help=f"UDP payload bytes (>= {MIN_SIZE})")
    r = sub.add_parser("recv", help="receive for --seconds, then report")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "send":
            result = send(args.to, args.rate, args.seconds, args.dscp, args.size)
        else:
            result = recv(args.bind, args.port, args.seconds)
    except ValueError as exc:
        ap.error(str(exc))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
