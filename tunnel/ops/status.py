"""What `sitelink status` shows: a snapshot of the gateway's tunnels as plain data (for --json and the
control socket) and its rendering as a table, like `swanctl --list-sas` and `wg show` together.

Never key material: SPIs, algorithms, counters and times only (a test greps the output for the keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from policy.qos import QosClass

if TYPE_CHECKING:
    from tunnel.app.gateway import Gateway


def _suite(suite: Any) -> str:
    name = getattr(suite, "name", None)
    return name() if callable(name) else str(name or suite)


def _in(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else round(deadline - now, 1)


def snapshot(gateway: "Gateway", now: float) -> dict[str, Any]:
    """now: the monotonic clock the cores run on."""
    totals = gateway.tunnel_totals()
    control = gateway.keying
    tunnels = []
    for name, state in gateway.forwarder.tunnels.items():
        counters = totals[name]
        runtime = control.tunnels.get(name) if control is not None else None
        sessions = control.dispatcher.sessions_for(name) if runtime is not None else []
        ike = control.current_ike(name) if runtime is not None else None
        entry: dict[str, Any] = {
            "name": name,
            "peer": f"{state.peer[0]}:{state.peer[1]}",
            "state": "up" if gateway.tunnel_is_up(name) else ("connecting" if sessions else "down"),
            "keying": "ike" if runtime is not None else "manual",
            "tx_packets": counters.tx_packets, "tx_bytes": counters.tx_bytes,
            "rx_packets": counters.rx_packets, "rx_bytes": counters.rx_bytes,
            "drops": counters.drops_by_reason(),
            "ike": None, "child_sas": [],
        }
        if runtime is not None and runtime.established_at is not None:
            entry["last_handshake_ago_s"] = round(now - runtime.established_at, 1)
        if ike is not None:
            entry["ike"] = {
                "spi_i": ike.spi_i.hex(), "spi_r": ike.spi_r.hex(), "initiator": ike.initiator,
                "suite": _suite(ike.crypto.suite) if ike.crypto is not None else None,
                "rekey_in_s": _in(ike.ike_rekey_at, now), "expires_in_s": _in(ike.ike_expire_at, now),
                "peer_last_seen_ago_s": None if ike.last_received is None else round(now - ike.last_received, 1),
                "dpd_rtt_ms": None if ike.dpd_rtt is None else round(ike.dpd_rtt * 1000, 2),
            }
            entry["child_sas"] = [
                {"spi_in": f"{c.spi_in:08x}", "spi_out": f"{c.spi_out:08x}", "suite": _suite(c.suite),
                 "state": c.state.value, "rekey_in_s": _in(c.rekey_at, now), "expires_in_s": _in(c.expire_at, now)}
                for c in ike.children]
        elif state.outbound is not None:
            entry["child_sas"] = [{"spi_out": f"{state.outbound.spi:08x}", "suite": "AES_GCM_16_256", "state": "manual"}]
        tunnels.append(entry)
    queues = {direction: {cls.label: {"depth": depth, "dropped": stats.dropped, "sent": stats.dequeued}
                          for cls, (depth, stats) in zip(QosClass, rows)}
              for direction, rows in gateway.queue_totals().items()}
    return {"gateway": gateway.config.name, "listen": f"{gateway.config.listen.address}:{gateway.config.listen.port}",
            "tunnels": tunnels, "queues": queues, "unowned_drops": totals[""].drops_by_reason()}


def _size(n: int) -> str:
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


def render(snap: dict[str, Any]) -> str:
    lines = [f"gateway {snap['gateway']}, listening on udp {snap['listen']}"]
    for t in snap["tunnels"]:
        lines.append("")
        lines.append(f"tunnel {t['name']}: {t['state'].upper()}, peer {t['peer']}, {t['keying']} keying"
                     + (f", last handshake {_secs(t.get('last_handshake_ago_s'))} ago" if "last_handshake_ago_s" in t else ""))
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
        drops = ", ".join(f"{k} {v}" for k, v in sorted(t["drops"].items())) or "none"
        lines.append(f"  drops     {drops}")
    if snap["queues"]:
        lines.append("")
        lines.append("queues (depth / sent / dropped):")
        for direction, classes in snap["queues"].items():
            cells = "  ".join(f"{label} {q['depth']}/{q['sent']}/{q['dropped']}" for label, q in classes.items())
            lines.append(f"  {direction:8s} {cells}")
    if snap["unowned_drops"]:
        lines.append("")
        lines.append("drops outside any tunnel: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["unowned_drops"].items())))
    return "\n".join(lines)
