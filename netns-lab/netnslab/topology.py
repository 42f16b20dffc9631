"""Lab topology as data: load a YAML file into frozen, validated dataclasses.

The model is deliberately narrow: one WAN router namespace and N sites, each
site being a LAN host and a gateway.  The host sits on the LAN behind the
gateway; the gateway has one point-to-point WAN link to the router.  Keeping
the shape fixed keeps the builder simple and the node names predictable
(``router``, ``<site>-host``, ``<site>-gw``).

Validation happens here, before anything touches the kernel, so that a bad
file fails with a message naming the offending key instead of an errno from
netlink halfway through a build.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network

IFNAMSIZ = 15  # kernel limit on interface names (16 bytes incl. NUL)
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_NODE_RE = re.compile(r"^[a-z][a-z0-9]*$")
_MAX_NODE_LEN = 16  # keeps "<prefix>-<site>-host" readable in `ip netns list`


class TopologyError(ValueError):
    """A topology file or object is malformed; the message names the key."""


@dataclass(frozen=True)
class Site:
    """One site: a LAN host behind a gateway that has one WAN link to the router.

    ``*_wan6`` fields are optional; when present on both ends, "plain" lab mode
    can route IPv6 LAN traffic in clear across the WAN.
    """

    name: str
    lan4: IPv4Network
    host4: IPv4Address
    gw_lan4: IPv4Address
    wan4: IPv4Network
    router_wan4: IPv4Address
    gw_wan4: IPv4Address
    lan6: IPv6Network | None = None
    host6: IPv6Address | None = None
    gw_lan6: IPv6Address | None = None
    wan6: IPv6Network | None = None
    router_wan6: IPv6Address | None = None
    gw_wan6: IPv6Address | None = None
    host_if: str = "eth0"
    gw_lan_if: str = "lan0"
    gw_wan_if: str = "wan0"
    router_if: str = ""  # defaults to "to-<site>" in the loader

    @property
    def host(self) -> str:
        """Node name of the site's LAN host."""
        return f"{self.name}-host"

    @property
    def gw(self) -> str:
        """Node name of the site's gateway."""
        return f"{self.name}-gw"

    @property
    def has_v6(self) -> bool:
        return self.lan6 is not None

    @property
    def has_wan6(self) -> bool:
        return self.wan6 is not None


@dataclass(frozen=True)
class Topology:
    """A validated lab topology. Build it with :func:`load_topology`."""

    name: str
    mtu: int
    router: str
    sites: tuple[Site, ...]

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"topology {self.name!r} has no site {name!r} "
                       f"(sites: {', '.join(s.name for s in self.sites)})")

    def nodes(self) -> list[str]:
        """All node names, router first, then host and gateway of each site."""
        out = [self.router]
        for s in self.sites:
            out += [s.host, s.gw]
        return out

    def kind(self, node: str) -> str:
        """'router', 'host' or 'gw' for a node name."""
        return self._locate(node)[0]

    def site_of(self, node: str) -> Site:
        """The site a host or gateway belongs to."""
        kind, site = self._locate(node)
        if site is None:
            raise KeyError(f"node {node!r} is the router and belongs to no site")
        return site

    def _locate(self, node: str) -> tuple[str, Site | None]:
        if node == self.router:
            return "router", None
        for s in self.sites:
            if node == s.host:
                return "host", s
            if node == s.gw:
                return "gw", s
        raise KeyError(f"unknown node {node!r} (nodes: {', '.join(self.nodes())})")


