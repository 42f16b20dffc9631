"""`sitelink status|initiate|terminate|rekey` against running gateways over their control sockets, and
no secret (PSK, ESP keys) in status, logs or metrics."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment

METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9548/metrics", timeout=5).read().decode())
"""


def status(dep: Deployment, site: str) -> dict:
    cp = dep.sitelink(site, "status", "--json")
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def wait_state(dep: Deployment, site: str, tunnel: str, ok, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        entry = next(t for t in status(dep, site)["tunnels"] if t["name"] == tunnel)
        if ok(entry) or time.monotonic() > deadline:
            return entry
        time.sleep(0.1)


def test_status_and_commands_over_the_control_socket(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", esp_key_log=True)
        dep.start_all()
        there = lab.addr("branch1-host")
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3
        mode = dep.control_socket("hq").stat().st_mode
        assert stat.S_ISSOCK(mode) and mode & 0o077 == 0  # root-only

        table = dep.sitelink("hq", "status")
        assert table.returncode == 0, table.stderr
        text = table.stdout
        assert "tunnel branch1: UP, peer 198.18.2.2:4500, ike keying" in text, text
        assert re.search(r"IKE SA  [0-9a-f]{16}_i [0-9a-f]{16}_r  AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519", text), text
        assert re.search(r"Child SA  in [0-9a-f]{8}  out [0-9a-f]{8}  AES_GCM_16_256", text), text
        entry = wait_state(dep, "hq", "branch1", lambda t: t["tx_packets"] >= 3)
        assert entry["state"] == "up" and entry["tx_packets"] >= 3 and entry["rx_packets"] >= 3
        first_child = entry["child_sas"][0]["spi_in"]

        # rekey: a new Child SA replaces the first, traffic keeps flowing
        cp = dep.sitelink("hq", "rekey", "branch1")
        assert cp.returncode == 0 and "child rekey of branch1 started" in cp.stdout, cp.stdout + cp.stderr
        entry = wait_state(dep, "hq", "branch1", lambda t: all(c["spi_in"] != first_child for c in t["child_sas"])
                           and t["child_sas"])
        assert all(c["spi_in"] != first_child for c in entry["child_sas"]), entry
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3

        # terminate: the tunnel goes down (fail closed); initiate brings it back
        assert dep.sitelink("hq", "terminate", "branch1").returncode == 0
        entry = wait_state(dep, "hq", "branch1", lambda t: t["state"] != "up")
        assert entry["state"] in ("down", "connecting"), entry
        assert ping(lab, "hq-host", there, count=2, interval=0.05, timeout=0.5).received == 0
        cp = dep.sitelink("hq", "initiate", "branch1")
        assert cp.returncode == 0 and "initiating branch1" in cp.stdout
        entry = wait_state(dep, "hq", "branch1", lambda t: t["state"] == "up")
        assert entry["state"] == "up", entry
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3

        # mistakes get one clear line and a non-zero exit, never a traceback
        bad = dep.sitelink("hq", "initiate", "nowhere")
        assert bad.returncode != 0 and "no IKE tunnel 'nowhere'" in bad.stderr and "Traceback" not in bad.stderr

        # No secret in status, log or metrics: the PSK and every ESP key the key log (opt-in) recorded.
        psk = dep.gateways["hq"].keys["branch1"].read_text().strip()
        keys = re.findall(r"0x([0-9a-f]{64})", dep.esp_keys_path("hq").read_text())
        keys += [k.upper() for k in keys]
        assert keys, dep.esp_keys_path("hq").read_text()[:500]
        metrics = lab.run("hq-gw", ["python3", "-c", METRICS]).stdout
        assert "sitelink_tunnel_up" in metrics
        dep.stop("hq")
        outputs = {"status": text + json.dumps(status_or_empty(dep)), "log": dep.gateways["hq"].log_text(),
                   "metrics": metrics}
        for where, output in outputs.items():
            assert psk not in output, where
            assert not any(k in output for k in keys), where

    # after the gateway stopped: its socket is gone, and asking says so in one line
    cp = dep.sitelink("hq", "status")
    assert cp.returncode == 1 and "no such socket; is the gateway running?" in cp.stderr, cp.stderr


def status_or_empty(dep: Deployment) -> dict:
    cp = dep.sitelink("hq", "status", "--json")
    return json.loads(cp.stdout) if cp.returncode == 0 else {}
