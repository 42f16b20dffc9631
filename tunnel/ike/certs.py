"""X.509 peer authentication for IKE_AUTH: identities, certificate path checks and AUTH signatures.

PURE (ARCHITECTURE.md ring 1): no files, no clock. The wall-clock time a certificate is judged at
arrives as `now: datetime` on each call; trust anchors arrive as parsed certificates at construction.

Specs applied here:
  RFC 7296 §3.5  ID payload types (IdType) and what their data holds.
  RFC 7296 §3.6  CERT payloads: encoding 4 (X.509 signature), the first one carries the signing key;
                 the others may come in any order, so the path is built by issuer name, not by position.
  RFC 7296 §3.8  AUTH payload methods.
  RFC 4945 §3.1  the ID must match the certificate (subjectAltName, or the subject for ID_DER_ASN1_DN).
  RFC 7427 §3    AUTH method 14: 1-octet length | AlgorithmIdentifier DER | signature value.
  RFC 7427 §4    SIGNATURE_HASH_ALGORITHMS notify data.
  RFC 4754 §7    AUTH method 9 (ECDSA-256): raw r | s, SHA-256, P-256.

Every rejection is an AuthenticationFailed whose message names the certificate and the rule it broke.
Messages carry only public material (names, dates, algorithm identifiers), never key or signature bytes.

Past ~400 lines on purpose: identities, path checks and AUTH signatures are the three halves of one
decision ("is this peer who it claims to be"), and tunnel/ike/auth.py needs all three together.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tunnel.errors import MalformedPacket, SitelinkError
from tunnel.ike.constants import AuthMethod, IdType
from tunnel.ike.errors import AuthenticationFailed
from tunnel.ike.identity import InvalidIdentity, PeerIdentity, _name_from_der, _printable
from tunnel.ike.revocation import RevocationChecker

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MAX_CHAIN = 8  # certificates accepted in one IKE_AUTH: a leaf and a few intermediates, never a bundle
MIN_RSA_BITS = 2048  # the floor of cryptography's webpki policy used below; RFC 8247 advises no less
ID_KP_IPSEC_IKE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # RFC 4945 §5.1.3.12


class InvalidTrustAnchor(SitelinkError):
    """A configured CA certificate cannot anchor a path (not a CA, no certificates at all)."""

    exit_status = 2


# -- certificate paths (RFC 7296 §3.6, RFC 5280 §6) ------------------------------------------------------


class CertVerifier:
    """Checks a peer's CERT payloads against the configured CAs and the peer's ID.

    Two layers: first our own walk, which turns each failure a site admin can cause into a precise
    reason; then cryptography's RFC 5280 path validator (x509.verification) over the same inputs, so
    what a well-kept library enforces (name constraints, path length, critical extensions, key sizes)
    is enforced too. Both must accept.
    """

    def __init__(self, ca_certificates: Sequence[x509.Certificate],
                 revocation: RevocationChecker | None = None) -> None:
        anchors = list(ca_certificates)
        if not anchors:
            raise InvalidTrustAnchor("no CA certificate configured: certificate authentication needs at least one")
        for ca in anchors:
            if not _is_ca(ca):
                raise InvalidTrustAnchor(f"{_subject(ca)} is not a CA certificate (basicConstraints CA=true missing)")
        self._anchors = anchors
        self._store = Store(anchors)
        self._revocation = revocation

    def verify(self, chain: Sequence[bytes], identity: PeerIdentity, now: dt.datetime) -> PublicKey:
        """Return the end entity's public key (to check AUTH with) or raise AuthenticationFailed."""
        now = _utc(now)
        certs = _parse_chain(chain)
        leaf, intermediates = certs[0], certs[1:]
        path = self._walk(leaf, intermediates, now)
        _check_end_entity(leaf)
        _check_identity(leaf, identity)
        self._library_check(leaf, intermediates, now, path)
        if self._revocation:
            self._revocation.check(path, now)
        key = leaf.public_key()
        if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            _check_key_strength(key, _label(leaf))
            return key
        raise AuthenticationFailed(f"certificate for {_label(leaf)} has an unsupported key type "
                                   f"({type(key).__name__}); sitelink accepts ECDSA and RSA")

    def _walk(self, leaf: x509.Certificate, intermediates: list[x509.Certificate],
              now: dt.datetime) -> list[x509.Certificate]:
        """Walk from the leaf to a configured CA, by issuer name and signature, checking each link."""
        path = [leaf]
        current = leaf
        while True:
            _check_validity(current, now, "CA certificate" if current in self._anchors else "certificate")
            if current in self._anchors:
                return path
            issuer = self._issuer_of(current, [c for c in intermediates if c not in path])
            if not _is_ca(issuer):
                raise AuthenticationFailed(f"issuer {_subject(issuer)} of certificate for {_label(current)} "
                                           "is not a CA (basicConstraints CA=true missing)")
            path.append(issuer)
            if len(path) > MAX_CHAIN:
                raise AuthenticationFailed(f"certificate path for {_label(leaf)} is longer than {MAX_CHAIN}")
            current = issuer

    def _issuer_of(self, cert: x509.Certificate, pool: list[x509.Certificate]) -> x509.Certificate:
        """The configured CA (preferred) or received intermediate whose key signed `cert`."""
        candidates = [c for c in self._anchors if c.subject == cert.issuer]
        candidates += [c for c in pool if c.subject == cert.issuer]
        if not candidates:
            raise AuthenticationFailed(f"issuer not trusted: {_name(cert.issuer)} "
                                       f"(issued the certificate for {_label(cert)}; no configured CA "
                                       "or received intermediate has that name)")
        for candidate in candidates:
            try:
                cert.verify_directly_issued_by(candidate)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return candidate
        raise AuthenticationFailed(f"signature on certificate for {_label(cert)} does not verify with the "
                                   f"key of {_name(cert.issuer)} (altered or forged certificate)")

    def _library_check(self, leaf: x509.Certificate, intermediates: list[x509.Certificate],
                       now: dt.datetime, path: list[x509.Certificate]) -> None:
        # The end entity's keyUsage and identity are checked above with IKE's rules (RFC 4945), not
        # TLS client rules; the CA side keeps cryptography's RFC 5280 / CA/B defaults.
        ee_policy = ExtensionPolicy.permit_all()
        builder = (PolicyBuilder().store(self._store).time(now).max_chain_depth(MAX_CHAIN)
                   .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy))
        try:
            builder.build_client_verifier().verify(leaf, [c for c in intermediates if c in path])
        except VerificationError as exc:
            raise AuthenticationFailed(f"certificate path for {_label(leaf)} rejected by RFC 5280 "
                                       f"validation: {_printable(str(exc), 200)}") from None


