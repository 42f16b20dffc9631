"""The policy parts of a config: `services:` (named services), a tunnel's `firewall:` and `qos:`, and
`gateway.qos`. Rules become policy.model.Rule values labelled with their file position; a rule that can
never match (an earlier one covers it) and an unknown service name are errors at that rule."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from yaml.nodes import Node, ScalarNode

from policy.check import find_conflicts, find_unmatchable
from policy.model import (
    ALL_PORTS,
    ANY_PROTOCOL,
    ICMP,
    ICMPV6,
    PORT_PROTOCOLS,
    SCTP,
    TCP,
    UDP,
    UDPLITE,
    Action,
    PortMatch,
    PortRange,
    Rule,
    Service,
)
from policy.qos import QosClass, dscp_from_label
from policy.services import CALL_SERVICES, UnknownService, resolve, udp_ranges
from tunnel.config.model import CallQuality, Firewall, GatewayQos, IPNetwork, TunnelQos
from tunnel.config.yamlnodes import BOOL, INT, STR, Doc, describe, key_path, quote

PROTOCOLS = {"any": ANY_PROTOCOL, "icmp": ICMP, "tcp": TCP, "udp": UDP, "icmpv6": ICMPV6, "sctp": SCTP,
             "udplite": UDPLITE}
PORTS = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
SERVICE_ENTRY = re.compile(r"([a-z0-9]+)(?:/(\d{1,5}(?:-\d{1,5})?))?")
CLASS_LABELS = [c.label for c in QosClass]
MATCH_KEYS = ("from", "to", "protocol", "ports", "services")

Subnets = Callable[[Doc, Node, str], "tuple[IPNetwork, ...] | None"]


# -- services: -------------------------------------------------------------------------------------------
def parse_services(doc: Doc, node: Node, path: str) -> dict[str, Service]:
    """`services: {name: [udp/10000-20000, tcp/5061, icmp], ...}`: new names, or built-in ones redefined
    (e.g. the RTP range of this site's PBX)."""
    fields = doc.mapping(node, path, optional=_keys_of(node))
    services: dict[str, Service] = {}
    for name, value in (fields or {}).items():
        here = key_path(path, name)
        if not SERVICE_NAME.fullmatch(name):
            doc.error(value, here, f"{quote(name)} is not a valid service name: 1-32 of a-z 0-9 _ . - "
                                   "(lower case, starting with a letter or digit)")
            continue
        items = doc.sequence(value, here, non_empty=True)
        matches = [_service_entry(doc, item, f"{here}[{i}]") for i, item in enumerate(items or ())]
        found = [m for m in matches if m is not None]
        if items is not None and len(found) == len(matches):
            services[name] = Service(name, tuple(found))
    return services


def _keys_of(node: Node) -> set[str]:
    """Every key of a mapping node is allowed (service names are the admin's)."""
    if not hasattr(node, "value") or not isinstance(node.value, list):
        return set()
    return {k.value for k, _ in node.value if hasattr(k, "value") and isinstance(k.value, str)}


def _service_entry(doc: Doc, node: Node, path: str) -> PortMatch | None:
    text = doc.scalar_text(node, path, "a protocol with optional ports, e.g. udp/10000-20000")
    if text is None:
        return None
    found = SERVICE_ENTRY.fullmatch(text.strip().lower())
    protocol = PROTOCOLS.get(found.group(1)) if found else None
    if found is None or protocol is None or protocol == ANY_PROTOCOL:
        doc.error(node, path, f"{quote(text)} is not protocol[/ports]: protocol one of "
                              f"{', '.join(p for p in PROTOCOLS if p != 'any')}, ports N or N-M (tcp, udp, "
                              "sctp, udplite only)")
        return None
    ports = ALL_PORTS
    if found.group(2):
        if protocol not in PORT_PROTOCOLS:
            doc.error(node, path, f"{found.group(1)} has no ports")
            return None
        port_range = _port_range(doc, node, path, found.group(2))
        if port_range is None:
            return None
        ports = port_range
    return PortMatch(protocol, ports)


def _port_range(doc: Doc, node: Node, path: str, text: str) -> PortRange | None:
    found = PORTS.fullmatch(text.strip())
    if found is None:
        doc.error(node, path, f"{quote(text)} is not a port or port range (N or N-M, 0..65535)")
        return None
    start = int(found.group(1))
    end = int(found.group(2)) if found.group(2) else start
    if not 0 <= start <= end <= 65535:
        doc.error(node, path, f"{quote(text)} is not a port range: need 0 <= N <= M <= 65535")
        return None
    return PortRange(start, end)


# -- rules -----------------------------------------------------------------------------------------------
def _rules(doc: Doc, node: Node, path: str, value_key: str, parse_value: Callable[[Doc, Node, str], Any],
           subnets: Subnets, services: Mapping[str, Service]) -> tuple[Rule, ...] | None:
    start = doc.checkpoint()
    items = doc.sequence(node, path)
    rules: list[Rule] = []
    nodes: list[Node] = []
    for i, item in enumerate(items or ()):
        here = f"{path}[{i}]"
        rule = _rule(doc, item, here, value_key, parse_value, subnets, services)
        if rule is not None:
            rules.append(rule)
            nodes.append(item)
    if items is None or not doc.clean_since(start):
        return None
    for i in find_unmatchable(rules):
        doc.error(nodes[i], rules[i].label, "never matches: its from and to subnets have no IP version in common")
    for conflict in find_conflicts(rules):
        doc.error(nodes[conflict.index], rules[conflict.index].label, conflict.message(rules))
    return tuple(rules) if doc.clean_since(start) else None


def _rule(doc: Doc, node: Node, path: str, value_key: str, parse_value: Callable[[Doc, Node, str], Any],
          subnets: Subnets, services: Mapping[str, Service]) -> Rule | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, required=(value_key,), optional=MATCH_KEYS)
    if fields is None:
        return None
    value = parse_value(doc, fields[value_key], key_path(path, value_key)) if value_key in fields else None
    src = subnets(doc, fields["from"], key_path(path, "from")) if "from" in fields else ()
    dst = subnets(doc, fields["to"], key_path(path, "to")) if "to" in fields else ()
    matches = _matches(doc, node, path, fields, services)
    if not doc.clean_since(start) or src is None or dst is None or matches is None:
        return None  # (nothing is None once nothing was reported)
    return Rule(value, src, dst, matches, label=path)


