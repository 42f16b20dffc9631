"""Call quality as operations read it: the Prometheus families (bounded labels: tunnel, direction, class),
`sitelink status` and its JSON, and a worker's observer summed into the main process's."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from tests.unit.test_callquality import Clock, rtp, udp4
from tests.unit.test_config_loader import GOOD, make_keys, write
from tests.unit.test_control_socket import manual_gateway
from tests.unit.test_metrics import scrape
from tunnel.app.assemble import build_forwarder, install_manual_keys
from tunnel.app.gateway import Gateway
from tunnel.app.workers import WorkerProxy, _report
from tunnel.config.loader import load_config
from tunnel.dataplane.forwarder import Forwarder
from tunnel.ops.status import render, snapshot

EF = (("class", "realtime-audio"), ("direction", "ingress"), ("tunnel", "branch1"))


def _call(forwarder: Forwarder, clock: Clock, seconds: float, loss: float, ssrc: int = 0xCAFE0001) -> int:
    """A 20 ms G.711 call from a host behind this gateway (EF), with random loss before it: packets sent."""
    calls = forwarder.tunnels["branch1"].calls
    assert calls is not None
    calls.clock = clock
    rnd, sent = random.Random(ssrc), 0
    for i in range(int(seconds / 0.02)):
        clock.now = 1000 + i * 0.02
        if i < 2 or rnd.random() >= loss:
            assert forwarder.outbound(udp4(rtp(i, i * 160, ssrc=ssrc))) is not None
            sent += 1
    return sent


def test_a_lossy_call_in_metrics_and_status(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)
    clock = Clock()
    sent = _call(gateway.forwarder, clock, 12.0, 0.05)
    text, s = scrape(gateway)
    assert s[("sitelink_call_streams", EF)] == 1
    assert s[("sitelink_call_packets_total", EF)] == sent
    assert s[("sitelink_call_packets_lost_total", EF)] == 600 - sent
    assert s[("sitelink_call_jitter_seconds_count", EF)] == 2  # rolled at 5 and 10 s
    assert s[("sitelink_call_mos", EF)] < 3.6  # 5 % loss
    assert s[("sitelink_call_skipped_total", (("reason", "stun"), ("tunnel", "branch1")))] == 0
    assert "10.1.0.10" not in text and "cafe0001" not in text.lower()  # no address or SSRC in a label

    snap = snapshot(gateway.readout, clock.now)
    (call,) = snap["tunnels"][0]["calls"]
    assert (call["direction"], call["class"], call["ssrc"], call["packets"]) == ("ingress", "realtime-audio",
                                                                                "cafe0001", sent)
    assert call["src"] == "10.1.0.10:10000" and call["mos"] < 3.6 and call["loss_pct_10s"] > 1
    shown = render(snap)
    assert "call ingress realtime-audio" in shown and "ssrc cafe0001" in shown and f"{sent} packets" in shown


def test_status_says_when_calls_are_not_observed(tmp_path: Path) -> None:
    make_keys(tmp_path, "b1")
    gateway = Gateway(load_config(write(tmp_path, GOOD + "    call_quality: false\n")))
    snap = snapshot(gateway.readout, 0.0)
    assert snap["tunnels"][0]["calls"] is None
    assert "calls     not observed (call_quality: false)" in render(snap)
    _, s = scrape(gateway)
    assert not [k for k in s if k[0].startswith("sitelink_call_")]


def test_a_workers_calls_are_summed_into_the_scrape(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)
    worker = build_forwarder(gateway.config)
    for tunnel in gateway.config.tunnels:
        install_manual_keys(worker, tunnel)
    clock = Clock()
    here = _call(gateway.forwarder, clock, 6.0, 0.0, ssrc=1)
    there = _call(worker, clock, 6.0, 0.0, ssrc=2)
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proxy = WorkerProxy(1, main_end, os.getpid(), ["branch1"])
        _report(worker, worker_end, 0, None, [])
        assert proxy.receive()
        gateway.worker_proxies = [proxy]
        _, s = scrape(gateway)
        snap = snapshot(gateway.readout, clock.now)
    finally:
        gateway.worker_proxies = []
        main_end.close()
        worker_end.close()
    assert s[("sitelink_call_packets_total", EF)] == here + there
    assert s[("sitelink_call_streams", EF)] == 2
    assert sorted(c["ssrc"] for c in snap["tunnels"][0]["calls"]) == ["00000001", "00000002"]


def test_a_quiet_tunnel_exports_no_call_series(tmp_path: Path) -> None:
    """A hub with hundreds of tunnels: series only for the tunnels that carried something on a media port."""
    gateway = manual_gateway(tmp_path)
    assert gateway.forwarder.outbound(udp4(rtp(1, 0), sport=40000, dport=53)) is not None  # not a media port
    _, s = scrape(gateway)
    assert not [k for k in s if k[0].startswith("sitelink_call_")]
    assert snapshot(gateway.readout, 0.0)["tunnels"][0]["calls"] == []  # observed, nothing yet