def _parse_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    if not chain:
        raise AuthenticationFailed("no certificate received: a CERT payload (encoding 4, X.509 "
                                   "signature) is required for certificate authentication")
    if len(chain) > MAX_CHAIN:
        raise AuthenticationFailed(f"{len(chain)} certificates received; at most {MAX_CHAIN} are accepted")
    certs = []
    for index, der in enumerate(chain, 1):
        try:
            certs.append(x509.load_der_x509_certificate(bytes(der)))
        except ValueError:
            raise AuthenticationFailed(f"CERT payload {index} of {len(chain)} ({len(der)} bytes) is not a "
                                       "DER X.509 certificate") from None
    return certs


def _check_validity(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now > cert.not_valid_after_utc:
        raise AuthenticationFailed(f"{what} for {_label(cert)} expired {_when(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise AuthenticationFailed(f"{what} for {_label(cert)} is not valid before "
                                   f"{_when(cert.not_valid_before_utc)} (check the clocks)")


def _check_end_entity(leaf: x509.Certificate) -> None:
    """A keyUsage, when present, must allow digitalSignature to sign AUTH (RFC 5280 §4.2.1.3).
    extendedKeyUsage is not required: IKE certificates are often issued without one."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:  # a duplicate or undecodable extension
        raise AuthenticationFailed(f"certificate for {_label(leaf)} has malformed extensions: {exc}") from None
    if not usage.digital_signature:
        raise AuthenticationFailed(f"certificate for {_label(leaf)} has a keyUsage without digitalSignature: "
                                   "it may not sign IKE AUTH payloads")


def _check_identity(leaf: x509.Certificate, identity: PeerIdentity) -> None:
    """RFC 4945 §3.1: the ID must appear in the certificate, or the DN must equal the subject."""
    if identity.id_type == IdType.ID_DER_ASN1_DN:
        name = _name_from_der(identity.data)
        if name is None or name != leaf.subject:
            raise AuthenticationFailed(f"identity {identity} does not equal the certificate subject "
                                       f"{_subject(leaf)}")
        return
    sans = _sans(leaf)
    if identity.id_type == IdType.ID_FQDN:
        wanted = identity.data.decode("ascii", "replace").rstrip(".").lower()
        found = any(isinstance(g, x509.DNSName) and g.value.rstrip(".").lower() == wanted for g in sans)
    elif identity.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        found = any(isinstance(g, x509.IPAddress) and isinstance(g.value, ipaddress.IPv4Address | ipaddress.IPv6Address)
                    and g.value.packed == identity.data for g in sans)  # (a network in a SAN matches nothing)
    elif identity.id_type == IdType.ID_RFC822_ADDR:
        wanted = identity.data.decode("utf-8", "replace").lower()
        found = any(isinstance(g, x509.RFC822Name) and g.value.lower() == wanted for g in sans)
    else:
        raise AuthenticationFailed(f"identity {identity} (ID type {identity.id_type}) cannot be matched "
                                   "against a certificate; use an FQDN, IP address, email or DN")
    if not found:
        listed = ", ".join(_printable(_general_name(g), 60) for g in sans[:8]) + (", ..." if len(sans) > 8 else "")
        raise AuthenticationFailed(f"identity {identity} not in subjectAltName [{listed}] of certificate "
                                   f"{_subject(leaf)}")


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:
        raise AuthenticationFailed(f"certificate {_subject(cert)} has malformed extensions: {exc}") from None


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName | x509.RFC822Name | x509.UniformResourceIdentifier):
        return name.value
    if isinstance(name, x509.IPAddress):
        return str(name.value)
    if isinstance(name, x509.DirectoryName):
        return name.value.rfc4514_string()
    return type(name).__name__


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def _check_key_strength(key: PublicKey, label: str) -> None:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise AuthenticationFailed(f"RSA key of {label} has {key.key_size} bits; at least {MIN_RSA_BITS} required")


def _label(cert: x509.Certificate) -> str:
    """How a message names a certificate: its first subjectAltName, else its subject."""
    sans: Iterable[x509.GeneralName]
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        sans = []
    for general in sans:
        if isinstance(general, x509.DNSName | x509.IPAddress | x509.RFC822Name):
            return _printable(_general_name(general), 80)
    return _subject(cert)


def _subject(cert: x509.Certificate) -> str:
    return _name(cert.subject)


def _name(name: x509.Name) -> str:
    return _printable(name.rfc4514_string(), 120) or "<empty name>"


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(now: dt.datetime) -> dt.datetime:
    """A naive `now` is read as UTC, as cryptography reads naive certificate times."""
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


# -- AUTH signatures (RFC 7427 §3, RFC 4754) -------------------------------------------------------------


@dataclass(frozen=True)
class _SigAlg:
    name: str
    algorithm_identifier: bytes  # DER, exactly as RFC 7427 Appendix A lists it
    key_type: type
    hash: type[hashes.HashAlgorithm]
    pss: bool = False


def _der_sha2(oid_last: int) -> bytes:
    # AlgorithmIdentifier { id-sha256/384/512 (2.16.840.1.101.3.4.2.n), NULL }
    return bytes.fromhex("300d06096086480165030402") + bytes([oid_last]) + bytes.fromhex("0500")


_MGF1 = bytes.fromhex("06092a864886f70d010108")  # OID id-mgf1 (1.2.840.113549.1.1.8)

# RFC 7427 Appendix A.1.x (sha*WithRSAEncryption, NULL parameters), A.3.x (ecdsa-with-SHA*, no
# parameters) and A.4.3 (RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt length 32).
_SIG_ALGS: tuple[_SigAlg, ...] = (
    _SigAlg("sha256WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010b0500"),
            rsa.RSAPublicKey, hashes.SHA256),
    _SigAlg("sha384WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010c0500"),
            rsa.RSAPublicKey, hashes.SHA384),
    _SigAlg("sha512WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010d0500"),
            rsa.RSAPublicKey, hashes.SHA512),
    _SigAlg("ecdsa-with-SHA256", bytes.fromhex("300a06082a8648ce3d040302"), ec.EllipticCurvePublicKey, hashes.SHA256),
    _SigAlg("ecdsa-with-SHA384", bytes.fromhex("300a06082a8648ce3d040303"), ec.EllipticCurvePublicKey, hashes.SHA384),
    _SigAlg("ecdsa-with-SHA512", bytes.fromhex("300a06082a8648ce3d040304"), ec.EllipticCurvePublicKey, hashes.SHA512),
    *(_SigAlg(f"RSASSA-PSS-SHA{bits}",  # A.4.3 for SHA-256; SHA-384/512 alike, salt = digest length
              bytes.fromhex("3041" "06092a864886f70d01010a" "3034"
                            "a00f" + _der_sha2(n).hex()
                            + "a11c" "301a" + _MGF1.hex() + _der_sha2(n).hex()
                            + "a203" "0201" + f"{bits // 8:02x}"),
              rsa.RSAPublicKey, hash_type, pss=True)
      for n, bits, hash_type in ((1, 256, hashes.SHA256), (2, 384, hashes.SHA384), (3, 512, hashes.SHA512))),
)
_BY_DER = {alg.algorithm_identifier: alg for alg in _SIG_ALGS}
_BY_NAME = {alg.name: alg for alg in _SIG_ALGS}
_EC_HASH = {"secp256r1": "ecdsa-with-SHA256", "secp384r1": "ecdsa-with-SHA384", "secp521r1": "ecdsa-with-SHA512"}

# RFC 7427 §4: Hash Algorithm Identifiers (IANA "IKEv2 Hash Algorithms").
HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512 = 2, 3, 4


def signature_hash_algorithms() -> bytes:
    """Data of our SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4): SHA2-256, SHA2-384, SHA2-512."""
    return b"".join(h.to_bytes(2, "big") for h in (HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512))


def parse_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """The peer's SIGNATURE_HASH_ALGORITHMS notify data: a list of 2-octet identifiers (RFC 7427 §4)."""
    if len(data) % 2:
        raise MalformedPacket(f"SIGNATURE_HASH_ALGORITHMS data has odd length {len(data)}")
    return tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))


