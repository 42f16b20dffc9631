"""The gateway as operations read it (ops/readout.py): counters summed over every worker, each tunnel's
IKE state and tallies, queue statistics. Called from the event loop (status) and from the metrics
thread (a scrape): every read is a plain attribute or a copy of a dict, so a reload running at the same
time can make a tunnel appear or vanish between two scrapes, never break one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from policy.qos import QosClass
from tunnel.app.keying import Keying
from tunnel.config.model import GatewayConfig
from tunnel.dataplane.callquality import CallReport
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.scheduler import ClassStats
from tunnel.dataplane.tunnels import TunnelState
from tunnel.drivers.pumps import QosPump
from tunnel.ike.session import IkeSession
from tunnel.ops.readout import ChildView, IkeView, QueueRows, TunnelView

if TYPE_CHECKING:  # (imported by gateways that use them)
    from tunnel.app.hasync import SyncChannel
    from tunnel.app.workers import WorkerProxy


class Parts(Protocol):
    """What the readout reads of the gateway (whose keying, workers and queues appear once it opens)."""

    config: GatewayConfig
    forwarder: Forwarder
    keying: Keying | None
    worker_proxies: list[WorkerProxy]
    qos_pump: QosPump | None
    sync_channel: SyncChannel | None


class GatewayReadout:
    """Implements tunnel.ops.readout.Readout for one gateway."""

    def __init__(self, gateway: Parts) -> None:
        self._gateway = gateway

    @property
    def gateway_name(self) -> str:
        return self._gateway.config.name

    @property
    def listen(self) -> str:
        return str(self._gateway.config.listen)

    @property
    def ha_role(self) -> str | None:
        keying = self._gateway.keying
        if self._gateway.config.ha is None or keying is None:
            return None
        return "standby" if keying.standby else "active"

    def ha_sync(self) -> dict[str, object] | None:
        keying, channel = self._gateway.keying, self._gateway.sync_channel
        if keying is None or keying.sync is None or channel is None:
            return None
        return {"taken_over": keying.sync.adopted, "drops": dict(channel.dropped)}

    def tunnels(self) -> list[TunnelView]:
        gateway, views = self._gateway, []
        keying = gateway.keying
        for name, state in list(gateway.forwarder.tunnels.items()):  # a copy: a reload may change the dict
            runtime = keying.tunnels.get(name) if keying is not None else None
            counters = self._counters(name, state)
            calls = self._calls(name, state)
            if runtime is None or keying is None:
                views.append(TunnelView(name, state.peer, "manual", state.outbound is not None, False, counters, {},
                                        manual_spi_out=state.outbound.spi if state.outbound is not None else None,
                                        calls=calls))
                continue
            sessions = keying.dispatcher.sessions_for(name)
            up = runtime.outbound_spi is not None
            # Not seen yet (`any`, a DNS name): what the configuration says, or what the name resolved to.
            peer = state.peer if state.peer[0] else (runtime.resolved or str(runtime.config.peer), state.peer[1])
            views.append(TunnelView(
                name, peer, "ike", up, not up and bool(sessions), counters,
                keying.dispatcher.drops_for(name).by_reason(), runtime.established_at, runtime.stats,
                _ike_view(keying.current_ike(name)), calls=calls))
        return views

    def unowned(self) -> Counters:
        gateway, total = self._gateway, Counters()
        for part in [gateway.forwarder.counters, *(w.global_counters for w in gateway.worker_proxies)]:
            total.add(part)
        return total

    def unowned_ike_drops(self) -> dict[str, int]:
        keying = self._gateway.keying
        return keying.dispatcher.drops.by_reason() if keying is not None else {}

    def queues(self) -> dict[str, QueueRows]:
        """Each QoS class's (queue depth, statistics) summed over every worker (each has queues of its
        own); workers' figures are as of their last report."""
        gateway = self._gateway
        if gateway.qos_pump is None:
            return {}
        totals = {}
        for direction, scheduler in (("egress", gateway.qos_pump.egress), ("ingress", gateway.qos_pump.ingress)):
            rows = []
            for cls, stats in zip(QosClass, scheduler.stats):
                total, depth = ClassStats(), scheduler.depth(cls)
                total.add_values(stats.values())
                for worker in gateway.worker_proxies:
                    reported = worker.queues.get(direction)
                    if reported:
                        depth += reported[cls][0]
                        total.add_values(reported[cls][1])
                rows.append((depth, total))
            totals[direction] = rows
        return totals

    def _calls(self, name: str, state: TunnelState) -> CallReport | None:
        """The observer's report with every worker's (workers' as of their last report)."""
        if state.calls is None:
            return None
        total = state.calls.report()
        for worker in self._gateway.worker_proxies:
            part = worker.calls.get(name)
            if part is not None:
                total.add(part)
        return total

    def _counters(self, name: str, state: TunnelState) -> Counters:
        total = Counters()
        for part in [state.counters, *(w.counters.get(name) for w in self._gateway.worker_proxies)]:
            if part is not None:  # None: a worker not told of a tunnel a reload is adding
                total.add(part)
        return total


def _ike_view(session: IkeSession | None) -> IkeView | None:
    if session is None:
        return None
    children = tuple(ChildView(c.spi_in, c.spi_out, c.suite.name, c.state.value, c.active, c.rekey_at, c.expire_at,
                               c.installed_at) for c in list(session.children))
    return IkeView(session.spi_i, session.spi_r, session.initiator,
                   session.crypto.suite.name if session.crypto is not None else None, session.ike_rekey_at,
                   session.ike_expire_at, session.last_received, session.dpd_rtt, children)

