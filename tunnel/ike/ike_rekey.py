"""CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 §1.3.2, §2.8, §2.8.2, §2.18, §2.25.2).

Request  SK{SA(IKE, 8-byte new SPI) Ni KE}      Response SK{SA(IKE, 8-byte new SPI) Nr KE}
SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr); the other keys as in §2.14 with the new SPIs and
nonces. The rekey initiator is the original initiator of the new IKE SA, whose message IDs start at 0 in
both directions. The Child SAs move to the new SA; then the rekey initiator deletes the old one.

Simultaneous rekey (§2.8.2): both exchanges complete. The new SA made by the exchange holding the lowest of
the four nonces is redundant and is deleted (on itself) by whoever initiated that exchange; the Child SAs
move to the other new SA, whose initiator deletes the old SA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnel.ike import dh, informational, keys, lifetime
from tunnel.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunnel.ike.errors import DegeneratePublicValue, IkeError, TemporaryFailure
from tunnel.ike.events import IkeSaRekeyed
from tunnel.ike.message import KePayload, Message, NoncePayload, NotifyPayload, Proposal, SaPayload
from tunnel.ike.proposal import IkeSuite, accept_ike, offer_ike, select_ike
from tunnel.ike.sk import SkCipher

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession

IKE_SPI_LEN = 8


@dataclass
class Collision:
    """The peer's rekey of this IKE SA, answered while ours was out (§2.8.2)."""

    session: IkeSession  # the new IKE SA that exchange created (peer is its initiator)
    ni: bytes
    nr: bytes


@dataclass
class IkeRekey:
    """Our outstanding IKE SA rekey request."""

    spi: bytes  # our SPI for the new SA: its initiator SPI
    nonce: bytes
    dh: dh.DhPrivate
    collision: Collision | None = None

    def on_response(self, session: IkeSession, data: bytes, message: Message, now: float) -> None:
        error = next((n.type for n in message.all(NotifyPayload) if n.type < 16384), None)
        if error is not None and self.collision is not None:
            # The peer refused ours (§2.25.2) after we had answered its own: its new SA is the only one,
            # so the Child SAs go there, and the peer deletes the old SA.
            _move(session, self.collision.session)
            session.state = _state().REKEYED
            return session.drop("ike_rekey_refused")
        if error is not None:  # TEMPORARY_FAILURE or a refusal: keep the old SA, try again later (§2.25)
            session.ike_rekey_at = lifetime.retry_at(session, now, session.ike_expire_at)
            return session.drop("ike_rekey_refused")
        try:
            new, nr = self._accept(session, message, now)
        except IkeError:
            session.ike_rekey_at = lifetime.retry_at(session, now, session.ike_expire_at)
            return session.drop("ike_rekey_failed")
        collision = self.collision
        if collision is not None and min(collision.ni, collision.nr) > min(self.nonce, nr):
            # Ours is redundant (§2.8.2): children go to the peer's new SA; we delete ours on itself.
            _move(session, collision.session)
            session.state = _state().REKEYED
            return informational.send_delete_ike(new, now)
        _move(session, new)
        session.state = _state().REKEYED
        informational.send_delete_ike(session, now)  # §1.3.2: the rekey initiator deletes the old SA

    def _accept(self, session: IkeSession, message: Message, now: float) -> tuple[IkeSession, bytes]:
        sa, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
        if sa is None or nonce is None or ke is None:
            raise IkeError("IKE rekey response lacks SA, Nr or KE")
        suite = accept_ike(sa, session.config.ike_suites)
        peer_spi = sa.proposals[0].spi
        if len(peer_spi) != IKE_SPI_LEN or ke.group != self.dh.group or suite.dh != ke.group:
            raise IkeError("IKE rekey response has a bad SPI or KE group")
        shared = _shared(self.dh, ke)
        new = _spawn(session, suite, shared, self.nonce, nonce.data, self.spi, peer_spi, True, now)
        return new, nonce.data


def start(session: IkeSession, now: float) -> None:
    """§1.3.2: SA(IKE, new SPI) Ni KE on the old IKE SA."""
    config = session.config
    spi, nonce = session.random(IKE_SPI_LEN), session.random(config.nonce_len)
    private = dh.generate(config.ike_suites[0].dh, session.random)
    payloads = [offer_ike(config.ike_suites, spi), NoncePayload(nonce), KePayload(private.group, private.public)]
    session.send_request(ExchangeType.CREATE_CHILD_SA, payloads, now, exchange_state=IkeRekey(spi, nonce, private))


