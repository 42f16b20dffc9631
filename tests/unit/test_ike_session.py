"""Two IKE cores back to back with a hand-driven clock (ARCHITECTURE.md principle 10): no sockets, no
sleeps. Every scenario asserts what crosses the 'wire' and the events each side reports."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest

from policy.ts import ranges
from tunnel.ike.config import IkeConfig, PskAuth
from tunnel.ike.constants import DhGroup, IdType, NotifyType, PrfId
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from tunnel.ike.message import parse_message
from tunnel.ike.proposal import EspSuite, IkeSuite
from tunnel.ike.window import Backoff

HQ, BR = "198.18.1.2", "198.18.2.2"
net = ipaddress.ip_network


def rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


DEFAULT_IKE, DEFAULT_ESP = (IkeSuite(),), (EspSuite(),)


def config(name: str, local: str, remote: str, local_id: bytes, remote_id: bytes, psk: bytes = b"secret" * 4,
           suites=DEFAULT_IKE, esp=DEFAULT_ESP, **kw) -> IkeConfig:
    return IkeConfig(
        tunnel=name, local_id=(IdType.ID_FQDN, local_id), remote_id=(IdType.ID_FQDN, remote_id),
        auth=PskAuth(psk), ike_suites=suites, esp_suites=esp,
        local_ts=ranges([net(local)]), remote_ts=ranges([net(remote)]), backoff=Backoff(1.0, 2.0, 4), **kw,
    )


class Wire:
    """Moves datagrams between two dispatchers; `lose` decides per datagram whether it vanishes."""

    def __init__(self, hq: IkeDispatcher, br: IkeDispatcher) -> None:
        self.sides = {HQ: hq, BR: br}
        self.now = 0.0
        self.log: list[tuple[str, int, bytes]] = []  # (sender, local port, IKE message)
        self.lose: Callable[[str, bytes], bool] = lambda sender, message: False

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for sender, side in self.sides.items():
                for data, remote, local_port in side.datagrams_to_send(self.now):
                    moved = True
                    if local_port == 4500:  # the transport adds the non-ESP marker (RFC 3948), not the core
                        assert remote[1] == 4500 and not data.startswith(bytes(4))
                    self.log.append((sender, local_port, data))
                    if self.lose(sender, data):
                        continue
                    self.sides[remote[0]].receive_datagram(data, (sender, local_port), remote[1], self.now)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for side in self.sides.values():
            side.handle_timer(self.now)
        self.pump()


def events(d: IkeDispatcher) -> list:
    out = []
    while (e := d.next_event()) is not None:
        out.append(e)
    return out


def pair(hq_kw=None, br_kw=None, seed=1) -> tuple[IkeDispatcher, IkeDispatcher, Wire]:
    hq = IkeDispatcher([(config("branch1", "10.1.0.0/24", "10.2.0.0/24", b"hq.test", b"br.test", **(hq_kw or {})), BR)], rng(seed))
    br = IkeDispatcher([(config("hq", "10.2.0.0/24", "10.1.0.0/24", b"br.test", b"hq.test", **(br_kw or {})), HQ)], rng(seed + 100))
    return hq, br, Wire(hq, br)


def child(evts) -> ChildSaEstablished:
    found = [e for e in evts if isinstance(e, ChildSaEstablished)]
    assert len(found) == 1, evts
    return found[0]


@pytest.mark.parametrize("group", [DhGroup.CURVE_25519, DhGroup.ECP_256, DhGroup.MODP_2048])
@pytest.mark.parametrize("prf", [PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_512])
def test_psk_success_with_each_group(group: int, prf: int) -> None:
    suites = (IkeSuite(prf=prf, dh=group),)
    hq, br, wire = pair({"suites": suites}, {"suites": suites})
    hq.initiate("branch1", wire.now)
    wire.pump()
    e_hq, e_br = events(hq), events(br)
    assert [type(e) for e in e_hq] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in e_br] == [IkeSaEstablished, ChildSaEstablished]
    c_hq, c_br = child(e_hq), child(e_br)
    # Mirror images: what one side sends with, the other receives with.
    assert (c_hq.spi_out, c_hq.key_out) == (c_br.spi_in, c_br.key_in)
    assert (c_hq.spi_in, c_hq.key_in) == (c_br.spi_out, c_br.key_out)
    assert len(c_hq.key_out.reveal()) == 36 and c_hq.key_in != c_hq.key_out
    assert [str(r) for r in c_hq.local_ts] == ["10.1.0.0/24"] and [str(r) for r in c_hq.remote_ts] == ["10.2.0.0/24"]
    assert e_hq[0].suite == f"AES_GCM_16_256/PRF_{PrfId(prf).name}/{DhGroup(group).name}"
    # IKE_SA_INIT on 500, everything after on 4500 (RFC 3948): NAT-T forced by the fake NATD.
    assert [(s, p) for s, p, _ in wire.log] == [(HQ, 500), (BR, 500), (HQ, 4500), (BR, 4500)]
    assert c_hq.remote == (BR, 4500) and c_br.remote == (HQ, 4500)


def test_responder_picks_its_strongest_mutual_suite() -> None:
    offered = (IkeSuite(dh=DhGroup.MODP_2048), IkeSuite(dh=DhGroup.ECP_256), IkeSuite(dh=DhGroup.CURVE_25519))
    preferred = (IkeSuite(dh=DhGroup.CURVE_25519), IkeSuite(dh=DhGroup.ECP_256))
    hq, br, wire = pair({"suites": offered}, {"suites": preferred})
    hq.initiate("branch1", wire.now)
    wire.pump()
    established = [e for e in events(hq) if isinstance(e, IkeSaEstablished)]
    assert established and established[0].suite.endswith("CURVE_25519")
    # The initiator guessed MODP_2048 first; the responder asked for X25519 with INVALID_KE_PAYLOAD.
    notifies = [parse_message(m).notify(NotifyType.INVALID_KE_PAYLOAD) for s, _, m in wire.log if s == BR]
    assert notifies[0] is not None and int.from_bytes(notifies[0].data, "big") == DhGroup.CURVE_25519
    assert len([1 for s, _, _ in wire.log if s == HQ]) == 3  # INIT, INIT again, AUTH


def test_no_common_proposal() -> None:
    hq, br, wire = pair({"suites": (IkeSuite(dh=DhGroup.MODP_2048),)}, {"suites": (IkeSuite(dh=DhGroup.CURVE_25519),)})
    hq.initiate("branch1", wire.now)
    wire.pump()
    failed = [e for e in events(hq) if isinstance(e, IkeSaFailed)]
    assert failed and "NO_PROPOSAL_CHOSEN" in failed[0].reason
    assert [type(e) for e in events(br)] == [IkeSaFailed]
    assert not hq.sessions and not br.sessions


def test_wrong_psk_is_authentication_failed() -> None:
    hq, br, wire = pair({"psk": b"a" * 20}, {"psk": b"b" * 20})
    hq.initiate("branch1", wire.now)
    wire.pump()
    e_br, e_hq = events(br), events(hq)
    assert any(isinstance(e, IkeSaFailed) and e.notify == NotifyType.AUTHENTICATION_FAILED for e in e_br)
    assert any(isinstance(e, IkeSaFailed) and "AUTHENTICATION_FAILED" in e.reason for e in e_hq)
    assert not any(isinstance(e, ChildSaEstablished) for e in e_hq + e_br)


def test_wrong_identity_is_refused() -> None:
    hq = IkeDispatcher([(config("branch1", "10.1.0.0/24", "10.2.0.0/24", b"mallory.test", b"br.test"), BR)], rng(1))
    br = IkeDispatcher([(config("hq", "10.2.0.0/24", "10.1.0.0/24", b"br.test", b"hq.test"), HQ)], rng(2))
    wire = Wire(hq, br)
    hq.initiate("branch1", wire.now)
    wire.pump()
    assert any(isinstance(e, IkeSaFailed) and "mallory.test" in e.reason for e in events(br))


def test_selector_narrowing() -> None:
    # HQ proposes all of 10.0.0.0/8 as the remote side; the branch only offers its /24.
    hq = IkeDispatcher([(config("branch1", "10.1.0.0/24", "10.0.0.0/8", b"hq.test", b"br.test"), BR)], rng(1))
    br = IkeDispatcher([(config("hq", "10.2.0.0/24", "10.1.0.0/16", b"br.test", b"hq.test"), HQ)], rng(2))
    wire = Wire(hq, br)
    hq.initiate("branch1", wire.now)
    wire.pump()
    c = child(events(hq))
    assert [str(r) for r in c.remote_ts] == ["10.2.0.0/24"] and [str(r) for r in c.local_ts] == ["10.1.0.0/24"]


def test_ts_unacceptable_keeps_the_ike_sa() -> None:
    hq = IkeDispatcher([(config("branch1", "10.1.0.0/24", "10.9.0.0/24", b"hq.test", b"br.test"), BR)], rng(1))
    br = IkeDispatcher([(config("hq", "10.2.0.0/24", "10.1.0.0/24", b"br.test", b"hq.test"), HQ)], rng(2))
    wire = Wire(hq, br)
    hq.initiate("branch1", wire.now)
    wire.pump()
    e_hq = events(hq)
    assert [type(e) for e in e_hq] == [IkeSaEstablished, ChildSaFailed]
    assert e_hq[1].notify == NotifyType.TS_UNACCEPTABLE
    assert all(s.established for s in hq.sessions.values())


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_loss_and_retransmission(lost: int) -> None:
    """Lose the n-th datagram once: requests are retransmitted, duplicate requests get cached answers."""
    hq, br, wire = pair()
    seen = {"n": 0}

    def lose(sender: str, message: bytes) -> bool:
        seen["n"] += 1
        return seen["n"] == lost + 1

    wire.lose = lose
    hq.initiate("branch1", wire.now)
    wire.pump()
    assert not any(isinstance(e, ChildSaEstablished) for e in events(hq))
    wire.advance(1.0)  # the first retransmission is due after 1 s
    assert any(isinstance(e, ChildSaEstablished) for e in events(hq))
    assert sum(isinstance(e, ChildSaEstablished) for e in events(br)) <= 1  # never twice


def test_peer_silent_means_failure_after_backoff() -> None:
    hq, br, wire = pair()
    wire.lose = lambda sender, message: True
    hq.initiate("branch1", wire.now)
    wire.pump()
    for _ in range(10):
        wire.advance(10.0)
    failed = [e for e in events(hq) if isinstance(e, IkeSaFailed)]
    assert failed and "does not answer" in failed[0].reason
    # 1 + the early IKE_SA_INIT (not a try) + 3 retransmissions (Backoff tries=4)
    assert len(wire.log) == 5


@pytest.mark.parametrize("lost", ["IKE_SA_INIT", "IKE_AUTH"])
def test_only_ike_sa_init_is_sent_again_early(lost: str) -> None:
    """A peer started a moment later than us missed our IKE_SA_INIT: it goes again after 0.2 s, not after
    the first backoff step (1 s). Later requests (IKE_AUTH here) keep the backoff schedule."""
    hq, br, wire = pair()
    seen = {"n": 0}
    wire.lose = lambda sender, message: (seen.__setitem__("n", seen["n"] + 1) or
                                         seen["n"] == (1 if lost == "IKE_SA_INIT" else 3))
    hq.initiate("branch1", wire.now)
    wire.pump()
    wire.advance(0.25)
    early = any(isinstance(e, ChildSaEstablished) for e in events(hq))  # (events() takes them)
    assert early is (lost == "IKE_SA_INIT")
    wire.advance(1.0)
    assert early or any(isinstance(e, ChildSaEstablished) for e in events(hq))


def test_cookie_round_trip() -> None:
    hq, br, wire = pair()
    br.cookie_threshold = 0  # demand cookies from everyone
    hq.initiate("branch1", wire.now)
    wire.pump()
    assert any(isinstance(e, ChildSaEstablished) for e in events(hq))
    first, second = parse_message(wire.log[1][2]), parse_message(wire.log[2][2])
    assert first.notify(NotifyType.COOKIE) is not None  # BR asked for a cookie, keeping no state
    assert second.payloads[0].type == NotifyType.COOKIE  # HQ echoed it first (§2.6)
    assert br.drops.by_reason() == {"cookie_required": 1}


def test_bad_cookie_is_refused_without_state() -> None:
    hq, br, wire = pair()
    br.cookie_threshold = 0
    hq.initiate("branch1", wire.now)
    data = hq.datagrams_to_send(0)[0][0]
    br.receive_datagram(data, (HQ, 500), 500, 0.0)
    assert not br.sessions and br.drops.by_reason() == {"cookie_required": 1}


def test_delete_ike_sa_from_either_side() -> None:
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    wire.pump()
    c = child(events(hq))
    events(br)
    br.delete_all(wire.now)
    wire.pump()
    e_hq, e_br = events(hq), events(br)
    assert ChildSaDeleted("branch1", c.spi_in, c.spi_out) in e_hq
    assert any(isinstance(e, IkeSaDeleted) for e in e_hq) and any(isinstance(e, IkeSaDeleted) for e in e_br)
    assert not hq.sessions and not br.sessions


def test_unknown_peer_and_garbage_are_counted() -> None:
    hq, br, wire = pair()
    hq.initiate("branch1", wire.now)
    data = hq.datagrams_to_send(0)[0][0]
    br.receive_datagram(data, ("203.0.113.9", 500), 500, 0.0)
    br.receive_datagram(b"\x00" * 10, (HQ, 500), 500, 0.0)
    assert br.drops.by_reason() == {"unknown_peer": 1, "malformed": 1} and not br.sessions


def test_tampered_auth_message_is_dropped_silently() -> None:
    hq, br, wire = pair()

    def tamper(sender: str, message: bytes) -> bool:
        return False

    hq.initiate("branch1", wire.now)
    init = hq.datagrams_to_send(0)[0][0]
    br.receive_datagram(init, (HQ, 500), 500, 0.0)
    response = br.datagrams_to_send(0)[0][0]
    hq.receive_datagram(response, (BR, 500), 500, 0.0)
    auth = bytearray(hq.datagrams_to_send(0)[0][0])
    auth[-3] ^= 1
    br.receive_datagram(bytes(auth), (HQ, 4500), 4500, 0.0)
    assert br.datagrams_to_send(0) == []  # §2.21.2: no answer to a message that fails its ICV
    session = next(iter(br.sessions.values()))
    assert session.drops.by_reason() == {"integrity": 1}
