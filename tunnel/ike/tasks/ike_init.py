"""IKE_SA_INIT (RFC 7296 §1.2): proposals, Diffie-Hellman, nonces, NAT detection, COOKIE and
INVALID_KE_PAYLOAD retries, and the IKE SA keys (§2.14). The initiator's IKE_AUTH follows once this
exchange has made the keys (the engine starts it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from tunnel.errors import MalformedPacket
from tunnel.ike import dh, keys
from tunnel.ike.config import CertAuth
from tunnel.ike.constants import CertEncoding, ExchangeType, NotifyType
from tunnel.ike.errors import DegeneratePublicValue, IkeError, InvalidKePayload, NoProposalChosen
from tunnel.ike.message import (
    CertReqPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
)
from tunnel.ike.proposal import IkeSuite, accept_ike, offer_ike, select_ike
from tunnel.ike.sa import MAX_INIT_RETRIES, Address, Exchange, IkeSa, IkeSaCrypto, IkeState, Task
from tunnel.ike.sk import SkCipher
from tunnel.ike.tasks.ike_auth import note_certreq

SIGNATURE_HASH_ALGORITHMS = b"\x00\x02\x00\x03\x00\x04"  # SHA2-256/384/512, RFC 7427 §4
MAX_COOKIE_LEN = 64  # §2.6: a cookie is 1 to 64 octets; we echo nothing longer


@dataclass
class InitAttempt(Exchange):
    dh: dh.DhPrivate
    nonce: bytes
    cookie: bytes = b""
    retries: int = 0
    packet: bytes = b""  # the request as last sent: RealMessage1 for AUTH (§2.15)
    kind = Task.IKE_SA_INIT

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        cookie = message.notify(NotifyType.COOKIE)
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if cookie is not None or invalid_ke is not None:
            return self._retry(sa, cookie, invalid_ke, now)
        _raise_on_error_notify(message)
        sa_payload, ke, nonce = message.get(SaPayload), message.get(KePayload), message.get(NoncePayload)
        if sa_payload is None or ke is None or nonce is None:
            raise IkeError("IKE_SA_INIT response lacks SA, KE or Nonce")
        suite = accept_ike(sa_payload, sa.config.ike_suites)
        if ke.group != suite.dh or ke.group != self.dh.group:
            raise IkeError(f"responder chose DH group {suite.dh} but sent KE for group {ke.group}")
        sa.spi_r = message.header.spi_r
        note_certreq(sa, message)
        sa.fragmentation = bool(sa.config.fragment_size) and \
            message.notify(NotifyType.FRAGMENTATION_SUPPORTED) is not None
        shared = self.dh.shared_secret(ke.data)
        sa.crypto = _derive(sa, suite, shared, self.nonce, nonce.data, self.packet, data, True)
        sa.use_nat_t_port()

    def _retry(self, sa: IkeSa, cookie: NotifyPayload | None, invalid_ke: NotifyPayload | None, now: float) -> None:
        self.retries += 1
        if self.retries > MAX_INIT_RETRIES:
            raise IkeError("IKE_SA_INIT: too many COOKIE/INVALID_KE_PAYLOAD retries")
        if cookie is not None:  # RFC 7296 §2.6: same request, cookie first
            if not 1 <= len(cookie.data) <= MAX_COOKIE_LEN:
                raise IkeError(f"IKE_SA_INIT answered with a COOKIE of {len(cookie.data)} bytes (1-64, §2.6)")
            self.cookie = cookie.data
        elif invalid_ke is not None:  # §1.2: retry with the group the responder wants, if we allow it
            wanted = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if wanted not in {s.dh for s in sa.config.ike_suites}:
                raise InvalidKePayload(f"peer wants DH group {wanted}, which is not configured")
            self.dh = dh.generate(wanted, sa.random)
        self.packet = sa.resend_request(_request_payloads(sa, self), now)
        sa.exchange = self


# -- initiator -------------------------------------------------------------------------------------------
def start(sa: IkeSa, now: float) -> None:
    group = sa.config.ike_suites[0].dh
    attempt = InitAttempt(dh.generate(group, sa.random), sa.random(sa.config.nonce_len))
    sa.enter(IkeState.INIT_SENT, now)
    attempt.packet = sa.send_request(ExchangeType.IKE_SA_INIT, _request_payloads(sa, attempt), now, attempt,
                                     encrypted=False)


def _request_payloads(sa: IkeSa, attempt: InitAttempt) -> list[Payload]:
    payloads: list[Payload] = [NotifyPayload(NotifyType.COOKIE, data=attempt.cookie)] if attempt.cookie else []
    payloads += [
        offer_ike(sa.config.ike_suites),
        KePayload(attempt.dh.group, attempt.dh.public),
        NoncePayload(attempt.nonce),
        *_nat_notifies(sa, bytes(8), sa.remote),
        *_extras(sa, _offers_fragmentation(sa)),
    ]
    return payloads


# -- responder ---------------------------------------------------------------------------------------------
def on_request(sa: IkeSa, data: bytes, message: Message, now: float) -> None:
    if message.header.message_id != 0 or sa.state is not IkeState.IDLE:
        raise MalformedPacket("IKE_SA_INIT must be message 0 of a new SA")
    sa.spi_i = message.header.spi_i
    sa_payload, ke, nonce = message.get(SaPayload), message.get(KePayload), message.get(NoncePayload)
    if sa_payload is None or ke is None or nonce is None:
        return _refuse(sa, message, NotifyType.INVALID_SYNTAX, b"", "IKE_SA_INIT request lacks SA, KE or Nonce")
    try:
        proposal, suite = _select(sa, sa_payload)
    except NoProposalChosen as exc:
        return _refuse(sa, message, NotifyType.NO_PROPOSAL_CHOSEN, b"", str(sa.refused(exc)))
    if ke.group != suite.dh:
        return _refuse(sa, message, NotifyType.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big"),
                       f"initiator sent KE for group {ke.group}, we want {suite.dh}", fail=False)
    ours = dh.generate(suite.dh, sa.random)
    try:
        shared = ours.shared_secret(ke.data)
    except DegeneratePublicValue as exc:
        return _refuse(sa, message, NotifyType.INVALID_SYNTAX, b"", str(exc))
    sa.spi_r = sa.random(8)
    sa.fragmentation = _offers_fragmentation(sa) and message.notify(NotifyType.FRAGMENTATION_SUPPORTED) is not None
    nr = sa.random(sa.config.nonce_len)
    payloads: list[Payload] = [SaPayload((proposal,)), KePayload(suite.dh, ours.public), NoncePayload(nr),
                               *_nat_notifies(sa, sa.spi_r, sa.remote), *_extras(sa, sa.fragmentation)]
    cert = _cert_auth(sa)
    if cert is not None:
        payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, cert.ca_key_hashes))
    response = sa.send_response(message, payloads, encrypted=False)
    sa.crypto = _derive(sa, suite, shared, nonce.data, nr, data, response, False)
    sa.enter(IkeState.INIT_DONE, now)  # its deadline: the half-open timeout


def _select(sa: IkeSa, offer: SaPayload) -> tuple[Proposal, IkeSuite]:
    """The proposal we accept. A peer several tunnels may be (sa.candidates) gets the first of them whose
    proposals match; its name stays unknown (tunnel "") until IKE_AUTH says who the peer is."""
    if not sa.candidates:
        return select_ike(offer, sa.config.ike_suites)
    refusal: NoProposalChosen | None = None
    for candidate in sa.candidates:
        try:
            chosen = select_ike(offer, candidate.ike_suites)
        except NoProposalChosen as exc:
            refusal = refusal or exc
            continue
        sa.config = replace(candidate, tunnel="")
        return chosen
    assert refusal is not None
    raise refusal


def _cert_auth(sa: IkeSa) -> CertAuth | None:
    """Certificates in use by the tunnel, or by any tunnel the peer may turn out to be: then CERTREQ and
    SIGNATURE_HASH_ALGORITHMS go out, so a certificate peer sends its certificate (RFC 7296 §3.7)."""
    for config in sa.candidates or (sa.config,):
        if isinstance(config.auth, CertAuth):
            return config.auth
    return None


def _refuse(sa: IkeSa, message: Message, notify: int, data: bytes, reason: str, fail: bool = True) -> None:
    """Error answer to IKE_SA_INIT: plaintext, responder SPI zero, no state kept (RFC 7296 §2.21.1)."""
    sa.send_response(message, [NotifyPayload(notify, data=data)], encrypted=False)
    if fail:
        sa.fail(f"refused IKE_SA_INIT from {sa.remote[0]}: {reason}", notify)
    else:
        sa.close(f"asked {sa.remote[0]} to retry IKE_SA_INIT: {reason}")


# -- shared ------------------------------------------------------------------------------------------------
def _nat_notifies(sa: IkeSa, spi_r: bytes, peer: Address) -> list[NotifyPayload]:
    # Our NAT_DETECTION_SOURCE_IP is deliberately random (as strongSwan's encap=yes does): sitelink
    # carries ESP only inside UDP, so both sides must believe a NAT is present and use port 4500.
    fake_source = sa.random(20)
    destination = keys.nat_detection_hash(sa.spi_i, spi_r, ipaddress.ip_address(peer[0]).packed, peer[1])
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=fake_source),
        NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=destination),
    ]


def _extras(sa: IkeSa, fragmentation: bool) -> list[NotifyPayload]:
    """fragmentation: the initiator offers it when configured to; the responder answers only an offer."""
    extras = []
    if _cert_auth(sa) is not None:
        extras.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=SIGNATURE_HASH_ALGORITHMS))
    if fragmentation:
        extras.append(NotifyPayload(NotifyType.FRAGMENTATION_SUPPORTED))
    return extras


def _offers_fragmentation(sa: IkeSa) -> bool:
    """RFC 7383 §2.3: the initiator offers when configured to; the responder answers (and from then on
    fragments) only when the initiator offered too."""
    return any(config.fragment_size for config in sa.candidates or (sa.config,))


def _raise_on_error_notify(message: Message) -> None:
    for n in message.all(NotifyPayload):
        if n.type < 16384:
            name = NotifyType(n.type).name if n.type in NotifyType._value2member_map_ else str(n.type)
            err = NoProposalChosen if n.type == NotifyType.NO_PROPOSAL_CHOSEN else IkeError
            raise err(f"peer answered {name}")


def _derive(sa: IkeSa, suite: IkeSuite, shared: bytes, ni: bytes, nr: bytes, request: bytes,
            response: bytes, initiator: bool) -> IkeSaCrypto:
    seed = keys.skeyseed(suite.prf, ni, nr, shared)
    k = keys.derive_ike_keys(suite.prf, seed, ni, nr, sa.spi_i, sa.spi_r, encr_key_len=suite.key_bits // 8 + 4)
    ei, er = SkCipher(k.sk_ei), SkCipher(k.sk_er)
    sk_in, sk_out = (er, ei) if initiator else (ei, er)
    return IkeSaCrypto(suite, k, sk_in, sk_out, ni, nr, request, response)
