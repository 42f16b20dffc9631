"""Site CA, gateway certificates and IKEv2 certificate authentication.

Specs: RFC 7296 §3.5 (ID types), §3.6 (CERT, encoding 4: intermediates in any order), §3.8 (AUTH);
RFC 7427 §3 (AUTH method 14 layout), §4 (SIGNATURE_HASH_ALGORITHMS), Appendix A (AlgorithmIdentifier
DER); RFC 4754 §7 (method 9 r|s). The AlgorithmIdentifier bytes are checked against the encoding
cryptography writes into certificates, an encoder independent of tunnel/ike/certs.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.cli.pki import add_commands
from tunnel.config import pkifiles
from tunnel.errors import ConfigError, KeyFileError, MalformedPacket
from tunnel.ike.certs import (
    CertVerifier,
    InvalidIdentity,
    InvalidTrustAnchor,
    PeerIdentity,
    parse_signature_hash_algorithms,
    rfc4754_signature,
    sign_auth,
    signature_hash_algorithms,
    verify_auth,
)
from tunnel.ike.constants import AuthMethod, IdType
from tunnel.ike.errors import AuthenticationFailed

UTC = dt.UTC
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # issuance time; verification happens a day later
LATER = NOW + dt.timedelta(days=1)
DER = serialization.Encoding.DER
KEY_TYPES = ("ecdsa-p256", "rsa-3072")


@pytest.fixture(scope="module", params=KEY_TYPES)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A CA and gateway certificates made by pkifiles.create_ca / pkifiles.issue, one set per key type."""
    key_type = request.param
    root = tmp_path_factory.mktemp(key_type)
    ca_crt, ca_key = pkifiles.create_ca(root / "ca", "Acme Site CA", key_type, days=3650, now=NOW)
    issued = {ident: pkifiles.issue(ca_crt, ca_key, root / "out", ident, key_type, days=825, now=NOW)
              for ident in ("gw.hq.example", "198.18.1.2", "fd00::1", "CN=gw1,O=Acme")}
    return {"root": root, "key_type": key_type, "ca_crt": ca_crt, "ca_key": ca_key, "issued": issued,
            "ca": pkifiles.load_certificate(ca_crt), "verifier": CertVerifier([pkifiles.load_certificate(ca_crt)])}


def der_of(path: Path) -> bytes:
    return pkifiles.load_certificate(path).public_bytes(DER)


def rejection(verifier: CertVerifier, chain: list[bytes], identity: str, now: dt.datetime = LATER) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        verifier.verify(chain, PeerIdentity.parse(identity), now)
    return str(info.value)


