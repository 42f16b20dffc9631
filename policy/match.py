"""Ordered, symmetric, stateless rule matching (firewall verdicts, QoS classes), compiled for the data path.

The contract (linear_lookup is its literal transcription; the compiled Matcher must agree with it):

* A packet is (version, protocol, src, dst, sport, dport, fragment), addresses as ints, ports 0..65535,
  as policy.flow.flow_key() reads it. Versions other than 4 and 6 match no rule.
* A rule matches like an IPsec SPD entry (RFC 4301 §4.4.1), in both directions and without state: it
  matches when the packet's protocol matches one of its PortMatch alternatives (an empty `matches` or an
  ANY_PROTOCOL alternative matches every protocol) AND, for that alternative, either
    - forward: src in rule.src, dst in rule.dst and dport in the alternative's ports, or
    - reverse (the replies): src in rule.dst, dst in rule.src and sport in the alternative's ports.
* An empty src or dst tuple means any address of either version; a network of the other version never
  matches, so a rule whose src is IPv4-only matches no IPv6 packet.
* Port conditions apply only to PORT_PROTOCOLS (TCP, UDP, SCTP, UDP-Lite); for any other protocol only
  the protocol must match. A non-first fragment (fragment=True) shows no ports and satisfies every port
  condition: the first fragment carries the ports and decides, and without it nothing reassembles.
* First matching rule wins; no match gives the default value.

How the compiled matcher is cheap per packet: each rule is one bit (bit i = rules[i]). Per address, one
longest-prefix lookup (policy.selectors.PrefixTable, whose entries carry the bits of every rule with a
network containing them: supernets' bits are pushed down at compile time) gives two masks, "rules whose
src contains this address" and "rules whose dst contains it". Per protocol, a bisect over the port
boundaries gives "rules whose ports contain this port". Then
    forward = src_in_src & dst_in_dst & ports(dport);  reverse = dst_in_src & src_in_dst & ports(sport)
and the lowest set bit of forward | reverse is the first matching rule. The cost depends on the number
of distinct prefix lengths, not on the number of rules. In front of this sits a bounded dict keyed by
the whole tuple (cleared when it reaches cache_size). A matcher with no rules, or whose rules all give
the default value, returns the default without looking.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, Generic

from policy.model import ANY_PROTOCOL, PORT_PROTOCOLS, Network, Rule, V
from policy.prefixes import PrefixTable

_BITS = {4: 32, 6: 128}
_MISS = object()
_ADDRESS = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


# --- The reference: obviously correct, slow ------------------------------------------------------------

def _address_in(networks: tuple[Network, ...], version: int, address: int) -> bool:
    if not networks:
        return True
    ip = _ADDRESS[version](address)
    return any(n.version == version and ip in n for n in networks)


def rule_matches(rule: Rule[Any], version: int, protocol: int, src: int, dst: int, sport: int, dport: int,
                 fragment: bool = False) -> bool:
    """The contract above, spelled out for one rule."""
    if version not in _ADDRESS:
        return False
    ports_apply = protocol in PORT_PROTOCOLS and not fragment
    for m in rule.matches or (None,):
        if m is not None and m.protocol not in (ANY_PROTOCOL, protocol):
            continue
        forward_port = m is None or not ports_apply or m.ports.contains(dport)
        reverse_port = m is None or not ports_apply or m.ports.contains(sport)
        if forward_port and _address_in(rule.src, version, src) and _address_in(rule.dst, version, dst):
            return True
        if reverse_port and _address_in(rule.dst, version, src) and _address_in(rule.src, version, dst):
            return True
    return False


def linear_lookup(rules: Sequence[Rule[V]], default: V, version: int, protocol: int, src: int, dst: int,
                  sport: int, dport: int, fragment: bool = False) -> V:
    """First matching rule's value, else default, by trying every rule in order."""
    for rule in rules:
        if rule_matches(rule, version, protocol, src, dst, sport, dport, fragment):
            return rule.value
    return default


# --- The compiled matcher ------------------------------------------------------------------------------

