"""CREATE_CHILD_SA for Child SAs (RFC 7296 §1.3.1, §1.3.3): new Child SAs (one per data-plane worker, or
after the last one expired, §2.25), rekeying with optional PFS, collisions (§2.8.1, §2.25.1) and hard
expiry.

Request  SK{[N(REKEY_SA, ESP, our inbound SPI of the old SA)] SA(ESP, new SPI) Ni [KE] TSi TSr}
Response SK{SA Nr [KE] TSi TSr}
KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (§2.17), Ni/Nr of this exchange. Make before break: the new
Child SA is announced as soon as it exists on each side, then the rekey initiator deletes the old one
(it is marked RETIRING here; the engine sends the Delete).

Simultaneous rekey of the same SA (§2.8.1): each side answers the other's request as usual, so two new
SAs appear. The one made by the exchange holding the lowest of the four nonces is redundant and is deleted
by whoever initiated that exchange; the other exchange's initiator deletes the old SA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policy.ts import TsRange, covered, narrow
from tunnel.ike import dh, keys
from tunnel.ike.child import ChildSa, ChildState, from_wire, wire_selectors
from tunnel.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunnel.ike.errors import (
    DegeneratePublicValue,
    IkeError,
    InvalidKePayload,
    NoProposalChosen,
    TemporaryFailure,
    TsUnacceptable,
)
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed
from tunnel.ike.message import KePayload, Message, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload, TsPayload
from tunnel.ike.proposal import EspSuite, accept_esp, offer_esp, select_esp
from tunnel.ike.sa import Exchange, IkeSa, IkeState, Task
from tunnel.secret import Secret


@dataclass
class Collision:
    """The peer's rekey of the SA we are rekeying, answered while our request was out (§2.8.1)."""

    child: ChildSa
    ni: bytes
    nr: bytes


