"""What `sitelink status` shows: a snapshot of the gateway's tunnels as plain data (for --json and the
control socket) and its rendering as a table, like `swanctl --list-sas` and `wg show` together.

Never key material: SPIs, algorithms, counters and times only (a test greps the output for the keys)."""

from __future__ import annotations

import fnmatch
from typing import Any

from policy.qos import QosClass
from tunnel.dataplane.callquality import StreamView
from tunnel.ops.readout import Readout, TunnelView


def _in(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else round(deadline - now, 1)


def snapshot(readout: Readout, now: float) -> dict[str, Any]:
    """now: the monotonic clock the cores run on."""
    queues = {direction: {cls.label: {"depth": depth, "dropped": stats.dropped, "sent": stats.dequeued}
                          for cls, (depth, stats) in zip(QosClass, rows)}
              for direction, rows in readout.queues().items()}
    return {"gateway": readout.gateway_name, "listen": readout.listen, "ha_role": readout.ha_role,
            "ha_sync": readout.ha_sync(),
            "tunnels": [_tunnel(t, now) for t in readout.tunnels()], "queues": queues,
            "unowned_drops": readout.unowned().drops_by_reason(), "unowned_ike_drops": readout.unowned_ike_drops()}


def _tunnel(t: TunnelView, now: float) -> dict[str, Any]:
    counters = t.counters
    entry: dict[str, Any] = {
        "name": t.name,
        "peer": f"{t.peer[0]}:{t.peer[1]}",
        "state": "up" if t.up else ("connecting" if t.connecting else "down"),
        "keying": t.keying,
        "tx_packets": counters.tx_packets, "tx_bytes": counters.tx_bytes,
        "rx_packets": counters.rx_packets, "rx_bytes": counters.rx_bytes,
        "drops": counters.drops_by_reason(), "ike_drops": t.ike_drops,
        "ike": None, "child_sas": [],
    }
    if t.established_at is not None:
        entry["last_handshake_ago_s"] = round(now - t.established_at, 1)
    ike = t.ike
    if ike is not None:
        entry["ike"] = {
            "spi_i": ike.spi_i.hex(), "spi_r": ike.spi_r.hex(), "initiator": ike.initiator, "suite": ike.suite,
            "rekey_in_s": _in(ike.rekey_at, now), "expires_in_s": _in(ike.expire_at, now),
            "peer_last_seen_ago_s": None if ike.last_received is None else round(now - ike.last_received, 1),
            "dpd_rtt_ms": None if ike.dpd_rtt is None else round(ike.dpd_rtt * 1000, 2),
        }
        entry["child_sas"] = [
            {"spi_in": f"{c.spi_in:08x}", "spi_out": f"{c.spi_out:08x}", "suite": c.suite, "state": c.state,
             "rekey_in_s": _in(c.rekey_at, now), "expires_in_s": _in(c.expire_at, now)}
            for c in ike.children]
    elif t.manual_spi_out is not None:
        entry["child_sas"] = [{"spi_out": f"{t.manual_spi_out:08x}", "suite": "AES_GCM_16_256", "state": "manual"}]
    entry["calls"] = None if t.calls is None else [_stream(s) for s in t.calls.streams]
    return entry


def _stream(s: StreamView) -> dict[str, Any]:
    return {"direction": s.direction, "class": QosClass(s.cls).label, "ssrc": f"{s.ssrc:08x}", "src": s.src,
            "dst": s.dst, "payload_type": s.payload_type, "clock_rate": s.clock_rate, "packets": s.packets,
            "expected": s.expected, "lost": s.lost, "loss_pct_10s": s.loss_pct, "reordered": s.reordered,
            "duplicates": s.duplicates, "jitter_ms": s.jitter_ms, "jitter_mean_ms": s.jitter_mean_ms, "mos": s.mos,
            "seconds": s.seconds}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    value = int(value)
    return f"{value // 3600}h{value % 3600 // 60:02d}m" if value >= 3600 else f"{value // 60}m{value % 60:02d}s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def render(snap: dict[str, Any]) -> str:
    lines = [f"gateway {snap['gateway']}, listening on udp {snap['listen']}"
             + (f", HA role {snap['ha_role']}" if snap.get("ha_role") else "")]
    for t in snap["tunnels"]:
        lines.append("")
        handshake = t.get("last_handshake_ago_s")
        lines.append(f"tunnel {t['name']}: {t['state'].upper()}, peer {t['peer']}, {t['keying']} keying"
                     + (f", last handshake {_secs(handshake)} ago" if "last_handshake_ago_s" in t else ""))
        ike = t["ike"]
        if ike:
            seen = ike["peer_last_seen_ago_s"]
            lines.append(f"  IKE SA  {ike['spi_i']}_i {ike['spi_r']}_r  {ike['suite']}  "
                         f"{'initiator' if ike['initiator'] else 'responder'}, rekey in {_secs(ike['rekey_in_s'])}, "
                         f"peer seen {'-' if seen is None else f'{seen:.1f} s'} ago"
                         + (f", DPD rtt {ike['dpd_rtt_ms']} ms" if ike["dpd_rtt_ms"] is not None else ""))
        for c in t["child_sas"]:
            spi_in = c.get("spi_in", "-")
            lines.append(f"  Child SA  in {spi_in}  out {c['spi_out']}  {c['suite']}  {c['state']}"
                         + (f", rekey in {_secs(c['rekey_in_s'])}, expires in {_secs(c['expires_in_s'])}"
                            if c.get("expires_in_s") is not None else ""))
        lines.append(f"  transfer  sent {_size(t['tx_bytes'])} ({t['tx_packets']} packets), "
                     f"received {_size(t['rx_bytes'])} ({t['rx_packets']} packets)")
        lines.append(f"  drops     {_counts(t['drops'])}")
        if t["keying"] == "ike":
            lines.append(f"  IKE drops {_counts(t['ike_drops'])}")
        calls = t.get("calls")
        if calls is None:
            lines.append("  calls     not observed (call_quality: false)")
        elif not calls:
            lines.append("  calls     none")
        for c in calls or ():
            lost = c["lost"] / c["expected"] * 100 if c["expected"] > 0 else 0.0
            mos = "-" if c["mos"] is None else f"{c['mos']:.2f}"
            lines.append(f"  call {c['direction']:7s} {c['class']:17s} ssrc {c['ssrc']} {c['src']} -> {c['dst']}  "
                         f"pt {c['payload_type']}, {c['packets']} packets, lost {c['lost']} ({lost:.1f} %; "
                         f"{c['loss_pct_10s']:.1f} % in 10 s), jitter {c['jitter_ms']:.2f} ms "
                         f"(mean {c['jitter_mean_ms']:.2f}), MOS {mos}")
    if snap["queues"]:
        lines.append("")
        lines.append("queues (depth / sent / dropped):")
        for direction, classes in snap["queues"].items():
            cells = "  ".join(f"{label} {q['depth']}/{q['sent']}/{q['dropped']}" for label, q in classes.items())
            lines.append(f"  {direction:8s} {cells}")
    if snap["unowned_drops"]:
        lines.append("")
        lines.append("drops outside any tunnel: " + _counts(snap["unowned_drops"]))
    if snap["unowned_ike_drops"]:
        lines.append("IKE drops outside any tunnel: " + _counts(snap["unowned_ike_drops"]))
    return "\n".join(lines)


def select(snap: dict[str, Any], pattern: str | None = None, state: str | None = None) -> dict[str, Any]:
    """The snapshot with only the tunnels whose name matches the glob `pattern` (branch*, *-dc?) and
    whose state is `state` (up, connecting, down)."""
    tunnels = [t for t in snap["tunnels"] if (pattern is None or fnmatch.fnmatchcase(t["name"], pattern))
               and (state is None or t["state"] == state)]
    return {**snap, "tunnels": tunnels}


def render_brief(snap: dict[str, Any], total: int | None = None) -> str:
    """One line per tunnel, after a one-line count by state: what an admin with hundreds of branches
    reads first (`sitelink status --brief --state down`). total: tunnels before a filter."""
    tunnels = snap["tunnels"]
    states = {state: sum(t["state"] == state for t in tunnels) for state in ("up", "connecting", "down")}
    shown = f"{len(tunnels)} of {total} tunnels" if total is not None and total != len(tunnels) \
        else f"{len(tunnels)} tunnels"
    lines = [f"gateway {snap['gateway']}, listening on udp {snap['listen']}: {shown}, "
             + ", ".join(f"{n} {state}" for state, n in states.items())]
    if not tunnels:
        return lines[0]
    rows = [("TUNNEL", "STATE", "PEER", "HANDSHAKE", "SENT", "RECEIVED", "DROPS")]
    for t in tunnels:
        handshake = t.get("last_handshake_ago_s")
        rows.append((t["name"], t["state"], t["peer"], "-" if handshake is None else f"{_secs(handshake)} ago",
                     _size(t["tx_bytes"]), _size(t["rx_bytes"]),
                     str(sum(t["drops"].values()) + sum(t["ike_drops"].values()))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