# -- hand-made certificates for the cases pkifiles.issue never produces -------------------------------------


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(cn: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool = False,
              path_length: int | None = None, sans: tuple[x509.GeneralName, ...] = (),
              key_usage: str | None = "digital_signature", not_before: dt.datetime = NOW - dt.timedelta(days=1),
              not_after: dt.datetime = NOW + dt.timedelta(days=365)) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   (issuer_key if issuer else key).public_key()), critical=False))
    usages = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    if ca:
        usages.update(key_cert_sign=True, crl_sign=True)
    if key_usage:
        usages[key_usage] = True
    builder = builder.add_extension(x509.KeyUsage(**usages), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def hand() -> dict:
    root_key, other_key, inter_key = ec_key(), ec_key(), ec_key()
    root = make_cert("Hand Root CA", root_key, None, None, ca=True)
    other = make_cert("Other CA", other_key, None, None, ca=True)
    inter = make_cert("Hand Intermediate CA", inter_key, root, root_key, ca=True)
    return {"root": root, "root_key": root_key, "other": other, "other_key": other_key,
            "inter": inter, "inter_key": inter_key, "verifier": CertVerifier([root])}


def gw(issuer: x509.Certificate, issuer_key, name: str = "gw.branch1.example", **kwargs) -> x509.Certificate:
    return make_cert(name, ec_key(), issuer, issuer_key, sans=(x509.DNSName(name),), **kwargs)


# -- create_ca / issue ----------------------------------------------------------------------------------


def test_ca_files_modes_and_extensions(site: dict) -> None:
    assert stat.S_IMODE(os.stat(site["ca_crt"]).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(site["ca_key"]).st_mode) == 0o600
    ca = site["ca"]
    assert ca.subject.rfc4514_string() == "CN=Acme Site CA" and ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.not_valid_before_utc == NOW - pkifiles.BACKDATE
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    expected = ec.EllipticCurvePublicKey if site["key_type"] == "ecdsa-p256" else rsa.RSAPublicKey
    assert isinstance(ca.public_key(), expected)
    ca.verify_directly_issued_by(ca)


def test_issued_gateway_certificate(site: dict) -> None:
    cert_path, key_path = site["issued"]["gw.hq.example"]
    assert (cert_path.name, key_path.name) == ("gw.hq.example.crt", "gw.hq.example.key")
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert, ca = pkifiles.load_certificate(cert_path), site["ca"]
    cert.verify_directly_issued_by(ca)
    ext = cert.extensions
    assert cert.subject.rfc4514_string() == "CN=gw.hq.example"
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) \
        == ["gw.hq.example"]
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")}
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=825)
    key = pkifiles.load_private_key(key_path)
    assert key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_issued_address_and_dn_identities(site: dict) -> None:
    v4 = pkifiles.load_certificate(site["issued"]["198.18.1.2"][0])
    v6 = pkifiles.load_certificate(site["issued"]["fd00::1"][0])
    dn = pkifiles.load_certificate(site["issued"]["CN=gw1,O=Acme"][0])
    assert [str(a) for a in v4.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.IPAddress)] == ["198.18.1.2"]
    assert [str(a) for a in v6.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.IPAddress)] == ["fd00::1"]
    assert dn.subject.rfc4514_string() == "CN=gw1,O=Acme"
    assert site["issued"]["fd00::1"][0].name == "fd00__1.crt"


def test_issue_validity_ends_with_the_ca(tmp_path: Path) -> None:
    ca_crt, ca_key = pkifiles.create_ca(tmp_path / "ca", "Short CA", days=10, now=NOW)
    cert_path, _ = pkifiles.issue(ca_crt, ca_key, tmp_path / "out", "gw.example", days=825, now=NOW)
    assert pkifiles.load_certificate(cert_path).not_valid_after_utc == NOW + dt.timedelta(days=10)


def test_refuse_to_overwrite(tmp_path: Path) -> None:
    ca_crt, ca_key = pkifiles.create_ca(tmp_path / "ca", "Acme CA", now=NOW)
    before = ca_key.read_bytes()
    with pytest.raises(pkifiles.PkiError, match="ca.crt: already exists; refusing to overwrite"):
        pkifiles.create_ca(tmp_path / "ca", "Acme CA", now=NOW)
    assert ca_key.read_bytes() == before
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ca.key").write_text("someone's key")
    with pytest.raises(pkifiles.PkiError, match="ca.key: already exists"):
        pkifiles.create_ca(tmp_path / "half", "Acme CA", now=NOW)
    assert not (tmp_path / "half" / "ca.crt").exists()
    pkifiles.issue(ca_crt, ca_key, tmp_path / "out", "gw.example", now=NOW)
    with pytest.raises(pkifiles.PkiError, match="gw.example.crt: already exists"):
        pkifiles.issue(ca_crt, ca_key, tmp_path / "out", "gw.example", now=NOW)


def test_issue_refuses_a_key_that_is_not_the_cas(tmp_path: Path) -> None:
    ca_crt, _ = pkifiles.create_ca(tmp_path / "a", "CA A", now=NOW)
    _, other_key = pkifiles.create_ca(tmp_path / "b", "CA B", now=NOW)
    with pytest.raises(pkifiles.PkiError, match="does not belong to the CA certificate"):
        pkifiles.issue(ca_crt, other_key, tmp_path / "out", "gw.example", now=NOW)
    assert not (tmp_path / "out" / "gw.example.key").exists()