@dataclass
class ChildRequest(Exchange):
    """Our outstanding CREATE_CHILD_SA request; old is None for a new Child SA from scratch (§2.25)."""

    old: ChildSa | None
    spi_in: int
    nonce: bytes
    dh: dh.DhPrivate | None
    collision: Collision | None = None
    ke_retried: bool = False  # already sent again with the group an INVALID_KE_PAYLOAD asked for
    kind = Task.CREATE_CHILD

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        try:
            error = next((n.type for n in message.all(NotifyPayload) if n.type < 16384), None)
            if error == NotifyType.INVALID_KE_PAYLOAD and self._retry_with_group(sa, message, now):
                return None
            if error is not None:
                return self._refused(sa, error, now)
            new, nr = self._accept(sa, message)
        except IkeError as exc:  # the IKE SA stands; only this Child SA failed (§2.21.3)
            return self._failed(sa, str(sa.refused(exc)), exc.notify, now)
        old = self.old
        if self.collision is not None and _lowest(self.collision) > min(self.nonce, nr):
            # Our exchange holds the lowest nonce: our new SA is redundant and ours to delete (§2.8.1).
            sa.start_child_lifetime(new, now)
            sa.add_child(new, announce=False)
            return new.enter(ChildState.RETIRING)
        _announce(sa, new, now)
        if old is None and missing_workers(sa):
            sa.new_child_at = now  # the next worker's, as soon as the window is free
        if old is not None and old in sa.children:
            # We delete the old SA (§1.3.3). One that hard-expired while this request was out is owed a
            # Delete already (expire()); one the peer deleted meanwhile needs none.
            old.enter(ChildState.RETIRING)

    def _accept(self, sa: IkeSa, message: Message) -> tuple[ChildSa, bytes]:
        config = sa.config
        sa_payload, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
        tsi, tsr = _ts(message, True), _ts(message, False)
        if sa_payload is None or nonce is None or tsi is None or tsr is None:
            raise IkeError("CREATE_CHILD_SA response lacks SA, Nr, TSi or TSr")
        suite, peer_spi = accept_esp(sa_payload, config.esp_suites)
        shared = _shared(self.dh, suite, ke)
        local, remote = from_wire(tsi.selectors), from_wire(tsr.selectors)
        if not (covered(local, config.local_ts) and covered(remote, config.remote_ts)):
            raise TsUnacceptable("peer answered traffic selectors outside what we proposed")
        child = _child(sa, True, self.spi_in, int.from_bytes(peer_spi, "big"), suite, local, remote,
                       self.nonce, nonce.data, shared)
        return child, nonce.data

    def _retry_with_group(self, sa: IkeSa, message: Message, now: float) -> bool:
        """§1.3: the responder chose a PFS group other than our KE's; send again with that one, once,
        if we offered it."""
        notify = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        group = int.from_bytes(notify.data, "big") if notify is not None and len(notify.data) == 2 else None
        offered = {s.dh for s in sa.config.esp_suites}
        if self.ke_retried or group is None or group not in offered or (self.dh and self.dh.group == group):
            return False
        _send(sa, self.old, now, group).ke_retried = True
        return True

    def _refused(self, sa: IkeSa, error: int, now: float) -> None:
        old = self.old
        if old is None and sa.active_children and error in (NotifyType.NO_ADDITIONAL_SAS,
                                                             NotifyType.TEMPORARY_FAILURE):
            if error == NotifyType.TEMPORARY_FAILURE:
                _more_children(sa, now, retry=True)  # the peer's own request won; see what is missing
            elif missing_workers(sa):
                sa.event(ChildSaFailed(sa.config.tunnel, "the peer accepts no more Child SAs; "
                                       f"workers {missing_workers(sa)} have none", error))
            return
        if error == NotifyType.CHILD_SA_NOT_FOUND:  # §2.25: forget it silently, start afresh if none is left
            if old is not None and old in sa.children:
                sa.remove_child(old)
            if not sa.active_children:
                start(sa, None, now)
            return
        reason = NotifyType(error).name if error in NotifyType._value2member_map_ else str(error)
        self._failed(sa, f"peer refused the Child SA rekey: {reason}", error, now)

    def _failed(self, sa: IkeSa, reason: str, notify: int | None, now: float) -> None:
        if self.old is not None and self.old.state is ChildState.REKEYING:
            self.old.enter(ChildState.INSTALLED)
            self.old.rekey_at = sa.retry_at(now, self.old.expire_at)  # §2.25: never at once
        elif self.old is None and missing_workers(sa):
            sa.new_child_at = sa.retry_at(now)
        if notify != NotifyType.TEMPORARY_FAILURE:
            sa.event(ChildSaFailed(sa.config.tunnel, reason, notify))


# -- initiator -------------------------------------------------------------------------------------------
def start(sa: IkeSa, old: ChildSa | None, now: float) -> None:
    """Rekey `old`, or ask for a new Child SA (None); with PFS when the preferred ESP suite names a DH
    group (§1.3.1)."""
    if old is not None:
        old.enter(ChildState.REKEYING)
    _send(sa, old, now, sa.config.esp_suites[0].dh)


def _send(sa: IkeSa, old: ChildSa | None, now: float, group: int | None) -> ChildRequest:
    config = sa.config
    worker = sa.worker_of(old.spi_in) if old is not None else (missing_workers(sa) or [0])[0]
    spi, nonce = sa.new_child_spi(worker), sa.random(config.nonce_len)
    private = dh.generate(group, sa.random) if group is not None else None
    payloads: list[Payload] = []
    if old is not None:
        payloads.append(NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, old.spi_in.to_bytes(4, "big")))
    payloads += [offer_esp(config.esp_suites, spi.to_bytes(4, "big")), NoncePayload(nonce)]
    if private is not None:
        payloads.append(KePayload(private.group, private.public))
    local = old.local_ts if old is not None else tuple(config.local_ts)
    remote = old.remote_ts if old is not None else tuple(config.remote_ts)
    payloads += [TsPayload(True, wire_selectors(local)), TsPayload(False, wire_selectors(remote))]
    request = ChildRequest(old, spi, nonce, private)
    sa.send_request(ExchangeType.CREATE_CHILD_SA, payloads, now, request)
    return request


