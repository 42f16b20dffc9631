"""The Prometheus collector: what a scrape shows is what the plain counters hold at that moment, in
the exposition format, with bounded labels and no key material."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from policy.qos import QosClass
from tests.unit.test_config_loader import GOOD, SECOND_TUNNEL, make_keys, write
from tests.unit.test_keying import ADDR, Link, _up
from tunnel.app.assemble import install_manual_keys
from tunnel.app.gateway import Gateway
from tunnel.app.workers import WorkerProxy, _report
from tunnel.config.loader import load_config
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.scheduler import PriorityScheduler
from tunnel.drivers.pumps import QosPump
from tunnel.esp.drops import DropReason
from tunnel.ike.constants import ExchangeType
from tunnel.ike.message import IkeHeader, encode_message, encode_sk_message
from tunnel.ops.metrics import GatewayCollector
from tunnel.ops.status import render, snapshot


def scrape(gateway: Gateway) -> tuple[str, dict[tuple[str, tuple], float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway.readout))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def test_scrape_reads_the_counters_of_the_moment(tmp_path: Path) -> None:
    make_keys(tmp_path, "b1", "b2")
    gateway = Gateway(load_config(write(tmp_path, GOOD + SECOND_TUNNEL)))
    for tunnel in gateway.config.tunnels:
        install_manual_keys(gateway.forwarder, tunnel)  # manual keys: SAs installed, no I/O
    egress, ingress = PriorityScheduler(10**9), PriorityScheduler(10**9)
    gateway.qos_pump = QosPump(gateway.forwarder, None, None, None, egress, ingress)  # type: ignore[arg-type]

    counters = gateway.forwarder.tunnels["branch1"].counters
    counters.tx_packets, counters.tx_bytes, counters.rx_bytes = 7, 7000, 123
    counters.drop(DropReason.REPLAY)
    counters.mss_clamped = 2
    gateway.forwarder.counters.drop(DropReason.UNKNOWN_SPI)
    egress.enqueue(QosClass.BULK, "x", 1000, 0.0)
    egress.enqueue(QosClass.REALTIME_AUDIO, "y", 200, 0.0)
    egress.dequeue(1, 0.003)  # the EF packet, after 3 ms

    text, s = scrape(gateway)
    assert s[("sitelink_esp_packets_total", (("direction", "tx"), ("tunnel", "branch1")))] == 7
    assert s[("sitelink_esp_bytes_total", (("direction", "tx"), ("tunnel", "branch1")))] == 7000
    assert s[("sitelink_esp_bytes_total", (("direction", "rx"), ("tunnel", "branch1")))] == 123
    assert s[("sitelink_drops_total", (("reason", "replay"), ("tunnel", "branch1")))] == 1
    assert s[("sitelink_drops_total", (("reason", "replay"), ("tunnel", "branch2")))] == 0
    assert s[("sitelink_drops_total", (("reason", "unknown_spi"), ("tunnel", "(none)")))] == 1
    assert s[("sitelink_mtu_events_total", (("event", "mss_clamped"), ("tunnel", "branch1")))] == 2
    assert s[("sitelink_tunnel_up", (("tunnel", "branch1"),))] == 1  # manual keys: an outbound SA from the start
    assert s[("sitelink_qos_queue_depth", (("class", "bulk"), ("direction", "egress")))] == 1
    ef = (("class", "realtime-audio"), ("direction", "egress"))
    assert s[("sitelink_qos_sojourn_seconds_count", ef)] == 1
    assert s[("sitelink_qos_sojourn_seconds_bucket", ef + (("le", "0.002"),))] == 0
    assert s[("sitelink_qos_sojourn_seconds_bucket", ef + (("le", "0.005"),))] == 1
    assert abs(s[("sitelink_qos_sojourn_seconds_sum", ef)] - 0.003) < 1e-9
    assert s[("sitelink_build_info", (("gateway", "hq"), ("version", s_version(s))))] == 1

    counters.tx_packets += 5  # the next scrape sees the new value: nothing is cached
    assert scrape(gateway)[1][("sitelink_esp_packets_total", (("direction", "tx"), ("tunnel", "branch1")))] == 12

    # Bounded labels: tunnels, reasons, classes, directions. No addresses, SPIs or keys.
    keys = Path(tmp_path / "keys" / "b1.keys").read_text()
    assert "198.18." not in text and keys.strip().splitlines()[-1][-16:] not in text
    label_names = {name for (_, labels) in s for name, _ in labels}
    assert label_names <= {"tunnel", "direction", "reason", "event", "class", "le", "version", "gateway", "kind",
                           "result", "notify"}


def s_version(samples: dict) -> str:
    return next(dict(labels)["version"] for name, labels in samples if name == "sitelink_build_info")


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    import pytest

    from tunnel.errors import DriverError
    from tunnel.ops.metrics import MetricsServer

    make_keys(tmp_path, "b1", "b2")
    gateway = Gateway(load_config(write(tmp_path, GOOD)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(DriverError, match="cannot serve metrics on 127.0.0.1 port"):
            MetricsServer(gateway.readout, "127.0.0.1", taken.getsockname()[1])


def test_the_exporter_starts_without_asking_the_resolver(tmp_path: Path, monkeypatch) -> None:
    """http.server looks up the host's FQDN when it binds: with the resolver unreachable (a full tunnel's
    DNS behind a tunnel not up yet) the gateway's start waited on it. The exporter must not ask."""
    import socket
    import urllib.request

    from tunnel.ops.metrics import MetricsServer

    def no_dns(*args: object) -> str:
        raise AssertionError("the resolver was asked")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    make_keys(tmp_path, "b1", "b2")
    gateway = Gateway(load_config(write(tmp_path, GOOD)))
    server = MetricsServer(gateway.readout, "127.0.0.1", 0)
    try:
        port = server.server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert b"sitelink_build_info" in answer.read()
    finally:
        server.close()


