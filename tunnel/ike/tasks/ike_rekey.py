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

from tunnel.ike import dh, keys
from tunnel.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunnel.ike.drops import IkeDrop
from tunnel.ike.errors import DegeneratePublicValue, IkeError, TemporaryFailure
from tunnel.ike.events import IkeSaRekeyed
from tunnel.ike.message import KePayload, Message, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from tunnel.ike.proposal import IKE_SPI_LEN, IkeSuite, accept_ike, offer_ike, select_ike
from tunnel.ike.sa import Exchange, IkeSa, IkeSaCrypto, IkeState, Task
from tunnel.ike.sk import SkCipher


@dataclass
class Collision:
    """The peer's rekey of this IKE SA, answered while ours was out (§2.8.2)."""

    sa: IkeSa  # the new IKE SA that exchange created (the peer is its initiator)
    ni: bytes
    nr: bytes


@dataclass
class IkeRekey(Exchange):
    """Our outstanding IKE SA rekey request."""

    spi: bytes  # our SPI for the new SA: its initiator SPI
    nonce: bytes
    dh: dh.DhPrivate
    collision: Collision | None = None
    kind = Task.IKE_REKEY

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        error = next((n.type for n in message.all(NotifyPayload) if n.type < 16384), None)
        if error is not None and self.collision is not None:
            # The peer refused ours (§2.25.2) after we had answered its own: its new SA is the only one,
            # so the Child SAs go there, and the peer deletes the old SA.
            _move(sa, self.collision.sa, now)
            return sa.drop(IkeDrop.IKE_REKEY_REFUSED)
        if error is not None:  # TEMPORARY_FAILURE or a refusal: keep the old SA, try again later (§2.25)
            sa.ike_rekey_at = sa.retry_at(now, sa.ike_expire_at)
            return sa.drop(IkeDrop.IKE_REKEY_REFUSED)
        try:
            new, nr = self._accept(sa, message, now)
        except IkeError as exc:
            sa.refused(exc)
            sa.ike_rekey_at = sa.retry_at(now, sa.ike_expire_at)
            return sa.drop(IkeDrop.IKE_REKEY_FAILED)
        collision = self.collision
        if collision is not None and min(collision.ni, collision.nr) > min(self.nonce, nr):
            # Ours is redundant (§2.8.2): the Child SAs go to the peer's new SA; we delete ours on itself.
            _move(sa, collision.sa, now)
            new.delete_when_idle = True
            return
        _move(sa, new, now)
        sa.delete_when_idle = True  # §1.3.2: the rekey initiator deletes the old SA (the engine sends it)

    def on_abandoned(self, sa: IkeSa) -> None:
        """The peer deletes the old IKE SA while this request is out and we answered its rekey: its new
        SA won (§2.8.2: only the winner's initiator deletes the old SA), so the Child SAs move there first
        instead of dying with the old SA."""
        if self.collision is not None and sa.children:
            _move(sa, self.collision.sa, None)

    def _accept(self, sa: IkeSa, message: Message, now: float) -> tuple[IkeSa, bytes]:
        sa_payload, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
        if sa_payload is None or nonce is None or ke is None:
            raise IkeError("IKE rekey response lacks SA, Nr or KE")
        suite = accept_ike(sa_payload, sa.config.ike_suites, IKE_SPI_LEN)
        peer_spi = sa_payload.proposals[0].spi
        if ke.group != self.dh.group or suite.dh != ke.group:
            raise IkeError("IKE rekey response has a bad KE group")
        shared = _shared(self.dh, ke)
        new = _spawn(sa, suite, shared, self.nonce, nonce.data, self.spi, peer_spi, True, now)
        return new, nonce.data


def start(sa: IkeSa, now: float) -> None:
    """§1.3.2: SA(IKE, new SPI) Ni KE on the old IKE SA."""
    config = sa.config
    spi, nonce = sa.random(IKE_SPI_LEN), sa.random(config.nonce_len)
    private = dh.generate(config.ike_suites[0].dh, sa.random)
    payloads: list[Payload] = [offer_ike(config.ike_suites, spi), NoncePayload(nonce),
                               KePayload(private.group, private.public)]
    sa.send_request(ExchangeType.CREATE_CHILD_SA, payloads, now, IkeRekey(spi, nonce, private))