def expire(sa: IkeSa, child: ChildSa, now: float) -> None:
    """Hard lifetime reached without a successful rekey: the data plane drops the SA now (fail closed),
    and the peer is told once the window is free."""
    sa.remove_child(child)
    if child.state in (ChildState.INSTALLED, ChildState.REKEYING, ChildState.REKEYED):
        child.enter(ChildState.RETIRING)
        sa.owed_deletes.append(child)
    _more_children(sa, now)


# -- responder ---------------------------------------------------------------------------------------------
def on_request(sa: IkeSa, data: bytes, message: Message, now: float) -> None:
    """Answer a Child SA rekey, or a new Child SA (one per worker of the peer's, or after ours expired)."""
    if sa.state is not IkeState.ESTABLISHED or sa.outstanding() is Task.IKE_REKEY:
        raise TemporaryFailure("the IKE SA is being rekeyed or deleted (§2.25.2)")
    ours = sa.exchange if isinstance(sa.exchange, ChildRequest) and sa.requests.busy else None
    rekey = message.notify(NotifyType.REKEY_SA)
    old = None
    if rekey is not None:
        spi = int.from_bytes(rekey.spi, "big")
        old = next((c for c in sa.children if c.spi_out == spi), None)
        if old is None and ours is not None:
            # The SPI may belong to the Child SA our outstanding request is creating: the peer answered
            # it, the answer has not reached us yet. Not "not found" but a collision (§2.25.1).
            raise TemporaryFailure("REKEY_SA names an SPI our outstanding CREATE_CHILD_SA may be creating")
        if old is None:  # §2.25: CHILD_SA_NOT_FOUND with the SPI copied from REKEY_SA
            return _answer(sa, message, NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, ProtocolId.ESP, rekey.spi))
        if not old.active:
            raise TemporaryFailure("that Child SA is being deleted (§2.25.1)")
    else:
        if ours is not None and ours.old is None:
            # Both sides ask for a fresh Child SA at once (after the last one expired, or one more for a
            # worker): only the request with the higher nonce gets one, else there would be one too many.
            theirs = message.get(NoncePayload)
            if theirs is not None and theirs.data < ours.nonce:
                raise TemporaryFailure("our own request for a new Child SA is out and wins (higher nonce)")
        if len(sa.active_children) >= sa.config.max_children:
            return _answer(sa, message, NotifyPayload(NotifyType.NO_ADDITIONAL_SAS))
    try:
        payloads, new, ni, nr = _respond(sa, message, old)
    except IkeError as exc:
        sa.refused(exc)
        if exc.notify != NotifyType.INVALID_KE_PAYLOAD:  # that one is negotiation: the peer sends again
            sa.event(ChildSaFailed(sa.config.tunnel, f"refused the peer's Child SA: {exc}", exc.notify))
        return _answer(sa, message, NotifyPayload(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN, data=exc.notify_data))
    sa.send_response(message, payloads)
    if ours is not None and old is not None and ours.old is old:
        ours.collision = Collision(new, ni, nr)  # §2.8.1: decided when our own response arrives
    if old is not None:
        old.enter(ChildState.REKEYED)  # the peer deletes it once the new one is in place
    _announce(sa, new, now, replaces_out=old.spi_out if old is not None else None)


