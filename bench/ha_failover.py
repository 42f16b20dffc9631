#!/usr/bin/env python3
"""Failover: what a branch sees when an HQ gateway fails, each way it can fail, ROUNDS times each, in
fresh labs (the same as tests/lab/test_ha_keepalived.py and test_scale_out_bgp.py, measured instead of
asserted). Prints one row per scenario: the median (and range) of the outage the branch's probes saw
(200 datagrams/s each way; the longest silence), keepalived's share (failure to virtual address moved),
the failback's outage, and whether the branch had to set up a new IKE SA.

    sudo .venv/bin/python bench/ha_failover.py                    # 5 rounds of everything (about 9 minutes)
    sudo .venv/bin/python bench/ha_failover.py --rounds 3 --only pair

Writes bench/results/ha_failover.json. Needs root, keepalived, socat and bird2 (scripts/bootstrap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import Lab, hub_and_spoke_topology  # noqa: E402
from netnslab.ha import HaPair, measure_failover  # noqa: E402
from netnslab.scaleout import ScaleOut, measure_hub_failure, scale_out_topology  # noqa: E402
from netnslab.sitelink import Deployment  # noqa: E402

PAIR = [("keepalived, sitelink killed (kill -9)", "sitelink-kill", False, 0.2),
        ("keepalived, gateway machine dies", "node-kill", False, 0.2),
        ("keepalived, WAN cable cut", "wan-cut", False, 0.2),
        ("keepalived + state sync, machine dies", "node-kill", True, 0.1),
        ("keepalived + state sync, WAN cable cut", "wan-cut", True, 0.1)]


def pair_round(failure: str, sync: bool, advert: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ha-bench-") as tmp, Lab(hub_and_spoke_topology(1)) as lab:
        work = Path(tmp)
        dep = Deployment(lab, work, ike_options={"dpd_delay": 30})
        pair = HaPair(lab, "hq", work, dep.gateways["hq"].config.read_text(), sync=sync, advert_int=advert)
        dep.start("branch1")
        pair.start(0)
        pair.start(1)
        pair.wait_holder(0)
        dep.wait_established("branch1")
        result = measure_failover(pair, "branch1-host", failure)
        new_sas = dep.gateways["branch1"].log_text().count("IKE SA established") - 1
        pair.stop()
        return {"failover_s": result["failover"]["outage_s"], "detect_s": result["failover"]["detect_s"],
                "failback_s": result["failback"]["outage_s"], "new_ike_sas": new_sas}


def scale_round() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="so-bench-") as tmp, Lab(scale_out_topology(3, 6)) as lab:
        so = ScaleOut(lab, Path(tmp), dpd_delay=1, retransmit=(0.5, 2))
        so.start_all()
        so.wait_converged(timeout=30)
        result = measure_hub_failure(so, 0, seconds=10)
        so.stop()
        moved = [r["outage_s"] for r in result["branches"].values() if r["hub_before"] == 0]
        stayed = [r["outage_s"] for r in result["branches"].values() if r["hub_before"] != 0]
        return {"failover_s": max(moved), "routes_s": result["routes_s"], "stayed_max_s": max(stayed)}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("pair", "scale-out"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ha_failover.json")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    if args.only != "scale-out":
        for name, failure, sync, advert in PAIR:
            results[name] = [pair_round(failure, sync, advert) for _ in range(args.rounds)]
            print(name, json.dumps(results[name]), flush=True)
    if args.only != "pair":
        name = "3 hubs + BGP, a hub machine dies (its 2 of 6 branches move)"
        results[name] = [scale_round() for _ in range(args.rounds)]
        print(name, json.dumps(results[name]), flush=True)
    print()
    print(f"| failure ({args.rounds} rounds each) | outage, median (range) s | keepalived / BGP share s "
          "| failback outage s | branch saw |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        out = summary([r["failover_s"] for r in rounds])
        if "detect_s" in rounds[0]:
            share = summary([r["detect_s"] for r in rounds])
            back = summary([r["failback_s"] for r in rounds])
            new = sorted({r["new_ike_sas"] for r in rounds})
            saw = "the same IKE SA (no new one)" if new == [0] else f"a new IKE SA each time ({new} in all)"
        else:
            share = "routes: " + summary([r["routes_s"] for r in rounds])
            back = "-"
            saw = (f"a new IKE SA with the next hub; the other branches' outage at most "
                   f"{max(r['stayed_max_s'] for r in rounds):.3f} s")
        print(f"| {name} | {out} | {share} | {back} | {saw} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
