#!/usr/bin/env python3
"""Record the IKE messages strongSwan and sitelink exchange in the lab, as a fuzzing corpus.

strongSwan initiates to sitelink (and then the reverse), both with PSK; the WAN capture's IKE messages
(UDP 500, and UDP 4500 after the non-ESP marker) are written one per line as hex, each prefixed with the
sender ("strongswan" or "sitelink"). tests/data/strongswan-ike.hex was made with this; the fuzzers
(tests/property/test_ike_connection_fuzz.py, bench/fuzz.py) mutate it. Needs root and strongSwan.

    python bench/capture_ike_corpus.py tests/data/strongswan-ike.hex
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "netns-lab")]

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

from netnslab import TOPOLOGIES, Lab, ping  # noqa: E402
from netnslab.sitelink import Deployment, identity  # noqa: E402
from netnslab.strongswan import StrongSwan  # noqa: E402

BR_WAN = "198.18.2.2"  # strongSwan's site in two-sites.yaml


def ike_messages(pcap: Path) -> list[tuple[str, bytes]]:
    out = []
    for frame in rdpcap(str(pcap)):
        if IP not in frame or UDP not in frame:
            continue
        udp, data = frame[UDP], bytes(frame[UDP].payload)
        if 4500 in (udp.sport, udp.dport):
            if data[:4] != bytes(4):
                continue  # ESP, or a NAT keepalive
            data = data[4:]
        elif 500 not in (udp.sport, udp.dport):
            continue
        if len(data) >= 28:
            out.append(("strongswan" if frame[IP].src == BR_WAN else "sitelink", data))
    return out


def run(workdir: Path, sitelink_starts: bool) -> list[tuple[str, bytes]]:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, workdir / "sitelink", keying="psk", ike_proposals=["aes256gcm16-prfsha256-x25519"],
                         initiators={("hq", "branch1")} if sitelink_starts else set())
        swan = StrongSwan(lab, "branch1", workdir / "swan", remote_site="hq", local_id=identity("branch1"),
                          remote_id=identity("hq"), ike_proposal="aes256gcm16-prfsha256-curve25519",
                          esp_proposal="aes256gcm16", ike_port=500,
                          psk=dep.gateways["hq"].keys["branch1"].read_text().strip())
        pcap = workdir / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            swan.start()
            dep.start("hq")
            if not sitelink_starts:
                swan.initiate()
            dep.wait_established("hq")
            ping(lab, "hq-host", lab.addr("branch1-host"), count=2, interval=0.05)
            dep.sitelink("hq", "rekey", "branch1")
            ping(lab, "hq-host", lab.addr("branch1-host"), count=2, interval=0.5)
            dep.stop("hq")
        return ike_messages(pcap)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = ["# IKEv2 messages between strongSwan 5.9 and sitelink in the netns lab (bench/capture_ike_corpus.py)"]
    with tempfile.TemporaryDirectory() as tmp:
        for starts in (False, True):
            for sender, data in run(Path(tmp) / str(starts), starts):
                lines.append(f"{sender} {data.hex()}")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(lines) - 1} IKE messages -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