@pytest.mark.parametrize("identity", ["", "bad host", "@#zz", "@#0a0b"])
def test_issue_refuses_unusable_identities(tmp_path: Path, identity: str) -> None:
    ca_crt, ca_key = pkifiles.create_ca(tmp_path / "ca", "Acme CA", now=NOW)
    with pytest.raises(pkifiles.PkiError):
        pkifiles.issue(ca_crt, ca_key, tmp_path / "out", identity, now=NOW)


# -- loading files -------------------------------------------------------------------------------------


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, ca_key = pkifiles.create_ca(tmp_path / "ca", "Acme CA", now=NOW)
    pkifiles.load_private_key(ca_key)
    os.chmod(ca_key, 0o640)
    with pytest.raises(KeyFileError) as info:
        pkifiles.load_private_key(ca_key)
    message = str(info.value)
    assert "mode 0640" in message and f"chmod 600 {ca_key}" in message
    assert "PRIVATE KEY" not in message and "\n" not in message


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", "no readable PEM"),
    (b"\x30\x03\x02\x01\x00garbage", "is not a certificate"),
])
def test_certificate_file_problems(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "peer.crt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        pkifiles.load_certificate(path)
    assert info.value.problems == [f"{path}: {info.value.problems[0].split(': ', 1)[1]}"]
    assert expected in str(info.value)


def test_private_key_file_problems(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(KeyFileError, match="is not a private key"):
        pkifiles.load_private_key(garbage)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(ec_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.BestAvailableEncryption(b"secret passphrase")))
    os.chmod(encrypted, 0o600)
    with pytest.raises(KeyFileError, match="is encrypted"):
        pkifiles.load_private_key(encrypted)
    with pytest.raises(KeyFileError, match="does not exist"):
        pkifiles.load_private_key(tmp_path / "missing.key")


def test_bundle_loads_every_certificate_but_load_certificate_wants_one(site: dict, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(site["ca_crt"].read_bytes() + site["issued"]["gw.hq.example"][0].read_bytes())
    assert [c.subject.rfc4514_string() for c in pkifiles.load_certificates(bundle)] == \
        ["CN=Acme Site CA", "CN=gw.hq.example"]
    with pytest.raises(ConfigError, match="holds 2 certificates, expected exactly one"):
        pkifiles.load_certificate(bundle)


# -- identities (RFC 7296 §3.5) ------------------------------------------------------------------------


@pytest.mark.parametrize("text, id_type, data, shown", [
    ("gw.hq.example", IdType.ID_FQDN, b"gw.hq.example", "gw.hq.example"),
    ("@foo", IdType.ID_FQDN, b"foo", "foo"),
    ("198.18.1.2", IdType.ID_IPV4_ADDR, bytes([198, 18, 1, 2]), "198.18.1.2"),
    ("fd00::1", IdType.ID_IPV6_ADDR, bytes.fromhex("fd00" + "00" * 13 + "01"), "fd00::1"),
    ("user@x.example", IdType.ID_RFC822_ADDR, b"user@x.example", "user@x.example"),
    ("@#0a0b", IdType.ID_KEY_ID, b"\x0a\x0b", "@#0a0b"),
])
def test_identity_parse(text: str, id_type: int, data: bytes, shown: str) -> None:
    identity = PeerIdentity.parse(text)
    assert (identity.id_type, identity.data, str(identity)) == (id_type, data, shown)


def test_dn_identity_is_der_of_the_name() -> None:
    identity = PeerIdentity.parse("CN=gw1,O=Acme")
    expected = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "gw1")])
    assert identity.id_type == IdType.ID_DER_ASN1_DN
    assert identity.data == expected.public_bytes()
    assert str(identity) == "CN=gw1,O=Acme"


