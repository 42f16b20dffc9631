"""The adversarial lab (issue #13): an attacker namespace on the WAN (203.0.113.0/24, routed by the WAN
router like any internet host) attacks running gateways while traffic flows through their tunnel.
The attacker sends raw datagrams with any source address (netnslab/flood.py): the peer gateway's own
address or random ones. Every bound is relative to a baseline of the same run, never absolute.

Fail closed on stop, restart and worker death is tests/lab/test_fail_closed.py; replayed and tampered
ESP is tests/lab/test_tunnel.py; an authenticated peer sending arbitrary edited payloads is
tests/property/test_ike_connection_fuzz.py."""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
from pathlib import Path

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment

REPO = Path(__file__).resolve().parents[2]
FLOOD = REPO / "netns-lab" / "netnslab" / "flood.py"
ROGUE = REPO / "netns-lab" / "netnslab" / "rogue_peer.py"
CORPUS = REPO / "tests" / "data" / "strongswan-ike.hex"
HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"


def strongswan_ike_sa_init() -> str:
    """strongSwan's own IKE_SA_INIT request from the lab corpus (the flood randomises its SPI)."""
    for line in CORPUS.read_text().splitlines():
        if line.startswith("strongswan ") and bytes.fromhex(line.split()[1])[18] == 34:
            return line.split()[1]
    raise AssertionError("no IKE_SA_INIT in the corpus")


def status(dep: Deployment, site: str) -> dict:
    cp = dep.sitelink(site, "status", "--json")
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def rss_kib(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0])


def flood(lab: Lab, *args: str, dst: str = BR_WAN, peer: str = HQ_WAN):
    """netnslab/flood.py in the attacker's namespace, at `dst`, spoofing `peer` where it says so."""
    return lab.popen("attacker", [sys.executable, str(FLOOD), "--dst", dst, "--peer", peer, *args],
                     stdout=-1, stderr=-1, text=True)


