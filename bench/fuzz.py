#!/usr/bin/env python3
"""Push mutated inputs through the three parsers that face the outside: the IKE dispatcher (two real
cores back to back, at every stage of a connection's life), the forwarder's ESP inbound path, and the
config loader. A parser may answer or refuse (a counted drop, a ConfigError); anything else is a bug:
an exception out of the entry point, or a drop counted as `internal` (the IKE error boundary caught an
unexpected exception). Outside CI: the property tests run the same ideas in seconds, this runs them
for a million inputs.

    python bench/fuzz.py                       # 1,000,000 inputs, prints inputs, rate and bugs
    python bench/fuzz.py --inputs 50000 --seed 7

Seeds: the IKE messages of a whole recorded connection (set-up, rekeys, DPD, delete), those strongSwan
and sitelink exchanged in the lab (tests/data/strongswan-ike.hex), real ESP packets of several sizes,
and the example configs. A failing input is written to --crashes as hex (or YAML) with its traceback.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from forwarder import packet  # noqa: E402
from forwarder import pair as esp_pair  # noqa: E402

from tests.property.test_ike_connection_fuzz import SEALED, STAGES, TRANSCRIPT, drop_counts, no_bug, staged  # noqa: E402
from tests.unit.test_ike_session import BR, HQ, Wire  # noqa: E402
from tunnel.config.loader import load_config  # noqa: E402
from tunnel.errors import ConfigError  # noqa: E402
from tunnel.ike.constants import PayloadType  # noqa: E402
from tunnel.ike.dispatcher import IkeDispatcher  # noqa: E402
from tunnel.ike.message import encode_payloads  # noqa: E402

ATTACKER = "203.0.113.66"
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
INTERESTING16 = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 28, 29]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four of: bit flips, interesting bytes and 16-bit fields, cuts, inserts, repeats, splices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(8)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rng.choice(INTERESTING)
        elif op == 2 and len(out) >= 2:
            at %= len(out) - 1
            out[at:at + 2] = rng.choice(INTERESTING16).to_bytes(2, "big")
        elif op == 3:
            del out[at:]
        elif op == 4:
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randrange(1, 64)]
        elif op == 6:
            other = rng.choice(pool)
            out[at:] = other[rng.randrange(len(other) + 1):]
        elif op == 7:
            del out[at:at + rng.randrange(1, 32)]
    return bytes(out)


class Bugs:
    def __init__(self, crashes: Path) -> None:
        self.crashes, self.count = crashes, 0

    def record(self, target: str, data: bytes | str, detail: str) -> None:
        self.count += 1
        if self.count <= 20:
            self.crashes.mkdir(parents=True, exist_ok=True)
            body = data.hex() if isinstance(data, bytes) else data
            (self.crashes / f"{target}-{self.count}.txt").write_text(f"{body}\n\n{detail}\n")


def drops(*sides: IkeDispatcher) -> Counter[str]:
    total: Counter[str] = Counter()
    for side in sides:
        for counts in drop_counts(side):
            total.update(counts)
    return total


def sealed_by_peer(rng: random.Random, hq: IkeDispatcher, br: IkeDispatcher) -> bytes | None:
    """The peer gone bad: the payloads of a real encrypted message, mutated as bytes, sealed with the
    IKE SA's own keys, so they pass the ICV and reach the exchange handlers."""
    peers = [s for s in br.sessions.values() if s.crypto is not None and s.established]
    if not peers:
        return None
    peer = rng.choice(peers)
    exchange, payloads = rng.choice(SEALED)
    first, inner = encode_payloads(payloads)
    inner = mutate(rng, inner, [inner]) if rng.random() < 0.9 else inner
    if rng.random() < 0.1:
        first, exchange = rng.randrange(256), rng.choice((exchange, rng.randrange(256)))
    ours = [s for s in hq.sessions.values() if s.spi_i == peer.spi_i]
    response = rng.random() < 0.3
    if not ours or rng.random() < 0.1:
        message_id = rng.choice((0, 1, 2, rng.randrange(1 << 32)))
    elif response:  # the answer to the gateway's outstanding request, if it has one
        message_id = ours[0].requests.outstanding or ours[0].requests.next_id
    else:  # the request the gateway expects next
        message_id = ours[0].responses.expected
    flags = (0x08 if peer.initiator else 0) | (0x20 if response else 0)
    plaintext = inner + b"\x00"  # Pad Length 0
    sk_len = 4 + 8 + len(plaintext) + 16
    aad = (peer.spi_i + peer.spi_r + struct.pack(">BBBBII", PayloadType.SK, 0x20, exchange, flags, message_id,
                                                  28 + sk_len) + struct.pack(">BBH", first, 0, sk_len))
    return aad + peer.crypto.sk_out.seal(aad, plaintext)


def fresh(rng: random.Random) -> tuple[IkeDispatcher, IkeDispatcher, Wire]:
    return staged(rng.choice(STAGES), rng.randrange(1000) if rng.random() < 0.5 else 1)