def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    """Answer the peer's IKE SA rekey, or TEMPORARY_FAILURE while this SA is closing or one of its Child
    SAs is being created, rekeyed or deleted by us (§2.25.2)."""
    from tunnel.ike.child_rekey import ChildRekey
    from tunnel.ike.informational import ChildDelete

    ours = session.exchange if session.requests.busy else None
    if session.state is not _state().ESTABLISHED or isinstance(ours, (ChildRekey, ChildDelete)):
        raise TemporaryFailure("IKE SA rekey collides with a Child SA exchange or a delete (§2.25.2)")
    sa, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
    if sa is None or nonce is None or ke is None or len(sa.proposals[0].spi) != IKE_SPI_LEN:
        return _refuse(session, message, NotifyType.INVALID_SYNTAX)
    try:
        proposal, suite = select_ike(sa, session.config.ike_suites)
    except IkeError:
        return _refuse(session, message, NotifyType.NO_PROPOSAL_CHOSEN)
    if ke.group != suite.dh:
        return _refuse(session, message, NotifyType.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big"))
    private = dh.generate(suite.dh, session.random)
    try:
        shared = _shared(private, ke)
    except IkeError:
        return _refuse(session, message, NotifyType.INVALID_SYNTAX)
    spi, nr = session.random(IKE_SPI_LEN), session.random(session.config.nonce_len)
    answer = Proposal(proposal.number, ProtocolId.IKE, spi, proposal.transforms)
    session.send_response(message, [SaPayload((answer,)), NoncePayload(nr), KePayload(suite.dh, private.public)])
    new = _spawn(session, suite, shared, nonce.data, nr, proposal.spi, spi, False, now)
    if isinstance(ours, IkeRekey):
        ours.collision = Collision(new, nonce.data, nr)  # decided when our response arrives (§2.8.2)
        return
    _move(session, new)
    session.state = _state().REKEYED  # the peer deletes the old SA next


def on_old_sa_deleted(session: IkeSession) -> None:
    """The peer deletes the old IKE SA while our rekey is still out and we answered its rekey: its new SA
    won (§2.8.2: only the winner's initiator deletes the old SA), so the Child SAs move there first
    instead of dying with the old SA. Our own request is abandoned with the old SA."""
    ours = session.exchange if session.requests.busy else None
    if isinstance(ours, IkeRekey) and ours.collision is not None and session.children:
        _move(session, ours.collision.session)


def _refuse(session: IkeSession, message: Message, notify: int, data: bytes = b"") -> None:
    session.send_response(message, [NotifyPayload(notify, data=data)])


def _shared(private: dh.DhPrivate, ke: KePayload) -> bytes:
    try:
        return private.shared_secret(ke.data)
    except DegeneratePublicValue as exc:
        raise IkeError(str(exc)) from exc


def _spawn(old: IkeSession, suite: IkeSuite, shared: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes,
           initiator: bool, now: float) -> IkeSession:
    """The new IKE SA (§2.18): fresh message IDs, keys from SK_d of the old SA. It stays quiet (no events,
    no Child SAs) until it wins; the dispatcher indexes it by its initiator SPI."""
    from tunnel.ike.ike_init import IkeSaCrypto
    from tunnel.ike.session import IkeSession

    prf = old.crypto.suite.prf  # SKEYSEED with the old SA's PRF, the rest with the new one (§2.18)
    seed = keys.rekey_skeyseed(prf, old.crypto.keys.sk_d, shared, ni, nr)
    k = keys.derive_ike_keys(suite.prf, seed, ni, nr, spi_i, spi_r, encr_key_len=suite.key_bits // 8 + 4)
    ei, er = SkCipher(k.sk_ei), SkCipher(k.sk_er)
    new = IkeSession(old.config, initiator, old.remote, old.random, local_port=old.local_port)
    new.spi_i, new.spi_r = spi_i, spi_r
    new.crypto = IkeSaCrypto(suite, k, er if initiator else ei, ei if initiator else er, ni, nr, b"", b"")
    new.state = _state().ESTABLISHED
    new.send_initial_contact = False
    new.quiet = True
    lifetime.start_ike(new, now)
    old.spawned.append(new)
    return new


def _move(old: IkeSession, new: IkeSession) -> None:
    """The Child SAs (and their lifetimes) now belong to the new IKE SA; the old one closes quietly."""
    new.children, old.children = old.children, []
    new.quiet, old.quiet = False, True
    old.event(IkeSaRekeyed(old.config.tunnel, old.spi_i, old.spi_r, new.spi_i, new.spi_r))


def _state():  # noqa: ANN202 - session.State, imported late (session imports this module)
    from tunnel.ike.session import State

    return State
