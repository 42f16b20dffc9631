"""sitelink against strongSwan 5.9 (charon, kernel-libipsec, in a lab site): IKEv2 with PSK and with
certificates, X25519 and ECP-256, sitelink as initiator and as responder. Traffic must pass both ways,
strongSwan must report the algorithms we expect, and every ESP packet on the WAN must decrypt with
scapy using the keys sitelink exported."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, iperf3, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan, strongswan_installed
from tests.lab.wan import analyse, sas_from_esp_log

HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"

CASES = [
    # (keying, DH group for both sides, who initiates)
    ("psk", "x25519", "sitelink"),
    ("psk", "x25519", "strongswan"),
    ("psk", "ecp256", "sitelink"),
    ("cert", "x25519", "strongswan"),
    ("cert", "ecp256", "sitelink"),
]
SWAN_DH = {"x25519": "curve25519", "ecp256": "ecp256"}
SUITE_DH = {"x25519": "CURVE_25519", "ecp256": "ECP_256"}


@pytest.fixture(autouse=True)
def _need_strongswan() -> None:
    import os

    missing = strongswan_installed()  # None when everything is there
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{missing} (scripts/bootstrap installs it)", pytrace=False)
        pytest.skip(missing)


@pytest.mark.parametrize("keying,group,initiator", CASES, ids=["-".join(c) for c in CASES])
def test_sitelink_and_strongswan(tmp_path: Path, keying: str, group: str, initiator: str) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        sitelink_starts = initiator == "sitelink"
        dep = Deployment(lab, tmp_path / "sitelink", keying=keying, esp_key_log=True,
                         ike_proposals=[f"aes256gcm16-prfsha256-{group}"],
                         initiators={("hq", "branch1")} if sitelink_starts else set())
        swan_kw: dict = {}
        if keying == "psk":
            swan_kw["psk"] = dep.gateways["hq"].keys["branch1"].read_text().strip()
        else:
            pki = dep.workdir / "pki"
            swan_kw.update(auth="pubkey", ca=pki / "ca.crt", cert=next((pki / "branch1").glob("*.crt")),
                           key=next((pki / "branch1").glob("*.key")))
        swan = StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq",
                          local_id=identity("branch1"), remote_id=identity("hq"),
                          ike_proposal=f"aes256gcm16-prfsha256-{SWAN_DH[group]}", esp_proposal="aes256gcm16",
                          ike_port=500, **swan_kw)
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap) as cap:
            swan.start()
            t0 = time.monotonic()
            dep.start("hq")
            if not sitelink_starts:
                swan.initiate()
            dep.wait_established("hq")
            dst = lab.addr("branch1-host")
            first = ping(lab, "hq-host", dst, count=1, timeout=1.0)
            up_to_first_packet = time.monotonic() - t0
            there = ping(lab, "hq-host", dst, count=5, interval=0.05)
            back = ping(lab, "branch1-host", lab.addr("hq-host"), count=5, interval=0.05)
            tcp = iperf3(lab, "hq-host", "branch1-host", dst, seconds=2, bitrate="20M")
            tcp_back = iperf3(lab, "branch1-host", "hq-host", lab.addr("hq-host"), seconds=2, bitrate="20M")
            summary = swan.sa_summary()
        assert first.received == 1 and there.received == 5 and back.received == 5
        assert tcp.received_bps > 5e6 and tcp_back.received_bps > 5e6
        assert summary["ike_state"] == "ESTABLISHED"
        assert summary["ike_algorithms"] == f"AES_GCM_16-256/PRF_HMAC_SHA2_256/{SUITE_DH[group]}"
        assert summary["esp_algorithms"].startswith("AES_GCM_16-256")
        assert summary["child_state"] == "INSTALLED"

        assert cap.kernel_drops == 0
        report = analyse(pcap, sas_from_esp_log(dep.esp_keys_path("hq")), {HQ_WAN, BR_WAN})
        assert report.cleartext == [] and report.unknown_spi == []
        assert report.esp > 1000 and len(report.decrypted) == report.esp  # scapy checked every ICV
        assert report.ike >= 4  # IKE_SA_INIT and IKE_AUTH both ways
        log = dep.gateways["hq"].log_text()
        assert "Child SA established" in log and ("initiator" if sitelink_starts else "responder") in log
        print(f"\n{keying}/{group}/{initiator} initiates: first packet {up_to_first_packet * 1000:.0f} ms after "
              f"sitelink up; {report.esp} ESP packets decrypted by scapy")


@pytest.mark.parametrize("initiator", ["sitelink", "strongswan"])
def test_sitelink_workers_with_strongswan(tmp_path: Path, initiator: str) -> None:
    """gateway.workers: 2 against a peer that knows nothing of it: the second Child SA is a plain
    CREATE_CHILD_SA with the same selectors, strongSwan installs it, and flows through either worker
    pass both ways."""
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "sitelink", esp_key_log=True, workers=2,
                         initiators={("hq", "branch1")} if initiator == "sitelink" else set())
        swan = StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq", local_id=identity("branch1"),
                          remote_id=identity("hq"), ike_proposal="aes256gcm16-prfsha256-curve25519",
                          esp_proposal="aes256gcm16", ike_port=500,
                          psk=dep.gateways["hq"].keys["branch1"].read_text().strip())
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap) as cap:
            swan.start()
            dep.start("hq")
            if initiator == "strongswan":
                swan.initiate()
            dep.wait_established("hq")
            deadline = time.monotonic() + 10
            while dep.gateways["hq"].log_text().count("Child SA established") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            dst = lab.addr("branch1-host")
            tcp = iperf3(lab, "hq-host", "branch1-host", dst, seconds=2, streams=16, bitrate="1M")
            back = iperf3(lab, "branch1-host", "hq-host", lab.addr("hq-host"), seconds=2, streams=4, bitrate="2M")
            listed = swan.list_sas()
        log = dep.gateways["hq"].log_text()
        assert "worker 0)" in log and "worker 1)" in log, log[-3000:]
        assert tcp.received_bps > 8e6 and back.received_bps > 4e6
        assert listed.count("INSTALLED") >= 2, listed  # strongSwan holds both Child SAs
        workers = per_worker_tx(dep)
        # No balance asserted: strongSwan sends everything on its newest Child SA, so all of it reaches
        # one worker, and the TUN's flow steering then sends each flow back out through that worker.
        assert set(workers) == {0, 1} and sum(workers.values()) > 1000, workers
        assert cap.kernel_drops == 0
        report = analyse(pcap, sas_from_esp_log(dep.esp_keys_path("hq")), {HQ_WAN, BR_WAN})
        assert report.cleartext == [] and report.unknown_spi == []
        assert report.esp > 500 and len(report.decrypted) == report.esp
        print(f"\nsitelink workers 2, {initiator} initiates: strongSwan lists {listed.count('INSTALLED')} installed "
              f"Child SAs; sitelink packets sent per worker {workers}")


def per_worker_tx(dep: Deployment) -> dict[int, int]:
    from tests.lab.test_workers import per_worker

    dep.counters("hq")  # SIGUSR1 writes the per-worker lines
    return {w: tx for w, (tx, _) in per_worker(dep.gateways["hq"].log_text()).items()}
