"""IKE against a hostile network and a hostile peer (issue #13), back to back with the Wire harness:
every case is a message an attacker can send, and what it may and may not achieve."""

from __future__ import annotations

import pytest

from tests.unit.test_ike_lifecycle import consistent, only, up
from tests.unit.test_ike_session import BR, HQ, Wire, config, events, pair, rng
from tunnel.ike import dispatcher as dispatcher_module
from tunnel.ike.constants import ExchangeType, IdType, NotifyType, PayloadType
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from tunnel.ike.message import IkeHeader, NotifyPayload, encode_message, parse_header, parse_message, parse_payloads
from tunnel.ike.payloads import MAX_SELECTORS, TooManySelectors
from tunnel.ike.sa import IkeState
from tunnel.ike.tasks.ike_auth import show_id

ATTACKER = ("203.0.113.66", 500)


def test_plaintext_request_before_keys_changes_nothing() -> None:
    """While we wait for the IKE_SA_INIT response, a plaintext INFORMATIONAL request with our SPI from
    anywhere is not processed: our IKE_AUTH still goes to the peer, not to the sender (issue #13 item 3)."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    spi_i = parse_header(hq.datagrams_to_send(0)[0][0]).spi_i
    forged = encode_message(IkeHeader(spi_i, b"\x09" * 8, ExchangeType.INFORMATIONAL, 0, 0), [])
    hq.receive_datagram(forged, ATTACKER, 500, wire.now)
    session = only(hq)
    assert session.remote == (BR, 500) and session.state is IkeState.INIT_SENT
    assert session.drops.by_reason() == {"no_keys": 1} and hq.datagrams_to_send(0) == []
    wire.advance(1.0)  # the retransmitted IKE_SA_INIT reaches the real peer
    assert any(isinstance(e, IkeSaEstablished) for e in events(hq))
    assert only(hq).remote == (BR, 4500)


def test_only_the_same_request_gets_the_cached_response() -> None:
    """A 28-byte header with an established SA's SPIs and last message ID, from anyone, used to make us
    send the cached response again (up to kilobytes): now only the same request does (item 6)."""
    hq, br, wire, _, _ = up()
    session = only(br)
    last = session.responses.last_id
    header = encode_message(IkeHeader(session.spi_i, session.spi_r, ExchangeType.IKE_AUTH, 0x08, last), [])
    br.receive_datagram(header, ATTACKER, 4500, wire.now)
    assert br.datagrams_to_send(0) == [] and session.drops.by_reason() == {"invalid_message_id": 1}
    auth = [d for s, _, d in wire.log if s == HQ and parse_header(d).exchange == ExchangeType.IKE_AUTH][0]
    br.receive_datagram(auth, (HQ, 4500), 4500, wire.now)  # the real retransmission
    assert len(br.datagrams_to_send(0)) == 1


def test_own_ike_sa_init_replayed_at_us_is_a_counted_drop() -> None:
    """Our IKE_SA_INIT request sent back to us (item 5) ends as a counted drop, not an exception."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    request = hq.datagrams_to_send(0)[0][0]
    hq.receive_datagram(request, (BR, 500), 500, wire.now)
    assert hq.drops.by_reason() == {"unexpected_ike_sa_init": 1} and hq.datagrams_to_send(0) == []
    assert only(hq).state is IkeState.INIT_SENT


