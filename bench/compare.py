#!/usr/bin/env python3
"""sitelink against what users would run instead, measured side by side in the two-site namespace lab.

Modes: plain routing (the ceiling), sitelink (PSK/IKEv2, AES-256-GCM, ESP in UDP 4500; also with
gateway.workers: 2) and the anchors
wireguard-go, OpenVPN 2.6 (TLS, AES-256-GCM, no DCO) and strongSwan 5.9 with kernel-libipsec, each
configured as in ../shared/reference/anchors.md (netns-lab/netnslab/anchors.py).  Every round
builds a fresh lab per mode, in the same order each round (plain, sitelink, wireguard-go, openvpn,
strongswan), so slow drift of a shared machine spreads over all modes instead of biasing one; the
figures are medians over rounds, and each is also given as a ratio to the best anchor of the same run
(the only comparison that survives a noisy machine).

Figures: TCP 1 and 4 streams; UDP with 1200-byte datagrams at fixed offered rates (delivered Mbit/s
and loss %); idle ping; EF-marked ping (``-Q 184 -i 0.01``) while one TCP stream saturates the tunnel
(p50/p95/p99: what a video call would feel); gateway CPU seconds per Gbit carried (utime+stime of the
gateway daemons of both sites over the 1-stream TCP run); their CPU µs per packet at 1000 small datagrams
per second (one wake-up per packet, as a call's media); seconds from gateway start to the first ping
reply through the tunnel; an idle ping's round trip cut into stages (netnslab/stages.py).

An anchor that is not installed or cannot be set up is reported as such (table, JSON) and the others
carry on.  Needs root.  ``--smoke`` is the short version CI runs (tests/lab/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import TOPOLOGIES, Lab, iperf3, ping, stages  # noqa: E402
from netnslab.anchors import ANCHORS, Anchor  # noqa: E402
from netnslab.sitelink import Deployment, GatewayError, sitelink_command  # noqa: E402
from netnslab.tools import ReplyWatch, cpu_seconds  # noqa: E402

TOPOLOGY = TOPOLOGIES / "two-sites.yaml"
CLIENT, SERVER = "hq-host", "branch1-host"
MODES = ("plain", "sitelink", "sitelink-fifo", "sitelink-2w", "wireguard-go", "openvpn", "strongswan")
ANCHOR_MODES = ("wireguard-go", "openvpn", "strongswan")
LABELS = {"plain": "plain routing", "sitelink": "sitelink", "sitelink-fifo": "sitelink FIFO", "sitelink-2w": "sitelink 2 workers", "wireguard-go": "wireguard-go",
          "openvpn": "OpenVPN 2.6", "strongswan": "strongSwan libipsec"}
EF_TOS = 184  # DSCP 46 (EF) << 2
SETUP_TIMEOUT = 30.0
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 1


def figures(rates: list[str]) -> list[Figure]:
    out = [Figure("tcp1_mbps", "TCP 1 stream", "Mbit/s", True, 0),
           Figure("tcp4_mbps", "TCP 4 streams", "Mbit/s", True, 0)]
    for rate in rates:
        out += [Figure(f"udp_{rate}_mbps", f"UDP {rate} offered: delivered", "Mbit/s", True, 0),
                Figure(f"udp_{rate}_loss_pct", f"UDP {rate} offered: loss", "%", False, 1)]
    out += [Figure("ping_idle_avg_ms", "ping idle avg", "ms", False, 3),
            Figure("ping_load_p50_ms", "EF ping under TCP p50", "ms", False, 2),
            Figure("ping_load_p95_ms", "EF ping under TCP p95", "ms", False, 2),
            Figure("ping_load_p99_ms", "EF ping under TCP p99", "ms", False, 2),
            Figure("cpu_s_per_gbit", "gateway CPU s per Gbit", "s/Gbit", False, 2),
            Figure("cpu_us_per_packet_1k", "gateway CPU per packet, 1000/s", "µs", False, 1),
            Figure("setup_s", "start to first ping reply", "s", False, 3)]
    return out


@dataclass(frozen=True)
class Target:
    """A goal of issue 17 for sitelink (the default priority scheduler), judged on this run's medians:
    `ratio` against the best anchor, or `absolute` in the figure's unit."""

    key: str
    goal: str
    ratio: float | None = None
    absolute: float | None = None


