"""CREATE_CHILD_SA for Child SAs (RFC 7296 §1.3.1, §1.3.3): rekeying with optional PFS, collisions
(§2.8.1, §2.25.1) and hard expiry.

Request  SK{N(REKEY_SA, ESP, our inbound SPI of the old SA) SA(ESP, new SPI) Ni [KE] TSi TSr}
Response SK{SA Nr [KE] TSi TSr}
KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (§2.17), Ni/Nr of this exchange. Make before break: the new
Child SA is announced as soon as it exists on each side, then the rekey initiator deletes the old one.

Simultaneous rekey of the same SA (§2.8.1): each side answers the other's request as usual, so two new
SAs appear. The one made by the exchange holding the lowest of the four nonces (octet-wise) is redundant
and is deleted by whoever initiated that exchange; the other exchange's initiator deletes the old SA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from policy.ts import covered, narrow
from tunnel.ike import dh, informational, keys, lifetime
from tunnel.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunnel.ike.errors import DegeneratePublicValue, IkeError, NoProposalChosen, TemporaryFailure, TsUnacceptable
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed
from tunnel.ike.ike_auth import ChildState, from_wire, new_spi, to_wire, worker_of
from tunnel.ike.message import KePayload, Message, NoncePayload, NotifyPayload, Proposal, SaPayload, TsPayload
from tunnel.ike.proposal import EspSuite, accept_esp, offer_esp, select_esp
from tunnel.secret import Secret

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession


@dataclass
class Collision:
    """The peer's rekey of the SA we are rekeying, answered while our request was out (§2.8.1)."""

    child: ChildState
    ni: bytes
    nr: bytes