def finished(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def back_up_after_terminate(lab: Lab, dep: Deployment) -> float:
    """hq terminates the tunnel and initiates again: seconds until a ping crosses."""
    t0 = time.monotonic()
    assert dep.sitelink("hq", "terminate", "branch1").returncode == 0
    dep.sitelink("hq", "initiate", "branch1")
    while time.monotonic() - t0 < 60:
        if ping(lab, "hq-host", lab.addr("branch1-host"), count=1, timeout=0.2).received:
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError("the tunnel did not come back within 60 s")


def test_flood_of_spoofed_ike_sa_init_and_junk_esp(tmp_path: Path) -> None:
    """≥ 100,000 spoofed IKE_SA_INIT (from hq's own address and from random ones) and junk ESP (random
    SPIs and the tunnel's real ones) at branch1, the responder, while hq pings through the tunnel:
    ≥ 99 % of the pings arrive, branch1's RSS grows ≤ 20 MB, every refusal is counted, and a tunnel
    terminated during a flood is back within its unflooded time + 5 s, through cookies."""
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        lab.add_wan_node("attacker")
        dep = Deployment(lab, tmp_path / "gw")
        dep.start_all()
        dst = lab.addr("branch1-host")
        assert ping(lab, "hq-host", dst, count=20, interval=0.01).received == 20
        baseline = statistics.median(back_up_after_terminate(lab, dep) for _ in range(3))
        dep.wait_established("hq", count=4)
        branch = dep.gateways["branch1"].proc.pid
        rss_before = rss_kib(branch)
        spis = [int(c["spi_in"], 16) for c in status(dep, "branch1")["tunnels"][0]["child_sas"]]
        template = strongswan_ike_sa_init()

        # 1. The flood with traffic flowing: 120,000 datagrams at 8,000 a second, 15 s of pings.
        attack = flood(lab, "--ike", template, "--ike-peer", "50000", "--ike-random", "50000", "--esp", "20000",
                       *[f"--spi={spi}" for spi in spis], "--rate", "8000")
        pings = ping(lab, "hq-host", dst, count=700, interval=0.02, timeout=1.0)
        sent = finished(attack)
        assert sent["sent"]["ike-peer"] + sent["sent"]["ike-random"] >= 100_000, sent
        assert pings.received >= 0.99 * 700, (pings, sent)
        rss_growth_mb = (rss_kib(branch) - rss_before) / 1024
        assert rss_growth_mb <= 20, rss_growth_mb
        snap = status(dep, "branch1")
        unowned_ike, unowned_esp = snap["unowned_ike_drops"], snap["unowned_drops"]
        assert unowned_ike.get("cookie_required", 0) > 10_000, unowned_ike
        assert unowned_esp.get("unknown_spi", 0) > 1_000, unowned_esp
        assert snap["tunnels"][0]["drops"].get("auth_failed", 0) > 1_000, snap["tunnels"][0]["drops"]
        assert snap["tunnels"][0]["state"] == "up"

        # 2. The tunnel terminated during a flood comes back through a COOKIE exchange.
        cookies_before = status(dep, "branch1")["unowned_ike_drops"].get("cookie_required", 0)
        attack = flood(lab, "--ike", template, "--ike-peer", "40000", "--ike-random", "40000", "--rate", "8000")
        time.sleep(1.0)  # the half-open table is full: cookies are on
        during = back_up_after_terminate(lab, dep)
        finished(attack)
        print(f"flood: {sent}, pings {pings.received}/700, RSS +{rss_growth_mb:.1f} MB, "
              f"back after terminate {baseline:.2f} s unflooded, {during:.2f} s flooded")
        assert during <= baseline + 5.0, (during, baseline)
        snap = status(dep, "branch1")
        assert snap["unowned_ike_drops"]["cookie_required"] > cookies_before + 10_000, snap["unowned_ike_drops"]
        assert snap["tunnels"][0]["state"] == "up"


def wedge_packets() -> list[str]:
    """The datagrams of findings 2, 3 and 5, as an attacker off the path can make them (random SPIs)."""
    header = struct.pack(">8s8sBBBBII", bytes(range(1, 9)), bytes(8), 33, 0x20, 34, 0x08, 0, 28 + 8)
    broken_chain = header + struct.pack(">BBH", 99, 0, 200) + bytes(4)  # a payload longer than the message
    info_response = struct.pack(">8s8sBBBBII", bytes(range(9, 17)), bytes(8), 0, 0x20, 37, 0x20, 0, 28)
    plain_request = struct.pack(">8s8sBBBBII", bytes(range(9, 17)), bytes(range(17, 25)), 0, 0x20, 37, 0x08, 0, 28)
    init_response = struct.pack(">8s8sBBBBII", bytes(range(1, 9)), bytes(range(3, 11)), 0, 0x20, 34, 0x20, 0, 28)
    return [p.hex() for p in (broken_chain, info_response, plain_request, init_response)]


def test_wedge_packets_before_and_during_set_up_do_not_stop_the_tunnel(tmp_path: Path) -> None:
    """Broken payload chains, header-only INFORMATIONAL responses and requests, and IKE_SA_INIT
    responses, from the peer's address, at both gateways before and while they set up: the tunnel
    comes up and carries traffic, `sitelink initiate` after a terminate still works, and every
    datagram is a counted drop, not a session."""
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        lab.add_wan_node("attacker")
        dep = Deployment(lab, tmp_path / "gw")
        payloads = [f"--payload={p}" for p in wedge_packets()]

        def wedge(dst: str, peer: str, repeat: int):
            return flood(lab, *payloads, "--raw-repeat", str(repeat), "--port", "500", "--rate", "500",
                         dst=dst, peer=peer)

        dep.start("branch1")
        finished(wedge(BR_WAN, HQ_WAN, 50))  # 200 before hq even starts
        attacks = [wedge(BR_WAN, HQ_WAN, 500), wedge(HQ_WAN, BR_WAN, 500)]  # 4 s of them during set-up
        dep.start("hq")
        dep.wait_established("hq")
        dep.wait_established("branch1")
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=5, interval=0.05).received == 5
        for attack in attacks:
            finished(attack)
        assert back_up_after_terminate(lab, dep) < 60
        for site in ("hq", "branch1"):
            snap = status(dep, site)
            refused = sum(snap["unowned_ike_drops"].values()) + sum(sum(t["ike_drops"].values()) for t in snap["tunnels"])
            assert refused >= 1000, (site, snap["unowned_ike_drops"], [t["ike_drops"] for t in snap["tunnels"]])
            assert snap["tunnels"][0]["state"] == "up"


