"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, AUTH by pre-shared key or digital signature (RFC 7427)
with certificates, and the first Child SA with traffic-selector narrowing (§2.9) and its keys (§2.17)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from policy.ts import TsRange, covered, narrow
from tunnel.ike import keys
from tunnel.ike.child import ChildSa, from_wire, wire_selectors
from tunnel.ike.config import CertAuth, PskAuth
from tunnel.ike.constants import AuthMethod, CertEncoding, ExchangeType, IdType, NotifyType
from tunnel.ike.drops import IkeDrop
from tunnel.ike.errors import (
    AuthenticationFailed,
    BadIdentity,
    IkeError,
    NoProposalChosen,
    RevocationPending,
    TsUnacceptable,
)
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished, RevocationQuery
from tunnel.ike.message import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    IdPayload,
    Message,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
)
from tunnel.ike.proposal import EspSuite, accept_esp, offer_esp, select_esp
from tunnel.ike.sa import Exchange, IkeSa, IkeSaCrypto, IkeState, Task
from tunnel.ike.trust import Credential, choose, requested_authorities
from tunnel.secret import Secret


@dataclass
class AuthRequest(Exchange):
    spi_in: int  # our inbound SPI for the first Child SA
    kind = Task.IKE_AUTH

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        crypto, config = _crypto(sa), sa.config
        notify = _first_error(message)
        if notify == NotifyType.AUTHENTICATION_FAILED:
            raise AuthenticationFailed(f"peer {sa.remote[0]} rejected our authentication (AUTHENTICATION_FAILED)")
        idr, auth = _find(message, IdPayload, False), message.get(AuthPayload)
        if idr is None or auth is None:
            raise IkeError("IKE_AUTH response lacks IDr or AUTH" + (f" (peer sent {_name(notify)})" if notify else ""))
        _check_identity(sa, idr)
        octets = keys.signed_octets(crypto.init_response, crypto.ni, crypto.suite.prf, crypto.keys.sk_pr, idr.body())
        _verify(sa, auth, octets, idr, message)
        _established(sa, now)
        if notify is not None:
            return sa.event(ChildSaFailed(config.tunnel, f"peer refused the Child SA: {_name(notify)}", notify))
        try:
            sa_payload = message.get(SaPayload)
            tsi, tsr = _find(message, TsPayload, True), _find(message, TsPayload, False)
            if sa_payload is None or tsi is None or tsr is None:
                raise IkeError("IKE_AUTH response lacks SA, TSi or TSr")
            suite, peer_spi = accept_esp(sa_payload, auth_suites(config.esp_suites))
            local, remote = from_wire(tsi.selectors), from_wire(tsr.selectors)
            if not (covered(local, config.local_ts) and covered(remote, config.remote_ts)):
                raise TsUnacceptable("peer answered traffic selectors outside what we proposed")
        except IkeError as exc:
            return sa.event(ChildSaFailed(config.tunnel, str(sa.refused(exc)), exc.notify))
        _install_child(sa, self.spi_in, int.from_bytes(peer_spi, "big"), suite, local, remote, now)


def auth_suites(suites: Iterable[EspSuite]) -> tuple[EspSuite, ...]:
    """The Child SA of IKE_AUTH has no KE payload, so its proposals carry no DH transform (§1.2, §3.3.2);
    the PFS group applies to CREATE_CHILD_SA only."""
    return tuple(dict.fromkeys(replace(s, dh=None) for s in suites))


# -- initiator -------------------------------------------------------------------------------------------
def start(sa: IkeSa, now: float) -> None:
    config, crypto = sa.config, _crypto(sa)
    spi = sa.new_child_spi()
    idi = IdPayload(True, *config.local_id)
    octets = keys.signed_octets(crypto.init_request, crypto.nr, crypto.suite.prf, crypto.keys.sk_pi, idi.body())
    payloads: list[Payload] = [idi, *_certificates(sa)]
    if isinstance(config.auth, CertAuth):
        payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, config.auth.ca_key_hashes))
    if sa.send_initial_contact:  # §2.4: only on the first IKE SA since we started
        payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
    payloads += [
        IdPayload(False, *config.remote_id),
        _auth_payload(sa, octets),
        offer_esp(auth_suites(config.esp_suites), spi.to_bytes(4, "big")),
        TsPayload(True, wire_selectors(config.local_ts)),
        TsPayload(False, wire_selectors(config.remote_ts)),
    ]
    sa.enter(IkeState.AUTH_SENT, now)
    sa.send_request(ExchangeType.IKE_AUTH, payloads, now, AuthRequest(spi))


