#!/usr/bin/env python3
"""Per-lookup cost of the compiled policy matcher against the linear scan it must agree with, and the
cost of reading a flow key, measured side by side in one process; medians of several runs.

  cache hit   the same flows again (the steady state of long-lived calls)
  cache miss  every lookup a new flow (the worst case: a scan, or the first packet of each flow)
  linear      policy.match.linear_lookup, the reference
Rules are random-ish: site subnets (/16, /24, /32), conferencing services, allow/deny, seeded.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.flow import flow_key  # noqa: E402
from policy.match import compile_rules, linear_lookup  # noqa: E402
from policy.model import Action, Rule  # noqa: E402
from policy.services import SERVICES  # noqa: E402

BASE = int(ipaddress.ip_address("10.0.0.0"))
PORTS = [5060, 5061, 443, 3478, 4307, 12000, 50010, 50030, 22, 53, 1720, 40000, 60000]


def network(rng: random.Random) -> ipaddress.IPv4Network:
    plen = rng.choice([16, 24, 24, 32])
    address = BASE + (rng.randrange(4) << 16) + (rng.randrange(16) << 8) + rng.randrange(8)
    return ipaddress.IPv4Network((address, plen), strict=False)


def make_rules(n: int, rng: random.Random) -> list[Rule[Action]]:
    services = list(SERVICES.values())
    rules = []
    for i in range(n):
        src = tuple(network(rng) for _ in range(rng.choice([0, 1, 1, 2])))
        dst = tuple(network(rng) for _ in range(rng.choice([1, 1, 2])))
        matches = tuple(m for s in rng.sample(services, rng.choice([0, 1, 2])) for m in s.matches)
        rules.append(Rule(rng.choice([Action.ALLOW, Action.DENY]), src, dst, matches, label=f"rules[{i}]"))
    return rules


def make_packets(n: int, rng: random.Random) -> list[tuple]:
    def address() -> int:
        return BASE + (rng.randrange(4) << 16) + (rng.randrange(16) << 8) + rng.randrange(8)

    packets = set()
    while len(packets) < n:
        protocol = rng.choice([6, 17, 17, 17, 1])
        ports = (rng.choice(PORTS), rng.choice(PORTS)) if protocol != 1 else (0, 0)
        packets.add((4, protocol, address(), address(), *ports, False))
    return list(packets)


def per_call_ns(fn, calls: int, runs: int, setup=None) -> float:
    """Median over runs of fn's time per call; setup() (untimed) makes fn's argument for each run."""
    samples = []
    for _ in range(runs):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg)
        samples.append((time.perf_counter() - t0) / calls * 1e9)
    return statistics.median(samples)


def bench_rules(n: int, runs: int, rng: random.Random) -> dict[str, float]:
    rules = make_rules(n, rng)
    flows = make_packets(2000, rng)
    fresh = iter([make_packets(20000, rng) for _ in range(runs)])
    linear_flows = flows[: max(200, 100_000 // n)]
    matcher = compile_rules(rules, Action.DENY)
    for f in flows:  # warm the cache
        matcher.lookup(*f)

    def hits(_) -> None:
        lookup = matcher.lookup
        for _ in range(10):
            for f in flows:
                lookup(*f)

    def misses(arg) -> None:  # a fresh matcher (empty cache) and flows never seen
        lookup, packets = arg
        for f in packets:
            lookup(*f)

    def linear(_) -> None:
        for f in linear_flows:
            linear_lookup(rules, Action.DENY, *f)

    t0 = time.perf_counter()
    for _ in range(3):
        compile_rules(rules, Action.DENY)
    build_ms = (time.perf_counter() - t0) / 3 * 1e3
    return {
        "hit": per_call_ns(hits, 10 * len(flows), runs),
        "miss": per_call_ns(misses, 20000, runs, lambda: (compile_rules(rules, Action.DENY).lookup, next(fresh))),
        "linear": per_call_ns(linear, len(linear_flows), runs),
        "build_ms": build_ms,
        "allow": sum(matcher.lookup(*f) is Action.ALLOW for f in flows) / len(flows),
    }


def bench_flow_key(runs: int) -> dict[str, float]:
    v4 = bytes.fromhex("45b8001c00004000401100000a0100050a020009") + bytes.fromhex("9c4013c400080000")
    v6 = (bytes.fromhex("60000000") + (24).to_bytes(2, "big") + bytes([0, 64]) + bytes(range(32))
          + bytes([17, 0, 5, 2, 0, 0, 1, 4])  # hop-by-hop with a router alert, then UDP
          + bytes.fromhex("9c4013c400080000"))
    assert flow_key(v4)[4:6] == (40000, 5060) and flow_key(v6)[1] == 17
    results = {}
    for name, packet in (("IPv4/UDP", v4), ("IPv6/HBH/UDP", v6)):
        def loop(_, packet: bytes = packet) -> None:
            for _ in range(100_000):
                flow_key(packet)
        results[name] = per_call_ns(loop, 100_000, runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    rng = random.Random(20240601)

    empty = compile_rules([], Action.DENY)
    flows = make_packets(1000, rng)

    def no_rules(_) -> None:
        lookup = empty.lookup
        for _ in range(20):
            for f in flows:
                lookup(*f)

    print(f"policy matcher, ns per lookup (median of {args.runs} runs), Python {sys.version.split()[0]}")
    print(f"{'rules':>6} {'cache hit':>10} {'cache miss':>11} {'linear':>11} {'linear/miss':>12} "
          f"{'build ms':>9} {'allowed':>8}")
    none = per_call_ns(no_rules, 20 * len(flows), args.runs)
    print(f"{0:>6} {none:>10.0f} {'-':>11} {'-':>11} {'-':>12} {'-':>9} {'-':>8}")
    for n in map(int, args.sizes.split(",")):
        r = bench_rules(n, args.runs, random.Random(n))  # the same rules and flows whatever --runs says
        print(f"{n:>6} {r['hit']:>10.0f} {r['miss']:>11.0f} {r['linear']:>11.0f} {r['linear'] / r['miss']:>11.1f}x "
              f"{r['build_ms']:>9.1f} {r['allow']:>7.0%}")
    print("\nflow_key, ns per packet")
    for name, ns in bench_flow_key(args.runs).items():
        print(f"{name:>14} {ns:>8.0f}")


if __name__ == "__main__":
    main()
