"""What one IKE session needs to know, as plain values (built by the gateway from the YAML config)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from policy.ts import TsRange
from tunnel.ike.proposal import EspSuite, IkeSuite
from tunnel.ike.window import Backoff

if TYPE_CHECKING:  # the x509 machinery is loaded only by a gateway that uses certificates
    from tunnel.ike.certs import PublicKey
    from tunnel.ike.ocsp import OcspCache
    from tunnel.ike.trust import Credential

# (certificate chain DER, peer identity (id_type, data), now) -> public key; raises AuthenticationFailed
ChainVerifier = Callable[[Sequence[bytes], int, bytes, datetime], "PublicKey"]


@dataclass(frozen=True)
class PskAuth:
    psk: bytes = field(repr=False)  # what we authenticate with, and accept
    accepted: tuple[bytes, ...] = field(default=(), repr=False)  # also accepted from the peer (a key change)


@dataclass(frozen=True)
class CertAuth:
    # Our certificates with their keys (more than one during a CA rollover); the peer's CERTREQ picks
    # (tunnel/ike/trust.py), the first is the default.
    credentials: tuple[Credential, ...]
    verify_peer: ChainVerifier  # checks the peer's chain against the trusted CAs and the expected identity
    ca_key_hashes: bytes = b""  # CERTREQ data: SHA-1 of each trusted CA's SubjectPublicKeyInfo (§3.7)
    ocsp: OcspCache | None = None  # the OCSP statuses verify_peer consults (the gateway fills it)


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
    # IKE fragmentation (RFC 7383): offered in IKE_SA_INIT; once both sides agree, an encrypted message
    # larger than an IP packet of this size goes as SKF fragments. 0: not offered.
    fragment_size: int = 1280
    # Wall clock for certificate validity; the session itself only sees monotonic `now`.
    wall_clock: Callable[[], datetime] | None = None
    # SA lifetimes (RFC 7296 §2.8), in seconds of the session's monotonic clock. The soft (rekey) time is
    # shortened by a random fraction of up to rekey_jitter so both peers do not rekey at once; the hard
    # lifetime (default rekey time * 1.1) deletes an SA that could not be rekeyed.
    child_rekey_time: float = 3600.0
    child_lifetime: float | None = None
    ike_rekey_time: float = 14400.0
    ike_lifetime: float | None = None
    # Re-authentication (§2.8.3): a new IKE SA with a full IKE_AUTH after this long (shortened by the jitter
    # like rekeys), the old one deleted once the new one stands; 0 = never (IKE rekeys carry on).
    reauth_time: float = 0.0
    rekey_jitter: float = 0.1
    # Dead-peer detection (§2.4): an empty INFORMATIONAL after this long without hearing from the peer.
    dpd_delay: float = 30.0
    # Data-plane workers of this gateway, each with Child SAs of its own (the idea of RFC 9611's
    # per-resource SAs): extra Child SAs with the same selectors, negotiated as plain CREATE_CHILD_SA so a
    # peer that knows nothing of it just sees several Child SAs. A Child SA belongs to worker
    # (inbound SPI % workers), which is how received ESP finds its worker. 1 = one Child SA.
    workers: int = 1
    # How many Child SAs with these selectors the peer may have us hold (its own workers, rekeys
    # overlapping); beyond that its CREATE_CHILD_SA gets NO_ADDITIONAL_SAS.
    max_children: int = 16

    def __post_init__(self) -> None:
        if self.child_lifetime is None:
            object.__setattr__(self, "child_lifetime", self.child_rekey_time * 1.1)
        if self.ike_lifetime is None:
            object.__setattr__(self, "ike_lifetime", self.ike_rekey_time * 1.1)
        if not 0.0 <= self.rekey_jitter < 1.0:
            raise ValueError("rekey_jitter must be in [0, 1)")
        if not 1 <= self.workers <= self.max_children:
            raise ValueError("workers must be in [1, max_children]")
