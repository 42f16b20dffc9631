"""gateway.workers: several data-plane processes per gateway, each with a TUN queue, a socket the SPI
filter steers ESP to, and Child SAs of its own. Traffic spread over flows must cross through every
worker, every ESP packet on the WAN must decrypt with the exported keys, and a dead worker must stop the
gateway (fail closed: routes stay on a reader-less device) instead of silently losing a share of flows."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from netnslab import TOPOLOGIES, Lab, iperf3, ping
from netnslab.sitelink import Deployment
from tests.lab.test_tunnel import GATEWAYS, wan_sas
from tests.lab.wan import analyse

WORKER_LINE = re.compile(r"worker (\d+): tunnel=(\S+) tx_packets=(\d+) tx_bytes=\d+ rx_packets=(\d+)")


def per_worker(text: str) -> dict[int, tuple[int, int]]:
    """The last per-worker counter lines: {worker: (tx_packets, rx_packets)} of the tunnel."""
    found: dict[int, tuple[int, int]] = {}
    for m in WORKER_LINE.finditer(text):
        if m.group(2) != "(none)":
            found[int(m.group(1))] = (int(m.group(3)), int(m.group(4)))
    return found


def test_every_worker_carries_traffic_and_every_wan_packet_decrypts(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", workers=2, esp_key_log=True)
        dep.start_all()
        there = lab.addr("branch1-host")
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap) as cap:
            assert ping(lab, "hq-host", there, count=5, interval=0.05).received == 5
            tcp = iperf3(lab, "hq-host", "branch1-host", there, seconds=2, streams=16, bitrate="1M")
        assert tcp.received_bps > 8e6
        counters = {site: dep.counters(site) for site in dep.gateways}  # SIGUSR1: every worker's lines too
        workers = {site: per_worker(gw.log_text()) for site, gw in dep.gateways.items()}
        print(f"\n2 workers per gateway, 16 TCP streams: {tcp.received_bps / 1e6:.0f} Mbit/s; per worker "
              f"(tx, rx) packets {workers}")
        for site in dep.gateways:
            assert set(workers[site]) == {0, 1}, workers
            assert all(tx > 10 and rx > 10 for tx, rx in workers[site].values()), workers  # flows hashed over queues
            peer = "branch1" if site == "hq" else "hq"
            assert counters[site][peer]["drops"] == {}, counters
            assert sum(tx for tx, _ in workers[site].values()) == counters[site][peer]["tx_packets"]
        logs = {site: gw.log_text() for site, gw in dep.gateways.items()}
        for text in logs.values():
            assert "worker 0)" in text and "worker 1)" in text  # a Child SA for each worker
        assert cap.kernel_drops == 0
        report = analyse(pcap, wan_sas(dep), GATEWAYS)
        assert report.cleartext == [] and report.unknown_spi == []
        assert report.esp > 1000 and len(report.decrypted) == report.esp


def test_a_dead_worker_stops_the_gateway_and_nothing_leaks(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", workers=2)
        dep.start_all()
        there = lab.addr("branch1-host")
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3
        gw = dep.gateways["hq"]
        pids = [int(p) for p in re.findall(r"data-plane workers: this process and pids ([\d,]+)", gw.log_text())[0].split(",")]
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while gw.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.proc.poll() not in (None, 0), gw.log_text()[-2000:]
        assert "data-plane worker 1" in gw.log_text() and "exited; stopping" in gw.log_text()
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            assert ping(lab, "hq-host", there, count=5, interval=0.05, timeout=0.3).received == 0
        report = analyse(pcap, {}, GATEWAYS)
        assert report.cleartext == [], report.cleartext


def test_workers_exit_with_their_main_process(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", workers=3)
        dep.start_all()
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
        gw = dep.gateways["hq"]
        pids = [int(p) for p in re.findall(r"data-plane workers: this process and pids ([\d,]+)", gw.log_text())[0].split(",")]
        assert len(pids) == 2
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(map(_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_running, pids)), "a worker outlived its main process"
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05, timeout=0.3).received == 0


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever inherited it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_streams_through_every_worker_survive_rekeys(tmp_path: Path) -> None:
    """Each worker's Child SA is rekeyed on its own (keys reach the worker over the socketpair before the
    IKE answer that lets the peer use them leaves): sequence-numbered UDP streams spread over both
    workers lose nothing across many rekeys, and no datagram meets an unknown SPI."""
    seconds = 20
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", workers=2, ike_options={"rekey_time": 2, "lifetime": 5,
                                                                        "ike_rekey_time": 8, "ike_lifetime": 20})
        dep.start_all()
        stream = iperf3(lab, "hq-host", "branch1-host", lab.addr("branch1-host"), seconds=seconds, udp=True,
                        bitrate="400K", length=1000, streams=32)  # 32 flows, 1600 datagrams per second
        # The kernel spreads flows over the TUN's queues by a hash it seeds at boot: 8 flows all landed on
        # one worker once in ~100 runs (2 x 2^-8); with 32 that takes ~10^9 runs.
        end = stream.raw["end"]["sum"]
        counters = {site: dep.counters(site) for site in dep.gateways}
        workers = {site: per_worker(gw.log_text()) for site, gw in dep.gateways.items()}
        children = {site: gw.log_text().count("Child SA established") for site, gw in dep.gateways.items()}
        print(f"\n2 workers, {seconds} s: {end['packets']} datagrams, {end['lost_packets']} lost; Child SAs "
              f"established {children}; per worker (tx, rx) {workers}")
        assert end["packets"] > seconds * 1200 and end["lost_packets"] == 0
        assert min(children.values()) >= 2 * seconds // 3  # both workers' SAs rekeyed every ~2 s
        assert all(rx > 100 for rx in (r for _, r in workers["branch1"].values())), workers
        for site, by_tunnel in counters.items():
            for tunnel, c in by_tunnel.items():
                assert not {"replay", "auth_failed", "no_sa", "unknown_spi"} & set(c["drops"]), (site, tunnel, c)