def sign_auth(private_key: PrivateKey, signed_octets: bytes, *, rsa_pss: bool = False) -> tuple[int, bytes]:
    """(AuthMethod.DIGITAL_SIGNATURE, AUTH data) over the octets of RFC 7296 §2.15.

    ECDSA uses the hash matching the curve (P-256: SHA-256, RFC 5480 §4) and, as RFC 7427 §3 requires
    for method 14, a DER Ecdsa-Sig-Value; RSA uses SHA-256 with PKCS#1 v1.5, or PSS when asked.
    Every RFC 7427 peer supports SHA2-256, so the peer's SIGNATURE_HASH_ALGORITHMS need not be consulted
    for P-256 and RSA keys.
    """
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        alg = _BY_NAME.get(_EC_HASH.get(private_key.curve.name, ""))
        if alg is None:
            raise ValueError(f"ECDSA curve {private_key.curve.name} is not supported for IKE AUTH")
        signature = private_key.sign(signed_octets, ec.ECDSA(alg.hash()))
    elif isinstance(private_key, rsa.RSAPrivateKey):
        alg = _BY_NAME["RSASSA-PSS-SHA256" if rsa_pss else "sha256WithRSAEncryption"]
        signature = private_key.sign(signed_octets, _rsa_padding(alg), alg.hash())
    else:
        raise TypeError(f"unsupported private key type {type(private_key).__name__}")
    identifier = alg.algorithm_identifier
    return AuthMethod.DIGITAL_SIGNATURE, bytes([len(identifier)]) + identifier + signature