def _matches(doc: Doc, node: Node, path: str, fields: dict[str, Node],
             services: Mapping[str, Service]) -> tuple[PortMatch, ...] | None:
    """Either services, or a protocol with optional ports; neither means every packet."""
    if "services" in fields and ("protocol" in fields or "ports" in fields):
        doc.error(fields["services"], key_path(path, "services"),
                  "give either services or protocol/ports, not both (a service names its protocols and ports)")
        return None
    if "services" in fields:
        here = key_path(path, "services")
        items = doc.sequence(fields["services"], here, non_empty=True)
        matches: list[PortMatch] = []
        for i, item in enumerate(items or ()):
            name = doc.scalar_text(item, f"{here}[{i}]", "a service name")
            if name is None:
                continue
            try:
                matches.extend(m for m in resolve(name, services).matches if m not in matches)
            except UnknownService as exc:
                doc.error(item, f"{here}[{i}]", str(exc))
        return tuple(matches)
    if "ports" in fields and "protocol" not in fields:
        doc.error(fields["ports"], key_path(path, "ports"), "needs a protocol (tcp, udp, sctp or udplite)")
        return None
    if "protocol" not in fields:
        return ()
    protocol = _protocol(doc, fields["protocol"], key_path(path, "protocol"))
    if protocol is None:
        return None
    if "ports" not in fields:
        return () if protocol == ANY_PROTOCOL else (PortMatch(protocol),)
    here = key_path(path, "ports")
    if protocol not in PORT_PROTOCOLS:
        doc.error(fields["ports"], here, "only tcp, udp, sctp and udplite have ports")
        return None
    ranges = _ports(doc, fields["ports"], here)
    return None if ranges is None else tuple(PortMatch(protocol, r) for r in ranges)