TARGETS = (
    Target("ping_idle_avg_ms", "idle ping at or below the best anchor's", ratio=1.0),
    Target("setup_s", "start to first ping reply within 0.200 s", absolute=0.200),
    Target("tcp1_mbps", "TCP 1 stream at least 2x the best anchor's", ratio=2.0),
    Target("ping_load_p99_ms", "EF ping p99 under TCP load at most 0.5x the best anchor's", ratio=0.5),
)


@dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: int
    rates: list[str]
    ping_count: int
    load_seconds: int


class BenchError(Exception):
    """A mode could not be measured; the message is shown as is (no traceback)."""


# --------------------------------------------------------------------------------------------------
# sitelink with the same start()/pids()/stop() shape as the anchors


class SitelinkPair:
    """Real `sitelink up` gateways on both sites (netnslab Deployment: PSK, IKEv2, default proposals)."""

    name = "sitelink"
    workers = 1
    gateway_yaml: list[str] = []

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.deployment = Deployment(lab, workdir, workers=self.workers, gateway_yaml=self.gateway_yaml)

    @staticmethod
    def unavailable() -> str | None:
        try:
            sitelink_command()
        except GatewayError as exc:
            return str(exc)
        return None

    @staticmethod
    def version() -> str | None:
        try:
            return f"sitelink {metadata.version('sitelink')}"
        except metadata.PackageNotFoundError:
            return None

    def start(self) -> None:
        # both sites' `sitelink up` at once (as the wireguard-go and OpenVPN anchors are started), then
        # wait until both are serving; the first ping reply is timed from before the first launch
        self.deployment.launch_all()

    def pids(self) -> list[int]:
        return [gw.proc.pid for gw in self.deployment.gateways.values()
                if gw.proc is not None and gw.proc.poll() is None]

    def counters(self) -> dict:
        return {site: self.deployment.counters(site) for site in self.deployment.gateways}

    def stop(self) -> None:
        for site, gw in self.deployment.gateways.items():
            if gw.proc is not None and gw.proc.poll() is None:
                self.deployment.stop(site)


class SitelinkFifo(SitelinkPair):
    """gateway.qos.scheduler: fifo: no per-class queues (what the priority path costs in throughput)."""

    name = "sitelink-fifo"
    gateway_yaml = ["qos: {scheduler: fifo}"]


class SitelinkTwoWorkers(SitelinkPair):
    """gateway.workers: 2 on both sides (worker processes are counted in the CPU figure as descendants)."""

    name = "sitelink-2w"
    workers = 2


def gateway_class(mode: str) -> Any:
    return {"sitelink": SitelinkPair, "sitelink-fifo": SitelinkFifo,
            "sitelink-2w": SitelinkTwoWorkers}.get(mode) or ANCHORS[mode]


def mode_version(mode: str) -> str | None:
    if mode == "plain":
        return f"Linux {platform.release()} forwarding"
    return gateway_class(mode).version()


# --------------------------------------------------------------------------------------------------
# one mode, one round