@dataclass
class ChildRekey:
    """Our outstanding CREATE_CHILD_SA request; old is None for a new Child SA from scratch (§2.25)."""

    old: ChildState | None
    spi_in: int
    nonce: bytes
    dh: dh.DhPrivate | None
    collision: Collision | None = None
    ke_retried: bool = False  # already sent again with the group an INVALID_KE_PAYLOAD asked for

    def on_response(self, session: IkeSession, data: bytes, message: Message, now: float) -> None:
        try:
            error = next((n.type for n in message.all(NotifyPayload) if n.type < 16384), None)
            if error == NotifyType.INVALID_KE_PAYLOAD and self._retry_with_group(session, message, now):
                return None
            if error is not None:
                return self._refused(session, error, now)
            new = self._accept(session, message, now)
        except IkeError as exc:  # the IKE SA stands; only this Child SA failed (§2.21.3)
            return self._failed(session, str(exc), exc.notify, now)
        if self.collision is not None and _lowest(self.collision) > min(self.nonce, new[1]):
            # Our exchange holds the lowest nonce: our new SA is redundant and ours to delete (§2.8.1).
            session.add_child(new[0], now, announce=False)
            return informational.send_delete_child(session, new[0], now)
        _announce(session, new[0], now)
        if self.old is None and missing_workers(session):
            session.new_child_at = now  # the next worker's, as soon as the window is free
        if self.old is not None:
            # Also when it hard-expired while this request was out: the peer still holds it, and
            # expire() could not tell it then (window busy). A peer that already deleted it ignores this.
            informational.send_delete_child(session, self.old, now)

    def _accept(self, session: IkeSession, message: Message, now: float) -> tuple[ChildState, bytes]:
        sa, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
        tsi, tsr = _ts(message, True), _ts(message, False)
        if sa is None or nonce is None or tsi is None or tsr is None:
            raise IkeError("CREATE_CHILD_SA response lacks SA, Nr, TSi or TSr")
        suite, peer_spi = accept_esp(sa, session.config.esp_suites)
        shared = _shared(self.dh, suite, ke)
        local, remote = from_wire(tsi.selectors), from_wire(tsr.selectors)
        if not (covered(local, session.config.local_ts) and covered(remote, session.config.remote_ts)):
            raise TsUnacceptable("peer answered traffic selectors outside what we proposed")
        if self.old is not None:
            self.old.state = "rekeyed"
        child = _child(session, True, self.spi_in, int.from_bytes(peer_spi, "big"), suite, local, remote,
                       self.nonce, nonce.data, shared)
        return child, nonce.data

    def _retry_with_group(self, session: IkeSession, message: Message, now: float) -> bool:
        """§1.3: the responder chose a PFS group other than our KE's; send again with that one, once,
        if we offered it."""
        notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        group = int.from_bytes(notify.data, "big") if notify is not None and len(notify.data) == 2 else None
        offered = {s.dh for s in session.config.esp_suites}
        if self.ke_retried or group is None or group not in offered or (self.dh and self.dh.group == group):
            return False
        if self.old is not None:
            self.old.state = "installed"
        start(session, self.old, now, group=group)
        session.exchange.ke_retried = True
        return True

    def _refused(self, session: IkeSession, error: int, now: float) -> None:
        old = self.old
        if old is None and session.active_children and error in (NotifyType.NO_ADDITIONAL_SAS,
                                                                  NotifyType.TEMPORARY_FAILURE):
            if error == NotifyType.TEMPORARY_FAILURE:
                _more_children(session, now, retry=True)  # the peer's own request won; see what is missing
            elif missing_workers(session):
                session.event(ChildSaFailed(session.config.tunnel, "the peer accepts no more Child SAs; "
                                            f"workers {missing_workers(session)} have none", error))
            return
        if error == NotifyType.CHILD_SA_NOT_FOUND:  # §2.25: forget it silently, start afresh if none is left
            if old is not None and old in session.children:
                session.remove_child(old)
            if not session.active_children:
                start(session, None, now)
            return
        reason = NotifyType(error).name if error in NotifyType._value2member_map_ else str(error)
        self._failed(session, f"peer refused the Child SA rekey: {reason}", error, now)

    def _failed(self, session: IkeSession, reason: str, notify: int | None, now: float) -> None:
        if self.old is not None and self.old.state == "rekeying":
            self.old.state = "installed"
            self.old.rekey_at = lifetime.retry_at(session, now, self.old.expire_at)  # §2.25: never at once
        elif self.old is None and missing_workers(session):
            session.new_child_at = lifetime.retry_at(session, now)
        if notify != NotifyType.TEMPORARY_FAILURE:
            session.event(ChildSaFailed(session.config.tunnel, reason, notify))


# -- initiator -------------------------------------------------------------------------------------------
def start(session: IkeSession, old: ChildState | None, now: float, group: int | None = None) -> None:
    """Send CREATE_CHILD_SA; with PFS when the preferred ESP suite (or `group`, asked for by an
    INVALID_KE_PAYLOAD) names a DH group (§1.3.1)."""
    config = session.config
    worker = worker_of(session, old.spi_in) if old is not None else (missing_workers(session) or [0])[0]
    spi, nonce = new_spi(session, worker), session.random(config.nonce_len)
    group = group or config.esp_suites[0].dh
    private = dh.generate(group, session.random) if group is not None else None
    payloads: list = []
    if old is not None:
        old.state = "rekeying"
        payloads.append(NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, old.spi_in.to_bytes(4, "big")))
    payloads += [offer_esp(config.esp_suites, spi.to_bytes(4, "big")), NoncePayload(nonce)]
    if private is not None:
        payloads.append(KePayload(group, private.public))
    local = old.local_ts if old is not None else tuple(config.local_ts)
    remote = old.remote_ts if old is not None else tuple(config.remote_ts)
    payloads += [TsPayload(True, tuple(map(to_wire, local))), TsPayload(False, tuple(map(to_wire, remote)))]
    session.send_request(ExchangeType.CREATE_CHILD_SA, payloads, now,
                         exchange_state=ChildRekey(old, spi, nonce, private))


def expire(session: IkeSession, child: ChildState, now: float) -> None:
    """Hard lifetime reached without a successful rekey: the SA goes now (fail closed), and the peer is
    told if the window is free."""
    session.remove_child(child)
    if not session.requests.busy and child.state != "deleting":
        informational.send_delete_child(session, child, now)
    _more_children(session, now)


