"""A small site CA: create it, issue gateway certificates, load certificates and private keys.

Ring 3 (ARCHITECTURE.md): this module owns files, key generation and the wall clock. The checks a
gateway makes on a peer's certificates live in the pure tunnel/ike/certs.py.

Files: certificates are PEM, mode 0644; private keys are unencrypted PKCS#8 PEM, mode 0600, created with
O_EXCL (never overwritten) and refused on load when group or others may read them, like manual ESP key
files (tunnel/config/keyfile.py). Every failure is one line naming the file; no key bytes are shown.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from tunnel.config.keyfile import too_open
from tunnel.config.keytypes import KEY_TYPES
from tunnel.config.yamlnodes import FileProblem, read_regular_file
from tunnel.errors import ConfigError, KeyFileError, SitelinkError
from tunnel.ike.certs import ID_KP_IPSEC_IKE, InvalidIdentity, PeerIdentity, PrivateKey
from tunnel.ike.constants import IdType

KeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"]
CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
MAX_PEM_BYTES = 256 * 1024  # a CA bundle of a few dozen certificates; a key is a few KiB
BACKDATE = dt.timedelta(minutes=5)  # notBefore slightly in the past: a peer's clock may run behind ours


class PkiError(SitelinkError):
    """A PKI operation cannot be done (file exists, directory not writable, CA expired...)."""


class CertificateFileError(ConfigError):
    """A certificate file is missing, unreadable, or holds no certificate."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__([f"{path}: {problem}"])


# -- loading ---------------------------------------------------------------------------------------------


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, or the one certificate of a DER file."""
    path = Path(path)
    data = _read(path, None, CertificateFileError)
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise CertificateFileError(path, "holds no readable PEM certificate "
                                             "(expected '-----BEGIN CERTIFICATE-----' blocks)") from None
        return certs
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateFileError(path, "is not a certificate (neither PEM nor DER X.509)") from None


def load_certificate(path: Path) -> x509.Certificate:
    """The one certificate in a PEM or DER file; a bundle of several is refused (say which one)."""
    certs = load_certificates(path)
    if len(certs) != 1:
        raise CertificateFileError(Path(path), f"holds {len(certs)} certificates, expected exactly one")
    return certs[0]


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file, or the one CRL of a DER file (as `openssl ca -gencrl` or a CA's CDP gives)."""
    path = Path(path)
    data = _read(path, None, CertificateFileError)
    if b"-----BEGIN" in data:
        blocks = re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.DOTALL)
        if not blocks:
            raise CertificateFileError(path, "holds no PEM CRL (expected '-----BEGIN X509 CRL-----' blocks)")
        try:
            return [x509.load_pem_x509_crl(block) for block in blocks]
        except ValueError:
            raise CertificateFileError(path, "holds a PEM CRL that does not parse") from None
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise CertificateFileError(path, "is not a CRL (neither PEM nor DER X.509 CRL)") from None


def load_private_key(path: Path) -> PrivateKey:
    """An unencrypted PEM (or DER) ECDSA or RSA private key from a file only its owner can read."""
    path = Path(path)
    data = _read(path, too_open, _key_file_error)
    load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # encrypted, and we gave no password
        raise _key_file_error(path, "is encrypted; sitelink reads unencrypted keys protected by mode "
                                    "0600 (decrypt it with: openssl pkey -in KEY -out KEY.plain)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _key_file_error(path, "is not a private key (expected PEM '-----BEGIN PRIVATE KEY-----')") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise _key_file_error(path, f"holds an ECDSA key on {key.curve.name}; use P-256, P-384 or P-521")
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise _key_file_error(path, f"holds an RSA-{key.key_size} key; at least 2048 bits are required")
        return key
    raise _key_file_error(path, f"holds a {type(key).__name__}; sitelink signs with ECDSA or RSA keys")


def _key_file_error(path: Path, problem: str) -> KeyFileError:
    return KeyFileError([f"{path}: {problem}"])


def _read(path: Path, check: Callable[[Path, os.stat_result], str | None] | None,
          error: Callable[[Path, str], Exception]) -> bytes:
    try:
        data = read_regular_file(path, MAX_PEM_BYTES, (lambda st: check(path, st)) if check else None)
    except FileProblem as exc:
        raise error(path, str(exc)) from None
    if not data.strip():
        raise error(path, "is empty")
    return data


# -- creating --------------------------------------------------------------------------------------------


def create_ca(directory: Path, name: str, key_type: str = "ecdsa-p256", days: int = 3650,
              now: dt.datetime | None = None) -> tuple[Path, Path]:
    """Create DIRECTORY/ca.crt (0644) and DIRECTORY/ca.key (0600); never overwrite either."""
    directory = Path(directory)
    name = name.strip()
    if not name:
        raise PkiError("a CA needs a name (--name 'Acme Site CA')")
    _check_days(days)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    _make_directory(directory)
    _refuse_existing(cert_path, key_path)
    now = _now(now)
    key = generate_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    _write_pair(cert_path, cert, key_path, key)
    return cert_path, key_path


def create_intermediate(parent_cert_path: Path, parent_key_path: Path, directory: Path, name: str,
                        key_type: str = "ecdsa-p256", days: int = 1825,
                        now: dt.datetime | None = None) -> tuple[Path, Path]:
    """An intermediate CA signed by the parent CA: DIRECTORY/ca.crt and ca.key, as create_ca writes them
    (so `issue --ca-dir DIRECTORY` issues from it). pathLenConstraint 0: it issues gateways, not CAs."""
    directory = Path(directory)
    name = name.strip()
    if not name:
        raise PkiError("an intermediate CA needs a name (--name 'Acme Branch CA')")
    _check_days(days)
    parent, parent_key = load_certificate(parent_cert_path), load_private_key(parent_key_path)
    _check_ca_pair(parent, parent_key, Path(parent_cert_path), Path(parent_key_path))
    now = _now(now)
    if now >= parent.not_valid_after_utc:
        raise PkiError(f"{parent_cert_path}: the CA expired {parent.not_valid_after_utc:%Y-%m-%d}")
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    _make_directory(directory)
    _refuse_existing(cert_path, key_path)
    key = generate_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, parent.not_valid_before_utc))
        .not_valid_after(min(now + dt.timedelta(days=days), parent.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(parent), critical=False)
    )
    _write_pair(cert_path, builder.sign(parent_key, hashes.SHA256()), key_path, key)
    return cert_path, key_path