@pytest.mark.parametrize("text", ["", "   ", "two words", "-bad-.example", "@", "@#", "@#xyz", "a@", "a@b@c.example",
                                  "NOTANATTR=x", "CN=", "ü.example"])
def test_identity_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidIdentity):
        PeerIdentity.parse(text)


def test_identity_str_of_hostile_peer_data_is_one_safe_line() -> None:
    shown = str(PeerIdentity(IdType.ID_FQDN, b"evil\n\x1b[31mname" + b"x" * 200))
    assert "\n" not in shown and "\x1b" not in shown and len(shown) < 100


# -- CertVerifier ----------------------------------------------------------------------------------------


def test_good_chain_fqdn_returns_the_certificate_key(site: dict) -> None:
    cert_path, _ = site["issued"]["gw.hq.example"]
    key = site["verifier"].verify([der_of(cert_path)], PeerIdentity.parse("gw.hq.example"), LATER)
    assert key.public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        pkifiles.load_certificate(cert_path).public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # RFC 7296 §3.5: FQDN comparison is case-insensitive
    site["verifier"].verify([der_of(cert_path)], PeerIdentity.parse("GW.HQ.Example"), LATER)


@pytest.mark.parametrize("identity", ["198.18.1.2", "fd00::1", "CN=gw1,O=Acme"])
def test_good_chain_address_and_dn(site: dict, identity: str) -> None:
    cert_path, _ = site["issued"][identity]
    site["verifier"].verify([der_of(cert_path)], PeerIdentity.parse(identity), LATER)


def test_good_chain_through_intermediate_in_any_order(hand: dict) -> None:
    leaf = gw(hand["inter"], hand["inter_key"])
    decoy = make_cert("Unrelated CA", ec_key(), hand["other"], hand["other_key"], ca=True)
    chain = [leaf.public_bytes(DER), decoy.public_bytes(DER), hand["inter"].public_bytes(DER)]
    hand["verifier"].verify(chain, PeerIdentity.parse("gw.branch1.example"), NOW)


def test_expired(site: dict) -> None:
    cert_path, _ = site["issued"]["gw.hq.example"]
    message = rejection(site["verifier"], [der_of(cert_path)], "gw.hq.example",
                        now=NOW + dt.timedelta(days=826))
    assert message == f"certificate for gw.hq.example expired {NOW + dt.timedelta(days=825):%Y-%m-%dT%H:%M:%SZ}"


def test_not_yet_valid(site: dict) -> None:
    cert_path, _ = site["issued"]["gw.hq.example"]
    message = rejection(site["verifier"], [der_of(cert_path)], "gw.hq.example", now=NOW - dt.timedelta(hours=1))
    assert message.startswith(f"certificate for gw.hq.example is not valid before "
                              f"{NOW - pkifiles.BACKDATE:%Y-%m-%dT%H:%M:%SZ}")


def test_foreign_ca(site: dict, hand: dict) -> None:
    leaf = gw(hand["other"], hand["other_key"])
    message = rejection(site["verifier"], [leaf.public_bytes(DER)], "gw.branch1.example", now=NOW)
    assert message.startswith("issuer not trusted: CN=Other CA")


def test_ca_with_the_trusted_name_but_another_key(hand: dict) -> None:
    impostor_key = ec_key()
    impostor = make_cert("Hand Root CA", impostor_key, None, None, ca=True)
    leaf = gw(impostor, impostor_key)
    message = rejection(hand["verifier"], [leaf.public_bytes(DER)], "gw.branch1.example", now=NOW)
    assert "does not verify with the key of CN=Hand Root CA" in message


def test_identity_mismatch(site: dict) -> None:
    cert_path, _ = site["issued"]["gw.hq.example"]
    message = rejection(site["verifier"], [der_of(cert_path)], "gw.x.example")
    assert message.startswith("identity gw.x.example not in subjectAltName [gw.hq.example]")
    message = rejection(site["verifier"], [der_of(cert_path)], "198.18.1.2")
    assert message.startswith("identity 198.18.1.2 not in subjectAltName [gw.hq.example]")


