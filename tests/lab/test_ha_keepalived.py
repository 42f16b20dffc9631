"""An active/standby pair at HQ behind Debian's keepalived (VRRPv3, 0.2 s adverts): the active gateway
fails three ways while a branch's RTP-like probes (200 datagrams/s each way) and a ping run; keepalived
moves the WAN and LAN virtual addresses, its notify script (or the branch's ESP arriving first) makes the
standby sitelink active, which brings the tunnel back at once with INITIAL_CONTACT. Then the failed
gateway comes back and takes over again (failback). The WAN is captured throughout: nothing in clear.

Times are not asserted absolutely: keepalived's own share (failure to virtual address moved) is measured
in the same run, and sitelink may add at most SITELINK_SHARE to it; a gateway that waited for the branch's
dead-peer detection (dpd_delay 30 s here) or a lost INITIAL_CONTACT would show as many seconds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import PcapReader

from netnslab import Lab, hub_and_spoke_topology
from netnslab.ha import FAILURES, HaPair, measure_failover
from netnslab.sitelink import Deployment

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SITELINK_SHARE = 1.0  # seconds sitelink may add to keepalived's failover time (measured: ~0.01-0.1)


def lan(address: str) -> bool:
    return address.startswith("10.")


@pytest.mark.parametrize("failure", FAILURES)
def test_keepalived_pair_fails_over_and_back(tmp_path: Path, failure: str) -> None:
    with Lab(hub_and_spoke_topology(1)) as lab:
        dep = Deployment(lab, tmp_path, ike_options={"dpd_delay": 30})
        pair = HaPair(lab, "hq", tmp_path, dep.gateways["hq"].config.read_text())
        dep.start("branch1")
        pair.start(0)
        pair.start(1)
        pair.wait_holder(0)
        dep.wait_established("branch1")
        assert pair.role(1) == "standby"
        pcap = tmp_path / "wan.pcap"
        with lab.capture(lab.topology.router, "any", pcap, "udp port 4500 or net 10.0.0.0/8") as cap:
            result = measure_failover(pair, "branch1-host", failure)
        print(json.dumps({failure: {phase: {"detect_s": r["detect_s"], "outage_s": r["outage_s"],
                                            "ping": r["ping"]} for phase, r in result.items()}}))
        over, back = result["failover"], result["failback"]
        for phase, r in result.items():
            for direction in ("to_hq", "to_branch"):
                probe = r[direction]
                assert probe["sender"]["sent"] > 1000, (phase, direction, probe)
                # the stream came back: what was lost is one outage, not a stream that never resumed
                lost_s = probe["lost"] / 200
                assert lost_s <= probe["longest_gap_ms"] / 1000 + 0.1, (phase, direction, probe)
            assert r["ping"]["received"] > 0.5 * r["ping"]["sent"], (phase, r["ping"])
        assert over["outage_s"] <= over["detect_s"] + SITELINK_SHARE, over
        # failback: no second outage longer than the failover's (the returning node takes over the
        # moment it wins VRRP; the other forgets its SAs)
        assert back["outage_s"] <= max(over["outage_s"], over["detect_s"]) + SITELINK_SHARE, back
        assert pair.role(0) == "active" and pair.role(1) == "standby"
        # the branch's tunnel ended up with one IKE SA, with the gateway that came back
        status = json.loads(dep.sitelink("branch1", "status", "--json").stdout)
        tunnel = status["tunnels"][0]
        assert tunnel["state"] == "up"
        assert "INITIAL_CONTACT" in dep.gateways["branch1"].log_text()
        assert "taking over" in pair.nodes[1].log_text() or "now active" in pair.nodes[1].log_text()
    esp, clear = 0, []
    with PcapReader(str(pcap)) as packets:
        for frame in packets:
            ip = frame.getlayer(IP)
            if ip is None:
                continue
            if lan(ip.src) or lan(ip.dst):
                clear.append(frame.summary())
            elif ip.haslayer(UDP) and 4500 in (ip[UDP].sport, ip[UDP].dport):
                esp += 1
    assert cap.packets and esp > 2000, (cap.packets, esp)  # the capture saw the tunnel's traffic
    assert clear == [], clear[:5]


@pytest.mark.parametrize("failure", ["node-kill", "wan-cut"])
def test_state_sync_takes_over_without_a_new_ike_sa(tmp_path: Path, failure: str) -> None:
    """gateway.ha.sync with 0.1 s adverts: the standby carries on with the SAs the active had (streamed
    to it over the LAN), both at failover and at failback; the branch's sitelink sets up no IKE SA after
    the first and hears no INITIAL_CONTACT; the probes' outage is keepalived's detection and little more."""
    with Lab(hub_and_spoke_topology(1)) as lab:
        dep = Deployment(lab, tmp_path, ike_options={"dpd_delay": 30})
        pair = HaPair(lab, "hq", tmp_path, dep.gateways["hq"].config.read_text(), sync=True, advert_int=0.1)
        dep.start("branch1")
        pair.start(0)
        pair.start(1)
        pair.wait_holder(0)
        dep.wait_established("branch1")
        branch = dep.gateways["branch1"]
        established = branch.log_text().count("IKE SA established")
        assert established == 1
        pcap = tmp_path / "wan.pcap"
        with lab.capture(lab.topology.router, "any", pcap, "udp port 4500 or net 10.0.0.0/8") as cap:
            result = measure_failover(pair, "branch1-host", failure)
        print(json.dumps({f"sync {failure}": {phase: {"detect_s": r["detect_s"], "outage_s": r["outage_s"],
                                                      "ping": r["ping"]} for phase, r in result.items()}}))
        log = branch.log_text()
        assert log.count("IKE SA established") == established, log[-3000:]  # no new IKE SA, either time
        assert "INITIAL_CONTACT" not in log
        for phase, r in result.items():
            assert r["outage_s"] <= r["detect_s"] + SITELINK_SHARE, (phase, r)
            for direction in ("to_hq", "to_branch"):
                assert r[direction]["lost"] / 200 <= r[direction]["longest_gap_ms"] / 1000 + 0.1, (phase, r)
        for node in pair.nodes:  # each took over the other's SAs once
            assert "took over IKE SA" in node.log_text(), node.log_text()[-2000:]
        # a stranger on the LAN sends to the active gateway's sync port: refused and counted, nothing else
        active = pair.nodes[0]
        lab.run(pair.site.host, ["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, "
                                 f"socket.SOCK_DGRAM); [s.sendto(b'SLHA' + bytes(60), ('{active.lan4}', 4510)) "
                                 "for _ in range(3)]"])
        own = json.loads(subprocess.run([*pair.command, "status", "--json", "--socket", str(active.socket)],
                                        capture_output=True, text=True, timeout=15, check=True).stdout)
        assert own["ha_role"] == "active" and own["ha_sync"]["taken_over"] == 1, own["ha_sync"]
        assert own["ha_sync"]["drops"].get("stranger") == 3, own["ha_sync"]
        # the exporter of each (what configs/prometheus/sitelink-ha-alerts.yml watches)
        fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9548/metrics').read().decode())"
        scraped = [lab.run(n.node, ["python3", "-c", fetch]).stdout for n in pair.nodes]
        assert 'sitelink_ha_active{gateway="hq"} 1.0' in scraped[0]
        assert 'sitelink_ha_active{gateway="hq"} 0.0' in scraped[1]
        assert 'sitelink_ha_sync_drops_total{reason="stranger"} 3.0' in scraped[0]
        assert "sitelink_ha_takeovers_total 1.0" in scraped[0]
        status = json.loads(dep.sitelink("branch1", "status", "--json").stdout)
        assert status["tunnels"][0]["state"] == "up"
        assert status["tunnels"][0]["drops"].get("replay", 0) == 0, status["tunnels"][0]["drops"]
    with PcapReader(str(pcap)) as packets:
        clear = [f.summary() for f in packets if f.haslayer(IP) and (lan(f[IP].src) or lan(f[IP].dst))]
    assert cap.packets and clear == [], clear[:5]


def test_documented_keepalived_config_passes_keepalived_s_own_check(tmp_path: Path) -> None:
    """configs/ha/keepalived.conf, script security on, in a gateway namespace with its wan0 and lan0
    (keepalived -t checks that they exist); the sitelink path swapped for a root-owned binary that exists
    here (the example installs sitelink in /usr/local/bin)."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text((REPO / "configs/ha/keepalived.conf").read_text().replace("/usr/local/bin/sitelink", "/usr/bin/true"))
    with Lab(hub_and_spoke_topology(1)) as lab:
        cp = lab.run("hq-gw", ["keepalived", "-t", "-f", str(conf)], check=False)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        broken = tmp_path / "broken.conf"
        broken.write_text(conf.read_text().replace("advert_int 0.2", "advert_int fast", 1))
        assert lab.run("hq-gw", ["keepalived", "-t", "-f", str(broken)], check=False).returncode != 0
