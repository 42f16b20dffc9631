"""A real SIP call with SRTP between two baresip user agents in lab nodes, and what each receiver measured.

:func:`sip_call` starts baresip (Debian's 1.0.0) in the caller's and the callee's namespace, dials
``sip:callee@<callee address>`` directly (no registrar; the callee answers by itself), keeps the call up for
``seconds`` and hangs up. Media: Opus from the ``ausine`` tone generator (20 ms packets, 48 kHz RTP clock)
into an ``aubridge`` player nobody reads (headless, no sound card), optionally VP8 from ``fakevideo``; SRTP
is mandatory (``mediaenc=srtp-mand``), RTP uses ports 10000-20000 (RTCP on the RTP port + 1) and carries TOS
184 (DSCP EF) from ``rtp_tos``.

baresip is driven through its ``ctrl_tcp`` module (JSON in netstrings) on 127.0.0.1 in the node: a stdlib
relay started in the node bridges its socket to a pipe here. The relay also brings the events, and those
are what the statistics come from: on every RTCP sender report it receives (every 5 s per stream) baresip
emits ``CALL_RTCP`` with a snapshot of libre's ``rtcp_stats`` for that stream; the ``rtcpsummary`` module
prints the same snapshot at hang-up (``EX=BareSip;...``, kept under ``summary``), so hanging up at a random
moment would report up to 5 s stale figures. Hence the call is hung up only once each side has reported a
snapshot taken after ``seconds``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .lab import Lab
from .tools import ToolError, wait_listening

PYTHON = sys.executable or "python3"
CTRL_PORT = 4444  # ctrl_tcp in each node's own loopback: two nodes never collide
SIP_PORT = 5060
RTP_PORTS = "10000-20000"
TOS_EF = 184  # DSCP 46 << 2; baresip 1.0.0 has one rtp_tos for every stream
DSCP_AF41 = 34  # video is re-marked to this by an nftables rule (see _mark_video)
CLOCK_HZ = {"audio": 48000, "video": 90000}  # RTP clock rates of Opus and VP8
RTCP_INTERVAL = 5.0  # libre sends an RTCP report every 5 s per stream
NFT_TABLE = "sipcall"

# Bridges the node's ctrl_tcp socket to stdin/stdout (bytes both ways) until either side closes.
_RELAY = r"""
import socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.settimeout(None)
def up():
    while True:
        b = sys.stdin.buffer.read1(65536)
        if not b:
            break
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b:
        break
    sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()
"""

_STATUS_LINE = re.compile(r"^\s*\[\d+:\d\d:\d\d\]")  # menu's call status, ten times a second
_SUMMARY = re.compile(r"EX=BareSip;.*")
_IP_FIELD = re.compile(r"IP=([^,;]+),([^;]+);")


MODULES = ("opus", "ausine", "aubridge", "srtp", "rtcpsummary", "ctrl_tcp", "menu", "account")
VIDEO_MODULES = ("vp8", "fakevideo")
MODULE_DIR = Path("/usr/lib/baresip/modules")


def missing(video: bool = False) -> list[str]:
    """What of baresip a call needs and this machine lacks (empty when a call can be made)."""
    absent = [] if shutil.which("baresip") else ["baresip"]
    wanted = MODULES + (VIDEO_MODULES if video else ())
    return absent + [f"baresip module {m}" for m in wanted if not (MODULE_DIR / f"{m}.so").exists()]


class SipCallError(ToolError):
    """The call did not come up, lost its SRTP, or baresip died; the message ends with both logs' tails."""


