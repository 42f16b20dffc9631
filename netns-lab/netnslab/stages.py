"""Where a ping's round trip goes, stage by stage, through two tunnel gateways (issue 17).

tcpdump runs in both gateway namespaces (one kernel, one clock) while a host pings across the tunnel;
each echo request and reply is followed from the client site's LAN, into its tunnel device, out of its WAN
as an encrypted datagram, into the server gateway's WAN, out of its tunnel device to the host, and back.
The gateway's own share of a direction is "tunnel device -> WAN" (read, encrypt, send) and "WAN -> tunnel
device" (wake, receive, decrypt, write): the same cut for every implementation, so sitelink's stages can
be put next to an anchor's. Capturing costs time of its own: the stages add up to more than an
uncaptured round trip, and only same-run comparisons mean anything.

Encrypted datagrams cannot be told apart by content, so each is matched by time: the first one to leave
(or arrive) after the packet it carries was seen, within WINDOW_NS. On an idle tunnel with pings
20 ms apart that is unambiguous; a round whose datagrams are missing is left out, not guessed.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netnslab.lab import Lab

WINDOW_NS = 5_000_000  # 5 ms
STAGES = (
    ("client_lan_to_tunnel", "client gateway: LAN -> tunnel device (kernel routing)"),
    ("client_egress", "client gateway: tunnel device -> WAN (read, encrypt, send)"),
    ("wan_out", "WAN, client -> server gateway"),
    ("server_ingress", "server gateway: WAN -> tunnel device (receive, decrypt, write)"),
    ("server_site", "server site: tunnel device -> host -> tunnel device"),
    ("server_egress", "server gateway: tunnel device -> WAN (read, encrypt, send)"),
    ("wan_back", "WAN, server -> client gateway"),
    ("client_ingress", "client gateway: WAN -> tunnel device (receive, decrypt, write)"),
    ("client_tunnel_to_lan", "client gateway: tunnel device -> LAN (kernel routing)"),
)
GATEWAY_STAGES = ("client_egress", "server_ingress", "server_egress", "client_ingress")

_LINE = re.compile(r"^(\d+\.\d+) (\S+)\s+(In|Out)\s+(.*)$")
_ICMP = re.compile(r"ICMP echo (request|reply), id \d+, seq (\d+),")


@dataclass(frozen=True)
class Seen:
    t: int  # nanoseconds (tcpdump --nano; a float would lose the last digits of today's epoch)
    iface: str
    out: bool
    icmp: tuple[str, int] | None  # ("request" | "reply", seq) for an echo, None for anything else


def parse(text: str) -> list[Seen]:
    """tcpdump -i any -n -tt --nano -l lines; what is not a packet line is skipped."""
    seen = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        icmp = _ICMP.search(m.group(4))
        sec, _, frac = m.group(1).partition(".")
        seen.append(Seen(int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), m.group(2), m.group(3) == "Out",
                         (icmp.group(1), int(icmp.group(2))) if icmp else None))
    return seen


def _echo(seen: list[Seen], kind: str, seq: int, out: bool) -> Seen | None:
    return next((s for s in seen if s.icmp == (kind, seq) and s.out == out), None)


def _datagram(seen: list[Seen], after: int, out: bool, exclude: set[str]) -> int | None:
    """The first non-echo packet in that direction, outside the LAN and tunnel devices, within WINDOW_NS."""
    return next((s.t for s in seen if s.icmp is None and s.out == out and s.iface not in exclude
                 and after <= s.t <= after + WINDOW_NS), None)


def one_round_trip(client: list[Seen], server: list[Seen], seq: int) -> dict[str, int] | None:
    """Nanoseconds per stage for echo `seq`, or None when a packet of it is missing in a capture."""
    lan_in = _echo(client, "request", seq, False)
    tun_out = _echo(client, "request", seq, True)
    s_tun_in = _echo(server, "request", seq, False)
    s_lan_out = _echo(server, "request", seq, True)
    s_lan_in = _echo(server, "reply", seq, False)
    s_tun_out = _echo(server, "reply", seq, True)
    tun_in = _echo(client, "reply", seq, False)
    lan_out = _echo(client, "reply", seq, True)
    if (lan_in is None or tun_out is None or s_tun_in is None or s_lan_out is None or s_lan_in is None
            or s_tun_out is None or tun_in is None or lan_out is None):
        return None
    # the first sighting of the request in each gateway is on the device it came in by
    c_dev = {lan_in.iface, tun_out.iface}
    s_dev = {s_tun_in.iface, s_lan_out.iface}
    wan_out = _datagram(client, tun_out.t, True, c_dev)
    s_wan_in = _datagram(server, wan_out, False, s_dev) if wan_out is not None else None
    s_wan_out = _datagram(server, s_tun_out.t, True, s_dev)
    wan_in = _datagram(client, s_wan_out, False, c_dev) if s_wan_out is not None else None
    if wan_out is None or s_wan_in is None or s_wan_out is None or wan_in is None:
        return None
    times = (lan_in.t, tun_out.t, wan_out, s_wan_in, s_tun_in.t, s_tun_out.t, s_wan_out, wan_in, tun_in.t,
             lan_out.t)
    if any(b < a for a, b in zip(times, times[1:])):
        return None  # out of order: a datagram matched to the wrong packet
    return {key: b - a for (key, _), a, b in zip(STAGES, times, times[1:])} | {"total": lan_out.t - lan_in.t}


def breakdown(client_text: str, server_text: str, seqs: Sequence[int]) -> dict[str, float]:
    """Median microseconds per stage over the echoes found in both captures (plus "total" and
    "rounds", how many round trips were matched)."""
    client, server = parse(client_text), parse(server_text)
    rounds = [r for seq in seqs if (r := one_round_trip(client, server, seq)) is not None]
    if not rounds:
        return {"rounds": 0}
    out: dict[str, float] = {key: statistics.median(r[key] for r in rounds) / 1000
                             for key in (*dict(STAGES), "total")}
    out["rounds"] = len(rounds)
    return out


def measure(lab: Lab, client_node: str, dst: str, client_gw: str, server_gw: str, count: int = 100,
            interval: float = 0.02) -> dict[str, float]:
    """Capture in both gateways while `client_node` pings `dst` `count` times; the stage medians."""
    from netnslab.tools import ping

    with tempfile.TemporaryDirectory(prefix="stages-") as tmp:
        outs, procs = {}, []
        for node in (client_gw, server_gw):
            outs[node] = (Path(tmp) / f"{node}.txt", Path(tmp) / f"{node}.err")
            with outs[node][0].open("w") as stdout, outs[node][1].open("w") as stderr:
                procs.append(lab.popen(node, ["tcpdump", "-i", "any", "-n", "-tt", "--nano", "-l",
                                              "not port 500 and (icmp or udp or proto 50)"],
                                       stdout=stdout, stderr=stderr))
        try:
            deadline = time.monotonic() + 10
            while not all("listening on" in outs[n][1].read_text() for n in outs):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("tcpdump did not start: " + " | ".join(
                        outs[n][1].read_text()[-300:] for n in outs))
                time.sleep(0.05)
            result = ping(lab, client_node, dst, count=count, interval=interval)
            time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    lab.stop(p, timeout=5)
                else:
                    p.wait()
        seqs = range(1, result.sent + 1)
        return breakdown(outs[client_gw][0].read_text(), outs[server_gw][0].read_text(), seqs)


__all__ = ["GATEWAY_STAGES", "STAGES", "breakdown", "measure", "one_round_trip", "parse"]
