#!/usr/bin/env python3
"""The sitelink lab demo: two sites linked by real `sitelink up` gateways in network namespaces.

Builds the two-site topology twice, once routed in clear (the baseline) and once with only the
tunnel between the LANs, then measures both side by side in interleaved rounds (ping RTT and iperf3
TCP between the LAN hosts), prints medians, the gateways' per-tunnel counters, `sitelink status` and an
excerpt of the Prometheus metrics, and tears everything down (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netnslab import TOPOLOGIES, Lab, iperf3, ping  # noqa: E402
from netnslab.sitelink import Deployment  # noqa: E402


def measure(lab: Lab, seconds: int) -> tuple[float, float]:
    dst = lab.addr("branch1-host")
    rtt = ping(lab, "hq-host", dst, count=50, interval=0.01)
    if rtt.received == 0:
        raise SystemExit(f"demo: no ping reply through the {lab.mode} lab")
    tcp = iperf3(lab, "hq-host", "branch1-host", dst, seconds=seconds)
    return rtt.median, tcp.received_bps / 1e6


def first_packet(lab: Lab, since: float, timeout: float = 20.0) -> float:
    """Seconds from `since` until a ping from hq-host gets through (IKE included)."""
    while time.monotonic() - since < timeout:
        if ping(lab, "hq-host", lab.addr("branch1-host"), count=1, timeout=0.2).received:
            return time.monotonic() - since
    raise SystemExit("demo: the tunnel did not come up")


SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9548/metrics', timeout=5).read().decode())"
SHOWN = ("sitelink_tunnel_up{", "sitelink_esp_bytes_total{", "sitelink_ike_handshake_duration_seconds_sum{",
         "sitelink_ike_handshake_duration_seconds_count{", "sitelink_child_sa_lifetime_remaining_seconds{",
         "sitelink_drops_total{tunnel=\"branch1\",reason=\"replay\"}", "sitelink_qos_sojourn_seconds_count{")


def metrics_excerpt(lab: Lab, node: str) -> list[str]:
    """A few of the gateway's Prometheus series, scraped inside its namespace (the exporter is on loopback)."""
    cp = lab.run(node, [sys.executable, "-c", SCRAPE], timeout=15, check=False)
    if cp.returncode != 0:
        return [f"(no metrics: {cp.stderr.strip()[-200:]})"]
    return [line for line in cp.stdout.splitlines() if line.startswith(SHOWN) and "(none)" not in line
            and not ("_qos_" in line and ('direction="ingress"' in line or "default" not in line and "audio" not in line))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per round (default 5)")
    args = parser.parse_args()
    topology = TOPOLOGIES / "two-sites.yaml"
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "tunnel": []}
    with tempfile.TemporaryDirectory(prefix="sitelink-demo-") as workdir, \
            Lab(topology, mode="plain") as plain, Lab(topology, mode="tunnel") as tunnel:
        deployment = Deployment(tunnel, Path(workdir))
        deployment.start("branch1")  # the responder is up; now the initiating gateway starts
        started = time.monotonic()
        deployment.start("hq")
        first = first_packet(tunnel, started)
        print(f"first ping reply through the tunnel {first * 1000:.0f} ms after `sitelink up` of the initiating "
              "gateway (process start, TUN, IKE_SA_INIT + IKE_AUTH with PSK/X25519, then ESP)")
        print(f"sites up: hq {tunnel.addr('hq-host')} <-> branch1 {tunnel.addr('branch1-host')} "
              f"through sitelink gateways {tunnel.addr('hq-gw')} <-> {tunnel.addr('branch1-gw')}")
        v6 = ping(tunnel, "hq-host", tunnel.addr("branch1-host", 6), count=3, interval=0.05)
        print(f"IPv6 through the tunnel: {v6.received}/{v6.sent} replies")
        for n in range(1, args.rounds + 1):
            for name, lab in (("plain", plain), ("tunnel", tunnel)):
                rtt, mbps = measure(lab, args.seconds)
                results[name].append((rtt, mbps))
                print(f"round {n} {name:6}: ping median {rtt:.3f} ms, iperf3 TCP {mbps:7.1f} Mbit/s", flush=True)

        print(f"\nmedians of {args.rounds} rounds (same run, interleaved):")
        print(f"{'mode':8} {'ping RTT ms':>12} {'TCP Mbit/s':>11}")
        for name, rows in results.items():
            print(f"{name:8} {statistics.median(r for r, _ in rows):12.3f} {statistics.median(m for _, m in rows):11.1f}")
        for site in deployment.gateways:
            for tunnel_name, c in deployment.counters(site).items():
                drops = ", ".join(f"{k} {v}" for k, v in c["drops"].items()) or "none"
                print(f"gateway {site:8} tunnel {tunnel_name:8} tx {c['tx_packets']:>8} pkts {c['tx_bytes']:>12} B"
                      f"  rx {c['rx_packets']:>8} pkts {c['rx_bytes']:>12} B  drops: {drops}")
        status = deployment.sitelink("hq", "status")
        print("\n$ sitelink status    # on hq, over its control socket\n" + (status.stdout or status.stderr).rstrip())
        print("\n$ curl -s 127.0.0.1:9548/metrics    # on hq, an excerpt")
        print("\n".join(metrics_excerpt(tunnel, "hq-gw")))
    print("lab torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
