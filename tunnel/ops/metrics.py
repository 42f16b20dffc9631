"""Prometheus exporter: a custom collector that reads the gateway's plain counters when scraped.

Nothing on the packet path calls prometheus_client; the data path only increments integers (the
forwarder's Counters, the schedulers' ClassStats, keying's IKE tallies, the IKE drop counters) and this
collector turns them into metric families at scrape time, through the gateway's Readout (ops/readout.py),
in its own registry, served by prometheus_client's HTTP server in a thread. Labels stay bounded: tunnel
names (from the config), drop reasons and QoS classes (enums),
directions; never addresses, ports or flows.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from policy.qos import QosClass
from tunnel.dataplane.callquality import DIRECTIONS, JITTER_BOUNDS, Skip
from tunnel.dataplane.counters import Counters
from tunnel.dataplane.scheduler import SOJOURN_BOUNDS
from tunnel.errors import DriverError
from tunnel.esp.drops import DropReason
from tunnel.ike.drops import IkeDrop
from tunnel.ops.readout import HANDSHAKE_BOUNDS, Readout, TunnelView

log = logging.getLogger("sitelink.metrics")
PREFIX = "sitelink"


class GatewayCollector(Collector):
    def __init__(self, readout: Readout) -> None:
        self.readout = readout

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "sitelink version; always 1", labels=["version", "gateway"])
        info.add_metric([_version(), self.readout.gateway_name], 1)
        yield info
        if self.readout.ha_role is not None:
            active = GaugeMetricFamily(f"{PREFIX}_ha_active", "1 on the active gateway of an HA pair, 0 on the "
                                       "standby (keepalived's notify scripts switch it); both of a pair have "
                                       "the same gateway name", labels=["gateway"])
            active.add_metric([self.readout.gateway_name], 1 if self.readout.ha_role == "active" else 0)
            yield active
        sync = self.readout.ha_sync()
        if sync is not None:
            drops = CounterMetricFamily(f"{PREFIX}_ha_sync_drops", "HA state-sync datagrams refused, by reason "
                                        "(stranger, malformed, auth_failed, replay, stale, own)", labels=["reason"])
            for reason, count in sorted(dict(sync["drops"]).items()):  # type: ignore[call-overload]
                drops.add_metric([reason], count)
            taken = CounterMetricFamily(f"{PREFIX}_ha_takeovers", "Tunnels taken over with their SAs from the "
                                        "other gateway of the pair")
            taken.add_metric([], sync["taken_over"])  # type: ignore[arg-type]
            yield from (drops, taken)
        tunnels = self.readout.tunnels()
        yield from self._data_plane(tunnels)
        yield from self._ike(tunnels)
        yield from self._queues()
        yield from _calls(tunnels)

    def _data_plane(self, tunnels: list[TunnelView]) -> Iterator[Metric]:
        totals: dict[str, Counters] = {t.name: t.counters for t in tunnels}
        totals["(none)"] = self.readout.unowned()
        packets = CounterMetricFamily(f"{PREFIX}_esp_packets", "ESP packets sent (tx) and accepted (rx)",
                                      labels=["tunnel", "direction"])
        octets = CounterMetricFamily(f"{PREFIX}_esp_bytes", "Inner bytes carried in ESP, sent (tx) and accepted (rx)",
                                     labels=["tunnel", "direction"])
        drops = CounterMetricFamily(f"{PREFIX}_drops", "Packets dropped, by reason", labels=["tunnel", "reason"])
        events = CounterMetricFamily(f"{PREFIX}_mtu_events", "Packets fragmented before encryption, ICMP too-big "
                                     "errors sent, TCP SYNs with their MSS clamped", labels=["tunnel", "event"])
        keepalives = CounterMetricFamily(f"{PREFIX}_nat_keepalives_received", "NAT keepalives received",
                                         labels=["tunnel"])
        for label, counters in totals.items():
            packets.add_metric([label, "tx"], counters.tx_packets)
            packets.add_metric([label, "rx"], counters.rx_packets)
            octets.add_metric([label, "tx"], counters.tx_bytes)
            octets.add_metric([label, "rx"], counters.rx_bytes)
            for reason in DropReason:
                drops.add_metric([label, reason.label], counters.drops[reason])
            for event in ("fragmented", "icmp_too_big", "mss_clamped"):
                events.add_metric([label, event], getattr(counters, event))
            keepalives.add_metric([label], counters.keepalives)
        yield from (packets, octets, drops, events, keepalives)

    def _ike(self, tunnels: list[TunnelView]) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_tunnel_up", "1 when the tunnel has an outbound SA (traffic can flow)",
                               labels=["tunnel"])
        since = GaugeMetricFamily(f"{PREFIX}_tunnel_up_since_seconds", "Unix time the tunnel's current Child SA "
                                  "was established (0 when down)", labels=["tunnel"])
        handshakes = CounterMetricFamily(f"{PREFIX}_ike_handshakes", "IKE SAs set up (success) and failed (set-up "
                                         "refused or timed out, or a dead peer), failures by the IKE notify that "
                                         "said why (none: a timeout)", labels=["tunnel", "result", "notify"])
        rekeys = CounterMetricFamily(f"{PREFIX}_rekeys", "SAs replaced before expiry, by kind",
                                     labels=["tunnel", "kind"])
        children = CounterMetricFamily(f"{PREFIX}_child_sas_established", "Child SAs installed (first ones and "
                                       "rekeys)", labels=["tunnel"])
        duration = HistogramMetricFamily(f"{PREFIX}_ike_handshake_duration_seconds", "Time from the first "
                                         "IKE_SA_INIT message to the IKE SA established (IKE_AUTH done)",
                                         labels=["tunnel"])
        age = GaugeMetricFamily(f"{PREFIX}_child_sa_age_seconds", "Age of the tunnel's newest Child SA",
                                labels=["tunnel"])
        remaining = GaugeMetricFamily(f"{PREFIX}_child_sa_lifetime_remaining_seconds", "Time until a Child SA of "
                                      "the tunnel reaches its hard lifetime and is deleted, unless a rekey replaces "
                                      "it first (the soonest, of the SAs in use)", labels=["tunnel"])
        dpd_rtt = GaugeMetricFamily(f"{PREFIX}_dpd_rtt_seconds", "Round-trip time of the last dead-peer-detection "
                                    "check (RFC 7296 §2.4); absent until one was made", labels=["tunnel"])
        last_seen = GaugeMetricFamily(f"{PREFIX}_peer_last_seen_seconds", "Unix time the peer was last heard from "
                                      "(an authenticated IKE message or ESP packet)", labels=["tunnel"])
        ike_drops = CounterMetricFamily(f"{PREFIX}_ike_drops", "IKE messages dropped or refused, by reason (the "
                                        "IKE sibling of sitelink_drops_total)", labels=["tunnel", "reason"])
        now, wall = time.monotonic(), time.time()
        for t in tunnels:
            name = t.name
            up.add_metric([name], 1 if t.up else 0)
            established = t.established_at
            since.add_metric([name], wall - (now - established) if t.up and established is not None else 0)
            if t.stats is None:
                continue
            _ike_drops(ike_drops, name, t.ike_drops)
            stats = t.stats
            handshakes.add_metric([name, "success", ""], stats.handshakes_ok)
            for notify, count in sorted(stats.handshakes_failed.items()):
                handshakes.add_metric([name, "failure", notify], count)
            rekeys.add_metric([name, "child"], stats.child_rekeys)
            rekeys.add_metric([name, "ike"], stats.ike_rekeys)
            children.add_metric([name], stats.children)
            duration.add_metric([name], _buckets(HANDSHAKE_BOUNDS, stats.handshake_buckets), stats.handshake_seconds)
            ike = t.ike
            if ike is None:
                continue
            live = [c for c in ike.children if c.active and c.installed_at is not None and c.expire_at is not None]
            if live:
                age.add_metric([name], now - max(c.installed_at for c in live if c.installed_at is not None))
                remaining.add_metric([name], min(c.expire_at for c in live if c.expire_at is not None) - now)
            if ike.dpd_rtt is not None:
                dpd_rtt.add_metric([name], ike.dpd_rtt)
            if ike.last_received is not None:
                last_seen.add_metric([name], wall - (now - ike.last_received))
        _ike_drops(ike_drops, "(none)", self.readout.unowned_ike_drops())
        yield from (up, since, handshakes, rekeys, children, duration, age, remaining, dpd_rtt, last_seen, ike_drops)

    def _queues(self) -> Iterator[Metric]:
        totals = self.readout.queues()
        if not totals:
            return
        depth = GaugeMetricFamily(f"{PREFIX}_qos_queue_depth", "Packets waiting in the gateway's queue",
                                  labels=["direction", "class"])
        dropped = CounterMetricFamily(f"{PREFIX}_qos_drops", "Packets dropped because the class's queue was full",
                                      labels=["direction", "class"])
        sojourn = HistogramMetricFamily(f"{PREFIX}_qos_sojourn_seconds", "Time packets waited in the queue",
                                        labels=["direction", "class"])
        for direction, rows in totals.items():
            for cls, (queued, stats) in zip(QosClass, rows):
                labels = [direction, cls.label]
                depth.add_metric(labels, queued)
                dropped.add_metric(labels, stats.dropped)
                sojourn.add_metric(labels, _buckets(SOJOURN_BOUNDS, stats.sojourn_buckets), stats.sojourn_sum)
        yield from (depth, dropped, sojourn)


def _calls(tunnels: list[TunnelView]) -> Iterator[Metric]:
    """The call-quality observers' figures (tunnel/dataplane/callquality.py), per tunnel, direction
    (ingress: from this site's LAN into the tunnel; egress: out of the tunnel to this site's LAN) and
    QoS class; never per stream (no SSRC, address or port in a label)."""
    labels = ["tunnel", "direction", "class"]
    streams = GaugeMetricFamily(f"{PREFIX}_call_streams", "RTP streams observed now (past probation, not idle)",
                                labels=labels)
    packets = CounterMetricFamily(f"{PREFIX}_call_packets", "RTP packets of the observed streams (duplicates "
                                  "apart)", labels=labels)
    lost = CounterMetricFamily(f"{PREFIX}_call_packets_lost", "RTP packets lost (RFC 3550: expected - received, "
                               "counted as it grows)", labels=labels)
    jitter = HistogramMetricFamily(f"{PREFIX}_call_jitter_seconds", "RFC 3550 interarrival jitter of the streams, "
                                   "one observation per stream every 5 s", labels=labels)
    mos = GaugeMetricFamily(f"{PREFIX}_call_mos", "Lowest E-model MOS estimate (ITU-T G.107) among the streams, "
                            "over their last 10 s; absent while no stream has one", labels=labels)
    skipped = CounterMetricFamily(f"{PREFIX}_call_skipped", "Packets on media ports not counted as RTP, by reason "
                                  "(stun, dtls, rtcp, not_rtp, fragment)", labels=["tunnel", "reason"])
    evicted = CounterMetricFamily(f"{PREFIX}_call_evicted", "Streams and candidates dropped from a full table to make "
                                  "room (call_quality.max_streams)", labels=["tunnel", "kind"])
    for t in tunnels:
        report = t.calls
        if report is None or not (report.groups or report.streams or any(report.skipped)
                                  or report.streams_evicted or report.candidates_evicted):
            continue  # off, or no packet on a media port yet: no series (a hub has many quiet tunnels)
        keys = sorted(set(report.groups) | {(DIRECTIONS.index(s.direction), s.cls) for s in report.streams})
        for direction, cls in keys:
            group = report.groups.get((direction, cls))
            here = [s for s in report.streams if s.direction == DIRECTIONS[direction] and s.cls == cls]
            names = [t.name, DIRECTIONS[direction], QosClass(cls).label]
            streams.add_metric(names, len(here))
            if group is not None:
                packets.add_metric(names, group.packets)
                lost.add_metric(names, group.lost)
                jitter.add_metric(names, _buckets(JITTER_BOUNDS, group.jitter_buckets), group.jitter_sum)
            rated = [s.mos for s in here if s.mos is not None]
            if rated:
                mos.add_metric(names, min(rated))
        for reason in Skip:
            skipped.add_metric([t.name, reason.label], report.skipped[reason])
        evicted.add_metric([t.name, "streams"], report.streams_evicted)
        evicted.add_metric([t.name, "candidates"], report.candidates_evicted)
    yield from (streams, packets, lost, jitter, mos, skipped, evicted)


def _ike_drops(family: CounterMetricFamily, tunnel: str, counts: dict[str, int]) -> None:
    """Every reason, zeros included, so a rate() over a reason that starts counting sees it from 0."""
    for reason in IkeDrop:
        family.add_metric([tunnel, reason.label], counts.get(reason.label, 0))


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts (the last one past every bound) as Prometheus's cumulative (le, count) pairs."""
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, bounds), "+Inf"), counts):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


def _version() -> str:
    try:
        return metadata.version("sitelink")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not worth a log line each."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's server, without its one blocking step: HTTPServer.server_bind asks the
    resolver for this host's FQDN, so a gateway whose DNS is unreachable (a full tunnel's resolver sits
    behind the tunnel that is not up yet) would wait on it before serving anything."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class MetricsServer:
    """The exporter's HTTP endpoint (GET /metrics), in a thread of its own."""

    def __init__(self, readout: Readout, address: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(readout))
        try:
            _Server.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            self.server = make_server(address, port, make_wsgi_app(self.registry), _Server, _Quiet)
        except OSError as exc:  # e.g. another gateway on this host already serves the default port
            raise DriverError(f"cannot serve metrics on {address} port {port}: {exc.strerror or exc} "
                              "(set gateway.metrics.port, or enabled: false)") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics", f"[{address}]" if ":" in address else address, port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
