"""Traffic helpers on top of a :class:`~netnslab.lab.Lab`: ping, iperf3, port waits.

They return parsed results rather than text so tests can assert on numbers
(loss %, RTT percentiles, bits per second) without re-parsing tool output.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Lab, LabError

_RTT_RE = re.compile(r"time[=<]([\d.]+) ms")
_STATS_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
# ping exits 2 for these without sending anything: that is "no path", not a usage error.
_NO_PATH = ("Network is unreachable", "No route to host", "Destination Host Unreachable",
            "Network unreachable")


class ToolError(LabError):
    """A traffic tool failed in a way that is not a measurement (bad usage, crash)."""


class Iperf3Error(ToolError):
    """iperf3 could not run the test; the message carries iperf3's own error."""


# --------------------------------------------------------------------------
# ping


@dataclass(frozen=True)
class PingResult:
    """Parsed ping run. RTTs are from each reply line (duplicates excluded)."""

    dst: str
    sent: int
    received: int
    rtts_ms: tuple[float, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.received > 0

    @property
    def loss_pct(self) -> float:
        return 100.0 if self.sent == 0 else 100.0 * (self.sent - self.received) / self.sent

    @property
    def avg(self) -> float | None:
        return statistics.fmean(self.rtts_ms) if self.rtts_ms else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rtts_ms) if self.rtts_ms else None

    @property
    def p95(self) -> float | None:
        return percentile(self.rtts_ms, 95)

    @property
    def p99(self) -> float | None:
        return percentile(self.rtts_ms, 99)


def percentile(values: tuple[float, ...] | list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a reported value actually occurred)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ping(lab: Lab, node: str, dst: str, count: int = 3, interval: float = 0.2,
         tos: int | None = None, size: int | None = None, timeout: float = 1.0) -> PingResult:
    """Ping ``dst`` from ``node``; ``timeout`` is how long to wait for each reply.

    A lost path (100 % loss, unreachable) is a result, not an exception; bad
    arguments raise :class:`ToolError`.
    """
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{timeout:g}"]
    if tos is not None:
        argv += ["-Q", str(tos)]
    if size is not None:
        argv += ["-s", str(size)]
    argv.append(dst)
    cp = lab.run(node, argv, check=False, timeout=count * interval + timeout + 10)
    output = cp.stdout + cp.stderr
    if cp.returncode not in (0, 1) and not any(s in output for s in _NO_PATH):
        raise ToolError(f"[{node}] ping {dst} failed (exit {cp.returncode}): {output.strip()[-1000:]}")
    return parse_ping(dst, output, cp.returncode)


def parse_ping(dst: str, output: str, returncode: int = 0) -> PingResult:
    """Parse iputils ping output (split out so it can be unit-tested)."""
    rtts = tuple(float(m.group(1)) for line in output.splitlines()
                 if "DUP!" not in line and (m := _RTT_RE.search(line)))
    m = _STATS_RE.search(output)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return PingResult(dst=dst, sent=sent, received=received, rtts_ms=rtts,
                      returncode=returncode, output=output)


# --------------------------------------------------------------------------
# listening sockets


