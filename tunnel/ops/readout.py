"""The read-only view of a running gateway that status, metrics and the counter log lines share: plain
values, taken when asked (a scrape, a `sitelink status`), so operations never import the gateway and
the gateway never formats for them. The application implements Readout (app/readout.py).

Times are the cores' monotonic seconds; a consumer turns them into ages or Unix times with its own now.
Never key material: SPIs, suites, counters and times only.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol

from tunnel.dataplane.callquality import CallReport
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.scheduler import ClassStats

# Upper bounds (seconds) of the IKE handshake-duration histogram: a LAN-speed exchange takes a few ms,
# a lost message adds the 1 s retransmission timeout, a dead or refusing peer ends as a failure instead.
HANDSHAKE_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class IkeStats:
    """Plain tallies of a tunnel's IKE life, kept by keying where the events are applied."""

    handshakes_ok: int = 0
    # IKE_SA_INIT to IKE_AUTH done, per established IKE SA: counts per HANDSHAKE_BOUNDS bucket (+Inf last)
    handshake_buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDSHAKE_BOUNDS) + 1))
    handshake_seconds: float = 0.0
    # IKE SAs that failed (set-up refused or timed out, or a dead peer), by the IKE notify that said why
    # (lower-case name), "none" when none did (timeouts)
    handshakes_failed: dict[str, int] = field(default_factory=dict)
    children: int = 0  # Child SAs installed
    child_rekeys: int = 0  # ... of which replaced one of ours
    ike_rekeys: int = 0

    def observe_handshake(self, seconds: float) -> None:
        self.handshake_buckets[bisect.bisect_left(HANDSHAKE_BOUNDS, seconds)] += 1
        self.handshake_seconds += seconds


@dataclass(frozen=True)
class ChildView:
    spi_in: int
    spi_out: int
    suite: str
    state: str  # installed | rekeying | rekeyed | retiring | deleting
    active: bool  # installed or rekeying: traffic uses it
    rekey_at: float | None
    expire_at: float | None
    installed_at: float | None


@dataclass(frozen=True)
class IkeView:
    """The tunnel's established IKE SA."""

    spi_i: bytes
    spi_r: bytes
    initiator: bool
    suite: str | None
    rekey_at: float | None
    expire_at: float | None
    last_received: float | None  # the peer last heard from (an authenticated message or ESP packet)
    dpd_rtt: float | None
    children: tuple[ChildView, ...]


@dataclass(frozen=True)
class TunnelView:
    name: str
    peer: tuple[str, int]
    keying: str  # "ike" | "manual"
    up: bool  # an outbound SA is installed: traffic can flow
    connecting: bool  # not up, but an IKE SA is being set up
    counters: Counters  # summed over every worker
    ike_drops: dict[str, int]  # by reason
    established_at: float | None = None  # its current Child SA
    stats: IkeStats | None = None
    ike: IkeView | None = None
    manual_spi_out: int | None = None
    calls: CallReport | None = None  # the call-quality observer's, over every worker; None: turned off


QueueRows = list[tuple[int, ClassStats]]  # per QoS class, in QosClass order: (depth, statistics)


class Readout(Protocol):
    @property
    def gateway_name(self) -> str: ...
    @property
    def listen(self) -> str: ...
    def tunnels(self) -> list[TunnelView]: ...
    @property
    def ha_role(self) -> str | None:
        """"active" or "standby" for one of an HA pair (gateway.ha), else None."""
    def ha_sync(self) -> dict[str, object] | None:
        """gateway.ha.sync: {"taken_over": tunnels adopted so far, "drops": {reason: count}}, else None."""
    def unowned(self) -> Counters:
        """Data-plane drops no tunnel can be blamed for (unknown SPI, no route), over every worker."""
    def unowned_ike_drops(self) -> dict[str, int]:
        """IKE drops no tunnel can be blamed for (unknown SPI or peer, cookies, garbage)."""
    def queues(self) -> dict[str, QueueRows]:
        """Per direction, summed over every worker; empty with the FIFO scheduler."""
