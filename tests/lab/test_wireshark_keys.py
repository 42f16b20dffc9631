"""Opt-in key export (gateway.key_log): tshark decodes a WAN capture's IKE (ikev2_decryption_table: the
encrypted IKE_AUTH payloads, down to the identities and traffic selectors) and ESP (esp_sa: the pings
inside) with the files the gateway wrote, and the gateway says in its log that it exports keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment, identity
from tests.needs import require_tool


@pytest.fixture(autouse=True)
def _need_tshark() -> None:
    require_tool("tshark")


def tshark(pcap: Path, profile: Path, *args: str) -> list[str]:
    """tshark with a personal configuration directory holding only our two key files."""
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile / ".config")}
    cp = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE", *args],
                        capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode == 0, cp.stderr
    return [line for line in cp.stdout.splitlines() if line.strip()]


def test_tshark_decrypts_ike_and_esp_with_the_exported_keys(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw")
        config = dep.gateways["hq"].config
        config.write_text(config.read_text().replace(
            "gateway:\n", "gateway:\n  key_log: {esp_sa: hq.esp_sa, ikev2_decryption_table: hq.ikev2}\n", 1))
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap) as cap:
            dep.start_all()
            assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
            time.sleep(0.3)
        assert cap.kernel_drops == 0
        log = dep.gateways["hq"].log_text()
        assert "exporting IKE SA keys to" in log and "exporting ESP keys to" in log
        assert "hq.ikev2" not in dep.gateways["branch1"].log_text()  # opt-in per gateway: off by default
        wireshark = tmp_path / "profile" / ".config" / "wireshark"
        wireshark.mkdir(parents=True)
        for ours, theirs in (("hq.ikev2", "ikev2_decryption_table"), ("hq.esp_sa", "esp_sa")):
            source = tmp_path / "gw" / ours
            assert source.stat().st_mode & 0o077 == 0  # key files are owner-only
            shutil.copy(source, wireshark / theirs)
        profile = tmp_path / "profile"

        # IKE_AUTH (exchange type 35): the identities are inside the encrypted SK payload.
        ids = tshark(pcap, profile, "-Y", "isakmp.exchangetype == 35", "-T", "fields", "-e", "isakmp.id.data.fqdn")
        names = {name for line in ids for name in line.split(",")}  # the request carries IDi and IDr
        assert len(ids) == 2 and names == {identity("hq"), identity("branch1")}, ids
        selectors = tshark(pcap, profile, "-Y", "isakmp.exchangetype == 35", "-V")
        assert any("Starting Addr: 10.2.0.0" in line for line in selectors)
        assert sum("Integrity Checksum Data" in line and "[correct]" in line for line in selectors) == 2
        # ESP: the inner ICMP of the three pings, both ways, decrypted.
        icmp = tshark(pcap, profile, "-Y", "esp && icmp", "-T", "fields", "-e", "icmp.type")
        assert sorted(icmp) == ["0"] * 3 + ["8"] * 3, icmp
        without = tshark(pcap, tmp_path / "empty", "-Y", "esp && icmp", "-T", "fields", "-e", "icmp.type")
        assert without == []  # and nothing decrypts without the files: the test can fail
