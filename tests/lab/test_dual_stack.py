"""A dual-stack hub: HQ listens on its IPv4 and its IPv6 WAN address at once. branch1 sits behind DS-Lite
(its IPv4 is cut at the router: only IPv6 reaches the WAN) and runs IKE and ESP to HQ over IPv6; branch2
runs them over IPv4; both at the same time, through the same hub, and each one's traffic is sealed on the
wire in its own family."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment
from tests.lab.wan import ICMPV6_LINK_TYPES


def outer(pcap: Path) -> dict[str, int]:
    """What a WAN capture holds: ESP-in-UDP (or IKE on 4500/500) per IP family, and anything else."""
    seen = {"udp4": 0, "udp6": 0, "other": 0}
    for frame in rdpcap(str(pcap)):
        if IPv6 in frame and UDP in frame and 4500 in (frame[UDP].sport, frame[UDP].dport, 500):
            seen["udp6"] += 1
        elif IP in frame and UDP in frame and 4500 in (frame[UDP].sport, frame[UDP].dport, 500):
            seen["udp4"] += 1
        elif IP in frame or (IPv6 in frame and not _link_local_icmpv6(frame[IPv6])):
            seen["other"] += 1
    return seen


def _link_local_icmpv6(ip6: IPv6) -> bool:
    """Neighbour discovery and MLD on the WAN link itself, the only IPv6 allowed outside the tunnel."""
    return (ip6.nh == 58 and getattr(ip6.payload, "type", None) in ICMPV6_LINK_TYPES) or ip6.nh == 0


def test_dual_stack_hub_with_an_ipv6_only_branch_and_an_ipv4_branch(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "three-sites.yaml", mode="tunnel") as lab:
        hq, b1 = lab.site("hq"), lab.site("branch1")
        # DS-Lite seen from the branch: no IPv4 between it and the internet.
        lab.run("router", ["nft", "-f", "-"], input=(
            "table ip dslite {\n  chain forward {\n    type filter hook forward priority -20; policy accept;\n"
            f'    iifname "{b1.router_if}" drop\n    oifname "{b1.router_if}" drop\n  }}\n}}\n'))
        assert not ping(lab, "branch1-gw", str(hq.gw_wan4), count=1, timeout=0.5).ok
        dep = Deployment(lab, tmp_path / "gw", pairs={("branch1", "hq"), ("branch2", "hq")},
                         initiators={("branch1", "hq"), ("branch2", "hq")},
                         listen={"hq": f"[{hq.gw_wan4}, '{hq.gw_wan6}']", "branch1": f"'{b1.gw_wan6}'"},
                         peer_address_overrides={("branch1", "hq"): f"'{hq.gw_wan6}'",
                                                 ("hq", "branch1"): f"'{b1.gw_wan6}'"})
        dep.start_all()
        hub_log = dep.gateways["hq"].log_text()
        assert f"IKE SA established with {b1.gw_wan6}" in hub_log, hub_log[-3000:]
        assert f"IKE SA established with {lab.addr('branch2-gw')}" in hub_log, hub_log[-3000:]
        pcaps = {site: tmp_path / f"{site}.pcap" for site in ("branch1", "branch2")}
        with lab.capture("router", lab.site("branch1").router_if, pcaps["branch1"]), \
                lab.capture("router", lab.site("branch2").router_if, pcaps["branch2"]):
            for src, dst in (("hq", "branch1"), ("branch1", "hq"), ("hq", "branch2"), ("branch2", "hq")):
                for family in (4, 6):  # the tunnels carry both inner families
                    result = ping(lab, f"{src}-host", lab.addr(f"{dst}-host", family), count=3, interval=0.05)
                    assert result.received == 3, (src, dst, family, hub_log[-3000:])
        seen = {site: outer(pcap) for site, pcap in pcaps.items()}
        print(f"\ndual-stack hub: branch1 (IPv6 only) WAN {seen['branch1']}, branch2 (IPv4) WAN {seen['branch2']}")
        assert seen["branch1"]["udp6"] >= 24 and seen["branch1"]["udp4"] == 0 and seen["branch1"]["other"] == 0
        assert seen["branch2"]["udp4"] >= 24 and seen["branch2"]["udp6"] == 0 and seen["branch2"]["other"] == 0
        status = dep.sitelink("hq", "status", "--brief").stdout
        assert f"listening on udp {hq.gw_wan4}:4500 and [{hq.gw_wan6}]:4500: 2 tunnels, 2 up" in status, status
