"""A real branch network with real gateways: a hub and three branches, one of which finds the hub by a
DNS name, two of which sit behind one NAT address (the hub knows one by that address, the other as `any`),
spoke-to-spoke traffic through the hub; and a branch whose full tunnel sends everything, internet
included, through HQ while its own IKE and ESP stay outside. Each topology has gateways with a default
route toward the WAN, so a leak would show in the captures."""

from __future__ import annotations

import json
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path

from netnslab import Lab, hub_and_spoke_topology, ping
from netnslab.sitelink import Deployment, hub_and_spoke
from tests.lab.wan import analyse

HUB_NAME = "hub.lab.test"


def logs(dep: Deployment) -> str:
    return "\n".join(f"---- {site} ----\n{gw.log_text()[-3000:]}" for site, gw in dep.gateways.items())


def hosts_file(lab: Lab, node: str, lines: str) -> Path:
    """/etc/netns/<namespace>/hosts: `ip netns exec` mounts it over /etc/hosts for what runs in that
    namespace, so the gateway's system resolver (glibc, NSS files) answers from it."""
    directory = Path("/etc/netns") / lab.ns(node)
    directory.mkdir(parents=True, exist_ok=False)
    (directory / "hosts").write_text(lines)
    return directory


def test_hub_with_branches_by_dns_name_and_behind_one_nat(tmp_path: Path) -> None:
    with Lab(hub_and_spoke_topology(3), mode="tunnel") as lab, ExitStack() as cleanup:
        hq_wan = lab.addr("hq-gw")
        cleanup.callback(shutil.rmtree, hosts_file(lab, "branch1-gw", f"{hq_wan} {HUB_NAME}\n"), True)
        lab.set_nat(["branch2", "branch3"])  # one carrier NAT: both appear as the router's hq-link address
        public = lab.nat_public_address("branch2", "hq")
        assert public == lab.nat_public_address("branch3", "hq")
        dep = Deployment(lab, tmp_path / "gw", **hub_and_spoke(lab, "hq"), peer_address_overrides={
            ("branch1", "hq"): HUB_NAME,  # the branch finds the hub by name
            ("hq", "branch2"): public,  # the hub knows branch2 by the NAT's address ...
            ("hq", "branch3"): "any",  # ... and branch3 not at all: by its IKE identity only
        }, esp_key_log=True)
        dep.start_all()
        hosts = {site: lab.addr(f"{site}-host") for site in ("hq", "branch1", "branch2", "branch3")}
        pcap = tmp_path / "wan-hq.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            for src, dst in [("branch1", "hq"), ("hq", "branch2"), ("branch3", "hq"),  # spokes and hub
                             ("branch1", "branch2"), ("branch2", "branch3"), ("branch3", "branch1")]:  # spoke to spoke
                result = ping(lab, f"{src}-host", hosts[dst], count=3, interval=0.05)
                assert result.received == 3, (src, dst, logs(dep))
        hub_log = dep.gateways["hq"].log_text()
        assert f"resolves to {hq_wan}" in dep.gateways["branch1"].log_text()
        # Two branches from one address, each on its own tunnel and NAT mapping.
        status = json.loads(dep.sitelink("hq", "status", "--json").stdout)
        peers = {t["name"]: t["peer"] for t in status["tunnels"]}
        assert peers["branch2"].startswith(f"{public}:") and peers["branch3"].startswith(f"{public}:"), peers
        assert peers["branch2"] != peers["branch3"], peers
        assert all(t["state"] == "up" for t in status["tunnels"]), status
        assert hub_log.count(f"IKE SA established with {public}") == 2, hub_log
        # Nothing in clear on the hub's WAN link: spoke-to-spoke traffic went through the hub sealed.
        wan = analyse(pcap, {}, {hq_wan, lab.addr("branch1-gw"), public})
        print(f"\nhub + 3 branches (branch1 by DNS name, branch2/3 behind {public}): 6 ping pairs x 3 through "
              f"the hub; hub WAN capture: {wan.esp} ESP, {wan.ike} IKE, {len(wan.cleartext)} in clear")
        assert wan.esp >= 2 * 6 * 3 and not wan.cleartext, wan.cleartext[:5]


def test_full_tunnel_sends_everything_through_hq_and_fails_closed(tmp_path: Path) -> None:
    with Lab(hub_and_spoke_topology(1), mode="tunnel") as lab:
        internet = lab.add_wan_node("inet", "203.0.113.0/24")
        hq_wan, branch_wan = lab.addr("hq-gw"), lab.addr("branch1-gw")
        # HQ's internet breakout for the branch: masquerade what leaves its WAN from the branch's subnet.
        lab.run("hq-gw", ["nft", "-f", "-"], input=(
            "table ip sitelink_breakout {\n  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "wan0" ip saddr {lab.site("branch1").lan4} masquerade\n  }}\n}}\n'))
        dep = Deployment(lab, tmp_path / "gw", **hub_and_spoke(lab, "hq", full_tunnel=("branch1",)))
        dep.start_all()
        branch_pcap, inet_pcap = tmp_path / "wan-branch1.pcap", tmp_path / "inet.pcap"
        with lab.capture("router", lab.site("branch1").router_if, branch_pcap), \
                lab.capture("inet", "wan0", inet_pcap, filter="icmp"):
            to_internet = ping(lab, "branch1-host", internet, count=5, interval=0.05)
            to_hq = ping(lab, "branch1-host", lab.addr("hq-host"), count=3, interval=0.05)
            from_gateway = ping(lab, "branch1-gw", internet, count=2, interval=0.05)  # its own traffic too
        assert (to_internet.received, to_hq.received, from_gateway.received) == (5, 3, 2), logs(dep)
        seen = _icmp_sources(inet_pcap)
        branch_wan_report = analyse(branch_pcap, {}, {hq_wan, branch_wan})
        print(f"\nfull tunnel: branch1-host reached the internet node from {sorted(seen)} (HQ is {hq_wan}); "
              f"branch WAN: {branch_wan_report.esp} ESP, {branch_wan_report.ike} IKE, "
              f"{len(branch_wan_report.cleartext)} in clear")
        assert seen == {hq_wan}, seen  # only through HQ's breakout, never from the branch directly
        assert branch_wan_report.esp >= 2 * 10 and not branch_wan_report.cleartext, branch_wan_report.cleartext[:5]

        # The branch gateway dies: its full tunnel's routes and rules stay, nothing leaves in clear.
        dep.stop("branch1", sig=signal.SIGKILL)
        dead_pcap = tmp_path / "wan-branch1-dead.pcap"
        with lab.capture("router", lab.site("branch1").router_if, dead_pcap):
            dead = ping(lab, "branch1-host", internet, count=5, interval=0.05, timeout=1)
        report = analyse(dead_pcap, {}, {hq_wan, branch_wan})
        assert dead.received == 0 and not report.cleartext, report.cleartext[:5]


def _icmp_sources(pcap: Path) -> set[str]:
    from scapy.layers.inet import ICMP, IP
    from scapy.utils import rdpcap
    return {frame[IP].src for frame in rdpcap(str(pcap)) if IP in frame and ICMP in frame and frame[ICMP].type == 8}