def _protocol(doc: Doc, node: Node, path: str) -> int | None:
    text = doc.scalar_text(node, path, "a protocol name or number", (STR, INT))
    if text is None:
        return None
    key = text.strip().lower()
    if key in PROTOCOLS:
        return PROTOCOLS[key]
    if key.isdecimal() and key.isascii() and int(key) <= 255:
        return int(key)
    doc.error(node, path, f"{quote(text)} is not a protocol: one of {', '.join(PROTOCOLS)} or a number 0..255")
    return None


def _ports(doc: Doc, node: Node, path: str) -> list[PortRange] | None:
    """5060, "10000-20000", or a list of those."""
    items = [(node, path)]
    if hasattr(node, "value") and isinstance(node.value, list):
        seq = doc.sequence(node, path, non_empty=True)
        if seq is None:
            return None
        items = [(item, f"{path}[{i}]") for i, item in enumerate(seq)]
    ranges = []
    for item, here in items:
        text = doc.scalar_text(item, here, "a port or port range (N or N-M)", (STR, INT))
        found = _port_range(doc, item, here, text) if text is not None else None
        if found is None:
            return None
        ranges.append(found)
    return ranges


# -- tunnel sections -------------------------------------------------------------------------------------
def parse_firewall(doc: Doc, node: Node, path: str, subnets: Subnets,
                   services: Mapping[str, Service]) -> Firewall | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, required=("default",), optional=("rules",))
    if fields is None:
        return None
    default = None
    if "default" in fields:
        default = doc.choice(fields["default"], key_path(path, "default"), ("allow", "deny"))
    rules: tuple[Rule, ...] | None = ()
    if "rules" in fields:
        rules = _rules(doc, fields["rules"], key_path(path, "rules"), "action", _action, subnets, services)
    if not doc.clean_since(start) or rules is None:
        return None
    return Firewall(Action(default), rules)


def _action(doc: Doc, node: Node, path: str) -> Action | None:
    text = doc.choice(node, path, ("allow", "deny"))
    return Action(text) if text is not None else None


def _qos_class(doc: Doc, node: Node, path: str) -> QosClass | None:
    text = doc.choice(node, path, CLASS_LABELS)
    return QosClass.from_label(text) if text is not None else None


def parse_tunnel_qos(doc: Doc, node: Node, path: str, subnets: Subnets,
                     services: Mapping[str, Service]) -> TunnelQos | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, optional=("classify", "rules", "outer_dscp", "copy_dscp_inward"))
    if fields is None:
        return None
    values: dict[str, Any] = {}
    if "classify" in fields:
        values["classify"] = doc.choice(fields["classify"], key_path(path, "classify"), ("dscp", "rules"))
    if "rules" in fields:
        values["rules"] = _rules(doc, fields["rules"], key_path(path, "rules"), "class", _qos_class, subnets,
                                 services)
        if values.get("classify", "dscp") != "rules" and doc.clean_since(start):
            doc.error(fields["rules"], key_path(path, "rules"), "only used with classify: rules (classify: dscp "
                                                              "trusts the DSCP the sender set)")
    if "outer_dscp" in fields:
        values["outer_dscp"] = _outer_dscp(doc, fields["outer_dscp"], key_path(path, "outer_dscp"))
    if "copy_dscp_inward" in fields:
        values["copy_dscp_inward"] = doc.boolean(fields["copy_dscp_inward"], key_path(path, "copy_dscp_inward"))
    if not doc.clean_since(start):
        return None
    return TunnelQos(**values)


