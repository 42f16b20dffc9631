#!/usr/bin/env python3
"""What the call-quality observer costs per packet: the observer alone on an RTP packet of a known stream
and on UDP to a port that is not media, and the forwarder's seal of TCP, UDP and RTP packets with the
observer on and off (interleaved, medians of several runs, ratios side by side).

    .venv/bin/python bench/callquality.py [--packets 20000] [--runs 7]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.qos import QosClass  # noqa: E402
from tunnel.dataplane.callquality import INGRESS, CallQuality, CallSettings, port_table  # noqa: E402
from tunnel.dataplane.forwarder import Forwarder  # noqa: E402
from tunnel.dataplane.tunnels import TunnelPolicy  # noqa: E402
from tunnel.esp.sa import OutboundSa  # noqa: E402

net = ipaddress.ip_network
MEDIA = CallSettings(port_table([(3478, 3478), (10000, 20000), (50000, 50059)]))


def ip4(protocol: int, transport: bytes, tos: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(transport), 0, 0x4000, 64, protocol, 0,
                         bytes([10, 1, 0, 10]), bytes([10, 2, 0, 10]))
    return header + transport


def rtp_packets(n: int, size: int = 172) -> list[bytes]:
    """A G.711 stream's packets (20 ms, 160-byte payload), sequence numbers and timestamps advancing."""
    out = []
    for i in range(n):
        rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x5EED) + bytes(size - 12)
        out.append(ip4(17, struct.pack("!HHHH", 10000, 10002, 8 + len(rtp), 0) + rtp, tos=0xB8))
    return out


def udp_other(size: int = 200) -> bytes:
    return ip4(17, struct.pack("!HHHH", 40000, 53, size - 20, 0) + bytes(size - 28))


def tcp(size: int = 1400) -> bytes:
    return ip4(6, struct.pack("!HHIIBBHHH", 40000, 443, 1, 1, 0x50, 0x10, 65535, 0, 0) + bytes(size - 40))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.02  # each packet 20 ms after the one before, as a call's
        return self.now


def forwarder(observe: bool) -> Forwarder:
    f = Forwarder(Clock())
    f.add_tunnel("b", ("198.18.2.2", 4500), [net("10.1.0.0/24")], [net("10.2.0.0/24")],
                 TunnelPolicy(calls=MEDIA if observe else None))
    f.install_outbound("b", OutboundSa(0x1001, os.urandom(36)))
    return f


def per_packet(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1e9


def observer_alone(n: int) -> tuple[float, float]:
    """ns per observe() on a stream's RTP packet, and on UDP to a port that is not media."""
    obs = CallQuality(MEDIA, Clock())
    media, other = rtp_packets(n), udp_other()
    observe, audio = obs.observe, QosClass.REALTIME_AUDIO

    def run_media() -> None:
        for p in media:
            observe(p, 4, INGRESS, audio)

    def run_other() -> None:
        for _ in range(n):
            observe(other, 4, INGRESS, audio)

    result = per_packet(run_media, n), per_packet(run_other, n)
    assert len(obs.streams) == 1 and obs.streams[next(iter(obs.streams))].received == n
    return result


def sealed(packets: list[bytes], observe: bool) -> float:
    f = forwarder(observe)
    out: list[tuple[bytes, tuple[str, int], int]] = []
    outbound_into = f.outbound_into

    def run() -> None:
        for p in packets:
            outbound_into(p, out)

    ns = per_packet(run, len(packets))
    assert len(out) == len(packets)
    return ns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    n = args.packets
    alone = [observer_alone(n) for _ in range(args.runs)]
    print(f"observer alone, ns per packet (median of {args.runs} x {n}):")
    print(f"  RTP packet of a known stream   {statistics.median(a[0] for a in alone):8.0f}")
    print(f"  UDP to a port that is not media {statistics.median(a[1] for a in alone):7.0f}")
    print(f"forwarder seal, ns per packet, observer off / on (interleaved, median of {args.runs}):")
    for label, packets in (("TCP 1400 B", [tcp()] * n), ("UDP 200 B, not media", [udp_other()] * n),
                           ("RTP 172 B, media", rtp_packets(n))):
        off, on = [], []
        for _ in range(args.runs):
            off.append(sealed(packets, False))
            on.append(sealed(packets, True))
        a, b = statistics.median(off), statistics.median(on)
        print(f"  {label:22s} {a:8.0f} {b:8.0f}   on/off {b / a:5.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
