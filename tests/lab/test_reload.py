"""Hot reload on real gateways (three sites): while a 500 packets/s UDP stream runs from hq to branch1,
hq's configuration gains a tunnel to branch2 (`sitelink reload`), is broken (refused, with its errors),
and loses the branch2 tunnel again (SIGHUP). The stream must lose no packet and branch1's Child SA must
stay the same one; branch2 must come up, carry traffic, and be deleted at branch2 (its IKE SA gone, hq's
route to it gone)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.media import probe
from netnslab.sitelink import Deployment

RATE, SECONDS = 500, 9


def without_tunnel(config: str, name: str) -> str:
    """A gateway config text without one tunnel entry (tunnels are the file's last section)."""
    start = config.index(f"  - name: {name}\n")
    end = config.find("  - name: ", start + 1)
    return config[:start] + ("" if end < 0 else config[end:])


def with_tunnel_option(config: str, name: str, line: str) -> str:
    start = config.index(f"  - name: {name}\n") + len(f"  - name: {name}\n")
    return config[:start] + f"    {line}\n" + config[start:]


def hq_tunnel(dep: Deployment, name: str) -> dict | None:
    cp = dep.sitelink("hq", "status", "--json")
    assert cp.returncode == 0, cp.stderr
    return next((t for t in json.loads(cp.stdout)["tunnels"] if t["name"] == name), None)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_keeps_running_tunnels_and_adds_and_removes_others(tmp_path: Path, workers: int) -> None:
    with Lab(TOPOLOGIES / "three-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", workers=workers,
                         initiators={("hq", "branch1"), ("hq", "branch2"), ("branch1", "branch2")})
        hq = dep.gateways["hq"]
        full = hq.config.read_text()
        hq.config.write_text(without_tunnel(full, "branch2"))
        dep.start_all(established=False)
        dep.wait_established("hq", count=workers)
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
        before = hq_tunnel(dep, "branch1")
        assert before["state"] == "up" and hq_tunnel(dep, "branch2") is None
        def route() -> str:
            return lab.run("hq-gw", ["ip", "route", "show", "10.3.0.0/24"], timeout=5).stdout.strip()

        assert route() == ""

        result: dict = {}
        stream = threading.Thread(target=lambda: result.update(probe(
            lab, "hq-host", "branch1-host", lab.addr("branch1-host"), 7000, rate=RATE, seconds=SECONDS, dscp=0)))
        stream.start()
        try:
            time.sleep(1.5)
            # 1. add branch2, and change branch1's MTU (a policy change: its SAs stay)
            hq.config.write_text(with_tunnel_option(full, "branch1", "mtu: 1400"))
            cp = dep.sitelink("hq", "reload")
            assert cp.returncode == 0, cp.stdout + cp.stderr
            assert "added branch2" in cp.stdout and "policy updated branch1" in cp.stdout, cp.stdout
            wait_for(lambda: (hq_tunnel(dep, "branch2") or {}).get("state") == "up", 15, "branch2 up")
            assert "dev sitelink0" in route(), route()
            assert ping(lab, "hq-host", lab.addr("branch2-host"), count=3, interval=0.05).received == 3

            # 2. a broken file: refused with file:line:col, the running configuration stays
            good = hq.config.read_text()
            hq.config.write_text(good.replace("remote_subnets: [10.3.0.0/24", "remote_subnets: [10.3.0.0/33", 1))
            cp = dep.sitelink("hq", "reload")
            assert cp.returncode == 2 and "Traceback" not in cp.stderr, cp.stdout + cp.stderr
            assert re.search(rf"{re.escape(str(hq.config))}:\d+:\d+: tunnels\[\d\]\.remote_subnets", cp.stderr), cp.stderr
            assert "the running one stays" in cp.stderr
            # ... and a change only a restart can make
            hq.config.write_text(good.replace("port: 4500}", "port: 4501}", 1))
            cp = dep.sitelink("hq", "reload")
            assert cp.returncode == 2 and "gateway.listen changed: that needs a restart" in cp.stderr, cp.stderr
            assert ping(lab, "hq-host", lab.addr("branch2-host"), count=2, interval=0.05).received == 2

            # 3. remove branch2 by SIGHUP, as systemctl reload does
            hq.config.write_text(without_tunnel(good, "branch2"))
            reloads = hq.log_text().count("reloaded ")
            hq.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: hq.log_text().count("reloaded ") > reloads, 10, "the SIGHUP reload")
            assert "reloaded" in hq.log_text() and ": removed branch2; unchanged branch1" in hq.log_text()
            branch2 = dep.gateways["branch2"]
            wait_for(lambda: "tunnel hq: IKE SA deleted" in branch2.log_text(), 10, "branch2 hears the Delete")
            assert route() == "" and hq_tunnel(dep, "branch2") is None
            assert ping(lab, "hq-host", lab.addr("branch2-host"), count=2, interval=0.05, timeout=0.5).received == 0
        finally:
            stream.join(SECONDS + 60)
        after = hq_tunnel(dep, "branch1")

    sent, received = result["sender"]["sent"], result["received"]
    print(f"\nreload under a {RATE} packets/s stream (workers={workers}): sent {sent}, received {received}, "
          f"lost {result['lost']}, max one-way delay {result.get('delay_max_ms')} ms")
    assert sent >= RATE * SECONDS * 0.95 and received == sent and result["lost"] == 0, result
    assert [c["spi_in"] for c in after["child_sas"]] == [c["spi_in"] for c in before["child_sas"]], (before, after)
    assert after["drops"] == {}, after
