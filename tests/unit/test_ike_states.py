"""The IKE and Child SA state machines: one transition table each that refuses anything not in it, a
deadline on every IKE state that is not established, and a bug in one SA that fails that SA only.
Back to back with the Wire harness (hand-driven clock, no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from tests.unit.test_ike_lifecycle import only, up
from tests.unit.test_ike_session import BR, HQ, events, pair
from tunnel.ike import session as engine
from tunnel.ike.child import TRANSITIONS as CHILD_TRANSITIONS
from tunnel.ike.child import ChildSa, ChildState, IllegalTransition
from tunnel.ike.constants import ExchangeType
from tunnel.ike.events import IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from tunnel.ike.message import IkeHeader, encode_message, parse_header
from tunnel.ike.proposal import EspSuite
from tunnel.ike.sa import TRANSITIONS, IkeSa, IkeState, state_timeout
from tunnel.ike.tasks import ike_auth

SPAN = 15.0  # the harness's Backoff(1, 2, 4): 1 + 2 + 4 + 8 s of retransmissions


def test_every_state_not_established_has_a_deadline() -> None:
    assert set(TRANSITIONS) == set(IkeState) and set(CHILD_TRANSITIONS) == set(ChildState)
    for state in IkeState:
        timeout = state_timeout(state, SPAN)
        if state in (IkeState.ESTABLISHED, IkeState.CLOSED):
            assert timeout is None
        else:
            assert timeout is not None and timeout > 0, state
            if state not in (IkeState.IDLE, IkeState.INIT_DONE):  # after the request's own retransmissions
                assert timeout > SPAN, state


@pytest.mark.parametrize("old,new", list(itertools.product(IkeState, IkeState)))
def test_ike_transition_table_is_the_only_way(old: IkeState, new: IkeState) -> None:
    hq, _, _ = pair()
    sa = IkeSa(hq._configs["branch1"][0], True, (BR, 500), lambda n: bytes(n))
    sa.state = old
    if new in TRANSITIONS[old]:
        sa.enter(new, 100.0)
        timeout = state_timeout(new, sa.config.backoff.span)
        assert sa.state is new and sa.state_deadline == (None if timeout is None else 100.0 + timeout)
    else:
        with pytest.raises(IllegalTransition):
            sa.enter(new, 100.0)
        assert sa.state is old


@pytest.mark.parametrize("old,new", list(itertools.product(ChildState, ChildState)))
def test_child_transition_table_is_the_only_way(old: ChildState, new: ChildState) -> None:
    child = ChildSa(0x1234, 0x5678, EspSuite(), (), (), state=old)
    if new in CHILD_TRANSITIONS[old]:
        child.enter(new)
        assert child.state is new
    else:
        with pytest.raises(IllegalTransition):
            child.enter(new)
        assert child.state is old


def test_a_broken_ike_sa_init_keeps_no_state() -> None:
    """An IKE_SA_INIT from the peer's address with a valid header and a broken payload chain: counted,
    no responder SA kept (it used to stay IDLE for ever and stop the tunnel from coming up, issue #13),
    and the real IKE_SA_INIT right after it sets the tunnel up."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    good = hq.datagrams_to_send(0)[0][0]
    broken = bytearray(good)
    broken[30:32] = b"\xff\xff"  # a valid header; the first payload claims more bytes than there are
    for _ in range(50):
        br.receive_datagram(bytes(broken), (HQ, 500), 500, wire.now)
    assert not br.sessions and br.half_open == 0 and br.get_timer() is None or br.get_timer() > 100
    assert br.drops_for("hq").by_reason() == {"malformed": 50} and br.datagrams_to_send(0) == []
    br.receive_datagram(good, (HQ, 500), 500, wire.now)
    wire.pump()
    assert any(isinstance(e, IkeSaEstablished) for e in events(br))


def test_replaced_ike_sa_closes_when_the_peer_never_deletes_it() -> None:
    """The rekey responder keeps the old IKE SA (REKEYED) until the initiator's Delete; if that never
    comes, the old SA goes quietly at its deadline and the new one carries on."""
    hq, br, wire, _, _ = up()
    wire.lose = lambda sender, data: sender == BR and parse_header(data).exchange == ExchangeType.INFORMATIONAL
    br.rekey_ike("hq", wire.now)
    wire.pump()
    assert [type(e) for e in events(hq)] == [IkeSaRekeyed]
    old = [s for s in hq.sessions.values() if s.state is IkeState.REKEYED]
    assert len(old) == 1 and len(hq.sessions) == 2
    for _ in range(int(SPAN) + 2):
        wire.advance(1.0)
    assert list(hq.sessions.values()) == [s for s in hq.sessions.values() if s.state is IkeState.ESTABLISHED]
    assert len(hq.sessions) == 1 and events(hq) == []  # quiet: the tunnel never went down


def test_response_of_another_exchange_does_not_answer_our_request() -> None:
    """While we wait for the IKE_SA_INIT response, a plaintext INFORMATIONAL 'response' with message ID
    0 and our SPI (from anyone) is dropped: our request stays outstanding and is retransmitted."""
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    request = hq.datagrams_to_send(0)[0][0]
    spi_i = parse_header(request).spi_i
    forged = encode_message(IkeHeader(spi_i, bytes(8), ExchangeType.INFORMATIONAL, 0x20, 0), [])
    hq.receive_datagram(forged, ("203.0.113.9", 500), 500, wire.now)
    session = only(hq)
    assert session.state is IkeState.INIT_SENT and session.requests.busy
    assert session.drops.by_reason() == {"unexpected_response": 1}
    wire.advance(1.0)  # the retransmission reaches br, and the handshake completes
    assert parse_header(wire.log[0][2]).exchange == ExchangeType.IKE_SA_INIT
    assert any(isinstance(e, IkeSaEstablished) for e in events(hq))


def test_a_bug_in_one_sa_fails_that_sa_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An illegal state change (a bug) while processing a message fails that IKE SA with a counted
    'internal' drop; the dispatcher and the tunnel carry on (it is set up again afterwards)."""
    hq, br, wire = pair()

    def buggy(sa: IkeSa, data: bytes, message: object, now: float) -> None:
        sa.enter(IkeState.REKEYED, now)  # IKE_AUTH never moves INIT_DONE to REKEYED

    monkeypatch.setitem(engine._REQUEST_HANDLERS, ExchangeType.IKE_AUTH, buggy)
    hq.initiate("branch1", wire.now)
    wire.pump()
    failed = [e for e in events(br) if isinstance(e, IkeSaFailed)]
    assert len(failed) == 1 and "internal error" in failed[0].reason
    assert br.drops_for("hq").by_reason() == {"internal": 1} and not br.sessions
    monkeypatch.setitem(engine._REQUEST_HANDLERS, ExchangeType.IKE_AUTH, ike_auth.on_request)
    for _ in range(int(SPAN) + 2):  # hq's IKE_AUTH goes unanswered until it gives up
        wire.advance(1.0)
    assert not hq.sessions
    hq.initiate("branch1", wire.now)
    wire.pump()
    assert any(isinstance(e, IkeSaEstablished) for e in events(br))


def test_child_rekeys_wait_while_our_ike_rekey_is_pending() -> None:
    """§2.25.2 makes the peer refuse our IKE rekey while a Child exchange of its own is out; if both sides
    kept rekeying Child SAs at their soft lifetimes, the IKE rekey could starve until the IKE SA's hard
    lifetime. So once our IKE rekey is due (here: it was refused, a retry is scheduled), our Child rekeys
    wait until halfway to their hard lifetime; a rekeyed IKE SA starts with none pending."""
    kw = {"child_rekey_time": 10.0, "child_lifetime": 30.0, "ike_rekey_time": 1e5, "rekey_jitter": 0.0,
          "dpd_delay": 0.0}
    hq, br, wire, _, _ = up(kw, {**kw, "child_rekey_time": 1e5, "child_lifetime": 2e5})
    session = only(hq)
    child = session.children[0]
    session.ike_rekey_pending = True  # our IKE rekey was refused with TEMPORARY_FAILURE; its retry waits
    assert session.child_rekey_due(child) == 20.0  # halfway between the soft (10) and hard (30) lifetime
    for _ in range(19):
        wire.advance(1.0)
    assert child.state is ChildState.INSTALLED and len(wire.log) == 4  # 9 s past its soft lifetime: nothing sent
    wire.advance(1.0)
    assert [c.state for c in session.children] == [ChildState.INSTALLED]
    assert session.children[0].spi_in != child.spi_in  # rekeyed at 20 s (make before break, old one deleted)
    hq.rekey_ike("branch1", wire.now)
    wire.pump()
    assert not only(hq).ike_rekey_pending
