#!/usr/bin/env python3
"""A malicious authenticated peer, scripted with sitelink's own IKE core (run in a lab gateway's
namespace instead of `sitelink up`): it holds a real tunnel's PSK and identity, sets up an honest IKE SA
with the hub, then uses it to attack:

  1. Child SA rekeys proposing reserved ESP SPIs (--child-spi, e.g. 0 and 255): the core's SPI chooser
     is replaced, nothing else;
  2. an IKE SA rekey whose new SPI is another tunnel's IKE SPI (--ike-spi, seen on the wire): the
     core's randomness hands it out for the new SA;
  3. an INFORMATIONAL Delete naming another tunnel's ESP SPIs (--delete-spi, seen on the wire), sealed
     with this IKE SA's keys.

Prints a JSON report: whether the IKE SA was established, what each step got back, the events.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tunnel.ike.sa  # noqa: E402
from tunnel.app.assemble import ike_configs  # noqa: E402
from tunnel.config.loader import load_config  # noqa: E402
from tunnel.esp.encap import frame_ike  # noqa: E402
from tunnel.ike.constants import ExchangeType, ProtocolId  # noqa: E402
from tunnel.ike.dispatcher import IkeDispatcher  # noqa: E402
from tunnel.ike.events import ChildSaEstablished, IkeSaRekeyed  # noqa: E402
from tunnel.ike.message import DeletePayload, IkeHeader, encode_sk_message  # noqa: E402


class RiggedRandom:
    """os.urandom, except that queued values come out first for draws of their length."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        for value in self.queued:
            if len(value) == n:
                self.queued.remove(value)
                return value
        return os.urandom(n)


class Rogue:
    def __init__(self, config: Path, tunnel_name: str) -> None:
        gateway = load_config(config)
        configs = [(c, peer) for c, peer in ike_configs(gateway, 1) if c.tunnel == tunnel_name]
        if not configs:
            raise SystemExit(f"no IKE tunnel {tunnel_name!r} in {config}")
        self.tunnel = tunnel_name
        self.random = RiggedRandom()
        self.ike = IkeDispatcher(configs, self.random)
        address = str(gateway.listen.address)
        self.sockets: dict[int, socket.socket] = {}
        for port in (500, 4500):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, port))
            self.sockets[port] = sock
        self.events: list[str] = []

    def run(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            self.ike.handle_timer(now)
            for data, remote, local_port in self.ike.datagrams_to_send(now):
                self.sockets[local_port].sendto(frame_ike(data) if local_port == 4500 else data, remote)
            while (event := self.ike.next_event()) is not None:
                self.events.append(type(event).__name__)
            if done():
                return True
            readable, _, _ = select.select(list(self.sockets.values()), [], [], 0.05)
            for sock in readable:
                data, remote = sock.recvfrom(65535)
                port = sock.getsockname()[1]
                if port == 4500:
                    if not data.startswith(bytes(4)):
                        continue  # ESP: this peer carries no traffic
                    data = data[4:]
                self.ike.receive_datagram(data, remote, port, time.monotonic())
        return False

    def session(self):  # the established IKE SA of the tunnel (the newest after a rekey)
        live = [s for s in self.ike.sessions.values() if s.established and s.config.tunnel == self.tunnel]
        return live[-1] if live else None

    def idle(self) -> bool:
        session = self.session()
        return session is not None and session.requests.outstanding is None

    def send_delete(self, spis: list[int]) -> None:
        session = self.session()
        header = IkeHeader(session.spi_i, session.spi_r, ExchangeType.INFORMATIONAL,
                           0x08 if session.initiator else 0, session.requests.next_id)
        session.requests.next_id += 1
        payloads = [DeletePayload(ProtocolId.ESP, tuple(spi.to_bytes(4, "big") for spi in spis))]
        data = encode_sk_message(header, payloads, session.crypto.sk_out.seal)
        self.sockets[session.local_port].sendto(frame_ike(data) if session.local_port == 4500 else data,
                                                session.remote)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the impersonated gateway's sitelink config")
    parser.add_argument("--tunnel", required=True, help="its tunnel to the attacked gateway")
    parser.add_argument("--child-spi", type=lambda v: int(v, 0), action="append", default=[])
    parser.add_argument("--ike-spi", type=bytes.fromhex, default=None)
    parser.add_argument("--delete-spi", type=lambda v: int(v, 16), action="append", default=[])
    args = parser.parse_args()
    rogue = Rogue(args.config, args.tunnel)
    report: dict[str, object] = {}
    rogue.ike.initiate(args.tunnel, time.monotonic())
    report["established"] = rogue.run(lambda: "ChildSaEstablished" in rogue.events, 15)
    if not report["established"]:
        print(json.dumps(report | {"events": rogue.events}))
        return 1
    real_new_spi = tunnel.ike.sa.new_spi
    for bad in args.child_spi:  # 1. reserved SPIs in Child SA rekeys
        tunnel.ike.sa.new_spi = lambda *_, bad=bad: bad  # type: ignore[assignment]
        before = rogue.events.count(ChildSaEstablished.__name__)
        rogue.ike.rekey_child(args.tunnel, time.monotonic())
        rogue.run(lambda: False, 1.0)
        report[f"child rekey with SPI {bad}"] = ("accepted" if rogue.events.count(ChildSaEstablished.__name__) > before
                                                 else "refused")
    tunnel.ike.sa.new_spi = real_new_spi
    if args.ike_spi is not None:  # 2. another tunnel's IKE SPI for our new IKE SA
        rogue.random.queued.append(args.ike_spi)
        rogue.ike.rekey_ike(args.tunnel, time.monotonic())
        rekeyed = rogue.run(lambda: IkeSaRekeyed.__name__ in rogue.events and rogue.idle(), 5.0)
        report["ike rekey with a foreign SPI"] = "accepted" if rekeyed else "refused"
    if args.delete_spi:  # 3. a Delete naming another tunnel's Child SAs
        rogue.send_delete(args.delete_spi)
        rogue.run(lambda: False, 1.0)
        report["delete of foreign SPIs"] = "sent"
    report["still established"] = rogue.session() is not None
    report["events"] = rogue.events
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
