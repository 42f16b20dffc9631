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

    def add(self, entries: Iterable[tuple[Network, V]]) -> None:
        """Add networks in place (a thousand tunnels added one by one stay linear); all or nothing: a
        network already present raises ValueError before anything changes."""
        entries = list(entries)
        keys = [(n.version, n.prefixlen, int(n.network_address) >> (_BITS[n.version] - n.prefixlen))
                for n, _ in entries]
        for (version, plen, key), (network, _) in zip(keys, entries):
            level = self._level(version, plen)
            if (level is not None and key in level) or keys.count((version, plen, key)) > 1:
                raise ValueError(f"duplicate network {network}")
        for (version, plen, key), (_, value) in zip(keys, entries):
            level = self._level(version, plen)
            if level is None:
                level = {}
                levels = self._levels[version]
                levels.append((_BITS[version] - plen, level))
                levels.sort(key=lambda item: item[0])  # longest prefix (smallest shift) first
            level[key] = value

    def remove(self, networks: Iterable[Network]) -> None:
        """Remove networks in place (absent ones are ignored); empty levels go."""
        for n in networks:
            level = self._level(n.version, n.prefixlen)
            if level is not None:
                level.pop(int(n.network_address) >> (_BITS[n.version] - n.prefixlen), None)
        for version in (4, 6):
            self._levels[version] = [(shift, table) for shift, table in self._levels[version] if table]

    def _level(self, version: int, prefixlen: int) -> dict[int, V] | None:
        shift = _BITS[version] - prefixlen
        return next((table for s, table in self._levels[version] if s == shift), None)

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
