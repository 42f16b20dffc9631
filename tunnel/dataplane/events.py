"""What the forwarder reports upward, as one stream (Forwarder.take_events): the same typed list whether
the forwarder runs in the gateway's process or in a worker, whose reports carry it across. The gateway's
keying handles all of them in one place (app/keying.py: on_data_events)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PeerAddress = tuple[str, int]  # (host, port) as the socket layer gives it


class NeedSaReason(enum.Enum):
    NO_SA = "no_sa"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True, slots=True)
class NeedSa:
    """Traffic for the tunnel has no usable outbound SA: establish (or replace) one. Once per SA."""

    tunnel: str
    reason: NeedSaReason


@dataclass(frozen=True, slots=True)
class IkeMessage:
    """An IKE message that arrived on the encapsulation port (the non-ESP marker removed, RFC 3948)."""

    data: bytes
    peer: PeerAddress


@dataclass(frozen=True, slots=True)
class UnknownSpi:
    """ESP for an SPI no SA has, from this host: a peer that restarted, or one still using SAs we lost.
    At most once per host between two takes, and for a bounded number of hosts."""

    host: str


@dataclass(frozen=True, slots=True)
class PeerMoved:
    """Authenticated ESP of the tunnel arrived from a new address (NAT rebinding, RFC 3948 §3.1): the
    forwarder sends there from now on, and so should every other worker."""

    tunnel: str
    peer: PeerAddress


@dataclass(frozen=True, slots=True)
class SaInUse:
    """The first authenticated packet on this inbound SA: the peer has it (make-before-break switch)."""

    tunnel: str
    spi: int


@dataclass(frozen=True, slots=True)
class PeerAlive:
    """Authenticated ESP of the tunnel arrived since the last take: liveness for DPD (RFC 7296 §2.4)."""

    tunnel: str


@dataclass(frozen=True, slots=True)
class VolumeLimit:
    """The outbound SA passed its soft volume limit (rekey now) or its hard one (RFC 4301 §4.4.2.1)."""

    tunnel: str
    spi: int
    hard: bool


DataEvent = NeedSa | IkeMessage | UnknownSpi | PeerMoved | SaInUse | PeerAlive | VolumeLimit