def test_dn_identity_mismatch(site: dict) -> None:
    cert_path, _ = site["issued"]["CN=gw1,O=Acme"]
    message = rejection(site["verifier"], [der_of(cert_path)], "CN=gw2,O=Acme")
    assert message == "identity CN=gw2,O=Acme does not equal the certificate subject CN=gw1,O=Acme"


def test_missing_digital_signature_key_usage(hand: dict) -> None:
    leaf = gw(hand["root"], hand["root_key"], key_usage="key_encipherment")
    message = rejection(hand["verifier"], [leaf.public_bytes(DER)], "gw.branch1.example", now=NOW)
    assert message == ("certificate for gw.branch1.example has a keyUsage without digitalSignature: "
                       "it may not sign IKE AUTH payloads")


def test_tampered_certificate(site: dict) -> None:
    cert_path, _ = site["issued"]["gw.hq.example"]
    good = der_of(cert_path)
    renamed = good.replace(b"hq.example", b"hq.exampla")  # subject CN and subjectAltName
    assert renamed != good and len(renamed) == len(good)
    message = rejection(site["verifier"], [renamed], "gw.hq.exampla")
    assert message.startswith("signature on certificate for gw.hq.exampla does not verify with the key of "
                              "CN=Acme Site CA")
    last_signature_byte = good[:-1] + bytes([good[-1] ^ 0x01])
    message = rejection(site["verifier"], [last_signature_byte], "gw.hq.example")
    assert "does not verify" in message


@pytest.mark.parametrize("chain, expected", [
    ([], "no certificate received"),
    ([b"\x30\x82\x01\x00garbage"], "CERT payload 1 of 1 (11 bytes) is not a DER X.509 certificate"),
    ([b"not der at all"], "CERT payload 1 of 1 (14 bytes) is not a DER X.509 certificate"),
])
def test_garbage(hand: dict, chain: list[bytes], expected: str) -> None:
    assert expected in rejection(hand["verifier"], chain, "gw.branch1.example", now=NOW)


def test_garbage_intermediate_is_named_by_position(hand: dict) -> None:
    leaf = gw(hand["inter"], hand["inter_key"])
    message = rejection(hand["verifier"], [leaf.public_bytes(DER), b"\x00\x01"], "gw.branch1.example", now=NOW)
    assert message == "CERT payload 2 of 2 (2 bytes) is not a DER X.509 certificate"


def test_intermediate_that_is_not_a_ca(hand: dict) -> None:
    fake_ca_key = ec_key()
    fake_ca = make_cert("gw.fake.example", fake_ca_key, hand["root"], hand["root_key"], ca=False,
                        key_usage="key_cert_sign")
    leaf = gw(fake_ca, fake_ca_key)
    message = rejection(hand["verifier"], [leaf.public_bytes(DER), fake_ca.public_bytes(DER)],
                        "gw.branch1.example", now=NOW)
    assert message == ("issuer CN=gw.fake.example of certificate for gw.branch1.example is not a CA "
                       "(basicConstraints CA=true missing)")


def test_library_path_validation_is_enforced_too(hand: dict) -> None:
    """pathLenConstraint=0 on the root forbids an intermediate CA: our walk does not check path length,
    cryptography's RFC 5280 validator does, and its verdict counts."""
    root_key = ec_key()
    root = make_cert("Strict Root CA", root_key, None, None, ca=True, path_length=0)
    inter_key = ec_key()
    inter = make_cert("Sub CA", inter_key, root, root_key, ca=True)
    leaf = gw(inter, inter_key)
    message = rejection(CertVerifier([root]), [leaf.public_bytes(DER), inter.public_bytes(DER)],
                        "gw.branch1.example", now=NOW)
    assert message.startswith("certificate path for gw.branch1.example rejected by RFC 5280 validation")


