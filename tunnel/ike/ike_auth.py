"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, AUTH by pre-shared key or digital signature (RFC 7427)
with certificates, and the first Child SA with traffic-selector narrowing (§2.9) and its keys (§2.17)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from policy.ts import TsRange, covered, narrow
from tunnel.ike import keys
from tunnel.ike.config import CertAuth, PskAuth
from tunnel.ike.constants import AuthMethod, CertEncoding, ExchangeType, NotifyType, TsType
from tunnel.ike.errors import AuthenticationFailed, IkeError, NoProposalChosen, TsUnacceptable
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished
from tunnel.ike.message import (
    AuthPayload, CertPayload, CertReqPayload, IdPayload, Message, NotifyPayload, SaPayload, TrafficSelector,
    TsPayload,
)
from tunnel.ike.proposal import EspSuite, accept_esp, offer_esp, select_esp
from tunnel.secret import Secret

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession


@dataclass
class ChildState:
    spi_in: int
    spi_out: int
    suite: EspSuite
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    rekey_at: float | None = None  # soft lifetime (lifetime.py)
    expire_at: float | None = None  # hard lifetime
    installed_at: float | None = None  # when its lifetime started (its age, for the metrics)
    state: str = "installed"  # installed | rekeying (our request is out) | rekeyed (replaced) | deleting
    announced: bool = True  # the gateway got ChildSaEstablished for it
    keys: tuple[bytes, bytes] = field(default=(), repr=False)  # (in, out) of a rekeyed SA until announced


def auth_suites(suites) -> tuple[EspSuite, ...]:  # noqa: ANN001
    """The Child SA of IKE_AUTH has no KE payload, so its proposals carry no DH transform (§1.2, §3.3.2);
    the PFS group applies to CREATE_CHILD_SA only."""
    return tuple(dict.fromkeys(replace(s, dh=None) for s in suites))


# -- initiator -------------------------------------------------------------------------------------------
def start(session: IkeSession, now: float) -> None:
    from tunnel.ike.session import State

    config, crypto = session.config, session.crypto
    spi = new_spi(session)
    idi = IdPayload(True, *config.local_id)
    octets = keys.signed_octets(crypto.init_request, crypto.nr, crypto.suite.prf, crypto.keys.sk_pi, idi.body())
    payloads: list = [idi, *_certificates(session)]
    if isinstance(config.auth, CertAuth):
        payloads.append(CertReqPayload(CertEncoding.X509_SIGNATURE, config.auth.ca_key_hashes))
    if session.send_initial_contact:  # §2.4: only on the first IKE SA since we started
        payloads.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
    payloads += [
        IdPayload(False, *config.remote_id),
        _auth_payload(session, octets),
        offer_esp(auth_suites(config.esp_suites), spi.to_bytes(4, "big")),
        TsPayload(True, tuple(to_wire(r) for r in config.local_ts)),
        TsPayload(False, tuple(to_wire(r) for r in config.remote_ts)),
    ]
    session.state = State.AUTH_SENT
    session.send_request(ExchangeType.IKE_AUTH, payloads, now, exchange_state=spi)


