"""One Child SA as the IKE SA sees it (RFC 7296 §1.3, §2.8): SPIs, suite, traffic selectors, lifetimes
and an explicit state with one transition table. The keys go to the data plane in a ChildSaEstablished
event; only a Child SA that is not announced yet (a rekey's new SA) holds them here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from policy.ts import TsRange
from tunnel.ike.constants import TsType
from tunnel.ike.message import TrafficSelector
from tunnel.ike.proposal import EspSuite


class ChildState(enum.Enum):
    INSTALLED = "installed"  # in use
    REKEYING = "rekeying"  # our CREATE_CHILD_SA replacing it is out
    REKEYED = "rekeyed"  # replaced by the peer's rekey: the peer deletes it (§2.8)
    RETIRING = "retiring"  # ours to delete when the window is free: replaced by our rekey, a redundant
    # collision SA (§2.8.1), or past its hard lifetime (already gone from the data plane)
    DELETING = "deleting"  # our Delete for it is out (§1.4.1)


# Every state change a Child SA may make; anything else is a bug and raises. Leaving the IKE SA's list
# (deleted, or dropped with the IKE SA) is not a state: the Child SA object is simply forgotten.
TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.INSTALLED: frozenset({ChildState.REKEYING, ChildState.REKEYED, ChildState.RETIRING}),
    ChildState.REKEYING: frozenset({ChildState.INSTALLED, ChildState.REKEYED, ChildState.RETIRING}),
    ChildState.REKEYED: frozenset({ChildState.RETIRING}),
    ChildState.RETIRING: frozenset({ChildState.DELETING}),
    ChildState.DELETING: frozenset(),
}
ACTIVE = frozenset({ChildState.INSTALLED, ChildState.REKEYING})  # what the data plane sends on


class IllegalTransition(RuntimeError):
    """A state change not in a transition table: a bug, never a peer's doing."""


@dataclass
class ChildSa:
    spi_in: int
    spi_out: int
    suite: EspSuite
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    rekey_at: float | None = None  # soft lifetime (lifetime.py)
    expire_at: float | None = None  # hard lifetime
    installed_at: float | None = None  # when its lifetime started (its age, for the metrics)
    state: ChildState = ChildState.INSTALLED
    announced: bool = True  # the gateway got ChildSaEstablished for it (and no ChildSaDeleted yet)
    keys: tuple[bytes, bytes] | None = field(default=None, repr=False)  # (in, out) of a rekey's SA until announced

    def enter(self, state: ChildState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"Child SA {self.spi_in:#010x}: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def new_spi(random_bytes: Callable[[int], bytes], workers: int, worker: int = 0) -> int:
    """A random inbound SPI that belongs to `worker`: spi % workers == worker (IkeConfig.workers)."""
    while True:  # 0-255 are reserved (RFC 4303 §2.1)
        spi = int.from_bytes(random_bytes(4), "big")
        spi += worker - spi % workers
        if 256 <= spi < 2**32:
            return spi


def to_wire(r: TsRange) -> TrafficSelector:
    length = 4 if r.version == 4 else 16
    ts_type = TsType.TS_IPV4_ADDR_RANGE if r.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, r.protocol, r.start_port, r.end_port, r.start.to_bytes(length, "big"),
                           r.end.to_bytes(length, "big"))


def wire_selectors(ranges: Iterable[TsRange]) -> tuple[TrafficSelector, ...]:
    return tuple(to_wire(r) for r in ranges)


def from_wire(selectors: Sequence[TrafficSelector]) -> list[TsRange]:
    result = []
    for ts in selectors:
        if ts.ts_type not in (TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE):
            continue  # unknown selector types are skipped, not fatal
        result.append(TsRange(4 if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else 6,
                              int.from_bytes(ts.start_address, "big"), int.from_bytes(ts.end_address, "big"),
                              ts.ip_protocol, ts.start_port, ts.end_port))
    return result