def verify_auth(public_key: PublicKey, method: int, auth_data: bytes, signed_octets: bytes) -> None:
    """Check an AUTH payload made with the peer's certificate key; raise AuthenticationFailed if not."""
    auth_data = bytes(auth_data)
    if method == AuthMethod.DIGITAL_SIGNATURE:
        alg, signature = _split_rfc7427(auth_data)
    elif method == AuthMethod.ECDSA_256:
        alg, signature = _BY_NAME["ecdsa-with-SHA256"], _rfc4754_to_der(public_key, auth_data)
    elif method == AuthMethod.RSA_SIG:
        raise AuthenticationFailed("AUTH method RSA_SIG (1) signs with SHA-1; sitelink requires "
                                   "DIGITAL_SIGNATURE (14, RFC 7427)")
    else:
        raise AuthenticationFailed(f"AUTH method {_method_name(method)} is not accepted with certificates")
    if not isinstance(public_key, alg.key_type):
        raise AuthenticationFailed(f"AUTH uses {alg.name} but the peer's certificate holds "
                                   f"{_key_kind(public_key)}")
    _check_key_strength(public_key, "the peer's certificate")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, signed_octets, ec.ECDSA(alg.hash()))
        else:
            public_key.verify(signature, signed_octets, _rsa_padding(alg), alg.hash())
    except InvalidSignature:
        raise AuthenticationFailed(f"AUTH signature ({alg.name}) does not verify with the key in the "
                                   "peer's certificate") from None


