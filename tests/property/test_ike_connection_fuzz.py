"""Whole-connection fuzzing (issue #13): two IKE cores back to back are driven to a stage of their life
(before IKE_SA_INIT's answer, half-open, established, rekeying, deleting), and random and mutated
datagrams (mutations of the real exchanges recorded in the same run and of strongSwan's: bit flips, cuts, splices, changed
SPIs, message IDs, flags and exchange types, replays from other addresses) are pushed into either side
between the real ones. The only outcomes allowed: an answer or a counted drop. Never an exception out of
the dispatcher, never a bug counted as `internal`, never a state that is not established without a
deadline; and when the attacker stops, the real peers still get (or keep) a working tunnel."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tunnel.ike.sa
from tests.unit.test_ike_message import payloads as any_payload
from tests.unit.test_ike_session import BR, HQ, Wire, events, pair
from tunnel.ike.constants import ExchangeType, Flag, ProtocolId
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import ChildSaEstablished
from tunnel.ike.message import DeletePayload, IkeHeader, encode_sk_message, parse_header
from tunnel.ike.sa import IkeState

ATTACKERS = [HQ, BR, "203.0.113.66"]


SEALED: list[tuple[int, tuple]] = []  # (exchange type, payloads) of every encrypted message recorded


def recorded() -> list[bytes]:
    """Every datagram of a full life: set-up, Child rekeys from both sides, an IKE rekey, DPD, delete;
    the payloads inside the encrypted ones are kept in SEALED, for a peer that knows the keys."""
    def keep(header: IkeHeader, payloads: tuple, seal: object) -> bytes:
        SEALED.append((int(header.exchange), tuple(payloads)))
        return encode_sk_message(header, payloads, seal)

    with mock.patch.object(tunnel.ike.sa, "encode_sk_message", keep):
        return _recorded()


def _recorded() -> list[bytes]:
    hq, br, wire = pair({"dpd_delay": 5.0}, {"dpd_delay": 5.0})
    hq.initiate("branch1", wire.now)
    wire.pump()
    hq.rekey_child("branch1", wire.now)
    br.rekey_child("hq", wire.now)
    wire.pump()
    br.rekey_ike("hq", wire.now)
    wire.pump()
    wire.advance(6.0)
    hq.delete_all(wire.now)
    wire.pump()
    return [data for _, _, data in wire.log]


def strongswan() -> list[bytes]:
    """What strongSwan 5.9 and sitelink sent each other in the lab (bench/capture_ike_corpus.py)."""
    lines = (Path(__file__).resolve().parents[1] / "data" / "strongswan-ike.hex").read_text().splitlines()
    return [bytes.fromhex(line.split()[1]) for line in lines if line and not line.startswith("#")]


TRANSCRIPT = recorded() + strongswan()


def mutate(data: bytes, op: int, at: int, value: int, other: bytes) -> bytes:
    at %= max(len(data), 1)
    if op == 0:  # flip bits
        return data[:at] + bytes([data[at] ^ (value or 1)]) + data[at + 1:] if data else data
    if op == 1:  # cut
        return data[:at]
    if op == 2:  # splice another message's tail
        return data[:at] + other[at % max(len(other), 1):]
    if op == 3:  # another exchange type, flags or message ID in an honest header
        field = (18, 19, 20, 21, 22, 23)[value % 6]
        return data[:field] + bytes([value & 0xFF]) + data[field + 1:] if len(data) > field else data
    if op == 4:  # swap the SPIs
        return data[8:16] + data[:8] + data[16:]
    if op == 5:  # zero the responder SPI (an IKE_SA_INIT lookalike)
        return data[:8] + bytes(8) + data[16:]
    return bytes(value % 256 for _ in range(at % 64))  # short garbage


class Attacker:
    """Where the gateways' answers to the third-party address go: nowhere (the attacker has them)."""

    def receive_datagram(self, *args: object) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list:
        return []


def attacked_pair(seed: int = 1) -> tuple[IkeDispatcher, IkeDispatcher, Wire]:
    hq, br, wire = pair(seed=seed)
    wire.sides[ATTACKERS[2]] = Attacker()  # type: ignore[assignment]
    return hq, br, wire


STAGES = ["init-sent", "half-open", "established", "rekeying", "deleting"]


def staged(stage: str, seed: int) -> tuple[IkeDispatcher, IkeDispatcher, Wire]:
    hq, br, wire = attacked_pair(seed)
    hq.initiate("branch1", wire.now)
    if stage == "init-sent":
        hq.datagrams_to_send(0)  # its IKE_SA_INIT is "in flight"
        return hq, br, wire
    if stage == "half-open":
        wire.lose = lambda sender, data: sender == HQ and parse_header(data).exchange == 35  # IKE_AUTH lost
        wire.pump()
        wire.lose = lambda sender, data: False
        return hq, br, wire
    wire.pump()
    if stage == "rekeying":
        hq.rekey_child("branch1", wire.now)
        hq.datagrams_to_send(0)
    elif stage == "deleting":
        hq.delete_all(wire.now)
        hq.datagrams_to_send(0)
    return hq, br, wire


def drop_counts(d: IkeDispatcher) -> list[dict[str, int]]:
    """The dispatcher's own drops and each tunnel's, by reason."""
    return [d.drops.by_reason(), *(t.by_reason() for t in d.tunnel_drops.values())]


