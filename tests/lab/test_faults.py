"""Faults with real gateways: a gateway killed (SIGKILL) and restarted, a 30 s WAN outage, 20 % WAN loss
while establishing and rekeying, and a NAT between the sites that rebinds. Each test prints one figure
(recovery time, establishment time, rekey counts) and asserts the limit that must hold; no inner packet
may ever cross the WAN in clear while a side is down."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment
from tests.lab.wan import analyse, sas_from_esp_log

HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"
GATEWAYS = {HQ_WAN, BR_WAN}
RESTART_LIMIT = 5.0  # s from the restarted gateway being up to traffic flowing again
WAN_CUT_SECONDS = 30  # the outage the issue asks for
WAN_RESTORE_LIMIT = 10.0
NAT_REBIND_LIMIT = 5.0


def first_ping(lab: Lab, src: str, dst: str, limit: float, t0: float | None = None) -> float | None:
    """Seconds from t0 (default: now) until a single ping gets through; None if not within `limit`."""
    t0 = time.monotonic() if t0 is None else t0
    while time.monotonic() - t0 < limit:
        if ping(lab, src, dst, count=1, timeout=0.2).ok:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def logs(dep: Deployment) -> str:
    return "\n".join(f"---- {site} ----\n{gw.log_text()[-4000:]}" for site, gw in dep.gateways.items())


# ------------------------------------------------------------------------------------------------------
# a. a gateway killed and restarted


@pytest.mark.parametrize("killed", ["branch1", "hq"], ids=["responder", "initiator"])
def test_killed_gateway_recovers_fast_and_never_leaks(killed: str, tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", esp_key_log=True,
                         ike_options={"rekey_time": 30, "ike_rekey_time": 60, "dpd_delay": 5})
        dep.start_all()
        there = lab.addr("branch1-host")
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3
        pcaps = {site: tmp_path / f"wan-{site}.pcap" for site in ("hq", "branch1")}
        with ExitStack() as stack:
            caps = [stack.enter_context(lab.capture("router", lab.site(site).router_if, path))
                    for site, path in pcaps.items()]
            dep.stop(killed, sig=signal.SIGKILL)
            # Traffic keeps coming while the gateway is gone: the survivor seals with its stale SAs.
            down = ping(lab, "hq-host", there, count=10, interval=0.1, timeout=0.2)
            dep.start(killed)
            t0 = time.monotonic()
            recovered = first_ping(lab, "hq-host", there, limit=20, t0=t0)
            after = ping(lab, "hq-host", there, count=5, interval=0.05) if recovered is not None else None
        reports = [analyse(path, {**sas_from_esp_log(dep.esp_keys_path("hq")),
                                  **sas_from_esp_log(dep.esp_keys_path("branch1"))}, GATEWAYS)
                   for path in pcaps.values()]
        recovered_txt = "never (20 s)" if recovered is None else f"{recovered:.2f} s"
        print(f"\n{killed} ({'responder' if killed == 'branch1' else 'initiator'}) SIGKILLed and restarted: "
              f"traffic again after {recovered_txt}; WAN: {sum(r.esp for r in reports)} ESP "
              f"({sum(len(r.decrypted) for r in reports)} decrypted, "
              f"{sum(len(r.unknown_spi) for r in reports)} SPIs without exported keys), "
              f"{sum(len(r.cleartext) for r in reports)} in clear")
        assert all(c.kernel_drops == 0 for c in caps)
        assert down.received == 0  # nothing answers while the gateway is down (and nothing in clear)
        for report in reports:
            assert report.cleartext == [], report.cleartext
            assert all(p.src != p.dst for p in report.decrypted)
        assert recovered is not None and recovered <= RESTART_LIMIT, logs(dep)
        assert after is not None and after.received == 5, logs(dep)


# ------------------------------------------------------------------------------------------------------
# b. a 30 s WAN outage


def test_wan_outage_recovers_on_its_own(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", ike_options={"dpd_delay": 5})
        dep.start_all()
        there = lab.addr("branch1-host")
        assert ping(lab, "hq-host", there, count=3, interval=0.05).received == 3
        lab.block_wan(True)
        cut = ping(lab, "hq-host", there, count=5, interval=0.2, timeout=0.2)
        time.sleep(WAN_CUT_SECONDS - 1)
        lab.block_wan(False)
        recovered = first_ping(lab, "hq-host", there, limit=30)
        back = ping(lab, "branch1-host", lab.addr("hq-host"), count=3, interval=0.05)
        children = {site: gw.log_text().count("Child SA established") for site, gw in dep.gateways.items()}
        failed = {site: gw.log_text().count("IKE SA failed") for site, gw in dep.gateways.items()}
        print(f"\nWAN cut for {WAN_CUT_SECONDS} s (dpd_delay 5): first ping through "
              f"{'never (30 s)' if recovered is None else f'{recovered:.2f} s'} after the restore; "
              f"Child SAs established per site {children}, IKE SAs failed {failed}")
        assert cut.received == 0
        assert recovered is not None and recovered <= WAN_RESTORE_LIMIT, logs(dep)
        assert back.received == 3, logs(dep)
        for site in dep.gateways:
            assert dep.gateways[site].proc.poll() is None, logs(dep)


# ------------------------------------------------------------------------------------------------------
# c. 20 % loss on the WAN from the start


def test_establish_and_rekey_under_loss(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        lab.set_wan_loss(20)
        # The IKE SA's hard lifetime is far past its soft one, as in production (there 4 h past): at 20 %
        # loss one exchange of the peer's can stay unanswered for up to a minute of retransmissions, and
        # while it is out the peer refuses our IKE rekey (RFC 7296 §2.25.2). 30 s of room starved the IKE
        # rekey in about 1 run in 20 (a hand-clock simulation of this setup: 16 of 300 seeds).
        dep = Deployment(lab, tmp_path / "gw", ike_options={"rekey_time": 3, "lifetime": 15, "ike_rekey_time": 8,
                                                             "ike_lifetime": 120})
        t0 = time.monotonic()
        dep.start_all(timeout=60)
        established = time.monotonic() - t0
        # ~20 s of pings with the loss on, across Child and IKE rekeys
        r = ping(lab, "hq-host", lab.addr("branch1-host"), count=100, interval=0.2, timeout=0.5)
        # An IKE rekey that collides with the frequent Child rekeys is refused with TEMPORARY_FAILURE and
        # retried 10-20 s later (RFC 7296 §2.25): give it that long, still under loss.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and min(gw.log_text().count("IKE SA rekeyed")
                                                   for gw in dep.gateways.values()) < 1:
            time.sleep(0.5)
        lab.set_wan_loss(0)  # so the counters can be read reliably
        no_sa = {site: dep.counters(site)[peer]["drops"].get("no_sa", 0)
                 for site, peer in (("hq", "branch1"), ("branch1", "hq"))}
        texts = {site: gw.log_text() for site, gw in dep.gateways.items()}
        child_rekeys = min(t.count("Child SA established") for t in texts.values()) - 1
        ike_rekeys = min(t.count("IKE SA rekeyed") for t in texts.values())
        lost_sas = {site: t.count("IKE SA deleted") + t.count("IKE SA failed") for site, t in texts.items()}
        print(f"\n20 % WAN loss: tunnel established in {established:.2f} s; in 20 s {child_rekeys} Child rekeys, "
              f"{ike_rekeys} IKE rekeys; ping {r.received}/{r.sent} answered ({r.loss_pct:.0f} % lost, "
              f"~36 % expected); packets dropped for want of an SA {no_sa}")
        print(f"IKE SAs lost {lost_sas}")
        assert r.received > 0, logs(dep)
        assert child_rekeys >= 2 and ike_rekeys >= 1, logs(dep)
        # no_sa is printed, not asserted: when every retransmission of a rekey is lost until the old SA's
        # hard lifetime (12 s after the rekey here), that SA goes and traffic fails closed until a fresh
        # Child SA is made - correct behaviour, and possible at 20 % loss.
        for site in dep.gateways:
            assert dep.gateways[site].proc.poll() is None, logs(dep)


# ------------------------------------------------------------------------------------------------------
# d. hq behind a NAT that rebinds


def esp_destinations(pcap: Path, src: str) -> list[int]:
    """UDP destination ports of the ESP packets (not IKE, not keepalives) `src` sent, in capture order."""
    ports = []
    for frame in rdpcap(str(pcap)):
        if IP in frame and UDP in frame and frame[IP].src == src and frame[UDP].sport == 4500:
            payload = bytes(frame[UDP].payload)
            if len(payload) > 8 and payload[:4] != bytes(4):
                ports.append(frame[UDP].dport)
    return ports


def test_nat_and_rebinding(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        lab.set_nat("hq", 40000)
        public = lab.nat_public_address("hq")
        dep = Deployment(lab, tmp_path / "gw", peer_address_overrides={("branch1", "hq"): public},
                         initiators={("hq", "branch1")}, ike_options={"dpd_delay": 5})
        dep.start_all()
        here, there = lab.addr("hq-host"), lab.addr("branch1-host")
        out = ping(lab, "hq-host", there, count=3, interval=0.05)
        back = ping(lab, "branch1-host", here, count=3, interval=0.05)
        assert (out.received, back.received) == (3, 3), logs(dep)
        assert f"IKE SA established with {public}" in dep.gateways["branch1"].log_text()

        pcap = tmp_path / "wan-branch1.pcap"
        with lab.capture("router", lab.site("branch1").router_if, pcap):
            lab.set_nat("hq", 41000)
            lab.flush_conntrack()
            t0 = time.monotonic()
            recovered = first_ping(lab, "hq-host", there, limit=20, t0=t0)
            back_after = ping(lab, "branch1-host", here, count=3, interval=0.05)
        ports = esp_destinations(pcap, BR_WAN)
        print(f"\nhq behind NAT ({public}, ports 40000-40099): traffic both ways; NAT rebinding to "
              f"41000-41099: hq-host traffic again after "
              f"{'never (20 s)' if recovered is None else f'{recovered:.2f} s'}; branch1 sent ESP to ports "
              f"{sorted(set(ports))}")
        assert recovered is not None and recovered <= NAT_REBIND_LIMIT, logs(dep)
        assert back_after.received == 3, logs(dep)
        assert ports and 41000 <= ports[-1] <= 41099, (ports, logs(dep))
