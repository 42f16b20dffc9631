"""Conferencing-like media for lab tests: a live RTP video stream, RTP receive statistics, a latency probe.

* :func:`start_rtp_video` starts GStreamer sending 720p30 VP8 over RTP with a DSCP (AF41 by default), as a
  video call would (see video_pipeline for the exact pipeline and why its test pattern is ``smpte``).
* :func:`rtp_receive` runs :mod:`netnslab.rtpstats` (RFC 3550 loss and jitter) in a node and returns its
  summary; give it the sender as a callable so that it starts only once the receiver listens.
* :func:`probe` runs :mod:`netnslab.udpprobe`: a steady EF-marked stream and its one-way delay percentiles.

The receivers and the probe are stdlib-only scripts run by file path with this interpreter, so nothing has
to be importable in the namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .lab import Lab
from .tools import ToolError, cpu_seconds, wait_listening

HERE = Path(__file__).resolve().parent
RTPSTATS = HERE / "rtpstats.py"
UDPPROBE = HERE / "udpprobe.py"
PYTHON = sys.executable or "python3"

VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 1280, 720, 30
VIDEO_BITRATE = 1_500_000  # bits/s asked of the encoder
RTP_MTU = 1200  # browsers keep video RTP near 1200 bytes (conferencing.md)
# videotestsrc "ball" is nearly static: VP8 codes it in ~110-150 kbit/s, one packet a frame, nothing like a
# call. "smpte" has a box of fresh noise in every frame, which holds the rate controller at its target
# (~1.7 Mbit/s on the wire, ~6 packets a frame), like a camera stream.
VIDEO_PATTERN = "smpte"


class MediaError(ToolError):
    """A media tool failed (did not start, exited with an error, printed no result)."""


def video_pipeline(host: str, port: int, dscp: int = 34, seconds: float | None = None,
                   pattern: str = VIDEO_PATTERN, bitrate: int = VIDEO_BITRATE) -> list[str]:
    """gst-launch-1.0 argv: live 720p30 test video, VP8 in real time, RTP (RFC 7741) to host:port.

    ``deadline=1`` is libvpx's real-time mode and ``cpu-used=8`` its fastest speed that still rate-controls
    well; ``end-usage=cbr`` keeps the rate near ``bitrate`` instead of letting VBR overshoot.
    ``sync=false`` sends each frame's packets as soon as they are encoded (the live source paces frames).
    With ``seconds`` the source stops after that many frames' worth and gst-launch exits 0.
    """
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be within 0..63, got {dscp}")
    src = ["videotestsrc", "is-live=true", f"pattern={pattern}"]
    if seconds is not None:
        src.append(f"num-buffers={max(1, round(seconds * VIDEO_FPS))}")
    return ["gst-launch-1.0", "-q", *src,
            "!", f"video/x-raw,width={VIDEO_WIDTH},height={VIDEO_HEIGHT},framerate={VIDEO_FPS}/1",
            "!", "vp8enc", "deadline=1", "cpu-used=8", f"target-bitrate={bitrate}", "end-usage=cbr",
            "!", "rtpvp8pay", f"mtu={RTP_MTU}",
            "!", "udpsink", f"host={host}", f"port={port}", f"qos-dscp={dscp}", "sync=false"]


def start_rtp_video(lab: Lab, node: str, host: str, port: int, dscp: int = 34, seconds: float | None = None,
                    pattern: str = VIDEO_PATTERN, bitrate: int = VIDEO_BITRATE) -> subprocess.Popen:
    """Start the GStreamer video sender in ``node`` (the lab kills it at teardown; lab.stop ends it early).

    Its stderr is a pipe: GStreamer's error, if any, is there once it exited (``-q`` keeps it quiet otherwise).
    """
    argv = video_pipeline(host, port, dscp, seconds, pattern, bitrate)
    proc = lab.popen(node, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.started_at = time.monotonic()  # type: ignore[attr-defined]  # for the CPU share rtp_receive reports
    return proc


def _start_script(lab: Lab, node: str, script: Path, args: list[str]) -> subprocess.Popen:
    return lab.popen(node, [PYTHON, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)


def _result(lab: Lab, node: str, proc: subprocess.Popen, what: str, timeout: float) -> dict[str, Any]:
    """Wait for a tool that prints one JSON line, and parse it."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        lab.stop(proc, timeout=2)
        raise MediaError(f"[{node}] {what} did not finish within {timeout:.0f}s") from None
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise MediaError(f"[{node}] {what} exited {proc.returncode}: {(err or out).strip()[-1000:]}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise MediaError(f"[{node}] {what} printed no JSON: {out.strip()[-500:]}") from None


def _stop_if_running(lab: Lab, *procs: subprocess.Popen | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            lab.stop(p, timeout=2)


def rtp_receive(lab: Lab, node: str, bind: str, port: int, seconds: float,
                sender: Callable[[], subprocess.Popen] | None = None, clock_rate: int = 90000) -> dict[str, Any]:
    """RFC 3550 statistics of what ``node`` receives on bind:port during ``seconds``.

    The receiver is started first; once it listens, ``sender()`` (if given) starts the stream, e.g.
    ``lambda: start_rtp_video(lab, "hq-host", bind, port)``. A sender still running when the receiver is done
    is stopped; one that failed raises :class:`MediaError` with its stderr. The result is rtpstats' summary
    plus, with a sender, ``sender``: its CPU seconds and CPU share of one core while it ran.
    """
    rx = _start_script(lab, node, RTPSTATS, ["--bind", bind, "--port", str(port), "--seconds", f"{seconds:g}",
                                             "--clock-rate", str(clock_rate)])
    tx = None
    try:
        wait_listening(lab, node, port, udp=True, timeout=10, proc=rx)
        if sender is not None:
            tx = sender()
        result = _result(lab, node, rx, "rtpstats", seconds + 30)
        if tx is not None:
            result["sender"] = _sender_report(lab, tx)
        return result
    finally:
        _stop_if_running(lab, rx, tx)


def _sender_report(lab: Lab, tx: subprocess.Popen) -> dict[str, Any]:
    report: dict[str, Any] = {"cpu_s": None, "cpu_pct": None}
    if tx.poll() is None:
        cpu = cpu_seconds([tx.pid])
        wall = time.monotonic() - getattr(tx, "started_at", time.monotonic())
        report.update(cpu_s=round(cpu, 3), cpu_pct=round(100 * cpu / wall, 1) if wall > 0 else None)
        lab.stop(tx, timeout=3)
    else:
        err = tx.stderr.read() if tx.stderr is not None else ""
        if tx.returncode != 0:
            raise MediaError(f"media sender exited {tx.returncode}: {err.strip()[-1000:]}")
    report["returncode"] = tx.returncode
    return report


def probe(lab: Lab, src_node: str, dst_node: str, dst_addr: str, port: int, rate: float = 50,
          seconds: float = 5, dscp: int = 46, size: int = 200, slack: float = 3.0) -> dict[str, Any]:
    """One-way delay of a ``rate`` datagrams/s stream marked ``dscp`` from src_node to dst_addr:port.

    The receiver runs ``seconds + slack`` (it reports only when its time is up), the sender ``seconds``
    once the receiver listens. Returns udpprobe's receive report with the sender's under ``sender``.
    """
    rx = _start_script(lab, dst_node, UDPPROBE, ["recv", "--bind", dst_addr, "--port", str(port),
                                                 "--seconds", f"{seconds + slack:g}"])
    try:
        wait_listening(lab, dst_node, port, udp=True, timeout=10, proc=rx)
        to = f"[{dst_addr}]:{port}" if ":" in dst_addr else f"{dst_addr}:{port}"
        cp = lab.run(src_node, [PYTHON, str(UDPPROBE), "send", "--to", to, "--rate", f"{rate:g}",
                                "--seconds", f"{seconds:g}", "--dscp", str(dscp), "--size", str(size)],
                     timeout=seconds + 30, check=False)
        if cp.returncode != 0:
            raise MediaError(f"[{src_node}] udpprobe send exited {cp.returncode}: {(cp.stderr or cp.stdout).strip()[-1000:]}")
        result = _result(lab, dst_node, rx, "udpprobe recv", seconds + slack + 30)
        result["sender"] = json.loads(cp.stdout.strip().splitlines()[-1])
        return result
    finally:
        _stop_if_running(lab, rx)


class BackgroundProbe:
    """probe() that does not wait: the stream runs while the caller breaks something (a failover), and
    result() waits for both ends. The receiver's report has the longest silence (``longest_gap_ms``, its
    start and end on CLOCK_MONOTONIC, which time.monotonic() reads too)."""

    def __init__(self, lab: Lab, src_node: str, dst_node: str, dst_addr: str, port: int, rate: float = 200,
                 seconds: float = 10, dscp: int = 46, size: int = 200, slack: float = 2.0) -> None:
        self.lab, self.src_node, self.dst_node = lab, src_node, dst_node
        self.seconds, self.slack = seconds, slack
        self.rx = _start_script(lab, dst_node, UDPPROBE, ["recv", "--bind", dst_addr, "--port", str(port),
                                                          "--seconds", f"{seconds + slack:g}"])
        self.tx: subprocess.Popen | None = None
        try:
            wait_listening(lab, dst_node, port, udp=True, timeout=10, proc=self.rx)
            to = f"[{dst_addr}]:{port}" if ":" in dst_addr else f"{dst_addr}:{port}"
            self.tx = _start_script(lab, src_node, UDPPROBE, ["send", "--to", to, "--rate", f"{rate:g}",
                                                              "--seconds", f"{seconds:g}", "--dscp", str(dscp),
                                                              "--size", str(size)])
        except BaseException:
            _stop_if_running(lab, self.rx, self.tx)
            raise

    def result(self) -> dict[str, Any]:
        try:
            assert self.tx is not None
            sent = _result(self.lab, self.src_node, self.tx, "udpprobe send", self.seconds + 30)
            result = _result(self.lab, self.dst_node, self.rx, "udpprobe recv", self.seconds + self.slack + 30)
            result["sender"] = sent
            return result
        finally:
            _stop_if_running(self.lab, self.rx, self.tx)


__all__ = ["MediaError", "video_pipeline", "start_rtp_video", "rtp_receive", "probe", "BackgroundProbe"]