def no_bug(d: IkeDispatcher) -> None:
    counts = drop_counts(d)
    assert not any("internal" in c for c in counts), counts
    for session in d.sessions.values():
        if session.state not in (IkeState.ESTABLISHED, IkeState.CLOSED):
            assert session.state_deadline is not None, session.state


attack = st.lists(st.tuples(st.integers(0, len(TRANSCRIPT) - 1), st.integers(0, 7), st.integers(0, 2000),
                            st.integers(0, 255), st.integers(0, len(TRANSCRIPT) - 1), st.sampled_from(ATTACKERS),
                            st.booleans(), st.sampled_from([500, 4500])), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=st.sampled_from(STAGES), seed=st.integers(0, 3), datagrams=attack)
def test_any_datagram_at_any_stage_is_an_answer_or_a_counted_drop(stage: str, seed: int, datagrams: list) -> None:
    hq, br, wire = staged(stage, seed)
    for index, op, at, value, other, source, to_hq, port in datagrams:
        target = hq if to_hq else br
        data = mutate(TRANSCRIPT[index], op, at, value, TRANSCRIPT[other]) if op < 7 else TRANSCRIPT[index]
        target.receive_datagram(data, (source, port), port, wire.now)
        target.datagrams_to_send(wire.now)  # the answers go nowhere (the attacker has them)
        no_bug(target)
    for _ in range(3):
        wire.advance(1.0)
        no_bug(hq)
        no_bug(br)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=attack)
def test_the_real_peers_still_get_a_tunnel_after_the_attack(datagrams: list) -> None:
    """Garbage from third parties (never from the peers' own addresses) before and during the set-up
    cannot stop the tunnel from coming up."""
    hq, br, wire = attacked_pair()
    for index, op, at, value, other, _, to_hq, port in datagrams:
        data = mutate(TRANSCRIPT[index], op, at, value, TRANSCRIPT[other]) if op < 7 else TRANSCRIPT[index]
        (hq if to_hq else br).receive_datagram(data, ("203.0.113.66", port), port, wire.now)
    hq.datagrams_to_send(0)
    br.datagrams_to_send(0)
    hq.initiate("branch1", wire.now)
    wire.pump()
    for _ in range(5):
        if any(isinstance(e, ChildSaEstablished) for e in events(hq)):
            break
        wire.advance(1.0)
    else:
        raise AssertionError("no Child SA after the attack")
    no_bug(hq)
    no_bug(br)


# An authenticated peer gone bad: it holds the IKE SA's keys, so its messages decrypt and reach every
# exchange handler. It sends the payloads of real messages (so SPIs, notify types and nonces are the
# ones the handlers look for) with payloads added, removed, replaced, repeated and reordered, and Deletes
# naming the Child SAs that really exist, as requests and as answers to the gateway's own requests.
EDIT = st.tuples(st.integers(0, 4), st.integers(0, 15), any_payload)
SENDS = st.lists(st.tuples(st.integers(0, len(SEALED) - 1), st.lists(EDIT, max_size=4), st.booleans(),
                           st.sampled_from([ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA,
                                            ExchangeType.INFORMATIONAL, None]), st.integers(0, 7)),
                 min_size=1, max_size=12)


def edited(payloads: tuple, edits: list, child_spis: list[int]) -> tuple:
    out = list(payloads)
    for op, at, payload in edits:
        at = at % (len(out) + 1)
        if op == 0:
            out.insert(at, payload)
        elif op == 1 and out:
            del out[at % len(out)]
        elif op == 2 and out:
            out[at % len(out)] = payload
        elif op == 3 and out:
            out.insert(at, out[at % len(out)])
        elif op == 4:
            spis = tuple(spi.to_bytes(4, "big") for spi in child_spis[: at % 3 + 1])
            out.insert(at, DeletePayload(ProtocolId.ESP, spis) if at % 4 else DeletePayload(ProtocolId.IKE, ()))
    return tuple(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sends=SENDS)
def test_an_authenticated_peer_sending_anything_gets_answers_or_counted_drops(sends: list) -> None:
    hq, br, wire = attacked_pair()
    hq.initiate("branch1", wire.now)
    wire.pump()
    gateway = next(iter(hq.sessions.values()))
    peer = next(iter(br.sessions.values()))
    assert gateway.established and peer.established
    for index, edits, as_response, exchange, trigger in sends:
        original_exchange, payloads = SEALED[index]
        spis = [c.spi_in for c in gateway.children] + [c.spi_out for c in gateway.children]
        body = edited(payloads, edits, spis)
        exchange = original_exchange if exchange is None else exchange
        if as_response:  # have the gateway ask something, and answer it with this
            (gateway.rekey_child, gateway.rekey_ike)[trigger % 2](wire.now)
            hq.datagrams_to_send(wire.now)
            if gateway.requests.outstanding is None:
                continue
            message_id, flags = gateway.requests.outstanding, Flag.RESPONSE
        else:
            message_id, flags = peer.requests.next_id, 0
            peer.requests.next_id += 1
        header = IkeHeader(peer.spi_i, peer.spi_r, exchange, flags, message_id)
        data = encode_sk_message(header, body, peer.crypto.sk_out.seal)
        hq.receive_datagram(data, (BR, 500), 500, wire.now)
        hq.datagrams_to_send(wire.now)
        no_bug(hq)
        wire.advance(0.5)
    for _ in range(60):  # every state the peer left the gateway in ends by its deadline
        wire.advance(1.0)
        no_bug(hq)
