"""Traffic selectors as longest-prefix-match tables over integer addresses.

A lookup walks the distinct prefix lengths present (longest first) and does one dict probe each, so
its cost depends on how many prefix lengths the config uses, not on how many subnets there are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_BITS = {4: 32, 6: 128}


class PrefixTable(Generic[V]):
    """Maps IP networks to values; lookup(version, address) returns the value of the longest match."""

    __slots__ = ("_levels",)

    def __init__(self, entries: Iterable[tuple[Network, V]] = ()) -> None:
        tables: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        for network, value in entries:
            bits = _BITS[network.version]
            by_prefix = tables[network.version].setdefault(network.prefixlen, {})
            key = int(network.network_address) >> (bits - network.prefixlen)
            if key in by_prefix:
                raise ValueError(f"duplicate network {network}")
            by_prefix[key] = value
        # Per version: [(shift, {network >> shift: value})], longest prefix first.
        self._levels: dict[int, list[tuple[int, dict[int, V]]]] = {
            version: [(_BITS[version] - plen, t) for plen, t in sorted(tables[version].items(), reverse=True)]
            for version in (4, 6)
        }

    def lookup(self, version: int, address: int) -> V | None:
        for shift, table in self._levels.get(version, ()):
            value = table.get(address >> shift)
            if value is not None:
                return value
        return None


class SubnetSet:
    """Membership test for a set of subnets (a traffic selector's address ranges)."""

    __slots__ = ("_table",)

    def __init__(self, networks: Iterable[Network]) -> None:
        self._table: PrefixTable[bool] = PrefixTable((n, True) for n in set(networks))

    def contains(self, version: int, address: int) -> bool:
        return self._table.lookup(version, address) is not None
