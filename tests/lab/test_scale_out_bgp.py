"""Scale-out: three HQ gateways (hubs), six branches, BIRD on every hub announcing the subnets of the
branches up there to a BIRD core router (eBGP), probes between the HQ server and every branch (100
datagrams/s each way). A hub dies (every process SIGKILLed, cables out): its branches find the next hub
in their peer.address lists (dead-peer detection), the new hub announces them, the core's routes follow,
and every branch's traffic flows again; the other branches see nothing. Nothing crosses the WAN in clear.

No absolute times: a moved branch's outage is bounded by what its own settings allow (dpd_delay plus the
retransmissions' span) plus MOVE_MARGIN; a branch on a hub that stayed is compared with the moved ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.utils import PcapReader

from netnslab import Lab
from netnslab.scaleout import ANNOUNCE_TABLE, ScaleOut, announced, measure_hub_failure, scale_out_topology

pytestmark = pytest.mark.lab

MOVE_MARGIN = 2.0  # seconds beyond detection for a new IKE SA, the announcement and BGP (measured: ~0.2)


def test_a_dead_hub_s_branches_move_and_the_routes_follow(tmp_path: Path) -> None:
    with Lab(scale_out_topology(3, 6)) as lab:
        so = ScaleOut(lab, tmp_path, dpd_delay=1, retransmit=(0.5, 2))
        so.start_all()
        so.wait_converged(timeout=30)
        first = {b.name: so.hub_holding(b) for b in so.branches}
        assert sorted(first.values()) == [0, 0, 1, 1, 2, 2], first  # each branch on the first hub it lists
        assert announced(lab, so.hubs[0]) == {str(so.branches[0].lan4), str(so.branches[1].lan4)}
        pcap = tmp_path / "wan.pcap"
        with lab.capture(lab.topology.router, "any", pcap, "net 10.0.0.0/8 or udp port 4500") as cap:
            result = measure_hub_failure(so, 0, seconds=10)
        print(json.dumps(result["routes_s"]), json.dumps(result["branches"]))
        detect = 1 + 0.5 * (1 + 2)  # dpd_delay + the retransmissions' span (0.5 s, then 1 s)
        moved = {n: r for n, r in result["branches"].items() if r["hub_before"] == 0}
        stayed = {n: r for n, r in result["branches"].items() if r["hub_before"] != 0}
        assert len(moved) == 2 and len(stayed) == 4
        for name, r in moved.items():
            assert r["hub_after"] == 1, (name, r)  # the next hub in its list, and the core's route followed
            assert r["outage_s"] <= detect + MOVE_MARGIN, (name, r)
            assert r["lost_s"] <= r["outage_s"] + 0.2, (name, r)  # the stream came back
        slowest_stay = max(r["outage_s"] for r in stayed.values())
        assert slowest_stay < 0.25 * min(r["outage_s"] for r in moved.values()), result["branches"]
        for name, r in stayed.items():
            assert r["hub_after"] == r["hub_before"] and r["lost_s"] <= r["outage_s"] + 0.2, (name, r)
        assert result["routes_s"] <= detect + MOVE_MARGIN, result["routes_s"]
        # hub 2 took them over and announces them; a hub stopped cleanly withdraws what it announced
        assert announced(lab, so.hubs[1]) == {str(b.lan4) for b in so.branches[:4]}
        lab.stop(so.procs["hub3"])
        assert announced(lab, so.hubs[2]) == set()
        so.wait_converged(timeout=20, dead={0, 2})  # hub3's branches were told (Delete) and moved on
        # a sitelink killed with -9 leaves its announcements; the next start removes what is not up
        lab.stop(so.procs["hub2"], sig=9)
        hub2 = so.hubs[1]
        assert announced(lab, hub2)  # stale now
        lab.run(hub2.gw, ["ip", "route", "add", "10.250.0.0/24", "dev", "sitelink0", "table", str(ANNOUNCE_TABLE),
                          "proto", "252"])  # one more left over, of a tunnel that will not come back
        so.start_sitelink(hub2)
        so.wait_started(hub2)
        assert "10.250.0.0/24" not in announced(lab, hub2)
        so.wait_converged(timeout=20, dead={0})  # every branch on a live hub again
    clear, esp = [], 0
    with PcapReader(str(pcap)) as packets:
        for frame in packets:
            ip = frame.getlayer(IP)
            if ip is None:
                continue
            if ip.src.startswith("10.") or ip.dst.startswith("10."):
                clear.append(frame.summary())
            else:
                esp += 1
    assert cap.packets and esp > 5000, (cap.packets, esp)
    assert clear == [], clear[:5]
