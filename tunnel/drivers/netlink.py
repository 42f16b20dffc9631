"""Everything sitelink asks of the kernel's routing tables goes through here (pyroute2, netlink).

The TUN device is created persistent: if the gateway dies without cleaning up, the device stays with no
reader and its routes keep pointing at it, so the kernel drops tunnel-bound traffic instead of sending
it in clear by another route. A restart attaches to the same device; a clean shutdown deletes it.
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
        """Route the remote subnets into the TUN. `sources` maps IP version to a preferred source."""
        added = []
        for network in networks:
            kwargs = {"dst": str(network), "oif": index}
            if network.version in sources:
                kwargs["prefsrc"] = sources[network.version]
            if network.version == 6:
                kwargs["family"] = 10
            try:
                self._ipr.route("replace", **kwargs)
            except NetlinkError as exc:
                raise DriverError(f"cannot add route to {network}: {exc}") from exc
            added.append(network)
        return added

    def delete_routes(self, index: int, networks: Iterable[Network]) -> None:
        for network in networks:
            kwargs = {"dst": str(network), "oif": index}
            if network.version == 6:
                kwargs["family"] = 10
            try:
                self._ipr.route("del", **kwargs)
            except NetlinkError as exc:
                log.warning("could not delete route to %s: %s", network, exc)

    def delete_link(self, index: int) -> None:
        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            log.warning("could not delete interface %d: %s", index, exc)

    def _kind(self, index: int) -> str | None:
        link = self._ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None


def _tun_flags(name: str) -> int:
    """The TUN device's IFF_* flags as sysfs shows them in this network namespace; 0 if unreadable."""
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0