def fuzz_ike(rng: random.Random, inputs: int, bugs: Bugs) -> None:
    """Mutated IKE messages into both cores; every 500 inputs time moves on (timers, retransmits), and a
    fresh pair starts at another stage of its life every 2,000 inputs, or sooner once the gateway has no
    IKE SA left (half of the pairs have the recorded connection's keys, so its encrypted messages,
    replayed and mutated, open). Prints where the inputs were refused."""
    pool = TRANSCRIPT  # a recorded connection and the strongSwan corpus
    reasons: Counter[str] = Counter()
    done = 0
    while done < inputs:
        hq, br, wire = fresh(rng)
        for n in range(min(2000, inputs - done)):
            done += 1
            sealed = sealed_by_peer(rng, hq, br) if rng.random() < 0.4 else None
            if sealed is not None:
                data, target, source = sealed, hq, BR if rng.random() < 0.9 else ATTACKER
            else:
                data = mutate(rng, rng.choice(pool), pool) if rng.random() < 0.95 else rng.choice(pool)
                if len(data) >= 28 and rng.random() < 0.8:  # a consistent length: parsing goes deeper
                    data = data[:24] + len(data).to_bytes(4, "big") + data[28:]
                target, source = rng.choice((hq, br)), rng.choice((HQ, BR, ATTACKER))
            port = rng.choice((500, 4500))
            try:
                target.receive_datagram(data, (source, port), port, wire.now)
                target.datagrams_to_send(wire.now)
                if n % 500 == 499:
                    wire.advance(rng.choice((0.5, 2.0, 30.0)))
                no_bug(target)
            except Exception:  # noqa: BLE001 - this is what the fuzzer looks for
                bugs.record("ike", data, traceback.format_exc())
                break
            if n % 100 == 99 and not any(s.established for s in hq.sessions.values()):
                break
        reasons += drops(hq, br)
    top = ", ".join(f"{reason} {count:,}" for reason, count in reasons.most_common(12))
    print(f"  IKE drops by reason (top 12 of {len(reasons)}): {top}")


def fuzz_esp(rng: random.Random, inputs: int, bugs: Bugs) -> None:
    """Mutated ESP-in-UDP datagrams (and IKE-marked, keepalives) into an established forwarder."""
    a, b = esp_pair()
    pool = [a.outbound(packet(size))[1] for size in (20, 28, 40, 60, 200, 576, 1400) for _ in range(3)]
    pool += [b"\xff", bytes(4) + TRANSCRIPT[0]]
    peer = ("198.18.1.2", 4500)
    for n in range(inputs):
        data = mutate(rng, rng.choice(pool), pool) if rng.random() < 0.98 else a.outbound(packet(60))[1]
        try:
            b.inbound(data, peer, rng.randrange(256))
            if n % 1000 == 999:
                b.take_events()
        except Exception:  # noqa: BLE001
            bugs.record("esp", data, traceback.format_exc())


def key_files(text: str, directory: Path) -> None:
    """Every key file the config names, made up and private, so the seeds load."""
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() in ("psk_file",) and value.strip():
            path = directory / value.strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(os.urandom(24).hex() + "\n")
            path.chmod(0o600)


def fuzz_config(rng: random.Random, inputs: int, bugs: Bugs) -> None:
    """Mutated YAML: bytes as above, and whole lines removed, repeated, swapped and re-indented."""
    seeds = [(ROOT / "configs" / name).read_text() for name in ("hq.yaml", "branch-1.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for text in seeds:
            key_files(text, directory)
        path = directory / "gateway.yaml"
        for text in seeds:  # the seeds must load, or the fuzzer only tests the first error
            path.write_text(text)
            load_config(path)
        raw = [t.encode() for t in seeds]
        for _ in range(inputs):
            text = rng.choice(seeds)
            if rng.random() < 0.5:
                data = mutate(rng, text.encode(), raw)
            else:
                lines = text.splitlines()
                for _ in range(rng.randint(1, 3)):
                    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                    op = rng.randrange(4)
                    if op == 0:
                        del lines[i]
                    elif op == 1:
                        lines.insert(i, lines[j])
                    elif op == 2:
                        lines[i], lines[j] = lines[j], lines[i]
                    else:
                        lines[i] = " " * rng.randrange(8) + lines[i].lstrip()
                data = "\n".join(lines).encode()
            path.write_bytes(data)
            try:
                load_config(path)
            except ConfigError:
                pass
            except Exception:  # noqa: BLE001
                bugs.record("config", data.decode("utf-8", "replace"), traceback.format_exc())
    shutil.rmtree(directory, ignore_errors=True)


TARGETS: list[tuple[str, float, Callable[[random.Random, int, Bugs], None]]] = [
    ("IKE dispatcher", 0.5, fuzz_ike),
    ("ESP inbound", 0.45, fuzz_esp),
    ("config loader", 0.05, fuzz_config),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="total inputs (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    args = parser.parse_args()
    if args.inputs < 1:
        parser.error("--inputs must be at least 1")
    bugs = Bugs(args.crashes)
    total, start = 0, time.perf_counter()
    print(f"{'target':16} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'bugs':>5}")
    for name, share, run in TARGETS:
        count = max(1, int(args.inputs * share))
        before, t0 = bugs.count, time.perf_counter()
        run(random.Random(f"{args.seed}-{name}"), count, bugs)
        seconds = time.perf_counter() - t0
        total += count
        print(f"{name:16} {count:>10,} {seconds:>8.1f} {count / seconds:>9,.0f} {bugs.count - before:>5}",
              flush=True)
    seconds = time.perf_counter() - start
    print(f"{'total':16} {total:>10,} {seconds:>8.1f} {total / seconds:>9,.0f} {bugs.count:>5}")
    if bugs.count:
        print(f"failing inputs and tracebacks: {args.crashes}/", file=sys.stderr)
    return 1 if bugs.count else 0


if __name__ == "__main__":
    sys.exit(main())