CRL_NAME = "ca.crl"


def revoke(ca_cert_path: Path, ca_key_path: Path, crl_path: Path, certificates: list[Path], days: int = 7,
           now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Add the certificates' serials to the CA's CRL (created if missing) and sign it again, valid for
    `days` (its nextUpdate: gateways in hard-fail mode refuse the CA's certificates once it passes, so
    run this again, with no certificate, before then). Written atomically (temporary file, rename)."""
    _check_days(days)
    ca_cert, ca_key = load_certificate(ca_cert_path), load_private_key(ca_key_path)
    _check_ca_pair(ca_cert, ca_key, Path(ca_cert_path), Path(ca_key_path))
    now = _now(now)
    crl_path = Path(crl_path)
    entries: dict[int, x509.RevokedCertificate] = {}
    number = 0
    if crl_path.exists():
        for old in load_crls(crl_path):
            if old.issuer != ca_cert.subject or not old.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
                raise PkiError(f"{crl_path}: not a CRL of {ca_cert.subject.rfc4514_string()}")
            entries.update((entry.serial_number, entry) for entry in old)
            try:
                number = max(number, old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
            except x509.ExtensionNotFound:
                pass
    for path in certificates:
        cert = load_certificate(path)
        if cert.issuer != ca_cert.subject:
            raise PkiError(f"{path}: issued by {cert.issuer.rfc4514_string()}, not by this CA "
                           f"({ca_cert.subject.rfc4514_string()})")
        entries.setdefault(cert.serial_number, x509.RevokedCertificateBuilder()
                           .serial_number(cert.serial_number).revocation_date(now).build())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
    )
    for entry in entries.values():
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _replace(crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return crl


def _replace(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    _create(temporary, data, mode)
    try:
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        raise PkiError(f"{path}: cannot replace: {exc.strerror}") from None


def issue(ca_cert_path: Path, ca_key_path: Path, out_dir: Path, identity: str, key_type: str = "ecdsa-p256",
          days: int = 825, now: dt.datetime | None = None, ocsp_url: str | None = None,
          crl_url: str | None = None) -> tuple[Path, Path]:
    """Issue a gateway certificate for `identity` (FQDN, IP, email or DN) signed by the CA.

    Writes OUT_DIR/<identity>.crt (0644) and OUT_DIR/<identity>.key (0600). The validity ends with the
    CA's at the latest: a certificate that outlives its issuer would fail on every peer anyway.
    """
    _check_days(days)
    try:
        peer_id = PeerIdentity.parse(identity)
    except InvalidIdentity as exc:
        raise PkiError(str(exc)) from None
    if peer_id.id_type == IdType.ID_KEY_ID:
        raise PkiError(f"identity {identity!r} is a key ID; a certificate needs an FQDN, IP address, email or DN")
    ca_cert, ca_key = load_certificate(ca_cert_path), load_private_key(ca_key_path)
    _check_ca_pair(ca_cert, ca_key, Path(ca_cert_path), Path(ca_key_path))
    now = _now(now)
    if now >= ca_cert.not_valid_after_utc:
        raise PkiError(f"{ca_cert_path}: the CA expired {ca_cert.not_valid_after_utc:%Y-%m-%d}; create a new CA")
    out_dir = Path(out_dir)
    stem = _file_stem(peer_id)
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    _make_directory(out_dir)
    _refuse_existing(cert_path, key_path)
    key = generate_key(key_type)
    subject, san = _subject_and_san(peer_id)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ID_KP_IPSEC_IKE]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    if ocsp_url is not None:  # where peers ask whether it was revoked (RFC 5280 §4.2.2.1)
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, _http_uri("--ocsp-url", ocsp_url))]), critical=False)
    if crl_url is not None:  # where peers fetch the issuer's CRL (RFC 5280 §4.2.1.13)
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [_http_uri("--crl-url", crl_url)], None, None, None)]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_pair(cert_path, cert, key_path, key)
    return cert_path, key_path


def _http_uri(option: str, url: str) -> x509.UniformResourceIdentifier:
    if not re.fullmatch(r"http://\S+", url):
        raise PkiError(f"{option} {url!r} is not an http:// URL")
    return x509.UniformResourceIdentifier(url)


def generate_key(key_type: str) -> PrivateKey:
    if key_type in ("ecdsa-p256", "ecdsa-p384"):
        return ec.generate_private_key(ec.SECP256R1() if key_type == "ecdsa-p256" else ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise PkiError(f"unknown key type {key_type!r}; choose one of: {', '.join(KEY_TYPES)}")


def _subject_and_san(peer_id: PeerIdentity) -> tuple[x509.Name, x509.GeneralName | None]:
    """CN = the identity as text; the identity itself in subjectAltName (RFC 4945 §3.1), except a DN
    identity, which is the subject."""
    if peer_id.id_type == IdType.ID_DER_ASN1_DN:
        return x509.Name.from_bytes(peer_id.data), None
    text = str(peer_id)
    if peer_id.id_type == IdType.ID_FQDN:
        san: x509.GeneralName = x509.DNSName(text)
    elif peer_id.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        san = x509.IPAddress(ipaddress.ip_address(peer_id.data))
    else:
        san = x509.RFC822Name(text)
    if len(text) > 64:  # ub-common-name (RFC 5280 Appendix A.1); the SAN carries the identity anyway
        return x509.Name([]), san
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)]), san


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=key_cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _check_ca_pair(cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path) -> None:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{cert_path}: not a CA certificate (basicConstraints CA=true missing)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise PkiError(f"{key_path}: this key does not belong to the CA certificate {cert_path}")


def _file_stem(peer_id: PeerIdentity) -> str:
    if peer_id.id_type == IdType.ID_DER_ASN1_DN:
        name = x509.Name.from_bytes(peer_id.data)
        common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        text = str(common[0].value) if common else name.rfc4514_string()
    else:
        text = str(peer_id)
    stem = re.sub(r"[^A-Za-z0-9._@-]", "_", text).strip(".")[:100]
    return stem or "gateway"


def _check_days(days: int) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise PkiError(f"days must be a whole number from 1 to 36500, not {days!r}")


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except FileExistsError:
        raise PkiError(f"{directory}: exists and is not a directory") from None
    except OSError as exc:
        raise PkiError(f"{directory}: cannot create directory: {exc.strerror}") from None
    if not directory.is_dir():
        raise PkiError(f"{directory}: exists and is not a directory")


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise PkiError(f"{path}: already exists; refusing to overwrite it "
                           "(move it away first if you mean to replace it)")


def _write_pair(cert_path: Path, cert: x509.Certificate, key_path: Path, key: PrivateKey) -> None:
    """Key first (0600), then certificate (0644); if the second fails the first is removed again."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _create(key_path, key_pem, 0o600)
    try:
        _create(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        os.unlink(key_path)  # we created it a moment ago; a key without its certificate is useless
        raise


def _create(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise PkiError(f"{path}: already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed 0644; a 0600 key is never widened by it
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as exc:
        os.unlink(path)
        raise PkiError(f"{path}: cannot write: {exc.strerror}") from None


# -- describing ------------------------------------------------------------------------------------------


def describe(cert: x509.Certificate) -> list[str]:
    """`sitelink pki show`: the fields an admin checks, one per line."""
    try:
        sans = [_general_name_text(g) for g in
                cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        sans = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return [
        f"subject:     {cert.subject.rfc4514_string() or '(empty)'}",
        f"issuer:      {cert.issuer.rfc4514_string() or '(empty)'}",
        f"altnames:    {', '.join(sans) if sans else '(none)'}",
        f"valid from:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"key:         {key_description(cert.public_key())}",
        f"CA:          {'yes' if is_ca else 'no'}",
        f"serial:      {cert.serial_number:x}",
        f"sha256:      {fingerprint}",
    ]


def key_description(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__


def _general_name_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DN:{name.value.rfc4514_string()}"
    return f"{type(name).__name__}:{name.value!r}"