def _short(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _try(lab: Lab, errors: list[str], what: str,
         fn: Callable[[], dict[str, float | None]]) -> dict[str, float | None]:
    """Run one measurement; a failure is recorded and the mode's other figures are still measured,
    unless the lab itself is gone (torn down by a signal): then the whole mode stops."""
    try:
        return fn()
    except Exception as exc:  # a figure that fails is data, not a crash
        if not lab.namespaces:
            raise BenchError(f"the lab was torn down during {what} (signal?)") from None
        errors.append(f"{what}: {_short(exc)}")
        return {}


def measure_mode(mode: str, s: Settings) -> dict[str, Any]:
    """A fresh lab for ``mode``, its gateways started (timed), every figure measured, all torn down."""
    result: dict[str, Any] = {"errors": []}
    errors: list[str] = result["errors"]
    with tempfile.TemporaryDirectory(prefix="slbench-") as tmp, \
            Lab(TOPOLOGY, mode="plain" if mode == "plain" else "tunnel") as lab:
        dst = lab.addr(SERVER)
        gw: Anchor | SitelinkPair | None = None
        if mode != "plain":
            gw = gateway_class(mode)(lab, Path(tmp) / mode)
            with ReplyWatch(lab, CLIENT, dst) as watch:
                t0 = time.time()
                try:
                    gw.start()
                except Exception as exc:
                    raise BenchError(f"setup failed: {_short(exc, 1500)}") from None
                first = watch.wait(SETUP_TIMEOUT)
            if first is None:
                raise BenchError(f"no ping reply through the tunnel within {SETUP_TIMEOUT:.0f}s of the "
                                 f"gateways' start")
            result["setup_s"] = max(0.0, first - t0)
        elif not ping(lab, CLIENT, dst, count=3, interval=0.05).ok:
            raise BenchError("no ping reply through plain routing")
        time.sleep(0.3)
        result.update(_try(lab, errors, "idle ping", lambda: _idle_ping(lab, dst, s)))
        if mode != "plain":  # after the idle ping, whose figure the captures must not touch
            stage_row = _try(lab, errors, "latency stages", lambda: _stages(lab, dst, s))
            if stage_row:
                result["stages_us"] = stage_row
        result.update(_try(lab, errors, "TCP 1 stream", lambda: _tcp1_with_cpu(lab, dst, s, gw)))
        time.sleep(0.3)
        result.update(_try(lab, errors, "TCP 4 streams", lambda: {
            "tcp4_mbps": iperf3(lab, CLIENT, SERVER, dst, seconds=s.seconds, streams=4).received_mbps}))
        if gw is not None:
            time.sleep(0.3)
            result.update(_try(lab, errors, "1000 packets/s", lambda: _cpu_per_packet(lab, dst, s, gw)))
        for rate in s.rates:
            time.sleep(0.5)  # let the queues of the previous run drain
            result.update(_try(lab, errors, f"UDP {rate}", lambda rate=rate: _udp(lab, dst, s, rate)))
        time.sleep(0.5)
        result.update(_try(lab, errors, "EF ping under load", lambda: _ping_under_load(lab, dst, s)))
        if isinstance(gw, SitelinkPair):
            try:
                result["sitelink_counters"] = gw.counters()
            except Exception as exc:
                errors.append(f"counters: {_short(exc)}")
        if gw is not None:
            gw.stop()
    return result


def _idle_ping(lab: Lab, dst: str, s: Settings) -> dict[str, float | None]:
    r = ping(lab, CLIENT, dst, count=s.ping_count, interval=0.01)
    if not r.ok:
        raise BenchError(f"idle ping: {r.loss_pct:.0f} % loss")
    return {"ping_idle_avg_ms": r.avg, "ping_idle_loss_pct": r.loss_pct}


def _stages(lab: Lab, dst: str, s: Settings) -> dict[str, float | None]:
    """Where an idle ping's round trip goes (netnslab/stages.py): both gateways captured, µs per stage."""
    got = stages.measure(lab, CLIENT, dst, lab.site("hq").gw, lab.site("branch1").gw,
                         count=max(20, s.ping_count // 2), interval=0.02)
    if not got.get("rounds"):
        raise BenchError("no echo could be followed through both captures")
    return dict(got)


def _tcp1_with_cpu(lab: Lab, dst: str, s: Settings, gw: Any) -> dict[str, float | None]:
    pids = gw.pids() if gw is not None else []
    before = cpu_seconds(pids)
    r = iperf3(lab, CLIENT, SERVER, dst, seconds=s.seconds)
    used = cpu_seconds(pids) - before
    out: dict[str, float | None] = {"tcp1_mbps": r.received_mbps, "tcp1_retransmits": r.retransmits}
    if gw is not None:
        if sorted(gw.pids()) != sorted(pids):
            raise BenchError(f"a gateway process exited during the TCP run (pids {pids} -> {gw.pids()})")
        gbit = r.raw.get("end", {}).get("sum_received", {}).get("bytes", 0) * 8 / 1e9
        out["cpu_s"] = used
        out["cpu_s_per_gbit"] = used / gbit if gbit > 0 else None
    return out


def _cpu_per_packet(lab: Lab, dst: str, s: Settings, gw: Any) -> dict[str, float | None]:
    """Both gateways' CPU per packet when packets come one at a time, as a call's media does: 1000
    datagrams of 200 bytes per second (about 20 audio streams each way's worth); every packet wakes the
    gateway on its own, so this is the cost of a wake-up, not of a full batch."""
    pids = gw.pids()
    before = cpu_seconds(pids)
    r = iperf3(lab, CLIENT, SERVER, dst, seconds=s.seconds, udp=True, bitrate="1600K", length=200)
    used = cpu_seconds(pids) - before
    packets = r.raw.get("end", {}).get("sum", {}).get("packets", 0)
    return {"cpu_us_per_packet_1k": used / packets * 1e6 if packets else None}


def _udp(lab: Lab, dst: str, s: Settings, rate: str) -> dict[str, float | None]:
    r = iperf3(lab, CLIENT, SERVER, dst, seconds=s.seconds, udp=True, bitrate=rate, length=1200)
    return {f"udp_{rate}_mbps": r.received_mbps, f"udp_{rate}_loss_pct": r.lost_percent}


def _ping_under_load(lab: Lab, dst: str, s: Settings) -> dict[str, float | None]:
    """EF-marked ping every 10 ms while one TCP stream fills the path (it starts 1 s earlier to ramp up)."""
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["tcp"] = iperf3(lab, CLIENT, SERVER, dst, seconds=s.load_seconds, port=5202)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(1.0)
    count = max(50, int((s.load_seconds - 1.5) / 0.01))
    r = ping(lab, CLIENT, dst, count=count, interval=0.01, tos=EF_TOS)
    thread.join(s.load_seconds + 40)
    if "error" in box:
        raise BenchError(f"the TCP load did not run: {_short(box['error'])}")
    if not r.ok:
        raise BenchError("no EF ping reply under load")
    return {"ping_load_p50_ms": r.median, "ping_load_p95_ms": r.p95, "ping_load_p99_ms": r.p99,
            "ping_load_loss_pct": r.loss_pct,
            "ping_load_tcp_mbps": box["tcp"].received_mbps if "tcp" in box else None}


# --------------------------------------------------------------------------------------------------
# the run


def new_report(s: Settings, figs: list[Figure]) -> dict[str, Any]:
    return {
        "meta": {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                 "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                 "loadavg_start": os.getloadavg(), "rounds": s.rounds, "seconds": s.seconds,
                 "udp_rates": s.rates, "udp_length": 1200, "ping_count": s.ping_count,
                 "load_seconds": s.load_seconds, "topology": TOPOLOGY.name, "completed_rounds": 0},
        "figures": [{"key": f.key, "label": f.label, "unit": f.unit, "higher_is_better": f.higher_is_better}
                    for f in figs],
        "modes": {},
    }


def run(report: dict[str, Any], modes: list[str], s: Settings, figs: list[Figure]) -> None:
    """Measure every available mode once per round, filling ``report`` as it goes (also when interrupted)."""
    active = []
    for mode in modes:
        entry: dict[str, Any] = {"label": LABELS[mode], "anchor": mode in ANCHOR_MODES, "rounds": []}
        reason = None if mode == "plain" else gateway_class(mode).unavailable()
        entry["version"] = mode_version(mode)
        if reason:
            entry.update(status="unavailable", reason=reason)
            print(f"{mode}: NOT MEASURED, {reason}", flush=True)
        else:
            entry["status"] = "pending"
            active.append(mode)
        report["modes"][mode] = entry
    try:
        for n in range(1, s.rounds + 1):
            for mode in active:
                t = time.monotonic()
                try:
                    row = measure_mode(mode, s)
                except BenchError as exc:
                    row = {"error": str(exc), "errors": [str(exc)]}
                except Exception as exc:  # LabError and anything else: this mode's round failed, go on
                    row = {"error": _short(exc, 1500), "errors": [_short(exc, 1500)]}
                row["wall_s"] = round(time.monotonic() - t, 1)
                report["modes"][mode]["rounds"].append(row)
                print(f"round {n}/{s.rounds} {mode:13} {_progress(row)}", flush=True)
            report["meta"]["completed_rounds"] = n
    finally:
        report["meta"]["loadavg_end"] = os.getloadavg()
        report["meta"]["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        summarize(report, figs)


def _progress(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    parts = []
    for key, fmt in (("tcp1_mbps", "TCP1 {:.0f}"), ("tcp4_mbps", "TCP4 {:.0f} Mbit/s"),
                     ("ping_idle_avg_ms", "ping {:.3f} ms"), ("ping_load_p99_ms", "EF p99 {:.2f} ms"),
                     ("cpu_s_per_gbit", "{:.2f} CPU s/Gbit"), ("setup_s", "setup {:.3f} s")):
        if row.get(key) is not None:
            parts.append(fmt.format(row[key]))
    text = ", ".join(parts)
    if row.get("errors"):
        text += f"  [{len(row['errors'])} figure(s) failed: {'; '.join(row['errors'])[:400]}]"
    return text + f"  ({row['wall_s']} s)"


def summarize(report: dict[str, Any], figs: list[Figure]) -> None:
    """Medians per mode, the best anchor per figure, every median as a ratio to it; statuses."""
    modes = report["modes"]
    for entry in modes.values():
        ok_rounds = [r for r in entry["rounds"] if "error" not in r]
        entry["median"] = {}
        for f in figs:
            values = [r[f.key] for r in ok_rounds if r.get(f.key) is not None]
            entry["median"][f.key] = statistics.median(values) if values else None
        if entry["status"] == "pending":
            if ok_rounds:
                entry["status"] = "ok"
            elif entry["rounds"]:
                entry["status"] = "failed"
                entry["reason"] = entry["rounds"][-1]["error"]
            else:
                entry["status"] = "not run"
                entry["reason"] = "interrupted before a round of it completed"
    best: dict[str, dict[str, Any] | None] = {}
    for f in figs:
        candidates = [(modes[m]["median"][f.key], m) for m in ANCHOR_MODES
                      if m in modes and modes[m]["median"].get(f.key) is not None]
        if not candidates:
            best[f.key] = None
            continue
        value, mode = (max if f.higher_is_better else min)(candidates)
        best[f.key] = {"mode": mode, "value": value}
    report["best_anchor"] = best
    for entry in modes.values():
        entry["ratio_to_best_anchor"] = {
            f.key: (entry["median"][f.key] / best[f.key]["value"]
                    if best[f.key] and best[f.key]["value"] and entry["median"][f.key] is not None else None)
            for f in figs}
        rows = [r["stages_us"] for r in entry["rounds"] if "error" not in r and r.get("stages_us")]
        if rows:
            entry["stages_us"] = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    report["targets"] = judge_targets(report, figs)


def judge_targets(report: dict[str, Any], figs: list[Figure]) -> list[dict[str, Any]]:
    """Each issue-17 target with sitelink's median, the threshold it is held to and met (True/False), or
    None when either side was not measured."""
    units = {f.key: (f.label, f.unit, f.higher_is_better) for f in figs}
    entry = report["modes"].get("sitelink", {})
    out = []
    for t in TARGETS:
        label, unit, higher = units.get(t.key, (t.key, "", False))
        value = entry.get("median", {}).get(t.key)
        best = report["best_anchor"].get(t.key)
        threshold = t.absolute if t.absolute is not None else (
            best["value"] * t.ratio if best and t.ratio is not None else None)
        met = None if value is None or threshold is None else (value >= threshold if higher else value <= threshold)
        out.append({"figure": t.key, "label": label, "unit": unit, "goal": t.goal, "sitelink": value,
                    "threshold": threshold, "best_anchor": best, "met": met})
    return out


# --------------------------------------------------------------------------------------------------
# output


def format_table(report: dict[str, Any], figs: list[Figure]) -> str:
    modes = [m for m, e in report["modes"].items() if e["status"] == "ok"]
    head = f"{'figure (medians; ratio to best anchor)':42}" + "".join(f"{LABELS[m]:>22}" for m in modes)
    lines = [head, "-" * len(head)]
    for f in figs:
        row = f"{f.label} [{f.unit}] {'↑' if f.higher_is_better else '↓'}"[:41].ljust(42)
        for m in modes:
            v = report["modes"][m]["median"].get(f.key)
            ratio = report["modes"][m]["ratio_to_best_anchor"].get(f.key)
            cell = "–" if v is None else f"{v:.{f.digits}f}"
            if v is not None:
                cell += f" ({ratio:.2f})" if ratio is not None else " (–)"
            row += f"{cell:>22}"
        lines.append(row)
    best = report["best_anchor"]
    lines.append("")
    lines.append("ratio = median / best anchor median of this run (best of wireguard-go, OpenVPN, strongSwan "
                 "for each figure; ↑ higher is better, ↓ lower is better); – = not measured or not applicable")
    named = {f.key: best[f.key]["mode"] for f in figs if best.get(f.key)}
    if named:
        lines.append("best anchor: " + ", ".join(f"{f.label}: {named[f.key]}" for f in figs if f.key in named))
    for m, e in report["modes"].items():
        if e["status"] != "ok":
            lines.append(f"{LABELS[m]}: {e['status'].upper()}: {e.get('reason')}")
        else:
            failed = [r.get("error") or "; ".join(r["errors"]) for r in e["rounds"] if r.get("errors")]
            if failed:
                lines.append(f"{LABELS[m]}: some figures failed in some rounds: {' | '.join(failed)[:600]}")
    lines.append("")
    lines.append("targets (issue 17, sitelink with its default priority scheduler):")
    for t in report.get("targets", []):
        status = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[t["met"]]
        value = "–" if t["sitelink"] is None else f"{t['sitelink']:.3f}"
        threshold = "–" if t["threshold"] is None else f"{t['threshold']:.3f}"
        lines.append(f"  {status:12} {t['goal']}: {value} {t['unit']} (threshold {threshold})")
    staged = {m: e["stages_us"] for m, e in report["modes"].items() if e.get("stages_us")}
    if staged:
        lines.append("")
        lines.append("idle ping round trip by stage (medians, µs; both gateways captured with tcpdump, which "
                     "adds its own delay)")
        head = f"{'stage':62}" + "".join(f"{LABELS[m][:14]:>15}" for m in staged)
        lines.append(head)
        for key, text in (*stages.STAGES, ("total", "total (LAN in -> LAN out at the client gateway)")):
            lines.append(f"{text[:61]:62}" + "".join(
                f"{staged[m].get(key, float('nan')):15.0f}" for m in staged))
        lines.append(f"{'the gateways own share (the four gateway stages)':62}" + "".join(
            f"{sum(staged[m].get(k, 0.0) for k in stages.GATEWAY_STAGES):15.0f}" for m in staged))
    lines.append("versions: " + "; ".join(f"{m}: {e['version']}" for m, e in report["modes"].items()
                                          if e.get("version")))
    meta = report["meta"]
    lines.append(f"{meta['completed_rounds']} round(s) x {meta['seconds']} s per iperf3 run, {meta['cpus']} CPUs, "
                 f"load average {meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end")
    return "\n".join(lines)


def write_png(report: dict[str, Any], figs: list[Figure], path: Path) -> str | None:
    """A bar chart per figure (median, min-max over rounds, dashed line at the best anchor)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); no chart written"
    modes = [m for m, e in report["modes"].items() if e["status"] == "ok"]
    if not modes:
        return "nothing was measured; no chart written"
    colors = {"plain": "#9e9e9e", "sitelink": "#d62728", "sitelink-fifo": "#e377c2", "sitelink-2w": "#8c1c13", "wireguard-go": "#1f77b4", "openvpn": "#ff7f0e",
              "strongswan": "#2ca02c"}
    cols = 4
    rows = -(-len(figs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    for ax, f in zip(axes.flat, figs):
        shown = [m for m in modes if report["modes"][m]["median"].get(f.key) is not None]
        medians, lows, highs = [], [], []
        for m in shown:
            values = [r[f.key] for r in report["modes"][m]["rounds"] if r.get(f.key) is not None]
            med = report["modes"][m]["median"][f.key]
            medians.append(med)
            lows.append(med - min(values))
            highs.append(max(values) - med)
        x = list(range(len(shown)))
        ax.bar(x, medians, yerr=[lows, highs], capsize=3, color=[colors.get(m, "#777") for m in shown])
        # plain routing is 10-50x any tunnel: clip it so the tunnels stay readable, and print its value
        others = [v for m, v in zip(shown, medians) if m != "plain"]
        clipped = bool(others) and f.higher_is_better and max(medians) > 3 * max(others)
        if clipped:
            ax.set_ylim(0, 1.6 * max(others))
        best = report["best_anchor"].get(f.key)
        if best:
            ax.axhline(best["value"], color="black", linestyle="--", linewidth=0.8)
        for i, m in enumerate(shown):
            ratio = report["modes"][m]["ratio_to_best_anchor"].get(f.key)
            text = f"{ratio:.2f}" if ratio is not None else ""
            y = medians[i]
            if clipped and y > 1.6 * max(others):
                text, y = f"{y:.{f.digits}f} (off scale)", 1.45 * max(others)
            if text:
                ax.annotate(text, (i, y), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [m.replace("wireguard-go", "wg-go") for m in shown], rotation=30, fontsize=7)
        ax.set_title(f"{f.label} [{f.unit}] {'↑' if f.higher_is_better else '↓'}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(figs):]:
        ax.set_visible(False)
    meta = report["meta"]
    fig.suptitle(f"sitelink vs anchors, two-site namespace lab: medians of {meta['completed_rounds']} round(s); "
                 f"labels = ratio to best anchor; dashed = best anchor", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------------


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "run as root (the lab creates network namespaces and TUN devices): sudo ./scripts/bench"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    missing = [t for t in ("ip", "ping", "iperf3", "ss") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (./scripts/bootstrap installs them)"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --smoke: 1)")
    p.add_argument("--seconds", type=int, default=None, help="seconds per iperf3 run (default 5; --smoke: 1)")
    p.add_argument("--rates", default=None,
                   help="comma-separated UDP offered rates, iperf3 -b syntax (default 200M,500M,1G; --smoke: 200M)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--json", type=Path, default=DEFAULT_RESULTS / "compare.json", help="JSON output path")
    p.add_argument("--png", type=Path, default=DEFAULT_RESULTS / "compare.png", help="PNG chart path")
    p.add_argument("--smoke", action="store_true", help="short run for CI: 1 round, 1 s per measurement, 1 rate")
    args = p.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 3)
    args.seconds = args.seconds if args.seconds is not None else (1 if args.smoke else 5)
    args.rates = [r.strip() for r in (args.rates or ("200M" if args.smoke else "200M,500M,1G")).split(",")
                  if r.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if args.rounds < 1 or args.seconds < 1:
        p.error("--rounds and --seconds must be at least 1")
    return args


_MAIN_PID = os.getpid()


def _terminate(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2 forks and SIGTERMs its own): just die
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _default_sigterm_in_child() -> None:
    # pyroute2 forks helpers (netns.create, IPRoute(netns=...)) and stops them with SIGTERM; a helper must
    # never unwind into a copy of the benchmark (netnslab's own at-fork hook may have restored ours)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM like Ctrl-C: netnslab tears the lab down first and then calls this, so what was measured
    # so far is still printed and written (SIGINT already raises KeyboardInterrupt, unless ignored)
    signal.signal(signal.SIGTERM, _terminate)
    os.register_at_fork(after_in_child=_default_sigterm_in_child)
    problem = preflight()
    if problem:
        print(f"compare.py: {problem}", file=sys.stderr)
        return 2
    s = Settings(rounds=args.rounds, seconds=args.seconds, rates=args.rates,
                 ping_count=50 if args.smoke else 200, load_seconds=max(args.seconds, 2 if args.smoke else 5))
    figs = figures(s.rates)
    print(f"benchmark: {', '.join(args.modes)}; {s.rounds} round(s), {s.seconds} s per iperf3 run, "
          f"UDP {', '.join(s.rates)} with 1200-byte datagrams", flush=True)
    code = 0
    report = new_report(s, figs)
    try:
        run(report, args.modes, s, figs)
    except KeyboardInterrupt:
        print("\ninterrupted: labs torn down; writing what was measured", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug in the benchmark itself: say where, keep the machine clean
        print(f"compare.py: unexpected error: {_short(exc)}\n{traceback.format_exc(limit=3)}", file=sys.stderr)
        code = 1
    print()
    print(format_table(report, figs))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nJSON: {args.json}")
    why_not = write_png(report, figs, args.png)
    print(f"PNG: {args.png}" if why_not is None else f"PNG: {why_not}")
    return code


if __name__ == "__main__":
    sys.exit(main())