# -- responder ---------------------------------------------------------------------------------------------
def on_request(sa: IkeSa, data: bytes, message: Message, now: float) -> None:
    if sa.state is not IkeState.INIT_DONE:
        return sa.drop(IkeDrop.UNEXPECTED_IKE_AUTH)
    crypto, config = _crypto(sa), sa.config
    idi, auth = _find(message, IdPayload, True), message.get(AuthPayload)
    if idi is None or auth is None:
        raise AuthenticationFailed("IKE_AUTH request lacks IDi or AUTH")
    if sa.candidates:
        identify(sa, idi)
    _check_identity(sa, idi)
    note_certreq(sa, message)
    octets = keys.signed_octets(crypto.init_request, crypto.nr, crypto.suite.prf, crypto.keys.sk_pi, idi.body())
    _verify(sa, auth, octets, idi, message)
    sa.initial_contact_received = message.notify(NotifyType.INITIAL_CONTACT) is not None
    idr = IdPayload(False, *config.local_id)
    my_octets = keys.signed_octets(crypto.init_response, crypto.ni, crypto.suite.prf, crypto.keys.sk_pr, idr.body())
    payloads: list[Payload] = [idr, *_certificates(sa), _auth_payload(sa, my_octets)]
    _established(sa, now)
    try:
        payloads += _select_child(sa, message, now)
    except IkeError as exc:  # the IKE SA stands; only the Child SA is refused (§2.21.2)
        sa.refused(exc)
        payloads.append(NotifyPayload(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN))
        sa.event(ChildSaFailed(config.tunnel, str(exc), exc.notify))
    sa.send_response(message, payloads)