# --------------------------------------------------------------------------
# loading


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: invalid YAML: {exc}") from exc
    return parse_topology(data, source=str(path))


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Turn already-parsed YAML (a dict) into a validated :class:`Topology`."""
    r = _Reader(source)
    root = r.mapping(data, "", {"name", "mtu", "router", "sites"})
    sites_raw = root.get("sites")
    if not isinstance(sites_raw, list) or not sites_raw:
        raise r.error("sites", "must be a non-empty list of sites")
    topo = Topology(
        name=r.string(root, "", "name", default="lab"),
        mtu=r.integer(root, "", "mtu", default=1500),
        router=r.string(root, "", "router", default="router"),
        sites=tuple(_parse_site(r, raw, f"sites[{i}]") for i, raw in enumerate(sites_raw)),
    )
    validate(topo, source)
    return topo


def _parse_site(r: _Reader, raw: Any, where: str) -> Site:
    site = r.mapping(raw, where, {"name", "lan", "wan", "interfaces"})
    name = r.string(site, where, "name")
    lan = r.mapping(site.get("lan"), f"{where}.lan",
                    {"subnet4", "host4", "gw4", "subnet6", "host6", "gw6"})
    wan = r.mapping(site.get("wan"), f"{where}.wan",
                    {"subnet4", "router4", "gw4", "subnet6", "router6", "gw6"})
    ifs = r.mapping(site.get("interfaces", {}), f"{where}.interfaces",
                    {"host", "gw_lan", "gw_wan", "router"})
    lw, ww, iw = f"{where}.lan", f"{where}.wan", f"{where}.interfaces"
    return Site(
        name=name,
        lan4=r.net(lan, lw, "subnet4", 4),
        host4=r.ip(lan, lw, "host4", 4),
        gw_lan4=r.ip(lan, lw, "gw4", 4),
        wan4=r.net(wan, ww, "subnet4", 4),
        router_wan4=r.ip(wan, ww, "router4", 4),
        gw_wan4=r.ip(wan, ww, "gw4", 4),
        lan6=r.net(lan, lw, "subnet6", 6, optional=True),
        host6=r.ip(lan, lw, "host6", 6, optional=True),
        gw_lan6=r.ip(lan, lw, "gw6", 6, optional=True),
        wan6=r.net(wan, ww, "subnet6", 6, optional=True),
        router_wan6=r.ip(wan, ww, "router6", 6, optional=True),
        gw_wan6=r.ip(wan, ww, "gw6", 6, optional=True),
        host_if=r.string(ifs, iw, "host", default="eth0"),
        gw_lan_if=r.string(ifs, iw, "gw_lan", default="lan0"),
        gw_wan_if=r.string(ifs, iw, "gw_wan", default="wan0"),
        router_if=r.string(ifs, iw, "router", default=f"to-{name}"),
    )


class _Reader:
    """Typed accessors that raise TopologyError naming file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, msg: str) -> TopologyError:
        return TopologyError(f"{self.source}: {where or '<root>'}: {msg}")

    def mapping(self, raw: Any, where: str, allowed: set[str]) -> dict:
        if not isinstance(raw, dict):
            raise self.error(where, f"expected a mapping, got {type(raw).__name__}")
        unknown = set(map(str, raw)) - allowed
        if unknown:
            raise self.error(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return raw

    def string(self, m: dict, where: str, key: str, default: str | None = None) -> str:
        if key not in m:
            if default is None:
                raise self.error(_join(where, key), "missing")
            return default
        if not isinstance(m[key], str) or not m[key]:
            raise self.error(_join(where, key), f"expected a non-empty string, got {m[key]!r}")
        return m[key]

    def integer(self, m: dict, where: str, key: str, default: int) -> int:
        v = m.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(_join(where, key), f"expected an integer, got {v!r}")
        return v

    def ip(self, m: dict, where: str, key: str, family: int, optional: bool = False) -> Any:
        return self._parse(m, where, key, family, optional, ipaddress.ip_address, "address")

    def net(self, m: dict, where: str, key: str, family: int, optional: bool = False) -> Any:
        return self._parse(m, where, key, family, optional,
                           lambda v: ipaddress.ip_network(v, strict=True), "network")

    def _parse(self, m, where, key, family, optional, fn, what):
        if key not in m or m[key] is None:
            if optional:
                return None
            raise self.error(_join(where, key), "missing")
        try:
            v = fn(str(m[key]))
        except ValueError as exc:
            detail = "" if "does not appear to be" in str(exc) else f" ({exc})"
            raise self.error(_join(where, key), f"{m[key]!r} is not a valid IPv{family} {what}{detail}") from None
        if v.version != family:
            raise self.error(_join(where, key), f"{m[key]!r} is IPv{v.version}, expected IPv{family}")
        return v


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --------------------------------------------------------------------------
# semantic validation (also run by Lab, so hand-built Topology objects are checked)


def validate(topo: Topology, source: str = "<topology>") -> None:
    """Raise TopologyError unless the topology can be built as described."""
    def err(msg: str) -> TopologyError:
        return TopologyError(f"{source}: {msg}")

    if not 1280 <= topo.mtu <= 9000:
        raise err(f"mtu {topo.mtu} out of range 1280..9000 (IPv6 needs >= 1280)")
    _check_node_name(topo.router, "router", err)
    names = [s.name for s in topo.sites]
    if len(set(names)) != len(names):
        raise err(f"duplicate site names in {names}")
    if topo.router in {n for s in topo.sites for n in (s.host, s.gw)}:
        raise err(f"router name {topo.router!r} collides with a site node name")
    router_ifs: list[str] = []
    for s in topo.sites:
        _check_site(s, err)
        router_ifs.append(s.router_if)
    if len(set(router_ifs)) != len(router_ifs):
        raise err(f"router interface names must be unique, got {router_ifs}")
    _check_no_overlap(topo, err)


def _check_node_name(name: str, what: str, err) -> None:
    if not _NODE_RE.match(name) or len(name) > _MAX_NODE_LEN:
        raise err(f"{what} name {name!r} must match [a-z][a-z0-9]* and be <= {_MAX_NODE_LEN} chars")


def _check_site(s: Site, err) -> None:
    where = f"site {s.name!r}"
    _check_node_name(s.name, "site", err)
    for label, ifname in (("host", s.host_if), ("gw_lan", s.gw_lan_if),
                          ("gw_wan", s.gw_wan_if), ("router", s.router_if)):
        if len(ifname) > IFNAMSIZ or not _IFNAME_RE.match(ifname) or ifname in (".", ".."):
            raise err(f"{where}: interface name {label}={ifname!r} is invalid "
                      f"(max {IFNAMSIZ} chars of [A-Za-z0-9_.-])")
    if s.gw_lan_if == s.gw_wan_if:
        raise err(f"{where}: gateway LAN and WAN interfaces share the name {s.gw_lan_if!r}")
    _check_hosts_in(where + " LAN", s.lan4, (("host4", s.host4), ("gw4", s.gw_lan4)), err)
    _check_hosts_in(where + " WAN", s.wan4, (("router4", s.router_wan4), ("gw4", s.gw_wan4)), err)
    _check_v6_group(where + " LAN", s.lan6, (("host6", s.host6), ("gw6", s.gw_lan6)), err)
    _check_v6_group(where + " WAN", s.wan6, (("router6", s.router_wan6), ("gw6", s.gw_wan6)), err)


def _check_v6_group(where: str, net, addrs, err) -> None:
    present = [net is not None] + [a is not None for _, a in addrs]
    if not any(present):
        return
    if not all(present):
        raise err(f"{where}: IPv6 needs subnet6 and {' and '.join(k for k, _ in addrs)} together")
    _check_hosts_in(where, net, addrs, err)


def _check_hosts_in(where: str, net, addrs, err) -> None:
    seen = set()
    for key, a in addrs:
        if a not in net:
            raise err(f"{where}: {key} {a} is not inside {net}")
        if net.num_addresses > 2 and a in (net.network_address, net.broadcast_address) and net.version == 4:
            raise err(f"{where}: {key} {a} is the network or broadcast address of {net}")
        if a == net.network_address and net.version == 6:
            raise err(f"{where}: {key} {a} is the subnet-router anycast address of {net}")
        if a in seen:
            raise err(f"{where}: address {a} is used twice")
        seen.add(a)


def _check_no_overlap(topo: Topology, err) -> None:
    nets = []
    for s in topo.sites:
        nets += [(f"{s.name} LAN", s.lan4), (f"{s.name} WAN", s.wan4)]
        nets += [(f"{s.name} LAN6", s.lan6), (f"{s.name} WAN6", s.wan6)]
    nets = [(n, net) for n, net in nets if net is not None]
    for i, (na, a) in enumerate(nets):
        for nb, b in nets[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                raise err(f"subnets overlap: {na} {a} and {nb} {b}")


def iter_links(topo: Topology) -> Iterator[tuple[str, str, str, str]]:
    """Each veth pair as (node_a, ifname_a, node_b, ifname_b)."""
    for s in topo.sites:
        yield s.host, s.host_if, s.gw, s.gw_lan_if
        yield s.gw, s.gw_wan_if, topo.router, s.router_if


def hub_and_spoke_topology(branches: int, name: str = "hub-and-spoke") -> Topology:
    """An HQ site and ``branches`` branch sites (branch1..N), IPv4: site k (HQ is 1) has the LAN
    10.k.0.0/24 and the WAN link 198.18.k.0/24 to the router, as in two-sites.yaml."""
    if not 1 <= branches <= 200:
        raise TopologyError(f"branches must be within 1..200, got {branches}")
    sites = []
    for k, site in enumerate(["hq", *(f"branch{i}" for i in range(1, branches + 1))], start=1):
        sites.append({"name": site,
                      "lan": {"subnet4": f"10.{k}.0.0/24", "host4": f"10.{k}.0.10", "gw4": f"10.{k}.0.1"},
                      "wan": {"subnet4": f"198.18.{k}.0/24", "router4": f"198.18.{k}.1", "gw4": f"198.18.{k}.2"}})
    return parse_topology({"name": name, "sites": sites}, source=f"hub_and_spoke_topology({branches})")
