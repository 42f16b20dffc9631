"""IKE_SA_INIT (RFC 7296 §1.2): proposals, Diffie-Hellman, nonces, NAT detection, COOKIE and
INVALID_KE_PAYLOAD retries, and the IKE SA keys (§2.14)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunnel.errors import MalformedPacket
from tunnel.ike import dh, keys
from tunnel.ike.constants import CertEncoding, ExchangeType, NotifyType
from tunnel.ike.errors import DegeneratePublicValue, IkeError, InvalidKePayload, NoProposalChosen
from tunnel.ike.message import (
    CertReqPayload, KePayload, Message, NoncePayload, NotifyPayload, SaPayload, parse_message,
)
from tunnel.ike.proposal import IkeSuite, accept_ike, offer_ike, select_ike
from tunnel.ike.sk import SkCipher

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession

MAX_INIT_RETRIES = 3  # COOKIE / INVALID_KE round trips before giving up
SIGNATURE_HASH_ALGORITHMS = b"\x00\x02\x00\x03\x00\x04"  # SHA2-256/384/512, RFC 7427 §4


@dataclass
class IkeSaCrypto:
    suite: IkeSuite
    keys: keys.IkeKeys = field(repr=False)
    sk_in: SkCipher = field(repr=False)
    sk_out: SkCipher = field(repr=False)
    ni: bytes = field(repr=False)
    nr: bytes = field(repr=False)
    init_request: bytes = field(repr=False)  # RealMessage1 for AUTH (§2.15)
    init_response: bytes = field(repr=False)  # RealMessage2


@dataclass
class InitAttempt:
    dh: dh.DhPrivate
    nonce: bytes
    cookie: bytes = b""
    retries: int = 0
    packet: bytes = b""  # the request as last sent: RealMessage1 for AUTH (§2.15)


def parse(data: bytes) -> Message:
    return parse_message(data)


def _address_bytes(host: str) -> bytes:
    import ipaddress  # local: keeps the module's import surface small

    return ipaddress.ip_address(host).packed


def _nat_notifies(session: IkeSession, spi_r: bytes, peer: tuple) -> list[NotifyPayload]:
    # Our NAT_DETECTION_SOURCE_IP is deliberately random (as strongSwan's encap=yes does): sitelink
    # carries ESP only inside UDP, so both sides must believe a NAT is present and use port 4500.
    fake_source = session.random(20)
    destination = keys.nat_detection_hash(session.spi_i, spi_r, _address_bytes(peer[0]), peer[1])
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=fake_source),
        NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=destination),
    ]


def _extras(session: IkeSession) -> list:
    from tunnel.ike.config import CertAuth

    auth = session.config.auth
    if isinstance(auth, CertAuth):
        return [NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=SIGNATURE_HASH_ALGORITHMS)]
    return []


# -- initiator -------------------------------------------------------------------------------------------
def start(session: IkeSession, now: float, group: int | None = None) -> None:
    from tunnel.ike.session import State

    group = group or session.config.ike_suites[0].dh
    attempt = InitAttempt(dh.generate(group, session.random), session.random(session.config.nonce_len))
    session.state = State.INIT_SENT
    attempt.packet = session.send_request(ExchangeType.IKE_SA_INIT, _request_payloads(session, attempt), now,
                                          encrypted=False, exchange_state=attempt)


def _request_payloads(session: IkeSession, attempt: InitAttempt) -> list:
    payloads: list = [NotifyPayload(NotifyType.COOKIE, data=attempt.cookie)] if attempt.cookie else []
    payloads += [
        offer_ike(session.config.ike_suites),
        KePayload(attempt.dh.group, attempt.dh.public),
        NoncePayload(attempt.nonce),
        *_nat_notifies(session, bytes(8), session.remote),
        *_extras(session),
    ]
    return payloads


def on_response(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    attempt: InitAttempt = session.exchange
    cookie = message.notify(NotifyType.COOKIE)
    invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    if cookie is not None or invalid_ke is not None:
        attempt.retries += 1
        if attempt.retries > MAX_INIT_RETRIES:
            raise IkeError("IKE_SA_INIT: too many COOKIE/INVALID_KE_PAYLOAD retries")
        if cookie is not None:  # RFC 7296 §2.6: same request, cookie first
            attempt.cookie = cookie.data
        else:  # §1.2: retry with the group the responder wants, if we allow it
            wanted = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if wanted not in {s.dh for s in session.config.ike_suites}:
                raise InvalidKePayload(f"peer wants DH group {wanted}, which is not configured")
            attempt.dh = dh.generate(wanted, session.random)
        attempt.packet = session.resend_request(_request_payloads(session, attempt), now)
        session.exchange = attempt
        return
    _raise_on_error_notify(message)
    sa, ke, nonce = message.get(SaPayload), message.get(KePayload), message.get(NoncePayload)
    if sa is None or ke is None or nonce is None:
        raise IkeError("IKE_SA_INIT response lacks SA, KE or Nonce")
    suite = accept_ike(sa, session.config.ike_suites)
    if ke.group != suite.dh or ke.group != attempt.dh.group:
        raise IkeError(f"responder chose DH group {suite.dh} but sent KE for group {ke.group}")
    session.spi_r = message.header.spi_r
    shared = attempt.dh.shared_secret(ke.data)
    session.crypto = _derive(session, suite, shared, attempt.nonce, nonce.data, attempt.packet, data, True)
    session.use_nat_t_port()
    from tunnel.ike import ike_auth

    ike_auth.start(session, now)


# -- responder ---------------------------------------------------------------------------------------------
def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    from tunnel.ike.session import HALF_OPEN_TIMEOUT, State

    if message.header.message_id != 0 or session.state is not State.IDLE:
        raise MalformedPacket("IKE_SA_INIT must be message 0 of a new SA")
    session.spi_i = message.header.spi_i
    sa, ke, nonce = message.get(SaPayload), message.get(KePayload), message.get(NoncePayload)
    if sa is None or ke is None or nonce is None:
        return _refuse(session, message, NotifyType.INVALID_SYNTAX, b"", "IKE_SA_INIT request lacks SA, KE or Nonce")
    try:
        proposal, suite = select_ike(sa, session.config.ike_suites)
    except NoProposalChosen as exc:
        return _refuse(session, message, NotifyType.NO_PROPOSAL_CHOSEN, b"", str(exc))
    if ke.group != suite.dh:
        return _refuse(session, message, NotifyType.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big"),
                       f"initiator sent KE for group {ke.group}, we want {suite.dh}", fail=False)
    ours = dh.generate(suite.dh, session.random)
    try:
        shared = ours.shared_secret(ke.data)
    except DegeneratePublicValue as exc:
        return _refuse(session, message, NotifyType.INVALID_SYNTAX, b"", str(exc))
    session.spi_r = session.random(8)
    nr = session.random(session.config.nonce_len)
    payloads = [SaPayload((proposal,)), KePayload(suite.dh, ours.public), NoncePayload(nr),
                *_nat_notifies(session, session.spi_r, session.remote), *_extras(session)]
    from tunnel.ike.config import CertAuth

    if isinstance(session.config.auth, CertAuth):
        payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, session.config.auth.ca_key_hashes))
    response = session.send_response(message, payloads, encrypted=False)
    session.crypto = _derive(session, suite, shared, nonce.data, nr, data, response, False)
    session.state = State.INIT_DONE
    session.half_open_deadline = now + HALF_OPEN_TIMEOUT


def _refuse(session: IkeSession, message: Message, notify: int, data: bytes, reason: str, fail: bool = True) -> None:
    """Error answer to IKE_SA_INIT: plaintext, responder SPI zero, no state kept (RFC 7296 §2.21.1)."""
    session.send_response(message, [NotifyPayload(notify, data=data)], encrypted=False)
    if fail:
        session.fail(f"refused IKE_SA_INIT from {session.remote[0]}: {reason}", notify)
    else:
        session.close(f"asked {session.remote[0]} to retry IKE_SA_INIT: {reason}")


def _raise_on_error_notify(message: Message) -> None:
    from tunnel.ike.message import NotifyPayload as N

    for n in message.all(N):
        if n.type < 16384:
            name = NotifyType(n.type).name if n.type in NotifyType._value2member_map_ else str(n.type)
            err = NoProposalChosen if n.type == NotifyType.NO_PROPOSAL_CHOSEN else IkeError
            raise err(f"peer answered {name}")


def _derive(session: IkeSession, suite: IkeSuite, shared: bytes, ni: bytes, nr: bytes, request: bytes,
            response: bytes, initiator: bool) -> IkeSaCrypto:
    seed = keys.skeyseed(suite.prf, ni, nr, shared)
    k = keys.derive_ike_keys(suite.prf, seed, ni, nr, session.spi_i, session.spi_r, encr_key_len=suite.key_bits // 8 + 4)
    ei, er = SkCipher(k.sk_ei), SkCipher(k.sk_er)
    sk_in, sk_out = (er, ei) if initiator else (ei, er)
    return IkeSaCrypto(suite, k, sk_in, sk_out, ni, nr, request, response)