def test_verifier_needs_ca_anchors(hand: dict) -> None:
    with pytest.raises(InvalidTrustAnchor, match="no CA certificate configured"):
        CertVerifier([])
    with pytest.raises(InvalidTrustAnchor, match="CN=gw.branch1.example is not a CA certificate"):
        CertVerifier([gw(hand["root"], hand["root_key"])])


# -- AUTH signatures (RFC 7427) ----------------------------------------------------------------------


def algorithm_identifier_in_certificate(cert: x509.Certificate) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }: the second element."""
    def element(data: bytes, offset: int) -> tuple[int, int]:  # (start of header, end of element)
        length = data[offset + 1]
        header = 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[offset + 2:offset + 2 + count], "big")
            header += count
        return offset, offset + header + length

    der = cert.public_bytes(DER)
    outer_header = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    _, tbs_end = element(der, outer_header)
    start, end = element(der, tbs_end)
    return der[start:end]


@pytest.mark.parametrize("key_factory, sign_kwargs, cert_kwargs", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), {}, {}),
    (lambda: rsa.generate_private_key(65537, 2048), {}, {}),
    (lambda: rsa.generate_private_key(65537, 2048), {"rsa_pss": True},
     {"rsa_padding": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)}),
])
def test_auth_data_layout_matches_rfc7427_and_an_independent_encoder(key_factory, sign_kwargs, cert_kwargs) -> None:
    key = key_factory()
    method, auth = sign_auth(key, b"octets", **sign_kwargs)
    assert method == AuthMethod.DIGITAL_SIGNATURE == 14
    identifier = auth[1:1 + auth[0]]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    reference = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                 .serial_number(1).not_valid_before(NOW).not_valid_after(LATER)
                 .sign(key, hashes.SHA256(), **cert_kwargs))
    assert identifier == algorithm_identifier_in_certificate(reference)


def test_rfc7427_appendix_a_prefixes() -> None:
    _, ecdsa = sign_auth(ec_key(), b"x")
    assert ecdsa.startswith(bytes.fromhex("0c" "300a06082a8648ce3d040302"))  # A.3.1 ecdsa-with-sha256
    _, rsa_auth = sign_auth(rsa.generate_private_key(65537, 2048), b"x")
    assert rsa_auth.startswith(bytes.fromhex("0f" "300d06092a864886f70d01010b0500"))  # A.1.2 sha256WithRSA
    assert len(rsa_auth) == 1 + 15 + 256


@pytest.mark.parametrize("key_factory, kwargs", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), {}),
    (lambda: ec.generate_private_key(ec.SECP384R1()), {}),
    (lambda: rsa.generate_private_key(65537, 2048), {}),
    (lambda: rsa.generate_private_key(65537, 2048), {"rsa_pss": True}),
])
def test_sign_verify_round_trip_and_failures(key_factory, kwargs) -> None:
    key = key_factory()
    octets = b"IKE_SA_INIT request | Nr | prf(SK_pi, IDi')"
    method, auth = sign_auth(key, octets, **kwargs)
    verify_auth(key.public_key(), method, auth, octets)
    flipped = bytes([octets[0] ^ 0x80]) + octets[1:]
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify_auth(key.public_key(), method, auth, flipped)
    stranger = key_factory()
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify_auth(stranger.public_key(), method, auth, octets)
    bad_signature = auth[:-1] + bytes([auth[-1] ^ 0x01])
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify_auth(key.public_key(), method, bad_signature, octets)


@pytest.mark.parametrize("identifier", [
    "300d06092a864886f70d0101050500",  # sha1WithRSAEncryption: not accepted
    "300a06082a8648ce3d040301",  # ecdsa-with-SHA224 (unassigned arc, not ours)
    "300c06082a8648ce3d0403020500",  # ecdsa-with-SHA256 with NULL parameters: not the Appendix A bytes
])
def test_unknown_algorithm_identifier(identifier: str) -> None:
    key = ec_key()
    _, auth = sign_auth(key, b"x")
    signature = auth[1 + auth[0]:]
    forged = bytes([len(bytes.fromhex(identifier))]) + bytes.fromhex(identifier) + signature
    with pytest.raises(AuthenticationFailed, match=f"AlgorithmIdentifier {identifier} is not supported"):
        verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, forged, b"x")


@pytest.mark.parametrize("auth, expected", [
    (b"", "AUTH data is empty"),
    (b"\x0c\x30\x0a", "too short"),
    (bytes.fromhex("0c300a06082a8648ce3d040302"), "too short"),  # no signature after the identifier
])
def test_truncated_auth_data(auth: bytes, expected: str) -> None:
    with pytest.raises(AuthenticationFailed, match=expected):
        verify_auth(ec_key().public_key(), AuthMethod.DIGITAL_SIGNATURE, auth, b"x")


def test_algorithm_for_the_wrong_key_type() -> None:
    _, auth = sign_auth(rsa.generate_private_key(65537, 2048), b"x")
    with pytest.raises(AuthenticationFailed, match="uses sha256WithRSAEncryption but the peer's certificate "
                                                   "holds an ECDSA secp256r1 key"):
        verify_auth(ec_key().public_key(), AuthMethod.DIGITAL_SIGNATURE, auth, b"x")


def test_method_9_ecdsa_256_raw_signature() -> None:
    key = ec_key()
    _, auth = sign_auth(key, b"octets")
    raw = rfc4754_signature(auth[1 + auth[0]:])
    assert len(raw) == 64
    verify_auth(key.public_key(), AuthMethod.ECDSA_256, raw, b"octets")
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify_auth(key.public_key(), AuthMethod.ECDSA_256, raw, b"octetz")
    with pytest.raises(AuthenticationFailed, match="64 expected"):
        verify_auth(key.public_key(), AuthMethod.ECDSA_256, raw[:-1], b"octets")


@pytest.mark.parametrize("method, expected", [
    (AuthMethod.RSA_SIG, "signs with SHA-1"),
    (AuthMethod.SHARED_KEY_MIC, "SHARED_KEY_MIC \\(2\\) is not accepted"),
    (201, "201 is not accepted"),
])
def test_other_auth_methods_rejected(method: int, expected: str) -> None:
    key = ec_key()
    _, auth = sign_auth(key, b"x")
    with pytest.raises(AuthenticationFailed, match=expected):
        verify_auth(key.public_key(), method, auth, b"x")


def test_signature_hash_algorithms_notify() -> None:
    assert signature_hash_algorithms() == b"\x00\x02\x00\x03\x00\x04"
    assert parse_signature_hash_algorithms(b"\x00\x02\x00\x05") == (2, 5)
    with pytest.raises(MalformedPacket):
        parse_signature_hash_algorithms(b"\x00\x02\x00")


def test_end_to_end_certificate_auth(site: dict) -> None:
    """What IKE_AUTH does: the responder verifies the CERT chain, then the AUTH payload with its key."""
    cert_path, key_path = site["issued"]["gw.hq.example"]
    octets = b"signed octets of RFC 7296 section 2.15"
    method, auth = sign_auth(pkifiles.load_private_key(key_path), octets)
    peer_key = site["verifier"].verify([der_of(cert_path)], PeerIdentity.parse("gw.hq.example"), LATER)
    verify_auth(peer_key, method, auth, octets)
    other_path, _ = site["issued"]["198.18.1.2"]
    other_key = site["verifier"].verify([der_of(other_path)], PeerIdentity.parse("198.18.1.2"), LATER)
    with pytest.raises(AuthenticationFailed):
        verify_auth(other_key, method, auth, octets)


# -- CLI -------------------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sitelink")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_cli_ca_issue_show_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "certs"
    assert cli("pki", "ca", str(ca_dir), "--name", "Acme Site CA", "--days", "30") == 0
    shown = capsys.readouterr().out
    assert "created CA CN=Acme Site CA (ECDSA secp256r1)" in shown and str(ca_dir / "ca.key") in shown
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert cli("pki", "issue", "--ca-dir", str(ca_dir), "--out", str(out), "--id", "gw.hq.example",
               "--days", "10") == 0
    assert "issued CN=gw.hq.example by CN=Acme Site CA" in capsys.readouterr().out
    assert cli("pki", "show", str(out / "gw.hq.example.crt")) == 0
    shown = capsys.readouterr().out
    cert = pkifiles.load_certificate(out / "gw.hq.example.crt")
    assert "subject:     CN=gw.hq.example" in shown
    assert "issuer:      CN=Acme Site CA" in shown
    assert "altnames:    DNS:gw.hq.example" in shown
    assert "key:         ECDSA secp256r1" in shown
    assert cert.fingerprint(hashes.SHA256()).hex(":").upper() in shown
    assert f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in shown
    assert "PRIVATE" not in shown
    verifier = CertVerifier([pkifiles.load_certificate(ca_dir / "ca.crt")])
    verifier.verify([cert.public_bytes(DER)], PeerIdentity.parse("gw.hq.example"), dt.datetime.now(UTC))


def test_cli_rsa_key_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("pki", "ca", str(tmp_path / "ca"), "--name", "RSA CA", "--key-type", "rsa-3072") == 0
    assert "(RSA 3072 bits)" in capsys.readouterr().out


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli("pki", "ca", str(tmp_path / "ca"), "--name", "X", "--days", "0")
    assert info.value.code == 2 and "must be from 1 to 36500" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("pki", "ca", str(tmp_path / "ca"), "--name", "X", "--key-type", "dsa")
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"hello")
    with pytest.raises(ConfigError, match="is not a certificate"):
        cli("pki", "show", str(garbage))
    with pytest.raises(ConfigError, match="does not exist"):
        cli("pki", "issue", "--ca-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--id", "gw.example")


def test_cli_intermediate_issue_revoke_and_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A root, an intermediate under it, a gateway issued by the intermediate, then revoked: the CRL is
    the intermediate's, signed by it, lists that serial, and `pki crl` signs it again with a higher
    number and a later nextUpdate without dropping the entry."""
    root, sub, out = tmp_path / "root", tmp_path / "sub", tmp_path / "out"
    assert cli("pki", "ca", str(root), "--name", "Acme Root") == 0
    assert cli("pki", "intermediate", str(sub), "--ca-dir", str(root), "--name", "Acme Branch CA") == 0
    assert "created intermediate CA CN=Acme Branch CA under CN=Acme Root" in capsys.readouterr().out
    sub_cert = pkifiles.load_certificate(sub / "ca.crt")
    assert sub_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert cli("pki", "issue", "--ca-dir", str(sub), "--out", str(out), "--id", "gw.branch7.example") == 0
    leaf = out / "gw.branch7.example.crt"
    assert pkifiles.load_certificate(leaf).issuer == sub_cert.subject
    capsys.readouterr()
    assert cli("pki", "revoke", "--ca-dir", str(sub), str(leaf), "--days", "3") == 0
    assert "1 revoked certificate(s)" in capsys.readouterr().out
    (crl,) = pkifiles.load_crls(sub / "ca.crl")
    assert crl.issuer == sub_cert.subject and crl.is_signature_valid(sub_cert.public_key())
    serial = pkifiles.load_certificate(leaf).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert cli("pki", "crl", "--ca-dir", str(sub), "--days", "30") == 0
    (again,) = pkifiles.load_crls(sub / "ca.crl")
    number = lambda c: c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number  # noqa: E731
    assert number(again) == number(crl) + 1 and again.next_update_utc > crl.next_update_utc
    assert again.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(pkifiles.PkiError, match="not by this CA"):
        cli("pki", "revoke", "--ca-dir", str(root), str(leaf))  # the root did not issue it