# -- responder ---------------------------------------------------------------------------------------------
def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    """Answer a Child SA rekey (or a new Child SA when we have none)."""
    from tunnel.ike.ike_rekey import IkeRekey
    from tunnel.ike.session import State

    if session.state is not State.ESTABLISHED or isinstance(session.exchange, IkeRekey) and session.requests.busy:
        raise TemporaryFailure("the IKE SA is being rekeyed or deleted (§2.25.2)")
    rekey = message.notify(NotifyType.REKEY_SA)
    old = None
    if rekey is not None:
        spi = int.from_bytes(rekey.spi, "big")
        old = next((c for c in session.children if c.spi_out == spi), None)
        if old is None and isinstance(session.exchange, ChildRekey) and session.requests.busy:
            # The SPI may belong to the Child SA our outstanding request is creating: the peer answered
            # it, the answer has not reached us yet. Not "not found" but a collision (§2.25.1).
            raise TemporaryFailure("REKEY_SA names an SPI our outstanding CREATE_CHILD_SA may be creating")
        if old is None:  # §2.25: CHILD_SA_NOT_FOUND with the SPI copied from REKEY_SA
            return _answer(session, message, NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, ProtocolId.ESP, rekey.spi))
        if old.state in ("rekeyed", "deleting"):
            raise TemporaryFailure("that Child SA is being deleted (§2.25.1)")
    else:
        if isinstance(session.exchange, ChildRekey) and session.exchange.old is None and session.requests.busy:
            # Both sides ask for a fresh Child SA at once (after the last one expired, or one more for a
            # worker): only the request with the higher nonce gets one, else there would be one too many.
            theirs = message.get(NoncePayload)
            if theirs is not None and theirs.data < session.exchange.nonce:
                raise TemporaryFailure("our own request for a new Child SA is out and wins (higher nonce)")
        if len(session.active_children) >= session.config.max_children:
            return _answer(session, message, NotifyPayload(NotifyType.NO_ADDITIONAL_SAS))
    try:
        payloads, new, ni, nr = _respond(session, message, now, old)
    except IkeError as exc:
        if exc.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is negotiation: the peer sends again
            session.event(ChildSaFailed(session.config.tunnel, f"refused the peer's Child SA: {exc}", exc.notify))
        return _answer(session, message, NotifyPayload(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN, data=exc.notify_data))
    session.send_response(message, payloads)
    ours = session.exchange if session.requests.busy else None
    if isinstance(ours, ChildRekey) and old is not None and ours.old is old:
        ours.collision = Collision(new, ni, nr)  # §2.8.1: decided when our own response arrives
    if old is not None:
        old.state = "rekeyed"  # the peer deletes it once the new one is in place
    _announce(session, new, now, replaces_out=old.spi_out if old is not None else None)


def _respond(session: IkeSession, message: Message, now: float,
             old: ChildState | None) -> tuple[list, ChildState, bytes, bytes]:
    config = session.config
    sa, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
    tsi, tsr = _ts(message, True), _ts(message, False)
    if sa is None or nonce is None or tsi is None or tsr is None:
        raise NoProposalChosen("CREATE_CHILD_SA request lacks SA, Ni, TSi or TSr")
    proposal, suite = select_esp(sa, config.esp_suites)
    private = None
    if suite.dh is not None:
        if ke is None or ke.group != suite.dh:  # §1.3: tell the initiator which group we want
            raise _invalid_ke(suite.dh)
        private = dh.generate(suite.dh, session.random)
    shared = _shared(private, suite, ke)
    remote = narrow(from_wire(tsi.selectors), config.remote_ts)
    local = narrow(from_wire(tsr.selectors), config.local_ts)
    if not remote or not local:
        raise TsUnacceptable("proposed traffic selectors do not intersect the configured subnets")
    worker = worker_of(session, old.spi_in) if old is not None else _least_loaded(session)
    spi_in, nr = new_spi(session, worker), session.random(config.nonce_len)
    child = _child(session, False, spi_in, int.from_bytes(proposal.spi, "big"), suite, local, remote,
                   nonce.data, nr, shared)
    answer = Proposal(proposal.number, ProtocolId.ESP, spi_in.to_bytes(4, "big"), proposal.transforms)
    payloads: list = [SaPayload((answer,)), NoncePayload(nr)]
    if private is not None:
        payloads.append(KePayload(suite.dh, private.public))
    payloads += [TsPayload(True, tuple(map(to_wire, remote))), TsPayload(False, tuple(map(to_wire, local)))]
    return payloads, child, nonce.data, nr


