"""The gateway runs as an unprivileged user with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, the set
configs/systemd/sitelink@.service grants: it still creates its TUN device and routes, binds IKE on 500,
sets up the tunnel and carries traffic, and holds no other capability. Its log is JSON lines here."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import tempfile
from pathlib import Path

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "configs" / "systemd" / "sitelink@.service"
NOBODY = 65534
CAPS = "+net_admin,+net_bind_service"
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12


def unit_service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the keys' case
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_unit_grants_exactly_two_capabilities_to_an_unprivileged_user() -> None:
    service = unit_service()
    assert service["User"] not in ("root", "0") and service["Group"] not in ("root", "0")
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert set(service[key].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}, key
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["DeviceAllow"] == "/dev/net/tun rw" and service["RuntimeDirectory"] == "sitelink"
    assert service["RuntimeDirectoryPreserve"] == "yes"  # one instance's stop keeps the others' sockets
    assert service["ExecReload"] == "/usr/local/bin/sitelink reload -c /etc/sitelink/%i.yaml"


def test_gateway_runs_unprivileged_with_the_units_capabilities() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sitelink-unpriv-", dir="/tmp"))
    try:
        os.chmod(workdir, 0o755)  # nobody must reach it; pytest's own tmp is root-only
        with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
            dep = Deployment(lab, workdir / "gw", gateway_yaml=["log_format: json"])
            plain = dep.command
            dep.start("branch1")  # the peer as usual, as root, with its files root's
            for path in [workdir / "gw", *(workdir / "gw").iterdir()]:
                os.chown(path, NOBODY, NOBODY)  # hq's files belong to hq's user, as the unit expects
            dep.command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           f"--inh-caps=-all,{CAPS}", f"--ambient-caps=-all,{CAPS}",
                           f"--bounding-set=-all,{CAPS}", "--no-new-privs", *plain]
            dep.start("hq")
            dep.wait_established("hq")
            assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
            status = Path(f"/proc/{dep.gateways['hq'].proc.pid}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines())
            assert fields["Uid"].split()[:2] == [str(NOBODY)] * 2, fields["Uid"]
            effective = int(fields["CapEff"], 16)
            assert effective == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE), hex(effective)
            assert "accept_local" not in dep.gateways["hq"].log_text()  # the sysctl write worked too
            lines = dep.gateways["hq"].log_text().splitlines()
            assert lines and all(json.loads(line)["logger"].startswith("sitelink") for line in lines)
            # `sitelink reload` as the same unprivileged user (what the unit's ExecReload runs), with a
            # change that re-establishes the tunnel: new IKE settings, the route replaced over netlink.
            hq = dep.gateways["hq"]
            assert "start: initiate}" in hq.config.read_text()
            hq.config.write_text(hq.config.read_text().replace("start: initiate}", "start: initiate, rekey_time: 1800}"))
            cp = dep.sitelink("hq", "reload")
            assert cp.returncode == 0 and "re-established branch1" in cp.stdout, cp.stdout + cp.stderr
            dep.wait_established("hq", count=2)
            assert "re-established branch1" in hq.log_text()
            assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
            dep.command = plain
            assert dep.stop("hq") == 0  # a clean shutdown without root; the TUN device stays (fail closed)
            assert lab.run("hq-gw", ["ip", "link", "show", "dev", "sitelink0"]).returncode == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
