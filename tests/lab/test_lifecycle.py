"""SA lifecycle with real gateways: a sequence-numbered UDP stream (iperf3 counts every datagram)
crosses the tunnel while Child and IKE SAs are rekeyed many times by both sides; nothing may be lost
and nothing may trip the replay window (make-before-break, RFC 7296 §2.8)."""

from __future__ import annotations

from pathlib import Path

from netnslab import TOPOLOGIES, Lab, iperf3
from netnslab.sitelink import Deployment

SECONDS = 60


def test_stream_survives_many_rekeys(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", ike_options={"rekey_time": 1, "lifetime": 3,
                                                             "ike_rekey_time": 5, "ike_lifetime": 12})
        dep.start_all()
        stream = iperf3(lab, "hq-host", "branch1-host", lab.addr("branch1-host"), seconds=SECONDS, udp=True,
                        bitrate="16M", length=1000)  # 2000 datagrams per second
        end = stream.raw["end"]["sum"]
        logs = {site: dep.gateways[site].log_text() for site in ("hq", "branch1")}
        child_rekeys = sum(text.count("Child SA established") for text in logs.values()) // 2 - 1
        ike_rekeys = sum(text.count("IKE SA rekeyed") for text in logs.values()) // 2
        counters = {site: dep.counters(site) for site in ("hq", "branch1")}
        print(f"\n{end['packets']} datagrams, {end['lost_packets']} lost, {child_rekeys} Child rekeys, "
              f"{ike_rekeys} IKE rekeys in {SECONDS} s")
        assert end["packets"] > SECONDS * 1500
        assert end["lost_packets"] == 0
        assert child_rekeys >= 50 and ike_rekeys >= 5
        for site, by_tunnel in counters.items():
            for tunnel, c in by_tunnel.items():
                assert "replay" not in c["drops"] and "auth_failed" not in c["drops"], (site, tunnel, c)
                assert "no_sa" not in c["drops"], (site, tunnel, c)


def test_volume_lifetime_rekeys_by_packets(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", ike_options={"rekey_packets": 4000, "rekey_time": 3600})
        dep.start_all()
        stream = iperf3(lab, "hq-host", "branch1-host", lab.addr("branch1-host"), seconds=10, udp=True,
                        bitrate="16M", length=1000)
        end = stream.raw["end"]["sum"]
        rekeys = dep.gateways["hq"].log_text().count("rekeying after")
        print(f"\n{end['packets']} datagrams, {end['lost_packets']} lost, {rekeys} rekeys by packet count")
        assert rekeys >= 3 and end["lost_packets"] == 0