def _split_rfc7427(auth_data: bytes) -> tuple[_SigAlg, bytes]:
    """RFC 7427 §3: ASN.1 Length (1 octet) | AlgorithmIdentifier | Signature Value."""
    if not auth_data:
        raise AuthenticationFailed("AUTH data is empty")
    length = auth_data[0]
    identifier = auth_data[1:1 + length]
    signature = auth_data[1 + length:]
    if len(identifier) < length or not signature:
        raise AuthenticationFailed(f"AUTH data of {len(auth_data)} bytes is too short for its "
                                   f"{length}-byte AlgorithmIdentifier and a signature")
    alg = _BY_DER.get(identifier)
    if alg is None:
        raise AuthenticationFailed(f"AUTH AlgorithmIdentifier {identifier[:80].hex()} is not supported "
                                   f"(accepted: {', '.join(_BY_NAME)})")
    return alg, signature


def _rfc4754_to_der(public_key: PublicKey, raw: bytes) -> bytes:
    """RFC 4754 §7: method 9 is P-256 with SHA-256; the signature is r | s, 32 octets each."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise AuthenticationFailed(f"AUTH method ECDSA_256 (9) needs a P-256 key, the peer's certificate holds "
                                   f"{_key_kind(public_key)}")
    if len(raw) != 64:
        raise AuthenticationFailed(f"AUTH ECDSA_256 signature has {len(raw)} bytes, 64 expected (RFC 4754 §7)")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def rfc4754_signature(der_signature: bytes) -> bytes:
    """DER Ecdsa-Sig-Value -> r | s for method 9 (used by tests and by peers that need method 9)."""
    r, s = decode_dss_signature(der_signature)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _rsa_padding(alg: _SigAlg) -> padding.AsymmetricPadding:
    if alg.pss:
        return padding.PSS(mgf=padding.MGF1(alg.hash()), salt_length=alg.hash().digest_size)
    return padding.PKCS1v15()


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an ECDSA {key.curve.name} key"
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA-{key.key_size} key"
    return f"a {type(key).__name__}"


def _method_name(method: int) -> str:
    try:
        return f"{AuthMethod(method).name} ({method})"
    except ValueError:
        return str(method)


__all__ = [
    "CertVerifier", "InvalidIdentity", "InvalidTrustAnchor", "PeerIdentity", "PrivateKey", "PublicKey",
    "ID_KP_IPSEC_IKE", "parse_signature_hash_algorithms", "rfc4754_signature", "sign_auth",
    "signature_hash_algorithms", "verify_auth",
]