def _select_child(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    config = sa.config
    sa_payload, tsi, tsr = message.get(SaPayload), _find(message, TsPayload, True), _find(message, TsPayload, False)
    if sa_payload is None or tsi is None or tsr is None:
        raise NoProposalChosen("IKE_AUTH request lacks SA, TSi or TSr")
    proposal, suite = select_esp(sa_payload, auth_suites(config.esp_suites))
    # TSi describes the initiator's side, which is our remote side (§2.9).
    remote = narrow(from_wire(tsi.selectors), config.remote_ts)
    local = narrow(from_wire(tsr.selectors), config.local_ts)
    if not remote or not local:
        raise TsUnacceptable("proposed traffic selectors do not intersect the configured subnets")
    spi_in = sa.new_child_spi()
    _install_child(sa, spi_in, int.from_bytes(proposal.spi, "big"), suite, tuple(local), tuple(remote), now)
    answer = SaPayload((replace(proposal, spi=spi_in.to_bytes(4, "big")),))
    return [answer, TsPayload(True, wire_selectors(remote)), TsPayload(False, wire_selectors(local))]


# -- shared ------------------------------------------------------------------------------------------------
def _crypto(sa: IkeSa) -> IkeSaCrypto:
    """The keys of IKE_SA_INIT, which IKE_AUTH always follows."""
    assert sa.crypto is not None, "IKE_AUTH runs after IKE_SA_INIT made the keys"
    return sa.crypto


def _established(sa: IkeSa, now: float) -> None:
    sa.enter(IkeState.ESTABLISHED, now)
    sa.start_lifetime(now)
    sa.event(IkeSaEstablished(sa.config.tunnel, sa.spi_i, sa.spi_r, _crypto(sa).suite.name, sa.initiator,
                              sa.remote))


def _install_child(sa: IkeSa, spi_in: int, spi_out: int, suite: EspSuite, local: Sequence[TsRange],
                   remote: Sequence[TsRange], now: float) -> None:
    crypto = _crypto(sa)
    key_i, key_r = keys.child_keys(crypto.suite.prf, crypto.keys.sk_d, crypto.ni, crypto.nr,
                                   encr_key_len=suite.key_bits // 8 + 4)
    key_in, key_out = (key_r, key_i) if sa.initiator else (key_i, key_r)
    child = ChildSa(spi_in, spi_out, suite, tuple(local), tuple(remote))
    sa.start_child_lifetime(child, now)
    sa.add_child(child)
    sa.event(ChildSaEstablished(sa.config.tunnel, spi_in, spi_out, Secret(key_in), Secret(key_out),
                                tuple(local), tuple(remote), suite.name, sa.remote, worker=0))
    if sa.config.workers > 1:  # one Child SA for each further worker: the initiator asks at once,
        if sa.initiator:        # the responder a moment later unless the initiator's came first
            sa.new_child_at = now
        else:
            sa.schedule_new_child(now)


def note_certreq(sa: IkeSa, message: Message) -> None:
    """Remember which CAs the peer trusts (its CERTREQ, RFC 7296 §3.7), to pick the chain we send."""
    data = [p.data for p in message.all(CertReqPayload) if p.encoding == CertEncoding.X509_SIGNATURE]
    if data:
        sa.peer_authorities = requested_authorities(data)


def _credential(sa: IkeSa) -> tuple[Credential, tuple[bytes, ...]]:
    auth = sa.config.auth
    assert isinstance(auth, CertAuth)
    return choose(auth.credentials, sa.peer_authorities)


def _certificates(sa: IkeSa) -> list[Payload]:
    if isinstance(sa.config.auth, CertAuth):
        return [CertPayload(CertEncoding.X509_SIGNATURE, der) for der in _credential(sa)[1]]
    return []


def _auth_payload(sa: IkeSa, octets: bytes) -> AuthPayload:
    auth = sa.config.auth
    if isinstance(auth, PskAuth):
        return AuthPayload(AuthMethod.SHARED_KEY_MIC, keys.psk_auth(_crypto(sa).suite.prf, auth.psk, octets))
    from tunnel.ike.certs import sign_auth  # X.509 only for certificate tunnels (a PSK gateway starts faster)

    credential = _credential(sa)[0]
    method, data = sign_auth(credential.private_key, octets, rsa_pss=credential.rsa_pss)
    return AuthPayload(method, data)


def _verify(sa: IkeSa, auth: AuthPayload, octets: bytes, id_payload: IdPayload, message: Message) -> None:
    config = sa.config
    if isinstance(config.auth, PskAuth):
        prf = _crypto(sa).suite.prf
        matches = [hmac.compare_digest(auth.data, keys.psk_auth(prf, psk, octets))
                   for psk in (config.auth.psk, *config.auth.accepted)]
        if auth.method != AuthMethod.SHARED_KEY_MIC or not any(matches):
            raise AuthenticationFailed(f"pre-shared key AUTH from {sa.remote[0]} does not verify (wrong PSK?)")
        return
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        raise AuthenticationFailed(f"{sa.remote[0]} authenticated with a PSK; this tunnel requires certificates")
    chain = [c.data for c in message.all(CertPayload) if c.encoding == CertEncoding.X509_SIGNATURE]
    if not chain:
        raise AuthenticationFailed(f"{sa.remote[0]} sent no certificate")
    if config.wall_clock is None:
        raise AuthenticationFailed("no wall clock configured to check certificate validity")
    try:
        public_key = config.auth.verify_peer(chain, id_payload.id_type, id_payload.data, config.wall_clock())
    except RevocationPending as pending:  # asked upwards once; this message is handled again later
        for key, url, request in pending.queries:
            if request:
                sa.event(RevocationQuery(config.tunnel, key, url, request))
        raise
    from tunnel.ike.certs import verify_auth

    verify_auth(public_key, auth.method, auth.data, octets)
    sa.peer_chain = tuple(bytes(c) for c in chain)  # checked again when a reload brings new revocations


MAX_ID_LEN = 255  # an FQDN is at most 253 characters; a longer identity is no identity of ours


def identify(sa: IkeSa, idi: IdPayload) -> None:
    """Which of the tunnels the peer may be (several behind one address, or at `any`) it is: the one
    whose remote_id is its IDi, as strongSwan picks a peer config by identity. That tunnel's credentials
    (its PSK, or the certificate checks) then verify the AUTH payload, so a peer holding one tunnel's key
    cannot claim another tunnel's identity. The IKE proposal chosen before the peer was known must be one
    that tunnel allows."""
    _sane_identity(idi)
    found = next((c for c in sa.candidates if tuple(c.remote_id) == (idi.id_type, idi.data)), None)
    if found is None:
        raise AuthenticationFailed(f"peer identity {show_id(idi.id_type, idi.data)} is not the remote_id of any "
                                   f"tunnel that accepts {sa.remote[0]}")
    if _crypto(sa).suite not in found.ike_suites:
        raise AuthenticationFailed(f"tunnel {found.tunnel} does not allow the IKE proposal "
                                   f"{_crypto(sa).suite.name} negotiated before the peer was known")
    sa.config, sa.candidates = found, ()


def _sane_identity(id_payload: IdPayload) -> None:
    data = id_payload.data
    if len(data) > MAX_ID_LEN or id_payload.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR) \
            and not all(0x21 <= b < 0x7F for b in data):
        raise BadIdentity(f"peer identity of type {id_payload.id_type}, {len(data)} bytes, is not a valid "
                          "name (too long, or not printable ASCII)")


def _check_identity(sa: IkeSa, id_payload: IdPayload) -> None:
    expected = sa.config.remote_id
    data = id_payload.data
    _sane_identity(id_payload)
    if (id_payload.id_type, data) != tuple(expected):
        raise AuthenticationFailed(
            f"peer identity {show_id(id_payload.id_type, data)} is not the configured {show_id(*expected)}")


def show_id(id_type: int, data: bytes) -> str:
    """An identity for a log line: addresses as text, names as printable ASCII with anything else
    escaped (no newline a peer sends ends up in a log), other types by size only."""
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and len(data) in (4, 16):
        return str(ipaddress.ip_address(data))
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data[:MAX_ID_LEN])
    return f"<id type {id_type}, {len(data)} bytes>"


P = TypeVar("P", IdPayload, TsPayload)


def _find(message: Message, cls: type[P], initiator: bool) -> P | None:
    """IDi/IDr and TSi/TSr share a class; pick by side."""
    for payload in message.all(cls):
        if payload.initiator == initiator:
            return payload
    return None


def _first_error(message: Message) -> int | None:
    for n in message.all(NotifyPayload):
        if n.type < 16384:
            return n.type
    return None


def _name(notify: int | None) -> str:
    return NotifyType(notify).name if notify is not None and notify in NotifyType._value2member_map_ else str(notify)