def _config(ip: str, family: int, name: str, video: bool) -> str:
    host = f"[{ip}]" if family == 6 else ip
    lines = [
        "poll_method epoll",
        f"sip_listen {host}:{SIP_PORT}",
        "call_local_timeout 120",
        "call_max_calls 4",
        "audio_source ausine,440",  # a 440 Hz tone: a source that never stalls, unlike a file at EOF
        f"audio_player aubridge,{name}",  # a player nothing drains: decode happens, output goes nowhere
        f"audio_alert aubridge,{name}-alert",
        f"rtp_tos {TOS_EF}",
        f"rtp_ports {RTP_PORTS}",
        "rtcp_mux no",
        "opus_bitrate 28000",
        f"module_path {MODULE_DIR}",
        "module opus.so",
        "module ausine.so",
        "module aubridge.so",
        "module srtp.so",
        "module rtcpsummary.so",
        "module ctrl_tcp.so",
        "module_tmp account.so",
        "module_app menu.so",  # the dial/accept/hangup commands ctrl_tcp runs
        f"ctrl_tcp_listen 127.0.0.1:{CTRL_PORT}",
    ]
    if video:
        lines += ["module vp8.so", "module fakevideo.so", "video_source fakevideo,nil",
                  "video_display fakevideo,nil", "video_size 640x360", "video_fps 25", "video_bitrate 800000"]
    return "\n".join(lines) + "\n"


def _account(user: str, ip: str, family: int, video: bool, auto_answer: bool) -> str:
    host = f"[{ip}]" if family == 6 else ip
    params = ["regint=0", f"answermode={'auto' if auto_answer else 'manual'}", "mediaenc=srtp-mand",
              "audio_codecs=opus/48000/2"]
    if video:
        params.append("video_codecs=vp8")
    return f"<sip:{user}@{host}>;" + ";".join(params) + "\n"