MAX_CALL_STREAMS = 4096  # per tunnel: status lists them all, a scrape sums them


def default_call_quality(services: Mapping[str, Service]) -> CallQuality:
    """The observer a tunnel gets without `call_quality:`, with the config's own service definitions."""
    return CallQuality(ports=udp_ranges(CALL_SERVICES, services))


def parse_call_quality(doc: Doc, node: Node, path: str, services: Mapping[str, Service]) -> CallQuality | None:
    """`call_quality: false` (off), or {enabled, services, max_streams}."""
    if isinstance(node, ScalarNode):
        if node.tag != BOOL:
            doc.error(node, path, f"expected true, false or a mapping, got {describe(node)}")
            return None
        enabled = doc.boolean(node, path)
        return None if enabled is None else dataclasses.replace(default_call_quality(services), enabled=enabled)
    start = doc.checkpoint()
    fields = doc.mapping(node, path, optional=("enabled", "services", "max_streams"))
    if fields is None:
        return None
    values: dict[str, Any] = {}
    if "enabled" in fields:
        values["enabled"] = doc.boolean(fields["enabled"], key_path(path, "enabled"))
    names: tuple[str, ...] = CALL_SERVICES
    if "services" in fields:
        here = key_path(path, "services")
        found: list[str] = []
        for i, item in enumerate(doc.sequence(fields["services"], here, non_empty=True) or ()):
            name = doc.scalar_text(item, f"{here}[{i}]", "a service name")
            if name is None:
                continue
            try:
                if not udp_ranges((name,), services):
                    doc.error(item, f"{here}[{i}]", f"service {quote(name)} has no UDP ports: media is RTP over UDP")
                found.append(name)
            except UnknownService as exc:
                doc.error(item, f"{here}[{i}]", str(exc))
        names = tuple(found)
        values["services"] = names
    if "max_streams" in fields:
        values["max_streams"] = doc.integer(fields["max_streams"], key_path(path, "max_streams"), 1, MAX_CALL_STREAMS)
    if not doc.clean_since(start):
        return None
    return CallQuality(ports=udp_ranges(names, services), **values)


def _outer_dscp(doc: Doc, node: Node, path: str) -> int | None | str:
    text = doc.scalar_text(node, path, "copy, a DSCP name (ef, af41, cs1, ...) or a number 0..63", (STR, INT))
    if text is None:
        return "invalid"
    if text.strip().lower() == "copy":
        return None
    try:
        return dscp_from_label(text)
    except ValueError as exc:
        doc.error(node, path, f"{exc}, or copy")
        return "invalid"


def parse_gateway_qos(doc: Doc, node: Node, path: str) -> GatewayQos | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, optional=("scheduler", "realtime_rate_mbit", "queue_packets", "wan_rate_mbit"))
    if fields is None:
        return None
    values: dict[str, Any] = {}
    if "scheduler" in fields:
        values["scheduler"] = doc.choice(fields["scheduler"], key_path(path, "scheduler"), ("priority", "fifo"))
    if "realtime_rate_mbit" in fields:
        values["realtime_rate_mbit"] = doc.integer(fields["realtime_rate_mbit"], key_path(path, "realtime_rate_mbit"),
                                                   1, 100_000)
    if "wan_rate_mbit" in fields:
        values["wan_rate_mbit"] = doc.integer(fields["wan_rate_mbit"], key_path(path, "wan_rate_mbit"), 0, 100_000)
    if "queue_packets" in fields:
        here = key_path(path, "queue_packets")
        limits = doc.mapping(fields["queue_packets"], here, optional=CLASS_LABELS)
        values["queue_packets"] = tuple(
            (QosClass.from_label(label), doc.integer(n, key_path(here, label), 8, 4096))
            for label, n in (limits or {}).items())
    if not doc.clean_since(start):
        return None
    return GatewayQos(**values)
