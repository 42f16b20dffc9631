"""Is a certificate on the path revoked? CRLs (RFC 5280 §5, §6.3) checked against the validated path.

PURE (ARCHITECTURE.md ring 1): parsed CRLs arrive at construction (read from files by the gateway at
start and at every reload), the time on each call. A CRL counts only once its signature verifies with the
key of the CA on the path that issued the certificate in question, so a CRL file an attacker could
place cannot revoke (or un-revoke) anything it was not signed for.

Policy, for each certificate on the path below the trust anchor:
  - a verified CRL lists its serial: CertificateRevoked, whether the CRL is fresh or not;
  - a fresh verified CRL of its issuer does not: good;
  - otherwise, with OCSP on (tunnel/ike/ocsp.py) and a responder for it (configured, or its AIA): what
    the responder said (revoked, good, or unknown when it could not say);
  - no CRL of its issuer and no OCSP: not checked (the admin has no revocation source for that CA);
  - anything else (a stale CRL or one that does not verify, an unknown OCSP status) is unknown, which is
    RevocationUnknown in hard-fail mode (the default) and accepted in soft-fail mode.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tunnel.ike.errors import CertificateRevoked, RevocationPending, RevocationUnknown
from tunnel.ike.ocsp import OcspCache

CLOCK_SKEW = dt.timedelta(minutes=5)  # a CRL issued a moment "in the future" by a CA whose clock runs ahead


class RevocationChecker:
    def __init__(self, crls: Sequence[x509.CertificateRevocationList], hard_fail: bool = True,
                 ocsp: OcspCache | None = None) -> None:
        self.hard_fail = hard_fail
        self.ocsp = ocsp
        self._by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            self._by_issuer.setdefault(crl.issuer, []).append(crl)

    def __bool__(self) -> bool:
        return bool(self._by_issuer) or self.ocsp is not None

    def check(self, path: Sequence[x509.Certificate], now: dt.datetime) -> None:
        """path: end entity first, trust anchor last (CertVerifier._walk). RevocationPending (OCSP) when a
        status has to be asked first: for every certificate whose status is missing at once, so the
        answers come in parallel."""
        pending: list[tuple[bytes, str, bytes]] = []
        for cert, issuer in zip(path, path[1:], strict=False):
            try:
                self._check_one(cert, issuer, now)
            except RevocationPending as exc:
                pending += exc.queries
        if pending:
            raise RevocationPending(pending)

    def _check_one(self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> None:
        who = _who(cert)
        problem = self._crl_problem(cert, issuer, now, who)
        if problem == "":
            return  # a fresh, verified CRL of the issuer does not list it
        if self.ocsp is not None:
            entry = self.ocsp.status(cert, issuer, now)  # may raise RevocationPending
            if entry is not None:
                if entry.status == "revoked":
                    raise CertificateRevoked(f"certificate for {who} (serial {cert.serial_number:x}) was revoked "
                                             f"{_when(entry.revoked_at)} ({entry.detail})")
                if entry.status == "good":
                    return
                problem = entry.detail
        if problem is not None and self.hard_fail:
            raise RevocationUnknown(f"revocation status of the certificate for {who} unknown: {problem} "
                                    "(pki.revocation: hard)")

    def _crl_problem(self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime,
                     who: str) -> str | None:
        """"" when a fresh verified CRL vouches for it, None when no CRL of the issuer is held, else why
        the CRLs held cannot say; CertificateRevoked when one (verified, fresh or not) lists it."""
        crls = self._by_issuer.get(issuer.subject)
        if not crls:
            return None
        verified = [crl for crl in crls if _signed_by(crl, issuer)]
        for crl in verified:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise CertificateRevoked(f"certificate for {who} (serial {cert.serial_number:x}) was revoked "
                                         f"{_when(entry.revocation_date_utc)} by {_name(issuer.subject)}")
        if not verified:
            return f"no CRL of {_name(issuer.subject)} verifies with its key"
        if any(_fresh(crl, now) for crl in verified):
            return ""
        latest = max(verified, key=lambda crl: crl.last_update_utc)
        if latest.next_update_utc and latest.next_update_utc < now:
            return (f"the CRL of {_name(issuer.subject)} is out of date (next update was due "
                    f"{_when(latest.next_update_utc)})")
        return f"the CRL of {_name(issuer.subject)} is not valid yet (check the clocks)"


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """RFC 5280 §6.3.3 (f, g): the issuer may sign CRLs (keyUsage cRLSign, if present) and its key verifies."""
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        return False
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    try:
        return crl.is_signature_valid(key)
    except (ValueError, TypeError):
        return False


def _fresh(crl: x509.CertificateRevocationList, now: dt.datetime) -> bool:
    if crl.last_update_utc > now + CLOCK_SKEW:
        return False
    return crl.next_update_utc is None or now <= crl.next_update_utc


def _who(cert: x509.Certificate) -> str:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        first = next(iter(names), None)
        if first is not None:
            return _printable(str(first.value))
    except (x509.ExtensionNotFound, ValueError):
        pass
    return _name(cert.subject)


def _name(name: x509.Name) -> str:
    return _printable(name.rfc4514_string()) or "<empty name>"


def _printable(text: str, limit: int = 120) -> str:
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _when(moment: dt.datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