# -- shared ------------------------------------------------------------------------------------------------
def _answer(session: IkeSession, message: Message, notify: NotifyPayload) -> None:
    session.send_response(message, [notify])


def _invalid_ke(group: int) -> IkeError:
    from tunnel.ike.errors import InvalidKePayload

    error = InvalidKePayload(f"CREATE_CHILD_SA KE is not for DH group {group}", group.to_bytes(2, "big"))
    error.fatal = False
    return error


def _shared(private: dh.DhPrivate | None, suite: EspSuite, ke: KePayload | None) -> bytes | None:
    """g^ir (new) when the exchange does PFS (§1.3.1), else None."""
    if private is None or suite.dh is None:
        return None
    if ke is None or ke.group != private.group:
        raise IkeError("CREATE_CHILD_SA answer lacks the KE payload for PFS")
    try:
        return private.shared_secret(ke.data)
    except DegeneratePublicValue as exc:
        raise IkeError(str(exc)) from exc


def _child(session: IkeSession, initiator: bool, spi_in: int, spi_out: int, suite: EspSuite, local, remote,
           ni: bytes, nr: bytes, shared: bytes | None) -> ChildState:
    """KEYMAT = prf+(SK_d, [g^ir] | Ni | Nr) (§2.17): initiator-to-responder key first."""
    crypto = session.crypto
    key_i, key_r = keys.child_keys(crypto.suite.prf, crypto.keys.sk_d, ni, nr, shared,
                                   encr_key_len=suite.key_bits // 8 + 4)
    child = ChildState(spi_in, spi_out, suite, tuple(local), tuple(remote))
    child.keys = (key_r, key_i) if initiator else (key_i, key_r)  # (in, out)
    return child


def _announce(session: IkeSession, child: ChildState, now: float, replaces_out: int | None = None) -> None:
    key_in, key_out = child.keys
    session.add_child(child, now)
    session.event(ChildSaEstablished(session.config.tunnel, child.spi_in, child.spi_out, Secret(key_in),
                                     Secret(key_out), child.local_ts, child.remote_ts, child.suite.name,
                                     session.remote, replaces_out, worker_of(session, child.spi_in)))


def _loads(session: IkeSession) -> list[int]:
    """Active Child SAs per worker."""
    counts = [0] * session.config.workers
    for child in session.active_children:
        counts[worker_of(session, child.spi_in)] += 1
    return counts


def missing_workers(session: IkeSession) -> list[int]:
    """Workers without an active Child SA of their own."""
    return [w for w, n in enumerate(_loads(session)) if n == 0]


def _least_loaded(session: IkeSession) -> int:
    loads = _loads(session)
    return loads.index(min(loads))


def _more_children(session: IkeSession, now: float, retry: bool = False) -> None:
    """Ask for a fresh Child SA when a worker has none (the last one expired, or one more worker)."""
    if missing_workers(session):
        if retry:  # §2.25: not at once
            session.new_child_at = now + lifetime.NEW_CHILD_DELAY * (1.0 + lifetime.fraction(session))
        else:
            lifetime.schedule_new_child(session, now)


def _lowest(collision: Collision) -> bytes:
    return min(collision.ni, collision.nr)


def _ts(message: Message, initiator: bool) -> TsPayload | None:
    return next((p for p in message.all(TsPayload) if p.initiator == initiator), None)
