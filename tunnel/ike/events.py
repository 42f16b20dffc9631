"""Events an IKE session hands to the gateway. The gateway turns ChildSaEstablished into ESP SAs in the
data plane; ike and esp never import each other (ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.ts import TsRange
from tunnel.secret import Secret


@dataclass(frozen=True)
class IkeSaEstablished:
    tunnel: str
    spi_i: bytes
    spi_r: bytes
    suite: str  # e.g. AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519
    initiator: bool
    remote: tuple[str, int]  # (host, port) IKE talks to now


@dataclass(frozen=True)
class ChildSaEstablished:
    tunnel: str
    spi_in: int
    spi_out: int
    key_in: Secret = field(repr=False)  # 36 bytes: AES-256 key + salt, for packets we receive
    key_out: Secret = field(repr=False)
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    suite: str
    remote: tuple[str, int]  # (host, port) for ESP-in-UDP
    # Set when this SA answers the peer's rekey: the outbound SPI of the SA it replaces. The peer may not
    # have our answer yet, so the gateway keeps sending on the old SA until the peer deletes it or sends
    # on the new one (strongSwan does the same; RFC 7296 §2.8 leaves the switch time open).
    replaces_out: int | None = None
    worker: int = 0  # the data-plane worker it belongs to: spi_in % IkeConfig.workers


@dataclass(frozen=True)
class ChildSaDeleted:
    tunnel: str
    spi_in: int
    spi_out: int


@dataclass(frozen=True)
class IkeSaFailed:
    """The IKE SA could not be set up or died; reason is one log line, notify the IKE error if any."""

    tunnel: str
    reason: str
    notify: int | None = None


@dataclass(frozen=True)
class IkeSaDeleted:
    tunnel: str
    reason: str


@dataclass(frozen=True)
class ChildSaFailed:
    """IKE SA is up but the Child SA was refused (e.g. TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN)."""

    tunnel: str
    reason: str
    notify: int | None = None


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA was replaced by a new one (RFC 7296 §2.18); its Child SAs moved over unchanged, so no
    ChildSaDeleted follows for them."""

    tunnel: str
    old_spi_i: bytes
    old_spi_r: bytes
    new_spi_i: bytes
    new_spi_r: bytes


@dataclass(frozen=True)
class ReauthDue:
    """The IKE SA's re-authentication time came (reauth_time, RFC 7296 §2.8.3): the owner sets up a new
    IKE SA from scratch (make-before-break) and deletes this one once the new one stands."""

    tunnel: str
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True)
class RevocationQuery:
    """An OCSP request to POST to url (tunnel/ike/ocsp.py); the answer goes to Keying.ocsp_answer(key)."""

    tunnel: str
    key: bytes
    url: str
    request: bytes = field(repr=False)


Event = (IkeSaRekeyed | IkeSaEstablished | ChildSaEstablished | ChildSaDeleted | IkeSaFailed | IkeSaDeleted
         | ChildSaFailed | ReauthDue | RevocationQuery)
