"""Fail closed on every exit path (issue #13): with a default route toward the WAN on the gateway, as at a
real site, LAN traffic for the remote subnet never leaves in clear while hq's gateway is stopped, killed,
restarted, or taken down by a dying worker. A WAN capture on the router's hq link is read back: every ESP
packet decrypts with the exported keys and nothing else carries LAN addresses. `sitelink down` is the
deliberate way to open: after it, the same ping is seen in clear, which is also what proves the capture
would have shown a leak."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment
from tests.lab.wan import analyse, sas_from_esp_log

HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"


def _stop(dep: Deployment, how: str) -> None:
    gw = dep.gateways["hq"]
    if how == "sigterm":
        assert dep.stop("hq") == 0
    elif how == "sigkill":
        dep.stop("hq", signal.SIGKILL)
    elif how == "worker-death":  # a data-plane worker dies; the gateway notices and stops itself
        pids = re.findall(r"data-plane workers: this process and pids ([\d,]+)", gw.log_text())[0].split(",")
        os.kill(int(pids[0]), signal.SIGKILL)
        gw.proc.wait(timeout=10)
        assert "exited; stopping" in gw.log_text()


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "worker-death", "restart"])
def test_nothing_leaves_in_clear_when_the_gateway_stops(tmp_path: Path, how: str) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", esp_key_log=True, workers=2 if how == "worker-death" else 1)
        dep.start_all()
        there = lab.addr("branch1-host")
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            _stop(dep, "sigterm" if how == "restart" else how)
            down = ping(lab, "hq-host", there, count=10, interval=0.05, timeout=0.3)
            down6 = ping(lab, "hq-host", lab.addr("branch1-host", 6), count=5, interval=0.05, timeout=0.3)
            routes = lab.run("hq-gw", ["ip", "route"]).stdout
            if how == "restart":
                dep.start("hq")
                dep.wait_established("hq", count=2)
                back = ping(lab, "hq-host", there, count=3, interval=0.05)
                assert back.received == 3
        report = analyse(pcap, {**sas_from_esp_log(dep.esp_keys_path("hq")),
                                **sas_from_esp_log(dep.esp_keys_path("branch1"))}, {HQ_WAN, BR_WAN})
        print(f"\n{how}: {down.sent + down6.sent} pings while hq was down, {report.esp} ESP packets "
              f"({len(report.decrypted)} decrypted), {len(report.cleartext)} in clear")
        assert down.received == 0 and down6.received == 0
        assert report.cleartext == [], report.cleartext
        assert "10.2.0.0/24 dev sitelink0 proto 199" in routes  # the TUN route outlived the process
        assert "unreachable 10.2.0.0/24 proto 199 metric 4000000" in routes  # and its backstop


def test_sitelink_down_opens_on_purpose_and_the_capture_sees_it(tmp_path: Path) -> None:
    """The control case: only `sitelink down` lets the traffic go by the default route, it says so, and
    the capture that found nothing above finds it here."""
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", esp_key_log=True)
        dep.start_all()
        there = lab.addr("branch1-host")
        running = dep.down("hq")
        assert running.returncode == 1 and "is running" in running.stderr  # refused while it runs
        assert dep.stop("hq") == 0
        opened = dep.down("hq")
        assert opened.returncode == 0, opened.stderr
        assert "10.2.0.0/24: now via 198.18.1.1 dev wan0" in opened.stdout
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            ping(lab, "hq-host", there, count=3, interval=0.05, timeout=0.3)
            time.sleep(0.2)
        report = analyse(pcap, sas_from_esp_log(dep.esp_keys_path("hq")), {HQ_WAN, BR_WAN})
        assert len([c for c in report.cleartext if "10.2.0.10" in c]) >= 3, report.cleartext
        assert "unreachable" not in lab.run("hq-gw", ["ip", "route"]).stdout