def on_request(sa: IkeSa, data: bytes, message: Message, now: float) -> None:
    """Answer the peer's IKE SA rekey, or TEMPORARY_FAILURE while this SA is closing or one of its Child
    SAs is being created, rekeyed or deleted by us (§2.25.2)."""
    ours = sa.outstanding()
    if sa.state is not IkeState.ESTABLISHED or ours in (Task.CREATE_CHILD, Task.CHILD_DELETE):
        raise TemporaryFailure("IKE SA rekey collides with a Child SA exchange or a delete (§2.25.2)")
    sa_payload, nonce, ke = message.get(SaPayload), message.get(NoncePayload), message.get(KePayload)
    if sa_payload is None or nonce is None or ke is None:
        return _refuse(sa, message, NotifyType.INVALID_SYNTAX)
    try:
        proposal, suite = select_ike(sa_payload, sa.config.ike_suites, IKE_SPI_LEN)
    except IkeError as exc:
        sa.refused(exc)
        return _refuse(sa, message, NotifyType.NO_PROPOSAL_CHOSEN)
    if ke.group != suite.dh:
        return _refuse(sa, message, NotifyType.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big"))
    private = dh.generate(suite.dh, sa.random)
    try:
        shared = _shared(private, ke)
    except IkeError:
        return _refuse(sa, message, NotifyType.INVALID_SYNTAX)
    spi, nr = sa.random(IKE_SPI_LEN), sa.random(sa.config.nonce_len)
    answer = Proposal(proposal.number, ProtocolId.IKE, spi, proposal.transforms)
    sa.send_response(message, [SaPayload((answer,)), NoncePayload(nr), KePayload(suite.dh, private.public)])
    new = _spawn(sa, suite, shared, nonce.data, nr, proposal.spi, spi, False, now)
    if isinstance(sa.exchange, IkeRekey) and ours is Task.IKE_REKEY:
        sa.exchange.collision = Collision(new, nonce.data, nr)  # decided when our response arrives (§2.8.2)
        return
    _move(sa, new, now)  # the peer deletes the old SA next


def _refuse(sa: IkeSa, message: Message, notify: int, data: bytes = b"") -> None:
    sa.send_response(message, [NotifyPayload(notify, data=data)])


def _shared(private: dh.DhPrivate, ke: KePayload) -> bytes:
    try:
        return private.shared_secret(ke.data)
    except DegeneratePublicValue as exc:
        raise IkeError(str(exc)) from exc


def _spawn(old: IkeSa, suite: IkeSuite, shared: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes,
           initiator: bool, now: float) -> IkeSa:
    """The new IKE SA (§2.18): fresh message IDs, keys from SK_d of the old SA. It stays quiet (no events,
    no Child SAs) until it wins; the dispatcher indexes it by its initiator SPI."""
    assert old.crypto is not None
    prf = old.crypto.suite.prf  # SKEYSEED with the old SA's PRF, the rest with the new one (§2.18)
    seed = keys.rekey_skeyseed(prf, old.crypto.keys.sk_d, shared, ni, nr)
    k = keys.derive_ike_keys(suite.prf, seed, ni, nr, spi_i, spi_r, encr_key_len=suite.key_bits // 8 + 4)
    ei, er = SkCipher(k.sk_ei), SkCipher(k.sk_er)
    crypto = IkeSaCrypto(suite, k, er if initiator else ei, ei if initiator else er, ni, nr, b"", b"")
    new = old.spawn(initiator, spi_i, spi_r, crypto, now)
    new.start_lifetime(now)
    return new


def _move(old: IkeSa, new: IkeSa, now: float | None) -> None:
    """The Child SAs (and their lifetimes) now belong to the new IKE SA; the old one is REKEYED and
    closes quietly once a Delete ends it. now is None when the old SA is being closed anyway."""
    new.children, old.children = old.children, []
    new.quiet, old.quiet = False, True
    old.event(IkeSaRekeyed(old.config.tunnel, old.spi_i, old.spi_r, new.spi_i, new.spi_r))
    if now is not None:
        old.enter(IkeState.REKEYED, now)
