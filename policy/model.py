"""The policy vocabulary as frozen values: port ranges, (protocol, ports) alternatives, named services and
ordered rules. Everything validates itself when built, so a bad value fails at config load, never on a
packet. Matching semantics live in match.py's docstring."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA "Assigned Internet Protocol Numbers". 0 is HOPOPT on the wire; in a PortMatch it means "any
# protocol", as in an RFC 7296 §3.13.1 traffic selector.
ANY_PROTOCOL = 0
ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58
SCTP = 132
UDPLITE = 136
# Protocols whose header starts with a 16-bit source and destination port (RFC 793, 768, 4960, 3828).
PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP, UDPLITE})

_PROTOCOL_NAMES = {ANY_PROTOCOL: "any", ICMP: "icmp", TCP: "tcp", UDP: "udp", ICMPV6: "icmpv6", SCTP: "sctp",
                   UDPLITE: "udplite"}


def protocol_name(protocol: int) -> str:
    return _PROTOCOL_NAMES.get(protocol, str(protocol))


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive port range, start..end."""

    start: int
    end: int
    ALL: ClassVar[PortRange]

    def __post_init__(self) -> None:
        for v in (self.start, self.end):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"port must be an integer, not {v!r}")
        if not 0 <= self.start <= self.end <= 65535:
            raise ValueError(f"bad port range {self.start}-{self.end}: need 0 <= start <= end <= 65535")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    def contains(self, port: int) -> bool:
        return self.start <= port <= self.end

    def covers(self, other: PortRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


PortRange.ALL = ALL_PORTS = PortRange(0, 65535)


@dataclass(frozen=True)
class PortMatch:
    """One (protocol, port range) alternative. ANY_PROTOCOL means every protocol, and then the range must
    be ALL_PORTS; so must it be for a protocol without ports (ICMP...): a range there would never apply."""

    protocol: int
    ports: PortRange = ALL_PORTS

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, int) or isinstance(self.protocol, bool) or not 0 <= self.protocol <= 255:
            raise ValueError(f"bad protocol {self.protocol!r}: need an IP protocol number 0..255")
        if not isinstance(self.ports, PortRange):
            raise ValueError(f"ports must be a PortRange, not {self.ports!r}")
        if self.protocol not in PORT_PROTOCOLS and self.ports != ALL_PORTS:
            raise ValueError(f"protocol {protocol_name(self.protocol)} has no ports; got ports {self.ports}")

    def covers(self, other: PortMatch) -> bool:
        """True when every packet this alternative admits is admitted by self (same direction)."""
        if self.protocol == ANY_PROTOCOL:
            return True
        return self.protocol == other.protocol and self.ports.covers(other.ports)

    def __str__(self) -> str:
        if self.ports == ALL_PORTS:
            return protocol_name(self.protocol)
        return f"{protocol_name(self.protocol)}/{self.ports}"


ANY_MATCH = PortMatch(ANY_PROTOCOL)


@dataclass(frozen=True)
class Service:
    """A named set of (protocol, ports) alternatives, e.g. sip = udp/5060, tcp/5060, tcp/5061."""

    name: str
    matches: tuple[PortMatch, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "matches", tuple(self.matches))
        if not self.name:
            raise ValueError("a service needs a name")
        if not self.matches or not all(isinstance(m, PortMatch) for m in self.matches):
            raise ValueError(f"service {self.name}: needs one or more PortMatch values")


V = TypeVar("V")


def _networks(what: str, value: Iterable[Network]) -> tuple[Network, ...]:
    nets = tuple(value)
    for n in nets:
        if not isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise ValueError(f"{what}: {n!r} is not an ipaddress network")
    return nets


@dataclass(frozen=True)
class Rule(Generic[V]):
    """One ordered policy entry; first match wins (see match.py). Lists are accepted and stored as tuples."""

    value: V
    src: tuple[Network, ...] = ()  # empty = any address of either family
    dst: tuple[Network, ...] = ()
    matches: tuple[PortMatch, ...] = ()  # empty = any protocol, any port
    label: str = field(default="", compare=False)  # "rules[2]" or file:line, for messages only

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _networks(f"{self.label or 'rule'} src", self.src))
        object.__setattr__(self, "dst", _networks(f"{self.label or 'rule'} dst", self.dst))
        matches = tuple(self.matches)
        if not all(isinstance(m, PortMatch) for m in matches):
            raise ValueError(f"{self.label or 'rule'}: matches must be PortMatch values")
        object.__setattr__(self, "matches", matches)

    def versions(self) -> frozenset[int]:
        """The IP versions this rule can match at all: both src and dst must allow the version."""
        def allowed(nets: tuple[Network, ...]) -> set[int]:
            return {n.version for n in nets} if nets else {4, 6}
        return frozenset(allowed(self.src) & allowed(self.dst))


class Action(str, enum.Enum):
    ALLOW = "allow"
    DENY = "deny"

    def __str__(self) -> str:
        return self.value
