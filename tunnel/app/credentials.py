"""gateway.pki -> CertAuth: the trusted CAs, our certificates with their chains, and the CRLs, read from
files at start and at every reload (an error names the file; nothing is half applied).

Our chain is what we send after our certificate: the intermediates on the way from it to a root, in
order, found by issuer name and signature among the certificate file's extra certificates and
gateway.pki.intermediates. For each certificate on it, the key hash of its issuer (an intermediate or a
trusted CA) lets a peer's CERTREQ pick the credential and where the chain may stop (tunnel/ike/trust.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from tunnel.config.model import GatewayConfig, PkiCredential, Revocation
from tunnel.config.pkifiles import CertificateFileError, load_certificates, load_crls, load_private_key
from tunnel.ike.certs import MAX_CHAIN, CertVerifier, PeerIdentity, PublicKey
from tunnel.ike.config import CertAuth
from tunnel.ike.ocsp import OcspCache
from tunnel.ike.revocation import RevocationChecker
from tunnel.ike.trust import Credential, key_hash


def cert_auth(config: GatewayConfig) -> CertAuth:
    pki = config.pki
    assert pki is not None
    anchors = [cert for path in pki.ca for cert in load_certificates(path)]
    pool = [cert for path in pki.intermediates for cert in load_certificates(path)]
    credentials = tuple(_credential(entry, pool, anchors, pki.rsa_pss)
                        for entry in (PkiCredential(pki.certificate, pki.private_key), *pki.alternates))
    crls = [crl for path in pki.crl for crl in load_crls(path)]
    ocsp = OcspCache(pki.ocsp.url) if pki.ocsp is not None else None
    checker = RevocationChecker(crls, hard_fail=pki.revocation is Revocation.HARD, ocsp=ocsp)
    verifier = CertVerifier(anchors, checker)

    def verify_peer(chain: Sequence[bytes], id_type: int, data: bytes, now: dt.datetime) -> PublicKey:
        return verifier.verify(chain, PeerIdentity(id_type, data), now)

    return CertAuth(credentials, verify_peer, b"".join(dict.fromkeys(key_hash(ca) for ca in anchors)), ocsp)


def _credential(entry: PkiCredential, pool: list[x509.Certificate], anchors: list[x509.Certificate],
                rsa_pss: bool) -> Credential:
    leaf, *extra = load_certificates(entry.certificate)
    key = load_private_key(entry.private_key)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateFileError(Path(entry.private_key), f"this key does not belong to the certificate "
                                                            f"{entry.certificate} (its first certificate)")
    chain, issuers = [leaf], []
    current = leaf
    while True:
        anchor = _issuer(current, anchors)
        if anchor is not None or current.issuer == current.subject:
            issuers.append(key_hash(anchor) if anchor is not None else b"")
            break
        intermediate = _issuer(current, [c for c in extra + pool if c not in chain])
        if intermediate is None:  # the rest of the path is the peer's business (it may hold it)
            issuers.append(b"")
            break
        issuers.append(key_hash(intermediate))
        chain.append(intermediate)
        current = intermediate
        if len(chain) > MAX_CHAIN:
            raise CertificateFileError(Path(entry.certificate), f"its chain is longer than {MAX_CHAIN} certificates")
    der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    return Credential(key, der, tuple(issuers), rsa_pss=rsa_pss)


def _issuer(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None
