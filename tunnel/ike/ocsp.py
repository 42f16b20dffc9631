"""OCSP (RFC 6960) for the certificates on a peer's path: requests to build, responses to check, a cache.

PURE (ARCHITECTURE.md ring 1): no sockets, no clock of its own. A certificate whose status is not in the
cache raises RevocationPending with the request to send; the IKE core drops the message that needed it
(the peer retransmits, or our retransmission fetches its answer again) and reports the query upwards; the
gateway POSTs it to the responder in a thread and hands the answer (or its absence) to answer(). The
next attempt then finds a status: good, revoked, or unknown (no answer, a bad one, a stale one), which
is refused in hard-fail mode and accepted in soft-fail mode.

A response counts only if it is signed by the certificate's issuer, or by a responder certificate that
the issuer signed for OCSP signing (id-kp-OCSPSigning, RFC 6960 §4.2.2.2), names the certificate we
asked about, and is fresh (thisUpdate not in the future, nextUpdate not past).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from tunnel.ike.errors import RevocationPending

CLOCK_SKEW = dt.timedelta(minutes=5)
NO_NEXT_UPDATE_TTL = dt.timedelta(minutes=5)  # a response without nextUpdate is reused this long at most
FAILURE_TTL = dt.timedelta(seconds=60)  # after no (usable) answer, ask again after this
MAX_ENTRIES = 4096
MAX_RESPONSE = 64 * 1024  # bytes the gateway reads from a responder


@dataclass
class _Entry:
    status: str  # "good" | "revoked" | "unknown"
    until: dt.datetime
    detail: str
    revoked_at: dt.datetime | None = None


class OcspCache:
    def __init__(self, url: str | None = None) -> None:
        """url: the responder to ask for every certificate; None: the one in each certificate's AIA."""
        self.url = url
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._asked: dict[bytes, tuple[x509.Certificate, x509.Certificate, dt.datetime]] = {}

    def responder(self, cert: x509.Certificate) -> str | None:
        return self.url or aia_ocsp_url(cert)

    def status(self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> _Entry | None:
        """The cached status; None when no responder is known for the certificate. RevocationPending (with
        a request to send the first time) while it is being asked."""
        url = self.responder(cert)
        if url is None:
            return None
        key = _key(cert, issuer)
        entry = self._entries.get(key)
        if entry is not None and now <= entry.until:
            return entry
        asked = self._asked.get(key)
        if asked is not None and now - asked[2] < FAILURE_TTL:
            raise RevocationPending([(key, url, b"")])  # already asked: no second query
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        self._asked[key] = (cert, issuer, now)
        raise RevocationPending([(key, url, request.public_bytes(Encoding.DER))])

    def answer(self, key: bytes, response: bytes | None, now: dt.datetime, problem: str = "") -> bool:
        """The responder's answer to a query (None: no answer, `problem` says why). False if we did not ask."""
        asked = self._asked.pop(key, None)
        if asked is None:
            return False
        cert, issuer, _ = asked
        try:
            if response is None:
                raise _Unusable(problem or "no answer")
            entry = _check(response, cert, issuer, now)
        except _Unusable as exc:
            entry = _Entry("unknown", now + FAILURE_TTL, f"OCSP responder {self.responder(cert)}: {exc}")
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return True


def aia_ocsp_url(cert: x509.Certificate) -> str | None:
    """The OCSP responder named in the certificate's Authority Information Access (http only)."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for description in aia:
        location = description.access_location
        if description.access_method == AuthorityInformationAccessOID.OCSP and \
                isinstance(location, x509.UniformResourceIdentifier) and location.value.startswith("http://"):
            return location.value
    return None


class _Unusable(Exception):
    pass


def _key(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    return hashlib.sha256(issuer.subject.public_bytes() + cert.serial_number.to_bytes(20, "big", signed=False)
                          ).digest()


def _check(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> _Entry:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise _Unusable("the answer is not an OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Unusable(f"responder said {response.response_status.name}")
    if response.serial_number != cert.serial_number:
        raise _Unusable("the response is about another certificate")
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, response.hash_algorithm).build()
    if (response.issuer_key_hash, response.issuer_name_hash) != (expected.issuer_key_hash, expected.issuer_name_hash):
        raise _Unusable("the response is about a certificate of another issuer")
    _check_signature(response, issuer, now)
    this_update = response.this_update_utc
    if this_update > now + CLOCK_SKEW:
        raise _Unusable("the response is not valid yet (check the clocks)")
    next_update = response.next_update_utc
    if next_update is not None and next_update < now:
        raise _Unusable(f"the response is stale (nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ})")
    until = min(next_update, now + dt.timedelta(days=1)) if next_update else now + NO_NEXT_UPDATE_TTL
    status = response.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        return _Entry("revoked", until, "OCSP", response.revocation_time_utc)
    if status == ocsp.OCSPCertStatus.GOOD:
        return _Entry("good", until, "OCSP")
    return _Entry("unknown", until, "the OCSP responder does not know the certificate")


def _check_signature(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime) -> None:
    """Signed by the issuer, or by a delegated responder certificate the issuer signed (RFC 6960 §4.2.2.2)."""
    signer = issuer
    for candidate in response.certificates:
        if candidate.subject == issuer.subject and candidate.public_key() == issuer.public_key():
            break
        try:
            candidate.verify_directly_issued_by(issuer)
            usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage and \
                candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            signer = candidate
            break
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise _Unusable("the response's signature algorithm is not supported")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        else:
            raise _Unusable("the responder's key type is not supported")
    except InvalidSignature:
        raise _Unusable("the response's signature does not verify with the issuer's or its responder's "
                        "key") from None
