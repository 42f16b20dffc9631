"""Traffic selectors as address/port ranges and their narrowing (RFC 7296 §2.9).

A responder answers a proposed selector set with its intersection with what its policy allows; an
empty result means TS_UNACCEPTABLE. The initiator accepts only an answer inside what it proposed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY_PROTOCOL = 0


@dataclass(frozen=True, order=True)
class TsRange:
    version: int
    start: int
    end: int
    protocol: int = ANY_PROTOCOL
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_network(cls, network: Network) -> TsRange:
        return cls(network.version, int(network.network_address), int(network.broadcast_address))

    def intersect(self, other: TsRange) -> TsRange | None:
        if self.version != other.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        start, end = max(self.start, other.start), min(self.end, other.end)
        lo, hi = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        if start > end or lo > hi:
            return None
        return TsRange(self.version, start, end, self.protocol or other.protocol, lo, hi)

    def within(self, other: TsRange) -> bool:
        return self.intersect(other) == self

    def networks(self) -> list[Network]:
        """The CIDR blocks covering exactly this address range."""
        cls = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return list(ipaddress.summarize_address_range(cls(self.start), cls(self.end)))

    def __str__(self) -> str:
        nets = ",".join(map(str, self.networks()))
        if self.protocol == ANY_PROTOCOL and (self.start_port, self.end_port) == (0, 65535):
            return nets
        return f"{nets}[{self.protocol}/{self.start_port}-{self.end_port}]"


def ranges(networks: Iterable[Network]) -> list[TsRange]:
    return [TsRange.from_network(n) for n in networks]


def narrow(proposed: Sequence[TsRange], allowed: Sequence[TsRange]) -> list[TsRange]:
    """Every non-empty intersection of a proposed selector with an allowed one, without duplicates."""
    result: list[TsRange] = []
    for p in proposed:
        for a in allowed:
            both = p.intersect(a)
            if both is not None and both not in result:
                result.append(both)
    return result


def covered(answer: Sequence[TsRange], proposed: Sequence[TsRange]) -> bool:
    """True when every selector of the answer lies inside one we proposed."""
    return bool(answer) and all(any(a.within(p) for p in proposed) for a in answer)