def test_a_peer_cannot_take_another_sa_s_place_by_its_spi() -> None:
    """The dispatcher finds an IKE SA by the SPI we chose; a peer that rekeys the IKE SA choosing, as its
    own new SPI, the initiator SPI of an SA we hold (visible on the wire) replaces nothing (item 9)."""
    hq, br, wire, _, _ = up()
    existing = only(hq)
    theirs = only(br)
    real = theirs.random
    theirs.random = lambda n: existing.spi_i if n == 8 else real(n)  # the rekey's new SPI: a copy of ours
    br.rekey_ike("hq", wire.now)
    wire.pump()
    assert [type(e) for e in events(hq)] == [IkeSaRekeyed] and [type(e) for e in events(br)] == [IkeSaRekeyed]
    new = only(hq)
    assert new is not existing and new.spi_i == existing.spi_i and new.local_spi == new.spi_r != existing.spi_i
    consistent(hq, br)


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_esp_spi_below_256_is_refused_and_counted(who: str) -> None:
    """A Child SA whose peer SPI is 0-255 (reserved, RFC 4303 §2.1) never reaches the data plane, where
    it would have crashed a worker (item 8): the Child SA is refused and counted, the IKE SA stands."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    if who == "initiator":  # hq offers SPI 5 in IKE_AUTH; br refuses it
        mallory, victim, tunnel = hq, br, "hq"
    else:  # br answers IKE_AUTH with SPI 5; hq refuses it
        wire.pump(1)
        mallory, victim, tunnel = br, hq, "branch1"
    only(mallory).new_child_spi = lambda worker=0: 5  # type: ignore[method-assign]
    wire.pump()
    e_victim = events(victim)
    assert any(isinstance(e, IkeSaEstablished) for e in e_victim)
    assert not any(isinstance(e, ChildSaEstablished) for e in e_victim)
    assert any(isinstance(e, ChildSaFailed) for e in e_victim)
    assert victim.drops_for(tunnel).by_reason() == {"bad_proposal_spi": 1}


def test_half_open_table_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher_module, "MAX_HALF_OPEN", 10)
    hq, br, wire = pair()
    br.cookie_threshold = 10**6  # no cookies: fill the table from the peer's address
    spis = []
    for _ in range(25):
        hq.sessions.clear()
        session = hq.initiate("branch1", wire.now)
        spis.append(session.spi_i)
        br.receive_datagram(hq.datagrams_to_send(0)[0][0], (HQ, 500), 500, wire.now)
        br.datagrams_to_send(0)
    assert br.half_open == 10 and len(br.sessions) == 10
    assert {s.spi_i for s in br.sessions.values()} == set(spis[-10:])
    assert br.drops_for("hq").by_reason() == {"half_open_evicted": 15}
    assert [type(e) for e in events(br)] == [IkeSaFailed] * 15


def test_cookie_secret_rotates_and_old_cookies_expire() -> None:
    hq, br, wire = pair()
    br.cookie_threshold = 0
    hq.initiate("branch1", wire.now)
    request = hq.datagrams_to_send(0)[0][0]
    br.receive_datagram(request, (HQ, 500), 500, wire.now)
    cookie = parse_message(br.datagrams_to_send(0)[0][0]).notify(NotifyType.COOKIE)
    assert cookie is not None and br.get_timer() == dispatcher_module.COOKIE_ROTATION
    hq.receive_datagram(encode_message(IkeHeader(parse_header(request).spi_i, bytes(8), ExchangeType.IKE_SA_INIT,
                                                 0x20, 0), [cookie]), (BR, 500), 500, wire.now)
    with_cookie = hq.datagrams_to_send(0)[0][0]
    br.handle_timer(2 * dispatcher_module.COOKIE_ROTATION)
    br.handle_timer(3 * dispatcher_module.COOKIE_ROTATION)  # two rotations: the cookie's secret is gone
    br.receive_datagram(with_cookie, (HQ, 500), 500, 3 * dispatcher_module.COOKIE_ROTATION)
    assert not br.sessions and br.drops.by_reason() == {"cookie_required": 1, "bad_cookie": 1}


def test_an_oversized_cookie_is_not_echoed() -> None:
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    spi_i = parse_header(hq.datagrams_to_send(0)[0][0]).spi_i
    huge = NotifyPayload(NotifyType.COOKIE, data=bytes(65))
    hq.receive_datagram(encode_message(IkeHeader(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0x20, 0), [huge]),
                        (BR, 500), 500, wire.now)
    assert hq.datagrams_to_send(0) == [] and not hq.sessions
    failed = [e for e in events(hq) if isinstance(e, IkeSaFailed)]
    assert len(failed) == 1 and "COOKIE of 65 bytes" in failed[0].reason


def test_identities_are_checked_and_never_logged_raw() -> None:
    assert show_id(IdType.ID_FQDN, b"gw.evil\nFAKE LOG LINE") == "gw.evil\\x0aFAKE\\x20LOG\\x20LINE"
    assert show_id(IdType.ID_IPV4_ADDR, bytes([198, 18, 2, 2])) == "198.18.2.2"
    assert show_id(IdType.ID_KEY_ID, b"\x00" * 300) == f"<id type {IdType.ID_KEY_ID}, 300 bytes>"
    hq, _, _ = pair()
    liar = IkeDispatcher([(config("hq", "10.2.0.0/24", "10.1.0.0/24", b"br\n2026-12-04 INFO forged", b"hq.test"),
                           HQ)], rng(101))
    wire = Wire(hq, liar)
    hq.initiate("branch1", wire.now)
    wire.pump()
    failed = [e for e in events(hq) if isinstance(e, IkeSaFailed)]
    assert len(failed) == 1 and "\n" not in failed[0].reason and "forged" not in failed[0].reason
    assert hq.drops_for("branch1").by_reason() == {"bad_identity": 1}


def test_a_forged_plaintext_notify_during_ike_auth_is_a_counted_drop() -> None:
    """Once keys exist, plaintext (an SK-less message) of any exchange is not ours to act on."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    wire.pump(1)
    session = only(hq)
    assert session.state is IkeState.AUTH_SENT
    forged = encode_message(IkeHeader(session.spi_i, session.spi_r, ExchangeType.IKE_AUTH, 0x20, 1),
                            [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
    hq.receive_datagram(forged, ATTACKER, 4500, wire.now)
    assert session.state is IkeState.AUTH_SENT and session.drops.by_reason() == {"malformed": 1}
    wire.pump()
    assert any(isinstance(e, IkeSaEstablished) for e in events(hq))


def test_too_many_traffic_selectors_do_not_parse() -> None:
    selector = bytes([7, 0, 0, 16, 0, 0, 255, 255]) + bytes(8)  # one IPv4 range
    body = bytes([MAX_SELECTORS + 1, 0, 0, 0]) + selector * (MAX_SELECTORS + 1)
    with pytest.raises(TooManySelectors):
        parse_payloads(PayloadType.TSi, bytes([0, 0]) + (4 + len(body)).to_bytes(2, "big") + body)
    fine = bytes([MAX_SELECTORS, 0, 0, 0]) + selector * MAX_SELECTORS
    assert len(parse_payloads(PayloadType.TSi, bytes([0, 0]) + (4 + len(fine)).to_bytes(2, "big") + fine)) == 1


@pytest.mark.parametrize("seed", range(12))
def test_simultaneous_start_converges_on_one_ike_sa(seed: int) -> None:
    """Both gateways start at the same instant and both initiate with INITIAL_CONTACT (issue #13 item 16).
    Each used to close the IKE SA it initiated on the other's INITIAL_CONTACT, leaving the two sides with
    different Child SAs. Now both keep the SA with the lower initiator SPI; the other is deleted by its
    initiator with a Delete."""
    hq, br, wire = pair(seed=seed)
    hq.initiate("branch1", wire.now)
    br.initiate("hq", wire.now)
    wire.pump()
    for _ in range(3):
        wire.advance(1.0)
    consistent(hq, br)  # one IKE SA each, the same SPIs, the same single Child SA pair
    keep = only(hq)
    assert keep.established and not any(isinstance(e, IkeSaFailed) for e in events(hq) + events(br))