def _respond(sa: IkeSa, message: Message, old: ChildSa | None) -> tuple[list[Payload], ChildSa, bytes, bytes]:
    config = sa.config
    sa_payload, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
    tsi, tsr = _ts(message, True), _ts(message, False)
    if sa_payload is None or nonce is None or tsi is None or tsr is None:
        raise NoProposalChosen("CREATE_CHILD_SA request lacks SA, Ni, TSi or TSr")
    proposal, suite = select_esp(sa_payload, config.esp_suites)
    private = None
    if suite.dh is not None:
        if ke is None or ke.group != suite.dh:  # §1.3: tell the initiator which group we want
            raise _invalid_ke(suite.dh)
        private = dh.generate(suite.dh, sa.random)
    shared = _shared(private, suite, ke)
    remote = narrow(from_wire(tsi.selectors), config.remote_ts)
    local = narrow(from_wire(tsr.selectors), config.local_ts)
    if not remote or not local:
        raise TsUnacceptable("proposed traffic selectors do not intersect the configured subnets")
    worker = sa.worker_of(old.spi_in) if old is not None else _least_loaded(sa)
    spi_in, nr = sa.new_child_spi(worker), sa.random(config.nonce_len)
    child = _child(sa, False, spi_in, int.from_bytes(proposal.spi, "big"), suite, local, remote,
                   nonce.data, nr, shared)
    answer = Proposal(proposal.number, ProtocolId.ESP, spi_in.to_bytes(4, "big"), proposal.transforms)
    payloads: list[Payload] = [SaPayload((answer,)), NoncePayload(nr)]
    if private is not None:
        payloads.append(KePayload(private.group, private.public))
    payloads += [TsPayload(True, wire_selectors(remote)), TsPayload(False, wire_selectors(local))]
    return payloads, child, nonce.data, nr


# -- shared ------------------------------------------------------------------------------------------------
def _answer(sa: IkeSa, message: Message, notify: NotifyPayload) -> None:
    sa.send_response(message, [notify])


def _invalid_ke(group: int) -> IkeError:
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


def _child(sa: IkeSa, initiator: bool, spi_in: int, spi_out: int, suite: EspSuite, local: Sequence[TsRange],
           remote: Sequence[TsRange], ni: bytes, nr: bytes, shared: bytes | None) -> ChildSa:
    """KEYMAT = prf+(SK_d, [g^ir] | Ni | Nr) (§2.17): initiator-to-responder key first."""
    crypto = sa.crypto
    assert crypto is not None, "CREATE_CHILD_SA runs on an established IKE SA"
    key_i, key_r = keys.child_keys(crypto.suite.prf, crypto.keys.sk_d, ni, nr, shared,
                                   encr_key_len=suite.key_bits // 8 + 4)
    child = ChildSa(spi_in, spi_out, suite, tuple(local), tuple(remote))
    child.keys = (key_r, key_i) if initiator else (key_i, key_r)  # (in, out)
    return child


def _announce(sa: IkeSa, child: ChildSa, now: float, replaces_out: int | None = None) -> None:
    assert child.keys is not None, "a Child SA of CREATE_CHILD_SA is announced once, with its keys"
    key_in, key_out = child.keys
    child.keys = None  # the data plane has them now
    sa.start_child_lifetime(child, now)
    sa.add_child(child)
    sa.event(ChildSaEstablished(sa.config.tunnel, child.spi_in, child.spi_out, Secret(key_in), Secret(key_out),
                                child.local_ts, child.remote_ts, child.suite.name, sa.remote, replaces_out,
                                sa.worker_of(child.spi_in)))


def _loads(sa: IkeSa) -> list[int]:
    """Active Child SAs per worker."""
    counts = [0] * sa.config.workers
    for child in sa.active_children:
        counts[sa.worker_of(child.spi_in)] += 1
    return counts


def missing_workers(sa: IkeSa) -> list[int]:
    """Workers without an active Child SA of their own."""
    return [w for w, n in enumerate(_loads(sa)) if n == 0]


def _least_loaded(sa: IkeSa) -> int:
    loads = _loads(sa)
    return loads.index(min(loads))


def _more_children(sa: IkeSa, now: float, retry: bool = False) -> None:
    """Ask for a fresh Child SA when a worker has none (the last one expired, or one more worker)."""
    if missing_workers(sa):
        sa.schedule_new_child(now, retry)


def _lowest(collision: Collision) -> bytes:
    return min(collision.ni, collision.nr)


def _ts(message: Message, initiator: bool) -> TsPayload | None:
    return next((p for p in message.all(TsPayload) if p.initiator == initiator), None)
