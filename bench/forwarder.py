#!/usr/bin/env python3
"""Per-packet cost of the pure forwarder against the bare AES-GCM call it wraps, measured side by side.

The ratio says how much the ESP framing, tunnel lookup, selector checks and replay window add on
top of the cipher itself; both are timed in the same process, interleaved, medians of several runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from tunnel.dataplane.forwarder import Forwarder  # noqa: E402
from tunnel.esp.sa import InboundSa, OutboundSa  # noqa: E402

net = ipaddress.ip_network


def packet(size: int) -> bytes:
    header = bytes.fromhex("45000000000040004011") + bytes(2) + bytes([10, 1, 0, 10, 10, 2, 0, 10])
    return header[:2] + size.to_bytes(2, "big") + header[4:] + bytes(size - 20)


def pair() -> tuple[Forwarder, Forwarder]:
    key = os.urandom(36)
    a, b = Forwarder(), Forwarder()
    a.add_tunnel("b", ("198.18.2.2", 4500), [net("10.1.0.0/24")], [net("10.2.0.0/24")])
    b.add_tunnel("a", ("198.18.1.2", 4500), [net("10.2.0.0/24")], [net("10.1.0.0/24")])
    a.install_outbound("b", OutboundSa(0x1001, key))
    b.install_inbound("a", InboundSa(0x1001, key))
    return a, b


def time_forwarder(pkt: bytes, n: int) -> tuple[float, float]:
    a, b = pair()
    t0 = time.perf_counter()
    sealed = [a.outbound(pkt)[1] for _ in range(n)]
    t1 = time.perf_counter()
    for esp in sealed:
        b.inbound(esp, ("198.18.1.2", 4500))
    t2 = time.perf_counter()
    assert b.tunnels["a"].counters.rx_packets == n
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def time_bare_aead(pkt: bytes, n: int) -> tuple[float, float]:
    aead, nonce, aad = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(8)
    t0 = time.perf_counter()
    sealed = [aead.encrypt(nonce, pkt, aad) for _ in range(n)]
    t1 = time.perf_counter()
    for ct in sealed:
        aead.decrypt(nonce, ct, aad)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{'size':>5} {'seal µs':>8} {'open µs':>8} {'AEAD enc':>9} {'AEAD dec':>9} {'seal/enc':>9} {'open/dec':>9}")
    for size in (64, 200, 1200, 1438):
        pkt = packet(size)
        fwd, bare = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            fwd.append(time_forwarder(pkt, args.packets))
            bare.append(time_bare_aead(pkt, args.packets))
        seal, open_ = (statistics.median(r[i] for r in fwd) for i in (0, 1))
        enc, dec = (statistics.median(r[i] for r in bare) for i in (0, 1))
        print(f"{size:5} {seal:8.2f} {open_:8.2f} {enc:9.2f} {dec:9.2f} {seal / enc:9.2f} {open_ / dec:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