def test_both_gateways_started_at_the_same_instant_fifty_times(tmp_path: Path) -> None:
    """Both sides configured to initiate, started together (power back at both sites): every one of
    50 starts carries traffic within 1 s of a one-initiator start measured in the same lab."""
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dst = lab.addr("branch1-host")

        def time_to_traffic(dep: Deployment, sites: list[str]) -> float:
            t0 = time.monotonic()
            for site in sites:  # launched back to back, without waiting for either to be ready
                dep.launch(site)
            while time.monotonic() - t0 < 30:
                if ping(lab, "hq-host", dst, count=1, timeout=0.1).received:
                    elapsed = time.monotonic() - t0
                    for site in sites:
                        assert dep.stop(site) == 0
                    return elapsed
                time.sleep(0.01)
            raise AssertionError(f"no traffic 30 s after a start of {sites}:\n"
                                 + "\n".join(dep.gateways[s].log_text()[-1500:] for s in sites))

        single = Deployment(lab, tmp_path / "single", initiators={("hq", "branch1")})
        baseline = statistics.median(time_to_traffic(single, ["branch1", "hq"]) for _ in range(3))
        both = Deployment(lab, tmp_path / "both", initiators={("hq", "branch1"), ("branch1", "hq")})
        times = [time_to_traffic(both, ["hq", "branch1"]) for _ in range(50)]
        print(f"simultaneous start to traffic: median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s; one-initiator baseline {baseline:.2f} s")
        assert max(times) <= baseline + 1.0, (sorted(times)[-5:], baseline)


def test_a_malicious_authenticated_peer_cannot_touch_another_tunnel(tmp_path: Path) -> None:
    """branch2's gateway is replaced by a script on sitelink's own IKE core, holding branch2's real PSK:
    after an honest IKE SA with hq it proposes reserved ESP SPIs, rekeys its IKE SA onto branch1's IKE
    SPI and sends a Delete naming branch1's Child SAs. hq refuses what is invalid and counts it, and
    hq's tunnel to branch1 keeps the very same SAs and carries traffic throughout."""
    with Lab(TOPOLOGIES / "three-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", initiators={("hq", "branch1"), ("branch2", "hq")})
        dep.start("hq")
        dep.start("branch1")
        dep.wait_established("hq", count=1)  # branch1's; branch2 is the rogue's, below
        dst = lab.addr("branch1-host")
        assert ping(lab, "hq-host", dst, count=5, interval=0.05).received == 5

        def branch1_sas() -> tuple:
            tunnel = next(t for t in status(dep, "hq")["tunnels"] if t["name"] == "branch1")
            return tunnel["ike"]["spi_i"], tunnel["ike"]["spi_r"], sorted(c["spi_out"] for c in tunnel["child_sas"])

        before = branch1_sas()
        spi_i, _, spis_out = before
        background = lab.popen("hq-host", ["ping", "-n", "-c", "400", "-i", "0.02", "-W", "1", dst],
                               stdout=-1, stderr=-1, text=True)
        rogue = lab.run("branch2-gw", [sys.executable, str(ROGUE), str(dep.gateways["branch2"].config),
                                       "--tunnel", "hq", "--child-spi", "0", "--child-spi", "255",
                                       "--ike-spi", spi_i, *[f"--delete-spi={spi}" for spi in spis_out]],
                        timeout=60, check=False)
        report = json.loads(rogue.stdout) if rogue.returncode == 0 else {}
        assert report.get("established"), rogue.stdout + rogue.stderr
        out, _ = background.communicate(timeout=60)
        print(f"rogue peer: {report}")
        assert report["child rekey with SPI 0"] == report["child rekey with SPI 255"] == "refused", report
        assert dep.gateways["hq"].proc.poll() is None
        assert branch1_sas() == before  # not replaced, not deleted, not rekeyed
        assert " 400 received" in out, out[-300:]
        assert ping(lab, "hq-host", dst, count=5, interval=0.05).received == 5
        refused = next(t for t in status(dep, "hq")["tunnels"] if t["name"] == "branch2")["ike_drops"]
        assert refused.get("bad_proposal_spi", 0) >= 2, refused
        assert "internal" not in json.dumps(status(dep, "hq")), status(dep, "hq")
