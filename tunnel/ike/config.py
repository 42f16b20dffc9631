"""What one IKE session needs to know, as plain values (built by the gateway from the YAML config)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from policy.ts import TsRange
from tunnel.ike.proposal import EspSuite, IkeSuite
from tunnel.ike.window import Backoff

# (certificate chain DER, peer identity (id_type, data), now) -> public key; raises AuthenticationFailed
ChainVerifier = Callable[[Sequence[bytes], int, bytes, datetime], object]


@dataclass(frozen=True)
class PskAuth:
    psk: bytes = field(repr=False)


@dataclass(frozen=True)
class CertAuth:
    private_key: object = field(repr=False)  # cryptography private key (ECDSA P-256 or RSA)
    chain: tuple[bytes, ...]  # our certificate (DER) first, then intermediates
    verify_peer: ChainVerifier  # checks the peer's chain against the site CA and the expected identity
    ca_key_hashes: bytes = b""  # CERTREQ data: SHA-1 of each trusted CA's SubjectPublicKeyInfo (§3.7)


@dataclass(frozen=True)
class IkeConfig:
    tunnel: str
    local_id: tuple[int, bytes]  # (IdType, data) as sent in IDi/IDr
    remote_id: tuple[int, bytes]
    auth: PskAuth | CertAuth
    ike_suites: Sequence[IkeSuite] = (IkeSuite(),)
    esp_suites: Sequence[EspSuite] = (EspSuite(),)
    local_ts: Sequence[TsRange] = ()
    remote_ts: Sequence[TsRange] = ()
    backoff: Backoff = Backoff()
    nonce_len: int = 32
    # Wall clock for certificate validity; the session itself only sees monotonic `now`.
    wall_clock: Callable[[], datetime] | None = None