def test_ike_timings_come_from_the_sessions(tmp_path: Path) -> None:
    """Handshake duration, Child SA age and remaining lifetime, DPD round trip and peer last seen, on two
    control planes exchanging real IKE messages under a hand-driven clock."""
    link = Link(tmp_path, dpd=5)
    gateway = Gateway(link.hq.keying.config)
    gateway.forwarder, gateway.keying = link.hq.forwarder, link.hq.keying
    link.hq.keying.start(link.now)
    link.now += 0.03  # hq's IKE_SA_INIT request is 30 ms old when the exchanges complete
    link.pump()
    _, s = scrape(gateway)
    tunnel = (("tunnel", "branch1"),)
    assert s[("sitelink_ike_handshake_duration_seconds_count", tunnel)] == 1
    assert abs(s[("sitelink_ike_handshake_duration_seconds_sum", tunnel)] - 0.03) < 1e-9
    assert s[("sitelink_ike_handshake_duration_seconds_bucket", (("le", "0.025"), ("tunnel", "branch1")))] == 0
    assert s[("sitelink_ike_handshake_duration_seconds_bucket", (("le", "0.05"), ("tunnel", "branch1")))] == 1
    assert ("sitelink_dpd_rtt_seconds", tunnel) not in s  # no check made yet

    link.advance(4)
    _, s = scrape(gateway)
    # the collector reads the real clock; the cores run on link.now: compare against the same offset
    offset = time.monotonic() - link.now
    assert abs(s[("sitelink_child_sa_age_seconds", tunnel)] - (4 + offset)) < 1.0
    assert abs(s[("sitelink_child_sa_lifetime_remaining_seconds", tunnel)] - (150 - 4 - offset)) < 1.0
    link.advance(2)  # 6 s of silence > dpd_delay: a liveness check goes out and is answered
    _, s = scrape(gateway)
    assert s[("sitelink_dpd_rtt_seconds", tunnel)] >= 0
    seen = s[("sitelink_peer_last_seen_seconds", tunnel)]
    assert abs(seen - (time.time() - (time.monotonic() - link.now))) < 1.0


