"""gateway.announce: the remote subnets of the tunnels that are up here, as routes in a kernel table of
their own, for a routing daemon (BIRD, FRR) to export into the site's LAN by BGP (README "Several hubs").
Several hub gateways each terminate some branches; this is how the core router learns which one holds
which branch, and how the routes follow a branch that moves to another hub.

The table always says what is true now: it is emptied when the gateway starts (a crash may have left
routes of tunnels that are no longer up) and when it stops, and between the two each change of the set
of tunnels that are up rewrites it in a thread of its own (pyroute2's synchronous API cannot run in the
event loop's thread; one thread keeps the writes in order)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from tunnel.config.model import IPNetwork
from tunnel.drivers.netlink import Netlink

log = logging.getLogger("sitelink.announce")


class Announcer:
    def __init__(self, tun_index: int, table: int) -> None:
        self.tun_index, self.table = tun_index, table
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="announce")
        self._current: frozenset[IPNetwork] = frozenset()
        self.write(())  # a crash may have left routes of tunnels that are not up any more

    def update(self, networks: Iterable[IPNetwork]) -> Future | None:
        """Announce exactly these subnets (from now on, in the order asked)."""
        wanted = frozenset(networks)
        if wanted == self._current:
            return None
        added, gone = sorted(map(str, wanted - self._current)), sorted(map(str, self._current - wanted))
        log.info("announcing in table %d: %s%s", self.table, f"+{','.join(added)} " if added else "",
                 f"-{','.join(gone)}" if gone else "")
        self._current = wanted
        future = self._pool.submit(self.write, wanted)
        future.add_done_callback(_report)
        return future

    def write(self, networks: Iterable[IPNetwork]) -> None:
        netlink = Netlink()
        try:
            netlink.announce(self.tun_index, self.table, networks)
        finally:
            netlink.close()

    def close(self) -> None:
        """Withdraw everything (the gateway stops: its tunnels are not up here any more)."""
        self._pool.shutdown(wait=True)
        self._current = frozenset()
        self.write(())


def _report(future: Future) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("could not update the announced routes: %s", exc)
