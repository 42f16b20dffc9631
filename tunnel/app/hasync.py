"""gateway.ha.sync: the active gateway of a pair streams its SA state to the standby, which takes over
with the same SAs, as strongSwan's ha plugin does (README "High availability"). The peers see no new
IKE SA, and the outage is keepalived's detection plus a few milliseconds.

What goes over the wire, every SYNC_INTERVAL: a full snapshot (tunnel/ike/handover.py) of each tunnel
whose IKE SAs changed (new SAs, message IDs, keys), every tunnel's again each REFRESH_INTERVAL or when a
(re)started standby asks for it, and the sequence numbers of the SAs that carry traffic. On takeover
the standby's outbound sequence numbers start ESP_SEQ_JUMP past the last it heard of and its replay
windows count everything up to the last heard sequence number as seen.

The channel (SyncChannel): UDP between the two gateways' own addresses; each datagram is sealed with
AES-256-GCM under a key derived (HKDF-SHA256) from the shared key file and a random 16-byte id of the
sending process, with a counter as the nonce: never a nonce twice under one key, and a receiver takes
only counters above the last it took from that sender, and senders whose messages are fresh (wall clock
within MAX_AGE): replayed or forged datagrams are counted and dropped. The state lives in memory only.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tunnel.dataplane.forwarder import Forwarder
from tunnel.ike.handover import BadSnapshot, restore, snapshot
from tunnel.secret import Secret

log = logging.getLogger("sitelink.ha")

SYNC_INTERVAL = 0.1  # seconds between sync datagrams while active
REFRESH_INTERVAL = 2.0  # every tunnel's full snapshot again this often (a lost datagram is repaired)
ESP_SEQ_JUMP = 1 << 22  # outbound ESP sequence numbers the old active may have used since it last told us
MAX_AGE = 30.0  # seconds: a sync datagram older (or newer) than this by the wall clock is refused
MAX_DATAGRAM = 60_000
MAGIC = b"SLHA"
HEADER = struct.Struct("!4s16sQ")  # magic, sender id, counter (the nonce)
OVERHEAD = HEADER.size + 16


class SyncChannel:
    """Seals and opens sync datagrams (see the module docstring). Pure: no socket, the clock injected."""

    def __init__(self, key: Secret, random_bytes: Callable[[int], bytes] = os.urandom,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._master = key.reveal()
        self._id = random_bytes(16)
        self._aead = self._derive(self._id)
        self._counter = 0
        self._peers: dict[bytes, tuple[AESGCM, int]] = {}  # sender id -> (its key, last counter taken)
        self._clock = wall_clock
        self.dropped: dict[str, int] = {}

    def _derive(self, sender: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=sender, info=b"sitelink ha sync v1")
        return AESGCM(hkdf.derive(self._master))

    def seal(self, message: dict[str, Any]) -> bytes:
        self._counter += 1
        header = HEADER.pack(MAGIC, self._id, self._counter)
        body = json.dumps({"time": self._clock(), **message}, separators=(",", ":")).encode()
        return header + self._aead.encrypt(self._counter.to_bytes(12, "big"), body, header)

    def open(self, data: bytes) -> dict[str, Any] | None:
        """The message, or None (counted in `dropped` by reason)."""
        if len(data) < OVERHEAD or data[:4] != MAGIC:
            self._drop("malformed")
            return None
        _, sender, counter = HEADER.unpack_from(data)
        if sender == self._id:
            self._drop("own")
            return None  # our own datagram back (a misconfigured peer address)
        aead, last = self._peers.get(sender, (None, 0))
        if counter <= last:
            self._drop("replay")
            return None
        try:
            body = (aead or self._derive(sender)).decrypt(counter.to_bytes(12, "big"), data[HEADER.size:],
                                                          data[:HEADER.size])
            message = json.loads(body)
        except (InvalidTag, ValueError):
            self._drop("auth_failed")
            return None
        sent = message.get("time") if isinstance(message, dict) else None
        if not isinstance(sent, (int, float)) or abs(self._clock() - sent) > MAX_AGE:
            self._drop("stale")
            return None
        if len(self._peers) > 8 and sender not in self._peers:
            self._peers.clear()  # a peer restarted many times: only the live one matters
        self._peers[sender] = (aead or self._derive(sender), counter)
        return message

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class StateSync:
    """Both sides of the state sync for one gateway's keying: what the active sends (outgoing) and what
    the standby keeps and adopts on takeover (receive, adopt)."""

    def __init__(self, keying: Any, forwarder: Forwarder) -> None:
        """keying: the gateway's Keying (app/keying.py, which makes this object: typed loosely to keep
        the import one way)."""
        self.keying, self.forwarder = keying, forwarder
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # inbound SPI -> (inbound key, outbound key)
        self.held: dict[str, list[dict[str, Any]]] = {}  # the standby's copy: tunnel -> IKE SA snapshots
        self._sent: dict[str, Any] = {}  # tunnel -> fingerprint of what was last sent
        self._refresh_at = 0.0
        self.adopted = 0
        self.wanted: set[str] = set()  # the standby's: tunnels it heard positions of but holds no snapshot of

    # -- the active's side ------------------------------------------------------------------------------
    def outgoing(self, now: float) -> list[dict[str, Any]]:
        """The messages to send now (several when they would not fit one datagram)."""
        refresh = now >= self._refresh_at
        if refresh:
            self._refresh_at = now + REFRESH_INTERVAL
        snaps: dict[str, list[dict[str, Any]]] = {}
        positions: dict[str, dict[str, Any]] = {}
        for name, runtime in self.keying.tunnels.items():
            sessions = [s for s in self.keying.dispatcher.sessions_for(name) if s.established]
            # what a snapshot would change on: compared before one is made (keys hexed only when sent)
            mark = [(s.spi_i, s.spi_r, s.requests.next_id, s.responses.expected, s.crypto.sk_out.next_iv,
                     [c.spi_in for c in s.children if c.active]) for s in sessions if s.crypto is not None]
            if refresh or self._sent.get(name) != mark:
                snaps[name] = [snap for s in sessions if (snap := snapshot(s, now, self.keys.get)) is not None]
                self._sent[name] = mark
            pos = self._positions(runtime)
            if pos:
                positions[name] = pos
        messages: list[dict[str, Any]] = []
        current: dict[str, Any] = {"snaps": {}, "pos": {}}
        size = 0
        for kind, items in (("snaps", snaps), ("pos", positions)):
            for name, value in items.items():
                cost = len(json.dumps(value)) + len(name) + 8
                if size + cost > MAX_DATAGRAM - 200 and size:
                    messages.append(current)
                    current, size = {"snaps": {}, "pos": {}}, 0
                current[kind][name] = value
                size += cost
        if size:
            messages.append(current)
        return messages

    def _positions(self, runtime: Any) -> dict[str, Any]:
        out = self.forwarder.outbound_sa(runtime.config.name)
        pos: dict[str, Any] = {}
        if out is not None and out.seq:
            pos["out"] = [out.spi, out.seq]
        highest = {}
        for spi in runtime.inbound_spis:
            sa = self.forwarder.inbound_sa(spi)
            if sa is not None and sa.window.highest:
                highest[str(spi)] = sa.window.highest
        if highest:
            pos["in"] = highest
        return pos

    def on_request(self, message: dict[str, Any]) -> None:
        """The standby asks for the snapshots it lacks (it just started): they go in the next datagram."""
        wanted = message.get("want")
        if isinstance(wanted, list):
            for name in wanted:
                if isinstance(name, str):
                    self._sent.pop(name, None)

    # -- the standby's side -----------------------------------------------------------------------------
    def requests(self) -> list[dict[str, Any]]:
        """What the standby asks of the active now: the snapshots of tunnels it holds none of."""
        if not self.wanted:
            return []
        wanted, self.wanted = sorted(self.wanted), set()
        return [{"want": wanted}]

    def receive(self, message: dict[str, Any]) -> None:
        snaps, positions = message.get("snaps", {}), message.get("pos", {})
        if not isinstance(snaps, dict) or not isinstance(positions, dict):
            return
        for name, taken in snaps.items():
            if name in self.keying.tunnels and isinstance(taken, list):
                self.held[name] = [t for t in taken if isinstance(t, dict)]
        for name, pos in positions.items():
            if not isinstance(pos, dict):
                continue
            if name in self.keying.tunnels and name not in self.held:
                self.wanted.add(name)
            out, inbound = pos.get("out"), pos.get("in")
            for snap in self.held.get(name, []):
                children = snap.get("children")
                for child in children if isinstance(children, list) else ():
                    if not isinstance(child, dict):
                        continue
                    if isinstance(out, list) and len(out) == 2 and out[0] == child.get("out") \
                            and isinstance(out[1], int):
                        child["seq"] = out[1]
                    highest = inbound.get(str(child.get("in"))) if isinstance(inbound, dict) else None
                    if isinstance(highest, int):
                        child["highest"] = highest

    def adopt(self, now: float) -> set[str]:
        """Take over every held IKE SA with its Child SAs (the peers keep theirs: no new IKE SA); the
        tunnels adopted."""
        adopted: set[str] = set()
        configs = {config.tunnel: config for config, _ in self.keying.dispatcher.configs()}
        for name, taken in self.held.items():
            runtime, config = self.keying.tunnels.get(name), configs.get(name)
            if runtime is None or config is None:
                continue
            for snap in taken:
                try:
                    session, children = restore(config, snap, self.keying.random_bytes, now,
                                                self.keying.dispatcher.drops_for(name))
                except BadSnapshot as exc:
                    log.warning("tunnel %s: a synced IKE SA cannot be taken over: %s", name, exc)
                    continue
                if not self.keying.dispatcher.adopt(session, now):
                    continue
                by_spi = {c.get("in"): c for c in snap.get("children", []) if isinstance(c, dict)}
                for child, key_in, key_out in children:
                    info = by_spi.get(child.spi_in, {})
                    seq, highest = info.get("seq", 0), info.get("highest", 0)
                    try:
                        self.keying.adopt_child(runtime, session.remote, child.spi_in, child.spi_out, key_in, key_out,
                                                (seq if isinstance(seq, int) else 0) + ESP_SEQ_JUMP,
                                                highest if isinstance(highest, int) else 0)
                    except ValueError as exc:  # an SPI in use here, a key the data plane refuses
                        log.warning("tunnel %s: a synced Child SA cannot be taken over: %s", name, exc)
                        continue
                    self.keys[child.spi_in] = (key_in, key_out)
                adopted.add(name)
                log.info("tunnel %s: took over IKE SA %s_i %s_r with %d Child SA(s) from the other gateway",
                         name, session.spi_i.hex(), session.spi_r.hex(), len(children))
        self.adopted += len(adopted)
        self.held.clear()
        return adopted