def test_queue_metrics_sum_every_worker(tmp_path: Path) -> None:
    """With gateway.workers > 1 each worker has queues of its own: a scrape shows the sum, the workers'
    part as of their last report over the socketpair."""
    make_keys(tmp_path, "b1", "b2")
    gateway = Gateway(load_config(write(tmp_path, GOOD)))
    for tunnel in gateway.config.tunnels:
        install_manual_keys(gateway.forwarder, tunnel)
    gateway.qos_pump = QosPump(gateway.forwarder, None, None, None, PriorityScheduler(10**9), PriorityScheduler(10**9))  # type: ignore[arg-type]
    worker_qos = QosPump(Forwarder(), None, None, None, PriorityScheduler(10**9, {QosClass.BULK: 1}),  # type: ignore[arg-type]
                         PriorityScheduler(10**9))
    gateway.qos_pump.egress.enqueue(QosClass.BULK, "a", 1000, 0.0)
    worker_qos.egress.enqueue(QosClass.BULK, "b", 1000, 0.0)
    worker_qos.egress.enqueue(QosClass.BULK, "c", 1000, 0.0)  # over the worker's limit of 1: dropped
    worker_qos.egress.enqueue(QosClass.REALTIME_AUDIO, "d", 200, 0.0)
    worker_qos.egress.dequeue(1, 0.002)
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proxy = WorkerProxy(1, main_end, os.getpid(), ["branch1"])
        _report(Forwarder(), worker_end, 0, worker_qos, [])
        assert proxy.receive()
        gateway.worker_proxies = [proxy]
        _, s = scrape(gateway)
    finally:
        gateway.worker_proxies = []
        main_end.close()
        worker_end.close()
    bulk, ef = (("class", "bulk"), ("direction", "egress")), (("class", "realtime-audio"), ("direction", "egress"))
    assert s[("sitelink_qos_queue_depth", bulk)] == 2  # one here, one in the worker
    assert s[("sitelink_qos_drops_total", bulk)] == 1
    assert s[("sitelink_qos_sojourn_seconds_count", ef)] == 1
    assert abs(s[("sitelink_qos_sojourn_seconds_sum", ef)] - 0.002) < 1e-9


def test_ike_drops_are_exported_and_shown_per_tunnel(tmp_path: Path) -> None:
    """IKE refusals are counted like the data plane's: per tunnel where a tunnel's IKE SA dropped the
    message, under (none) where no tunnel can be blamed; `sitelink status` shows both."""
    link = _up(Link(tmp_path))
    gateway = Gateway(link.hq.keying.config)
    gateway.forwarder, gateway.keying = link.hq.forwarder, link.hq.keying
    session = link.hq.keying.current_ike("branch1")
    request = IkeHeader(session.spi_i, session.spi_r, ExchangeType.INFORMATIONAL, 0, session.responses.expected)
    forged = bytearray(encode_sk_message(request, [], session.crypto.sk_in.seal))  # the SA's SPIs and next ID
    forged[-1] ^= 1  # a broken ICV
    for _ in range(2):
        link.hq.keying.dispatcher.receive_datagram(bytes(forged), (ADDR["branch1"], 4500), 4500, link.now)
    stray = encode_message(IkeHeader(b"\x01" * 8, b"\x02" * 8, ExchangeType.INFORMATIONAL, 0x20, 0), [])
    link.hq.keying.dispatcher.receive_datagram(stray, ("203.0.113.9", 500), 500, link.now)  # no such SA
    _, s = scrape(gateway)
    assert s[("sitelink_ike_drops_total", (("reason", "integrity"), ("tunnel", "branch1")))] == 2
    assert s[("sitelink_ike_drops_total", (("reason", "malformed"), ("tunnel", "branch1")))] == 0
    assert s[("sitelink_ike_drops_total", (("reason", "unknown_spi"), ("tunnel", "(none)")))] == 1
    text = render(snapshot(gateway.readout, link.now))
    assert "  IKE drops integrity 2" in text and "IKE drops outside any tunnel: unknown_spi 1" in text