class Matcher(Generic[V]):
    """lookup() -> the first matching rule's value, or the default. Immutable once built; the flow cache
    can therefore never go stale. Build it with compile_rules()."""

    __slots__ = ("rules", "default", "_cache", "_cache_size", "_addresses", "_any_protocol", "_port_index",
                 "_protocol_mask", "_values")

    def __init__(self, rules: Sequence[Rule[V]], default: V, cache_size: int = 65536) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.rules: tuple[Rule[V], ...] = tuple(rules)
        self.default = default
        self._cache: dict[tuple[int, int, int, int, int, int, bool], V] = {}
        self._cache_size = cache_size
        self._values = tuple(r.value for r in self.rules)
        self._addresses: PrefixTable[tuple[int, int]] = _address_table(self.rules)
        self._any_protocol, self._protocol_mask, self._port_index = _protocol_index(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def lookup(self, version: int, protocol: int, src: int, dst: int, sport: int, dport: int,
               fragment: bool = False) -> V:
        key = (version, protocol, src, dst, sport, dport, fragment)
        cache = self._cache
        value = cache.get(key, _MISS)  # not try/except: a raised KeyError costs more than a miss should
        if value is _MISS:
            value = self._classify(version, protocol, src, dst, sport, dport, fragment)
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[key] = value
        return value  # type: ignore[return-value]  # a V: _MISS never leaves the branch above

    def lookup_flow(self, key: tuple[int, int, int, int, int, int, int, bool]) -> V:
        """lookup() for a policy.flow.flow_key() tuple (its tos is ignored)."""
        return self.lookup(key[0], key[1], key[2], key[3], key[4], key[5], key[7])

    def _classify(self, version: int, protocol: int, src: int, dst: int, sport: int, dport: int,
                  fragment: bool) -> V:
        """The uncached lookup (see the module docstring)."""
        s = self._addresses.lookup(version, src)
        if s is None or not (s[0] | s[1]):  # not IPv4/IPv6, or src is in no rule's src nor dst
            return self.default
        d = self._addresses.lookup(version, dst)
        assert d is not None  # the table has a /0 for each version, and src's version had an entry
        forward = s[0] & d[1]
        reverse = d[0] & s[1]
        if not (forward | reverse):
            return self.default
        index = None if fragment else self._port_index.get(protocol)
        if index is not None:
            bounds, masks = index
            hits = (forward & masks[bisect_right(bounds, dport) - 1]) | \
                (reverse & masks[bisect_right(bounds, sport) - 1])
        else:
            hits = (forward | reverse) & self._protocol_mask.get(protocol, self._any_protocol)
        if not hits:
            return self.default
        return self._values[(hits & -hits).bit_length() - 1]


class _Constant(Matcher[V]):
    """No rule can change the answer: every lookup is the default."""

    __slots__ = ()

    def lookup(self, version: int, protocol: int, src: int, dst: int, sport: int, dport: int,
               fragment: bool = False) -> V:
        return self.default

    def lookup_flow(self, key: tuple[int, int, int, int, int, int, int, bool]) -> V:
        return self.default


def compile_rules(rules: Sequence[Rule[V]], default: V, cache_size: int = 65536) -> Matcher[V]:
    rules = tuple(rules)
    if all(r.value is default for r in rules):
        return _Constant(rules, default, cache_size)
    return Matcher(rules, default, cache_size)


def _address_table(rules: Sequence[Rule[Any]]) -> PrefixTable[tuple[int, int]]:
    """One entry per network used by any rule, plus 0.0.0.0/0 and ::/0 so every address finds one. Its
    value is (bits of rules whose src contains the network, bits of rules whose dst contains it)."""
    raw: dict[tuple[int, int, int], list[int]] = {(4, 0, 0): [0, 0], (6, 0, 0): [0, 0]}
    for i, rule in enumerate(rules):
        bit = 1 << i
        for side, networks in ((0, rule.src), (1, rule.dst)):
            if not networks:  # any address of either version: the /0 of both
                raw[4, 0, 0][side] |= bit
                raw[6, 0, 0][side] |= bit
            for n in networks:
                entry = (n.version, n.prefixlen, int(n.network_address) >> (_BITS[n.version] - n.prefixlen))
                raw.setdefault(entry, [0, 0])[side] |= bit
    lengths = {v: sorted({plen for (ver, plen, _) in raw if ver == v}) for v in (4, 6)}
    entries = []
    for (version, plen, key), (src_bits, dst_bits) in raw.items():
        for shorter in lengths[version]:  # push every supernet's bits down into this entry
            if shorter >= plen:
                break
            parent = raw.get((version, shorter, key >> (plen - shorter)))
            if parent is not None:
                src_bits |= parent[0]
                dst_bits |= parent[1]
        network_class = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        entries.append((network_class((key << (_BITS[version] - plen), plen)), (src_bits, dst_bits)))
    return PrefixTable(entries)


def _protocol_index(rules: Sequence[Rule[Any]]) -> tuple[int, dict[int, int], dict[int, tuple[list[int], list[int]]]]:
    """(bits of any-protocol rules, {protocol: bits of rules admitting it at any port},
    {port protocol: (interval starts, bits of rules whose ports contain that interval)})."""
    any_protocol = 0
    per_protocol: dict[int, int] = {}
    ranges: dict[int, list[tuple[int, int, int]]] = {}
    for i, rule in enumerate(rules):
        bit = 1 << i
        if not rule.matches or any(m.protocol == ANY_PROTOCOL for m in rule.matches):
            any_protocol |= bit
            continue
        for m in rule.matches:
            per_protocol[m.protocol] = per_protocol.get(m.protocol, 0) | bit
            if m.protocol in PORT_PROTOCOLS:
                ranges.setdefault(m.protocol, []).append((m.ports.start, m.ports.end, i))
    protocol_mask = {p: bits | any_protocol for p, bits in per_protocol.items()}
    port_index = {p: _port_intervals(spans, any_protocol) for p, spans in ranges.items()}
    return any_protocol, protocol_mask, port_index


def _port_intervals(spans: list[tuple[int, int, int]], base: int) -> tuple[list[int], list[int]]:
    """Sweep the ranges once: at each boundary, rules enter or leave (a rule may hold several
    overlapping ranges, hence the counts); each interval's mask is base | the rules active in it."""
    events: dict[int, list[tuple[int, int]]] = {0: []}
    for start, end, i in spans:
        events.setdefault(start, []).append((i, 1))
        if end < 65535:
            events.setdefault(end + 1, []).append((i, -1))
    active: dict[int, int] = {}
    mask = 0
    bounds: list[int] = []
    masks: list[int] = []
    for point in sorted(events):
        for i, delta in events[point]:
            count = active.get(i, 0) + delta
            active[i] = count
            if count:
                mask |= 1 << i
            else:
                mask &= ~(1 << i)
        bounds.append(point)
        masks.append(mask | base)
    return bounds, masks
