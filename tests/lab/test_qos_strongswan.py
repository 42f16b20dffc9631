"""Priority queues against strongSwan 5.9 (kernel-libipsec, replay window 32): reordering between classes
must cost no packet on either side.

sitelink's EF packets overtake its queued bulk, but it seals after its egress queue, so strongSwan
receives each SA's packets in sequence order and its small replay window never sees a gap: every packet
sitelink sent on the SA is counted in by strongSwan (or was dropped by strongSwan's full socket buffer,
which the kernel counts). Inbound, sitelink queues by the outer DSCP; strongSwan's libipsec leaves the
outer DSCP at 0, so its packets stay in arrival order here and sitelink's replay drops stay at 0."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from netnslab import TOPOLOGIES, Lab, iperf3, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan
from tests.lab.test_interop_strongswan import _need_strongswan  # noqa: F401  (fixture: fail in CI when missing)

QUEUE_LINE = re.compile(r"queues egress class=\S+ realtime-audio=(\d+)/\d+/\S+ .* default=(\d+)/\d+/([\d.]+)ms")


def test_reordering_between_classes_costs_no_packet_with_strongswan(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "sitelink", initiators={("hq", "branch1")})
        swan = StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq", local_id=identity("branch1"),
                          remote_id=identity("hq"), ike_proposal="aes256gcm16-prfsha256-curve25519",
                          esp_proposal="aes256gcm16", ike_port=500,
                          psk=dep.gateways["hq"].keys["branch1"].read_text().strip())
        swan.start()
        dep.start("hq")
        dep.wait_established("hq")
        here, there = lab.addr("hq-host"), lab.addr("branch1-host")
        errors_before = udp_in_errors(lab, "branch1-gw")
        results: dict = {}
        loads = [
            threading.Thread(target=lambda: results.update(up=iperf3(lab, "hq-host", "branch1-host", there,
                                                                      seconds=6, port=5201))),
            threading.Thread(target=lambda: results.update(down=iperf3(lab, "branch1-host", "hq-host", here,
                                                                        seconds=6, port=5202))),
            threading.Thread(target=lambda: results.update(ef_back=ping(lab, "branch1-host", here, count=200,
                                                                         interval=0.02, tos=184))),
        ]
        for thread in loads:
            thread.start()
        ef = ping(lab, "hq-host", there, count=200, interval=0.02, tos=184)
        for thread in loads:
            thread.join()
        counters = dep.counters("hq")["branch1"]
        swan_side = swan.sa_summary()
        # strongSwan's userspace ESP is slower than the TCP load: some datagrams overflow its socket
        # buffer before its replay check ever sees them (the kernel counts them, UDP InErrors).
        overflowed = udp_in_errors(lab, "branch1-gw") - errors_before
        dep.stop("hq")
        log = dep.gateways["hq"].log_text()

    assert results["up"].received_mbps > 0 and results["down"].received_mbps > 0  # both loads really ran
    # strongSwan's socket buffer overflows under this load and it has no priority of its own: an EF packet
    # may be lost there, outside sitelink (counted in `overflowed`), so no zero-loss claim here; what is
    # lost beyond 2 % must be explained by those overflows (a CI run lost 7 of 200 EF pings here).
    for probe in (ef, results["ef_back"]):
        lost = round(probe.loss_pct * 200 / 100)
        assert lost <= 4 + overflowed, (probe, overflowed)
    assert counters["drops"].get("replay", 0) == 0, counters
    # Every packet sitelink sent on the SA that reached strongSwan's replay check passed it.
    assert swan_side["packets_in"] + overflowed == counters["tx_packets"], (swan_side, overflowed, counters)
    queued = QUEUE_LINE.findall(log)
    assert queued, log[-2000:]
    audio, default, default_wait = queued[-1]
    # The egress queue held bulk packets back while EF overtook them: reordering really happened.
    assert int(audio) >= 200 and float(default_wait) > 0.0, queued[-1]
    print(f"\nsitelink <-> strongSwan with priority queues: TCP {results['up'].received_mbps:.0f} / "
          f"{results['down'].received_mbps:.0f} Mbit/s, EF ping p99 {ef.p99} / {results['ef_back'].p99} ms, "
          f"bulk waited {default_wait} ms on average in sitelink's egress queue, 0 replay drops either side "
          f"({swan_side['packets_in']} packets in at strongSwan + {overflowed} its socket buffer dropped = "
          f"{counters['tx_packets']} sent by sitelink)")


def udp_in_errors(lab: Lab, node: str) -> int:
    """The namespace's UDP InErrors (RFC 1213 udpInErrors: datagrams not delivered, e.g. buffer full)."""
    lines = [line.split() for line in lab.run(node, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["InErrors"])