class _Agent:
    """One baresip in a node: its process, the ctrl_tcp relay, the events it sent and the tail of its log."""

    def __init__(self, lab: Lab, node: str, role: str, ip: str, family: int, workdir: Path, video: bool,
                 auto_answer: bool = True, trace: bool = False) -> None:
        self.lab, self.node, self.role = lab, node, role
        self.dir = workdir / role
        self.dir.mkdir(parents=True)
        (self.dir / "config").write_text(_config(ip, family, role, video))
        (self.dir / "accounts").write_text(_account(role, ip, family, video, auto_answer))
        self.trace = trace
        self.family = family  # -4/-6: without it baresip 1.0.0 sends IPv4 media even when SIP runs over IPv6
        self.proc: subprocess.Popen | None = None
        self.relay: subprocess.Popen | None = None
        self.events: list[tuple[float, dict[str, Any]]] = []  # (monotonic time received, event)
        self.log: deque[str] = deque(maxlen=300)
        self.media_lines: list[str] = []  # SDP m= lines from the SIP trace
        self.summary: list[str] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    # ---- start / stop ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        # stdbuf: baresip's stdout is a pipe here, block-buffered otherwise; the SIP trace is read as it comes.
        argv = ["stdbuf", "-oL", "baresip", f"-{self.family}", "-f", str(self.dir)] + (["-s"] if self.trace else [])
        self.proc = self.lab.popen(self.node, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", bufsize=1)
        self._spawn(self._read_log)
        try:
            wait_listening(self.lab, self.node, CTRL_PORT, timeout=timeout, proc=self.proc)
        except ToolError as exc:
            raise SipCallError(f"[{self.node}] baresip ({self.role}) did not start: {exc}\n{self.tail()}") from None
        self.relay = self.lab.popen(self.node, [PYTHON, "-c", _RELAY, str(CTRL_PORT)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._spawn(self._read_ctrl)

    def close(self) -> None:
        """Ask baresip to quit, then stop it and the relay by their Popen objects, whatever state they are in."""
        if self.proc is not None and self.proc.poll() is None and self.relay is not None and self.relay.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(3)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        for p in (self.proc, self.relay):
            if p is not None and p.poll() is None:
                try:
                    self.lab.stop(p, timeout=3)
                except ValueError:  # the lab was torn down meanwhile: it killed p itself
                    pass
        for t in self._threads:
            t.join(2)

    def _spawn(self, target: Any) -> None:
        t = threading.Thread(target=target, daemon=True, name=f"sipcall-{self.role}-{target.__name__}")
        t.start()
        self._threads.append(t)

    # ---- output readers -------------------------------------------------------------------------

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n").replace("\x1b[31m", "").replace("\x1b[;m", "")
            if not line.strip() or _STATUS_LINE.match(line):
                continue
            self.log.append(line)
            if line.startswith("m="):
                self.media_lines.append(line)
            m = _SUMMARY.search(line)
            if m:
                self.summary.append(m.group(0))

    def _read_ctrl(self) -> None:
        """Split the netstring stream (``<len>:<json>,``) into events and command responses."""
        assert self.relay is not None and self.relay.stdout is not None
        buf = b""
        while True:
            chunk = self.relay.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                end = colon + 1 + int(buf[:colon])
                if len(buf) <= end:
                    break
                try:
                    msg = json.loads(buf[colon + 1:end])
                except json.JSONDecodeError:
                    msg = {"malformed": buf[colon + 1:end].decode(errors="replace")}
                buf = buf[end + 1:]
                with self._cond:
                    self.events.append((time.monotonic(), msg))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # ---- commands and events ----------------------------------------------------------------------

    def command(self, cmd: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run a menu command via ctrl_tcp and return its response (``ok``, ``data``)."""
        assert self.relay is not None and self.relay.stdin is not None
        token = f"{cmd}-{time.monotonic_ns()}"
        body = json.dumps({"command": cmd, "params": params, "token": token}).encode()
        self.relay.stdin.write(b"%d:%s," % (len(body), body))
        self.relay.stdin.flush()
        resp = self.wait_event(lambda e: e.get("response") is True and e.get("token") == token, timeout)
        if resp is None:
            raise SipCallError(f"[{self.node}] baresip ({self.role}) did not answer {cmd!r} within {timeout}s")
        return resp

    def wait_event(self, pred: Any, timeout: float, since: float = 0.0) -> dict[str, Any] | None:
        """First event received at or after ``since`` (monotonic) that ``pred`` accepts, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, e in self.events:
                    if t >= since and pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    return None
                self._cond.wait(min(left, 0.2))

    def typed(self, kind: str, param: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [(t, e) for t, e in self.events
                    if e.get("type") == kind and (param is None or e.get("param") == param)]

    def wait_summary(self, count: int, timeout: float) -> None:
        """Give the log reader time to see rtcpsummary's lines, printed right after CALL_CLOSED."""
        deadline = time.monotonic() + timeout
        while len(self.summary) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def offered_port(self, media: str, timeout: float) -> int | None:
        """The port of the m= line for ``media`` in this agent's SIP trace; the log reader may see the trace
        after the peer already reported the call, so wait for it."""
        deadline = time.monotonic() + timeout
        while True:
            port = next((int(m.split()[1]) for m in self.media_lines if m.startswith(f"m={media} ")), None)
            if port is not None or time.monotonic() > deadline:
                return port
            time.sleep(0.02)

    def tail(self, n: int = 25) -> str:
        return "\n".join(f"  [{self.role}] {line}" for line in list(self.log)[-n:])


def _kind(kind: str, param: str | None = None) -> Any:
    return lambda e: e.get("type") == kind and (param is None or e.get("param") == param)


def _stream_stats(agent: _Agent, stream: str, established: float) -> dict[str, Any] | None:
    """The last CALL_RTCP snapshot of ``stream`` at ``agent``, in the units sip_call documents."""
    reports = [(t, e["rtcp_stats"]) for t, e in agent.typed("CALL_RTCP", stream) if "rtcp_stats" in e]
    if not reports:
        return None
    t, s = reports[-1]
    rx, tx = s["rx"], s["tx"]
    heard = [r["rx"]["jit"] / 1000.0 for _, r in reports if r["rx"]["sent"]]
    expected = rx["sent"] + rx["lost"]
    return {
        "rx_packets": rx["sent"],
        "rx_lost": rx["lost"],
        "loss_pct": round(100.0 * rx["lost"] / expected, 3) if expected > 0 else 0.0,
        "jitter_ms": rx["jit"] / 1000.0,
        "jitter_mean_ms": round(sum(heard) / len(heard), 4) if heard else 0.0,  # over every snapshot
        "tx_packets": tx["sent"],
        "peer_lost": tx["lost"],
        "peer_jitter_ms": tx["jit"] / 1000.0,
        "rtt_ms": s["rtt"] / 1000.0,
        "clock_hz": CLOCK_HZ[stream],
        "as_of_s": round(t - established, 3),
        "reports": sum(1 for _, r in reports if r["rx"]["sent"] or r["tx"]["sent"]),
    }


def _ports(summary: list[str], streams: list[str]) -> dict[str, dict[str, str]]:
    """Local RTP port and remote RTP address per stream from the rtcpsummary lines (one per stream, in order)."""
    out: dict[str, dict[str, str]] = {}
    for stream, line in zip(streams, summary):
        m = _IP_FIELD.search(line)
        if m:
            out[stream] = {"local": m.group(1), "remote": m.group(2)}
    return out


def _mark_video(lab: Lab, caller: str, callee: str, port: int, family: int) -> list[str]:
    """Re-mark the video RTP/RTCP to AF41 in both hosts' output, keyed on the caller's video RTP port.

    baresip 1.0.0 has a single ``rtp_tos`` for all streams and gives VP8 the same payload type (96) as Opus,
    so the only race-free key is the port the caller offered: the caller sends video from it and the callee
    sends video to it (port + 1 for RTCP).
    """
    ip = "ip" if family == 4 else "ip6"
    rules = {caller: f"udp sport {{ {port}, {port + 1} }}", callee: f"udp dport {{ {port}, {port + 1} }}"}
    for node, match in rules.items():
        script = (f"table inet {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority mangle;\n"
                  f"  meta nfproto {'ipv4' if family == 4 else 'ipv6'} {match} {ip} dscp set {DSCP_AF41}\n }}\n}}\n")
        lab.run(node, ["nft", "-f", "-"], input=script, timeout=10)
    return list(rules)


def _unmark_video(lab: Lab, nodes: list[str]) -> None:
    for node in nodes:
        lab.run(node, ["nft", "delete", "table", "inet", NFT_TABLE], check=False, timeout=10)


def sip_call(lab: Lab, caller: str, callee: str, seconds: float, *, video: bool = False, family: int = 4,
             setup_timeout: float = 15.0) -> dict[str, Any]:
    """Call ``callee`` from ``caller`` for ``seconds`` (SRTP, Opus, optionally VP8) and return both receivers'
    own RTCP statistics.

    Result ``{"caller": side, "callee": side, "setup_s", "duration_s", "log"}``; a side is
    ``{"audio": stats, "video": stats (video=True only), "srtp": {stream: crypto suite}, "ports":
    {stream: {"local", "remote"}}, "summary": [rtcpsummary lines]}``. ``stats`` is that side's last RTCP
    snapshot, taken when it received the peer's sender report after ``seconds`` (``as_of_s`` after the
    call was established):

    * ``rx_packets``: RTP packets this side received on the stream since its first one (libre counts each
      arriving packet, duplicates included); ``rx_lost``: RFC 3550 cumulative lost, expected (from the
      sequence numbers) minus received, so negative with duplicates; ``loss_pct`` = lost / expected.
    * ``jitter_ms``: RFC 3550 interarrival jitter of what this side received, converted by libre from RTP
      timestamp units with the stream's clock (``clock_hz``: 48000 Opus, 90000 VP8) to whole microseconds,
      here in ms (``jitter_mean_ms``: the mean of every snapshot's, one per 5 s). Arrival times come from libre's millisecond timer (~0.3 ms of jitter by itself) and
      ausine paces frames with a sleeping thread, so a clean lab path shows ~1 ms, never 0.
    * ``tx_packets``: packets this side sent; ``peer_lost`` / ``peer_jitter_ms``: the peer's view of them
      from its last reception report (up to 5 s older); ``rtt_ms``: RTCP round-trip time (0 = not known yet).

    ``reports`` counts the non-empty snapshots. So the callee's figures describe the caller -> callee
    direction and the caller's the other one. Waiting for the last snapshot makes the call last ``seconds``
    plus up to one RTCP interval (5 s; 10 s if a report is lost on a lossy WAN): see ``duration_s``. Video is
    marked AF41 by an nftables rule in both hosts (see _mark_video); audio carries EF from ``rtp_tos``.
    Raises :class:`SipCallError` (with both logs' tails) if baresip does not start, the call is not
    established with SRTP on every stream within ``setup_timeout``, or it ends early.
    """
    if not 1 <= seconds <= 3600:
        raise ValueError(f"seconds must be within 1..3600, got {seconds}")
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {family}")
    if shutil.which("baresip") is None:
        raise SipCallError("baresip is not installed")
    streams = ["audio", "video"] if video else ["audio"]
    callee_ip, caller_ip = lab.addr(callee, family), lab.addr(caller, family)
    uri = f"sip:callee@[{callee_ip}]" if family == 6 else f"sip:callee@{callee_ip}"
    workdir = Path(tempfile.mkdtemp(prefix="sipcall-"))
    agents: list[_Agent] = []
    marked: list[str] = []

    def fail(why: str) -> SipCallError:
        return SipCallError(f"{why}\n" + "\n".join(a.tail() for a in agents))

    try:
        # Video needs the caller's offered port before any media flows: the callee then answers on command.
        b = _Agent(lab, callee, "callee", callee_ip, family, workdir, video, auto_answer=not video)
        agents.append(b)
        b.start()
        a = _Agent(lab, caller, "caller", caller_ip, family, workdir, video, trace=video)
        agents.append(a)
        a.start()
        t_dial = time.monotonic()
        resp = a.command("dial", uri)
        if not resp.get("ok"):
            raise fail(f"dial {uri} refused: {resp.get('data')!r}")
        if video:
            if b.wait_event(_kind("CALL_INCOMING"), setup_timeout) is None:
                raise fail(f"no incoming call at {callee} within {setup_timeout}s")
            port = a.offered_port("video", max(setup_timeout - (time.monotonic() - t_dial), 0.1))
            if port is None:
                raise fail("no m=video line in the caller's INVITE")
            marked = _mark_video(lab, caller, callee, port, family)
            b.command("accept")
        for ag in (a, b):
            left = setup_timeout - (time.monotonic() - t_dial)
            if ag.wait_event(_kind("CALL_ESTABLISHED"), max(left, 0.1)) is None:
                raise fail(f"call {caller} -> {callee} not established at the {ag.role} within {setup_timeout}s")
        established = time.monotonic()
        for ag in (a, b):
            for stream in streams:
                # CALL_MENC param: "<wait_secure>,<stream>,<suite>"; srtp-mand refuses the call without it.
                if ag.wait_event(lambda e, s=stream: e.get("type") == "CALL_MENC"
                                 and f",{s}," in str(e.get("param")), 2.0) is None:
                    raise fail(f"no SRTP on the {stream} stream at the {ag.role}")
        end = established + seconds
        for ag in (a, b):
            if ag.wait_event(_kind("CALL_CLOSED"), max(end - time.monotonic(), 0.0)) is not None:
                raise fail(f"the call ended early at the {ag.role}")
            if ag.proc is not None and ag.proc.poll() is not None:
                raise fail(f"baresip ({ag.role}) exited {ag.proc.returncode} during the call")
        # One more snapshot per side and stream, so the figures cover the call up to (nearly) the hang-up.
        for ag in (a, b):
            for stream in streams:
                ag.wait_event(_kind("CALL_RTCP", stream), 2 * RTCP_INTERVAL + 1, since=end)
        hung_up = time.monotonic()
        a.command("hangup")
        for ag in (b, a):  # the BYE may need retransmitting on a lossy WAN
            ag.wait_event(_kind("CALL_CLOSED"), 10.0)
            ag.wait_summary(len(streams), 2.0)
        result: dict[str, Any] = {"setup_s": round(established - t_dial, 3),
                                  "duration_s": round(hung_up - established, 3)}
        for ag in (a, b):
            side: dict[str, Any] = {}
            for stream in streams:
                stats = _stream_stats(ag, stream, established)
                if stats is None:
                    raise fail(f"no RTCP statistics for {stream} at the {ag.role}")
                side[stream] = stats
            side["srtp"] = {str(e["param"]).split(",")[1]: str(e["param"]).split(",")[-1]
                            for _, e in ag.typed("CALL_MENC")}
            side["summary"] = list(ag.summary)
            side["ports"] = _ports(ag.summary, streams)
            result[ag.role] = side
        result["log"] = {ag.role: ag.tail(40) for ag in agents}
        return result
    finally:
        for ag in reversed(agents):
            ag.close()
        if marked:
            _unmark_video(lab, marked)
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["SipCallError", "sip_call", "TOS_EF", "DSCP_AF41", "CLOCK_HZ", "RTP_PORTS"]
