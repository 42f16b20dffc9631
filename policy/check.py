"""Rules that can never match because an earlier rule takes every packet they would (first match wins).

Rule i is reported when ONE earlier rule j matches every packet rule i matches, under match.py's
symmetric semantics. For each IP version and each protocol of rule i, j must contain it either
  - forward: src_i within src_j, dst_i within dst_j, and i's ports for that protocol within j's, or
  - reverse: src_i within dst_j, dst_i within src_j, and j admits ALL ports of that protocol (i's
    forward packets reach j as j's replies, where j tests the source port, which is arbitrary).
Containment of addresses and of ports is exact (against the union of j's networks / ranges, so two /25s
cover their /24); an empty tuple is every address of both versions; a version for which a rule has no
network on one side is a version it never matches. So every report is true (no false positives). Not
found: a rule covered only by the union of several earlier rules, and an any-protocol rule i covered by
a j that lists protocols one by one. A rule that can match nothing at all (IPv4-only src, IPv6-only dst)
is reported by find_unmatchable, not as shadowed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policy.model import ANY_PROTOCOL, PORT_PROTOCOLS, Network, Rule

_TOP = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_ALL_PORTS = [(0, 65535)]
Intervals = list[tuple[int, int]]


@dataclass(frozen=True)
class Conflict:
    index: int  # the rule that never matches
    earlier: int  # the earlier rule that takes all its packets
    kind: str  # "shadowed" (same value: redundant) or "contradicted" (different value: likely a mistake)

    def message(self, rules: Sequence[Rule[Any]]) -> str:
        """What is wrong with rules[index], without its own label (the caller puts that in front)."""
        later, earlier = rules[self.index], rules[self.earlier]
        text = (f"never matches: {_name(rules, self.earlier)} ({_show(earlier.value)}) already covers every "
                "packet it matches")
        if self.kind == "contradicted":
            text += f", so its {_show(later.value)} never applies"
        return text


def _name(rules: Sequence[Rule[Any]], index: int) -> str:
    return rules[index].label or f"rules[{index}]"


def _show(value: object) -> str:
    label = getattr(value, "label", None)
    if isinstance(label, str):
        return label
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


def find_conflicts(rules: Sequence[Rule[Any]]) -> list[Conflict]:
    """One Conflict per rule that an earlier single rule covers, naming the first such rule."""
    views = [_View(r) for r in rules]
    conflicts = []
    for i, later in enumerate(views):
        if not later.versions:
            continue  # matches nothing: find_unmatchable's case, not a shadow
        for j in range(i):
            if _covers(views[j], later):
                kind = "shadowed" if rules[j].value == rules[i].value else "contradicted"
                conflicts.append(Conflict(i, j, kind))
                break
    return conflicts


def find_unmatchable(rules: Sequence[Rule[Any]]) -> list[int]:
    """Rules whose src and dst have no IP version in common, so they match no packet."""
    return [i for i, r in enumerate(rules) if not r.versions()]


def _merge(ranges: Intervals) -> Intervals:
    merged: Intervals = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _addresses(networks: tuple[Network, ...], version: int) -> Intervals:
    if not networks:
        return [(0, _TOP[version])]
    return _merge([(int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == version])


def _within(inner: Intervals, outer: Intervals) -> bool:
    """Every inner interval lies inside one outer interval (outer merged, so this is set containment)."""
    return all(any(lo <= start and end <= hi for lo, hi in outer) for start, end in inner)


class _View:
    """A rule as interval sets: per version its src and dst, per protocol its ports."""

    __slots__ = ("src", "dst", "versions", "any_protocol", "ports")

    def __init__(self, rule: Rule[Any]) -> None:
        self.src = {v: _addresses(rule.src, v) for v in (4, 6)}
        self.dst = {v: _addresses(rule.dst, v) for v in (4, 6)}
        self.versions = [v for v in (4, 6) if self.src[v] and self.dst[v]]
        self.any_protocol = not rule.matches or any(m.protocol == ANY_PROTOCOL for m in rule.matches)
        spans: dict[int, Intervals] = {}
        for m in rule.matches:
            spans.setdefault(m.protocol, []).append((m.ports.start, m.ports.end))
        self.ports = {p: _merge(s) for p, s in spans.items()}


def _covers(j: _View, i: _View) -> bool:
    """True only if rule j matches every packet rule i matches (see the module docstring)."""
    if i.any_protocol and not j.any_protocol:
        return False
    for v in i.versions:
        forward = _within(i.src[v], j.src[v]) and _within(i.dst[v], j.dst[v])
        reverse = _within(i.src[v], j.dst[v]) and _within(i.dst[v], j.src[v])
        if not (forward or reverse):
            return False
        if j.any_protocol:
            continue
        for protocol, ports in i.ports.items():
            theirs = j.ports.get(protocol)
            if theirs is None:
                return False
            if protocol in PORT_PROTOCOLS and not (
                (forward and _within(ports, theirs)) or (reverse and theirs == _ALL_PORTS)
            ):
                return False
    return True