def wait_listening(lab: Lab, node: str, port: int, udp: bool = False, timeout: float = 5.0,
                   proc: subprocess.Popen | None = None) -> None:
    """Block until something in ``node`` listens on ``port`` (polls ``ss``).

    Pass the server's ``proc`` to fail fast if it dies instead of listening.
    """
    flags = "-Hlnu" if udp else "-Hlnt"
    deadline = time.monotonic() + timeout
    while True:
        cp = lab.run(node, ["ss", flags, "sport", "=", f":{port}"], check=False, timeout=5)
        if cp.stdout.strip():
            return
        if proc is not None and proc.poll() is not None:
            raise ToolError(f"[{node}] process exited ({proc.returncode}) before listening on {port}")
        if time.monotonic() > deadline:
            raise ToolError(f"[{node}] nothing listening on {'udp' if udp else 'tcp'} port {port} after {timeout}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------
# iperf3


@dataclass(frozen=True)
class Iperf3Result:
    """Summary of one iperf3 run (sender/receiver view from iperf3's ``end`` section)."""

    sent_bps: float
    received_bps: float
    retransmits: int | None  # TCP only
    lost_percent: float | None  # UDP only
    jitter_ms: float | None  # UDP only
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def received_mbps(self) -> float:
        return self.received_bps / 1e6


def iperf3(lab: Lab, client_node: str, server_node: str, server_addr: str, seconds: int = 2,
           streams: int = 1, udp: bool = False, bitrate: str | None = None, length: int | None = None,
           reverse: bool = False, port: int = 5201, extra_args: list[str] | None = None) -> Iperf3Result:
    """Run one iperf3 test from ``client_node`` to a one-shot server bound to ``server_addr``."""
    if int(seconds) != seconds or seconds < 1:
        raise ValueError("iperf3 -t takes whole seconds >= 1")
    with tempfile.TemporaryFile(mode="w+") as server_log:
        server = lab.popen(server_node, ["iperf3", "-s", "-1", "-B", server_addr, "-p", str(port)],
                           stdout=server_log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_listening(lab, server_node, port, timeout=5, proc=server)
            cp = lab.run(client_node, _client_argv(server_addr, port, int(seconds), streams, udp,
                                                   bitrate, length, reverse, extra_args),
                         check=False, timeout=seconds + 30)
        finally:
            lab.stop(server, timeout=3)
        server_log.seek(0)
        return _parse_iperf3(cp, server_log.read())


def _client_argv(addr: str, port: int, seconds: int, streams: int, udp: bool, bitrate: str | None,
                 length: int | None, reverse: bool, extra: list[str] | None) -> list[str]:
    argv = ["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-P", str(streams),
            "--json", "--connect-timeout", "3000"]
    if udp:
        argv.append("-u")
    if bitrate is not None:
        argv += ["-b", str(bitrate)]
    if length is not None:
        argv += ["-l", str(length)]
    if reverse:
        argv.append("-R")
    return argv + list(extra or [])


def _parse_iperf3(cp: subprocess.CompletedProcess, server_output: str) -> Iperf3Result:
    try:
        data = json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise Iperf3Error(f"iperf3 client exit {cp.returncode}, no JSON: {(cp.stdout + cp.stderr).strip()[-1000:]}"
                          f" | server: {server_output.strip()[-500:]}") from None
    if "error" in data:
        raise Iperf3Error(f"iperf3: {data['error']} | server: {server_output.strip()[-500:]}")
    end = data.get("end", {})
    udp = data.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    if udp:
        s = end.get("sum", {})
        sent = end.get("sum_sent", s).get("bits_per_second", s.get("bits_per_second", 0.0))
        recv = end.get("sum_received", s).get("bits_per_second", s.get("bits_per_second", 0.0))
        return Iperf3Result(sent_bps=float(sent), received_bps=float(recv), retransmits=None,
                            lost_percent=float(s.get("lost_percent", 0.0)),
                            jitter_ms=float(s.get("jitter_ms", 0.0)), raw=data)
    sent, recv = end.get("sum_sent", {}), end.get("sum_received", {})
    return Iperf3Result(sent_bps=float(sent.get("bits_per_second", 0.0)),
                        received_bps=float(recv.get("bits_per_second", 0.0)),
                        retransmits=sent.get("retransmits"), lost_percent=None, jitter_ms=None,
                        raw=data)


# --------------------------------------------------------------------------
# time to the first reply, CPU time of daemons (benchmarks)

_STAMPED_REPLY_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


class ReplyWatch:
    """A background ``ping -D -i 0.01`` that tells when the first reply came back.

    Started *before* the gateways, it measures "gateway start to first packet through" to within
    the 10 ms probe interval, from ping's own receive timestamps rather than from polling with
    one-shot pings (each costs a namespace exec, ~10-20 ms of its own). Unanswered probes and
    "Destination Net Unreachable" from the gateway while it has no route yet are expected.
    """

    def __init__(self, lab: Lab, node: str, dst: str, interval: float = 0.01) -> None:
        self.lab = lab
        self._out = tempfile.NamedTemporaryFile(mode="w+", prefix="replywatch-", suffix=".txt")
        # no -w: with a deadline iputils ping quits at the first ICMP error ("Net Unreachable" from a
        # gateway that has no route yet); close() or lab teardown stops it instead
        argv = ["ping", "-n", "-D", "-i", f"{interval:g}", dst]
        self.proc = lab.popen(node, argv, stdout=self._out, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float) -> float | None:
        """Wall-clock time (time.time()) of the first reply, or None if none came within ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            stamp = self._first_reply()
            if stamp is not None:
                return stamp
            if self.proc.poll() is not None or time.monotonic() > end:
                return None
            time.sleep(0.01)

    def _first_reply(self) -> float | None:
        for line in Path(self._out.name).read_text(errors="replace").splitlines():
            m = _STAMPED_REPLY_RE.match(line)
            if m:
                return float(m.group(1))
        return None

    def output(self) -> str:
        return Path(self._out.name).read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.lab.stop(self.proc, timeout=2)
        self._out.close()

    def __enter__(self) -> ReplyWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing ")"
    return text[text.rindex(")") + 2:].split()


def _descendants(pids: list[int]) -> set[int]:
    """The given PIDs and every live process below them (a daemon's helpers count as its CPU)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (all their threads) and their live descendants, in seconds.

    Read from /proc/<pid>/stat in the root PID namespace, so it works for processes in any lab
    namespace. Take it before and after a measurement; a process that exits in between loses its
    share, so only use it on daemons that keep running.
    """
    total = 0
    for pid in _descendants(list(pids)):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / _CLK_TCK
