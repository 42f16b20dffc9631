"""Everything sitelink asks of the kernel's routing tables goes through here (pyroute2, netlink).

Fail closed is a property of the routes, not of the process: the TUN device is created persistent and
outlives the gateway on every stop (orderly or not), so its routes keep pointing at a device nobody reads
and the kernel drops tunnel-bound traffic instead of sending it in clear by the default route. Each remote
subnet also gets a backstop: an `unreachable` route of the same prefix with a far higher metric, which
takes over if the TUN route goes (the device deleted, or a kernel told to ignore routes of a device
without carrier). Both are marked `proto 199`. A restart attaches to the same device; only a deliberate
act removes them (a reload that removes the tunnel, `sitelink down`).

A full tunnel (a remote subnet 0.0.0.0/0 or ::/0) cannot simply be a route in the main table: it would
replace the site's default route and capture the gateway's own IKE and ESP to the hub. Its route and
backstop go into a table of their own, FULL_TUNNEL_TABLE, which two policy rules put in front of the
main table for everything but the gateway's own sockets (marked FULL_TUNNEL_MARK), as wg-quick does:
the main table still decides first for anything more specific than a default route (the LAN, the WAN
link), the gateway's marked IKE and ESP follow the site's default route, and everything else goes into
the TUN (or, with the gateway stopped, nowhere: the table and rules outlive the process like the routes).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.drivers.tun import IFF_MULTI_QUEUE
from tunnel.errors import DriverError

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_ADDR_GEN_MODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE
RTPROT_SITELINK = 199  # the routes sitelink adds: `ip route` shows them as "proto 199"
BACKSTOP_METRIC = 4_000_000  # far above any route an admin would give the same prefix (IPv6's default: 1024)
_UNICAST, _UNREACHABLE = 1, 7  # rtm_type
FULL_TUNNEL_TABLE = 5174  # `ip route show table 5174`: a full tunnel's default routes
FULL_TUNNEL_MARK = 0x5174  # the gateway's own WAN sockets (SO_MARK): they bypass FULL_TUNNEL_TABLE
_MAIN_TABLE = 254
_SUPPRESS_PRIORITY, _FULL_TUNNEL_PRIORITY = 32761, 32762  # just before the main table's rule (32766)
_FIB_RULE_INVERT = 2  # "not fwmark"
_FAMILIES = {4: 2, 6: 10}  # IP version -> AF_INET / AF_INET6


class Netlink:
    def __init__(self) -> None:
        try:
            self._ipr = IPRoute()
        except (OSError, NetlinkError) as exc:
            raise DriverError(f"cannot open a netlink socket: {exc}") from exc

    def close(self) -> None:
        self._ipr.close()

    def index(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def ensure_tun(self, name: str) -> int:
        """Create a persistent multi-queue TUN device, or reuse one a previous run left behind (one that
        is not multi-queue, from an older version, is made again)."""
        index = self.index(name)
        if index is not None:
            kind = self._kind(index)
            if kind != "tun":
                raise DriverError(f"interface {name} exists and is a {kind or 'non-TUN'} device; pick another tun.name")
            if _tun_flags(name) & IFF_MULTI_QUEUE:
                log.info("reusing TUN device %s left by an earlier run", name)
                return index
            log.info("replacing TUN device %s left by an earlier run (not multi-queue)", name)
            self.delete_link(index)
        try:
            self._ipr.link("add", ifname=name, kind="tuntap", mode="tun", ifr={"no_pi": True, "multi_queue": True})
        except (OSError, NetlinkError) as exc:
            raise DriverError(f"cannot create TUN device {name}: {exc}") from exc
        index = self.index(name)
        if index is None:
            raise DriverError(f"TUN device {name} vanished after creation")
        return index

    def configure(self, index: int, mtu: int, txqueuelen: int, addresses: Iterable[Interface]) -> None:
        try:
            self._ipr.link("set", index=index, mtu=mtu, txqlen=txqueuelen)
            self._no_ipv6_autoconf(index)
            for iface in addresses:
                self._ipr.addr("replace", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            self._ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise DriverError(f"cannot configure TUN device (index {index}): {exc}") from exc
        self._accept_local(index)

    def _accept_local(self, index: int) -> None:
        # The gateway's ICMP errors ("fragmentation needed") come back in through the TUN from the TUN's
        # own address; without accept_local the kernel drops them as martians (RFC 1812 source check).
        name = self._ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
        try:
            with open(f"/proc/sys/net/ipv4/conf/{name}/accept_local", "w") as knob:
                knob.write("1")
        except OSError as exc:
            log.warning("cannot set accept_local on %s (ICMP errors from its address will be dropped): %s", name, exc)

    def _no_ipv6_autoconf(self, index: int) -> None:
        # A TUN link has no neighbours: a link-local address would only make the kernel send router
        # solicitations and MLD reports into it, which no tunnel carries (counted as no_tunnel drops).
        try:
            self._ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [("AF_INET6", {"attrs": [(
                "IFLA_INET6_ADDR_GEN_MODE", _ADDR_GEN_MODE_NONE)]})]})
        except NetlinkError as exc:
            log.debug("IPv6 address generation left as it is: %s", exc)  # e.g. IPv6 disabled

    def add_routes(self, index: int, networks: Iterable[Network], sources: dict[int, str]) -> list[Network]:
        """Route the remote subnets into the TUN, each with its backstop. `sources` maps IP version to a
        preferred source."""
        added = []
        for network in networks:
            kwargs = self._route(network, oif=index)
            if network.version in sources:
                kwargs["prefsrc"] = sources[network.version]
            try:
                self._ipr.route("replace", **kwargs)
                self._ipr.route("replace", **self._route(network, type="unreachable", priority=BACKSTOP_METRIC))
                if network.prefixlen == 0:
                    self._full_tunnel_rules(network.version, add=True)
            except NetlinkError as exc:
                raise DriverError(f"cannot add route to {network}: {exc}") from exc
            added.append(network)
        return added

    def _full_tunnel_rules(self, version: int, add: bool) -> None:
        """The two policy rules of a full tunnel (module docstring), added or removed, for one family."""
        family = _FAMILIES[version]
        if version == 4 and add:  # replies to the marked sockets pass rp_filter (as wg-quick sets it)
            _sysctl("net/ipv4/conf/all/src_valid_mark", "1")
        rules = ({"table": _MAIN_TABLE, "priority": _SUPPRESS_PRIORITY, "suppress_prefixlen": 0},
                 {"table": FULL_TUNNEL_TABLE, "priority": _FULL_TUNNEL_PRIORITY, "fwmark": FULL_TUNNEL_MARK,
                  "fwmask": 0xFFFFFFFF, "flags": _FIB_RULE_INVERT})
        present = {rule.get_attr("FRA_PRIORITY") for rule in self._ipr.get_rules(family=family)}
        for rule in rules:
            if add and rule["priority"] not in present:
                self._ipr.rule("add", family=family, **rule)
            elif not add and rule["priority"] in present:
                try:
                    self._ipr.rule("del", family=family, priority=rule["priority"], table=rule["table"])
                except NetlinkError as exc:
                    log.warning("could not delete the full-tunnel rule %d: %s", rule["priority"], exc)

    def delete_routes(self, index: int, networks: Iterable[Network]) -> None:
        """Remove the subnets' TUN routes and backstops: their traffic follows the host's other routes."""
        for network in networks:
            for kwargs in (self._route(network, oif=index),
                           self._route(network, type="unreachable", priority=BACKSTOP_METRIC)):
                try:
                    self._ipr.route("del", **kwargs)
                except NetlinkError as exc:
                    if exc.code != 3:  # ESRCH: it was not there
                        log.warning("could not delete route to %s: %s", network, exc)
            if network.prefixlen == 0:
                self._full_tunnel_rules(network.version, add=False)

    def stale_routes(self, index: int, wanted: Iterable[Network]) -> list[Network]:
        """Our routes into the TUN for subnets no tunnel has any more (the configuration changed while
        the gateway was stopped): what a start removes, with their backstops."""
        keep = {str(n) for n in wanted}
        found = []
        for family in (2, 10):
            for route in self._ipr.get_routes(family=family, proto=RTPROT_SITELINK):  # every table
                if route.get("type") != _UNICAST or route.get_attr("RTA_OIF") != index:
                    continue
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")  # a default route has none
                network = ipaddress.ip_network(f"{dst}/{route['dst_len']}")
                if str(network) not in keep and network not in found:
                    found.append(network)
        return found

    def announce(self, index: int, table: int, networks: Iterable[Network]) -> None:
        """Exactly these subnets, and no others, as routes into the TUN in `table` (app/announce.py): what
        a routing daemon exports by BGP for the tunnels that are up here."""
        wanted = {str(n): n for n in networks}
        present: dict[str, Network] = {}
        found: dict[str, dict[str, object]] = {}  # what deletes each, as the kernel listed it
        for family in (2, 10):
            for route in self._ipr.get_routes(family=family, table=table):
                if route.get_attr("RTA_OIF") != index:
                    continue
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
                network = ipaddress.ip_network(f"{dst}/{route['dst_len']}")
                present[str(network)] = network
                found[str(network)] = {"family": family, "dst": str(network), "oif": index, "table": table,
                                       "proto": route["proto"], "scope": route["scope"], "type": route["type"]}
        try:
            for key in present.keys() - wanted.keys():  # whoever put it there: the table is ours (config)
                gone = found[key]
                try:
                    self._ipr.route("del", **gone)
                except NetlinkError as exc:
                    if exc.code != 3:  # ESRCH: gone meanwhile
                        raise
            for key in wanted.keys() - present.keys():
                self._ipr.route("replace", **{**self._route(wanted[key], oif=index), "table": table})
        except NetlinkError as exc:
            raise DriverError(f"cannot update the announced routes in table {table}: {exc}") from exc

    def route_to(self, address: str) -> str:
        """How the kernel would send to `address` now, as one line (for `sitelink down`)."""
        try:
            route = self._ipr.route("get", dst=address)[0]
        except NetlinkError as exc:
            return f"no route ({exc.args[1] if len(exc.args) > 1 else exc})"
        gateway, oif = route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF")
        device = self._ipr.get_links(oif)[0].get_attr("IFLA_IFNAME") if oif else "?"
        return f"via {gateway} dev {device}" if gateway else f"dev {device}"

    @staticmethod
    def _route(network: Network, **kwargs: object) -> dict[str, object]:
        kwargs.update(dst=str(network), proto=RTPROT_SITELINK)
        if network.version == 6:
            kwargs["family"] = 10
        if network.prefixlen == 0:
            kwargs["table"] = FULL_TUNNEL_TABLE
        return kwargs

    def delete_link(self, index: int) -> None:
        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            log.warning("could not delete interface %d: %s", index, exc)

    def _kind(self, index: int) -> str | None:
        link = self._ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as knob:
            knob.write(value)
    except OSError as exc:
        log.warning("cannot set %s=%s: %s", key.replace("/", "."), value, exc)


def _tun_flags(name: str) -> int:
    """The TUN device's IFF_* flags as sysfs shows them in this network namespace; 0 if unreadable."""
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0
