"""Which of our certificates to send, and how much of its chain: the CERTREQ side of RFC 7296 §3.7.

PURE (ARCHITECTURE.md ring 1): parsed values in, a choice out. During a CA rollover a gateway holds a
certificate from the old CA and one from the new; a peer's CERTREQ lists the SHA-1 hashes of the
SubjectPublicKeyInfo of the CAs it trusts, and we answer with the certificate whose chain reaches one of
them, sending the intermediates up to (not including) the first CA the peer named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the x509 machinery is loaded only by a gateway that uses certificates
    from cryptography import x509

    from tunnel.ike.certs import PrivateKey

HASH_LEN = 20  # SHA-1, RFC 7296 §3.7
MAX_CERTREQ_HASHES = 64  # more CAs than any company trusts; the rest of a longer CERTREQ is ignored


def key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's SubjectPublicKeyInfo: how a CERTREQ names a CA (RFC 7296 §3.7)."""
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()  # noqa: S324 - the hash RFC 7296 §3.7 prescribes, not a security use


@dataclass(frozen=True)
class Credential:
    """One certificate of ours with its key: the chain as sent (end entity first, then intermediates) and,
    for each element, the key hash of the CA that issued it (b"" if that CA is not known to us)."""

    private_key: PrivateKey = field(repr=False)
    chain: tuple[bytes, ...]
    issuer_hashes: tuple[bytes, ...]
    rsa_pss: bool = False  # sign with RSASSA-PSS (RFC 7427) instead of PKCS#1 v1.5 (RSA keys only)

    def __post_init__(self) -> None:
        if not self.chain or len(self.chain) != len(self.issuer_hashes):
            raise ValueError("a credential needs its chain and one issuer hash per certificate")


def requested_authorities(certreq_data: Sequence[bytes]) -> frozenset[bytes]:
    """The CA key hashes named in the peer's CERTREQ payloads (X.509 encoding), bounded; data whose length
    is not a multiple of 20 contributes its whole hashes only."""
    hashes: list[bytes] = []
    for data in certreq_data:
        for i in range(0, len(data) - HASH_LEN + 1, HASH_LEN):
            hashes.append(bytes(data[i:i + HASH_LEN]))
            if len(hashes) >= MAX_CERTREQ_HASHES:
                return frozenset(hashes)
    return frozenset(hashes)


def choose(credentials: Sequence[Credential], requested: frozenset[bytes]) -> tuple[Credential, tuple[bytes, ...]]:
    """The credential to authenticate with and the certificates to send. Without a CERTREQ, or when none
    of our chains reaches a CA the peer named, the first credential with its whole chain (the peer may
    still trust its root under another key, or not at all: then it says AUTHENTICATION_FAILED)."""
    if not credentials:
        raise ValueError("no credential")
    for credential in credentials:
        for index, issuer in enumerate(credential.issuer_hashes):
            if issuer and issuer in requested:
                return credential, credential.chain[:index + 1]
    return credentials[0], credentials[0].chain


__all__ = ["Credential", "HASH_LEN", "choose", "key_hash", "requested_authorities"]