def on_response(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    crypto, config = session.crypto, session.config
    notify = _first_error(message)
    if notify == NotifyType.AUTHENTICATION_FAILED:
        raise AuthenticationFailed(f"peer {session.remote[0]} rejected our authentication (AUTHENTICATION_FAILED)")
    idr, auth = _find(message, IdPayload, False), message.get(AuthPayload)
    if idr is None or auth is None:
        raise IkeError("IKE_AUTH response lacks IDr or AUTH" + (f" (peer sent {_name(notify)})" if notify else ""))
    _check_identity(session, idr)
    octets = keys.signed_octets(crypto.init_response, crypto.ni, crypto.suite.prf, crypto.keys.sk_pr, idr.body())
    _verify(session, auth, octets, idr, message)
    _established(session, now)
    spi_in: int = session.exchange
    if notify is not None:
        return session.event(ChildSaFailed(config.tunnel, f"peer refused the Child SA: {_name(notify)}", notify))
    try:
        sa, tsi, tsr = message.get(SaPayload), _find(message, TsPayload, True), _find(message, TsPayload, False)
        if sa is None or tsi is None or tsr is None:
            raise IkeError("IKE_AUTH response lacks SA, TSi or TSr")
        suite, peer_spi = accept_esp(sa, auth_suites(config.esp_suites))
        local, remote = from_wire(tsi.selectors), from_wire(tsr.selectors)
        if not (covered(local, config.local_ts) and covered(remote, config.remote_ts)):
            raise TsUnacceptable("peer answered traffic selectors outside what we proposed")
    except IkeError as exc:
        return session.event(ChildSaFailed(config.tunnel, str(exc), exc.notify))
    _install_child(session, spi_in, int.from_bytes(peer_spi, "big"), suite, local, remote, now)


# -- responder ---------------------------------------------------------------------------------------------
def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    from tunnel.ike.session import State

    if session.state is not State.INIT_DONE:
        return session.drop("unexpected_ike_auth")
    crypto, config = session.crypto, session.config
    idi, auth = _find(message, IdPayload, True), message.get(AuthPayload)
    if idi is None or auth is None:
        raise AuthenticationFailed("IKE_AUTH request lacks IDi or AUTH")
    _check_identity(session, idi)
    octets = keys.signed_octets(crypto.init_request, crypto.nr, crypto.suite.prf, crypto.keys.sk_pi, idi.body())
    _verify(session, auth, octets, idi, message)
    session.initial_contact_received = message.notify(NotifyType.INITIAL_CONTACT) is not None
    idr = IdPayload(False, *config.local_id)
    my_octets = keys.signed_octets(crypto.init_response, crypto.ni, crypto.suite.prf, crypto.keys.sk_pr, idr.body())
    payloads: list = [idr, *_certificates(session), _auth_payload(session, my_octets)]
    _established(session, now)
    try:
        payloads += _select_child(session, message, now)
    except IkeError as exc:  # the IKE SA stands; only the Child SA is refused (§2.21.2)
        payloads.append(NotifyPayload(exc.notify))
        session.event(ChildSaFailed(config.tunnel, str(exc), exc.notify))
    session.send_response(message, payloads)


def _select_child(session: IkeSession, message: Message, now: float) -> list:
    config = session.config
    sa, tsi, tsr = message.get(SaPayload), _find(message, TsPayload, True), _find(message, TsPayload, False)
    if sa is None or tsi is None or tsr is None:
        raise NoProposalChosen("IKE_AUTH request lacks SA, TSi or TSr")
    proposal, suite = select_esp(sa, auth_suites(config.esp_suites))
    # TSi describes the initiator's side, which is our remote side (§2.9).
    remote, local = narrow(from_wire(tsi.selectors), config.remote_ts), narrow(from_wire(tsr.selectors), config.local_ts)
    if not remote or not local:
        raise TsUnacceptable("proposed traffic selectors do not intersect the configured subnets")
    spi_in = new_spi(session)
    _install_child(session, spi_in, int.from_bytes(proposal.spi, "big"), suite, tuple(local), tuple(remote), now)
    answer = SaPayload((type(proposal)(proposal.number, proposal.protocol, spi_in.to_bytes(4, "big"), proposal.transforms),))
    return [answer, TsPayload(True, tuple(map(to_wire, remote))), TsPayload(False, tuple(map(to_wire, local)))]


# -- shared ------------------------------------------------------------------------------------------------
def new_spi(session: IkeSession, worker: int = 0) -> int:
    """A random inbound SPI that belongs to `worker`: spi % workers == worker (IkeConfig.workers)."""
    n = session.config.workers
    while True:  # 0-255 are reserved (RFC 4303 §2.1)
        spi = int.from_bytes(session.random(4), "big")
        spi += worker - spi % n
        if 256 <= spi < 2**32:
            return spi


def worker_of(session: IkeSession, spi_in: int) -> int:
    return spi_in % session.config.workers


def _established(session: IkeSession, now: float) -> None:
    from tunnel.ike import lifetime
    from tunnel.ike.session import State

    session.state = State.ESTABLISHED
    session.half_open_deadline = None
    lifetime.start_ike(session, now)
    session.event(IkeSaEstablished(session.config.tunnel, session.spi_i, session.spi_r, session.crypto.suite.name,
                                   session.initiator, session.remote))


def _install_child(session: IkeSession, spi_in: int, spi_out: int, suite: EspSuite, local, remote,
                   now: float) -> None:
    crypto = session.crypto
    key_i, key_r = keys.child_keys(crypto.suite.prf, crypto.keys.sk_d, crypto.ni, crypto.nr,
                                   encr_key_len=suite.key_bits // 8 + 4)
    key_in, key_out = (key_r, key_i) if session.initiator else (key_i, key_r)
    from tunnel.ike import lifetime

    session.add_child(ChildState(spi_in, spi_out, suite, tuple(local), tuple(remote)), now)
    session.event(ChildSaEstablished(session.config.tunnel, spi_in, spi_out, Secret(key_in), Secret(key_out),
                                     tuple(local), tuple(remote), suite.name, session.remote, worker=0))
    if session.config.workers > 1:  # one Child SA for each further worker: the initiator asks at once,
        if session.initiator:        # the responder a moment later unless the initiator's came first
            session.new_child_at = now
        else:
            lifetime.schedule_new_child(session, now)


def _certificates(session: IkeSession) -> list:
    auth = session.config.auth
    if isinstance(auth, CertAuth):
        return [CertPayload(CertEncoding.X509_SIGNATURE, der) for der in auth.chain]
    return []


def _auth_payload(session: IkeSession, octets: bytes) -> AuthPayload:
    auth = session.config.auth
    if isinstance(auth, PskAuth):
        return AuthPayload(AuthMethod.SHARED_KEY_MIC, keys.psk_auth(session.crypto.suite.prf, auth.psk, octets))
    from tunnel.ike.certs import sign_auth

    method, data = sign_auth(auth.private_key, octets)
    return AuthPayload(method, data)


def _verify(session: IkeSession, auth: AuthPayload, octets: bytes, id_payload: IdPayload, message: Message) -> None:
    config = session.config
    if isinstance(config.auth, PskAuth):
        expected = keys.psk_auth(session.crypto.suite.prf, config.auth.psk, octets)
        if auth.method != AuthMethod.SHARED_KEY_MIC or not hmac.compare_digest(auth.data, expected):
            raise AuthenticationFailed(f"pre-shared key AUTH from {session.remote[0]} does not verify (wrong PSK?)")
        return
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        raise AuthenticationFailed(f"{session.remote[0]} authenticated with a PSK; this tunnel requires certificates")
    chain = [c.data for c in message.all(CertPayload) if c.encoding == CertEncoding.X509_SIGNATURE]
    if not chain:
        raise AuthenticationFailed(f"{session.remote[0]} sent no certificate")
    if config.wall_clock is None:
        raise AuthenticationFailed("no wall clock configured to check certificate validity")
    from tunnel.ike.certs import verify_auth

    public_key = config.auth.verify_peer(chain, id_payload.id_type, id_payload.data, config.wall_clock())
    verify_auth(public_key, auth.method, auth.data, octets)


def _check_identity(session: IkeSession, id_payload: IdPayload) -> None:
    expected = session.config.remote_id
    if (id_payload.id_type, id_payload.data) != tuple(expected):
        raise AuthenticationFailed(
            f"peer identity {_show_id(id_payload.id_type, id_payload.data)} is not the configured "
            f"{_show_id(*expected)}")


def _show_id(id_type: int, data: bytes) -> str:
    import ipaddress

    if id_type in (1, 5) and len(data) in (4, 16):
        return str(ipaddress.ip_address(data))
    if id_type in (2, 3):
        return data.decode("ascii", "replace")
    return f"<id type {id_type}, {len(data)} bytes>"


def _find(message: Message, cls: type, initiator: bool):
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
    return NotifyType(notify).name if notify in NotifyType._value2member_map_ else str(notify)


def to_wire(r: TsRange) -> TrafficSelector:
    length = 4 if r.version == 4 else 16
    ts_type = TsType.TS_IPV4_ADDR_RANGE if r.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, r.protocol, r.start_port, r.end_port, r.start.to_bytes(length, "big"),
                           r.end.to_bytes(length, "big"))


def from_wire(selectors) -> list[TsRange]:
    result = []
    for ts in selectors:
        if ts.ts_type not in (TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE):
            continue  # unknown selector types are skipped, not fatal
        result.append(TsRange(4 if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else 6,
                              int.from_bytes(ts.start_address, "big"), int.from_bytes(ts.end_address, "big"),
                              ts.ip_protocol, ts.start_port, ts.end_port))
    return result
