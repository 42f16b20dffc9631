"""The benchmark's latency stages (netns-lab/netnslab/stages.py) from real tcpdump lines: one echo
followed through both gateways of the two-site lab (captured there, sitelink, 2026-12-04)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "netns-lab"))

from netnslab.stages import GATEWAY_STAGES, STAGES, breakdown  # noqa: E402

CLIENT = """\
1796420169.664450354 lan0  In  IP 10.1.0.10 > 10.2.0.10: ICMP echo request, id 4789, seq 3, length 64
1796420169.664463243 sitelink0 Out IP 10.1.0.10 > 10.2.0.10: ICMP echo request, id 4789, seq 3, length 64
1796420169.664719703 wan0  Out IP 198.18.1.2.4500 > 198.18.2.2.4500: UDP-encap: ESP(spi=0xa71bcc77,seq=0x17), length 120
1796420169.665003895 wan0  In  IP 198.18.2.2.4500 > 198.18.1.2.4500: UDP-encap: ESP(spi=0xa3eb6bdd,seq=0x17), length 120
1796420169.665138364 sitelink0 In  IP 10.2.0.10 > 10.1.0.10: ICMP echo reply, id 4789, seq 3, length 64
1796420169.665142270 lan0  Out IP 10.2.0.10 > 10.1.0.10: ICMP echo reply, id 4789, seq 3, length 64
"""
SERVER = """\
tcpdump: data link type LINUX_SLL2
listening on any, link-type LINUX_SLL2 (Linux cooked v2), snapshot length 262144 bytes
1796420169.664727495 wan0  In  IP 198.18.1.2.4500 > 198.18.2.2.4500: UDP-encap: ESP(spi=0xa71bcc77,seq=0x17), length 120
1796420169.664933991 sitelink0 In  IP 10.1.0.10 > 10.2.0.10: ICMP echo request, id 4789, seq 3, length 64
1796420169.664938978 lan0  Out IP 10.1.0.10 > 10.2.0.10: ICMP echo request, id 4789, seq 3, length 64
1796420169.664948923 lan0  In  IP 10.2.0.10 > 10.1.0.10: ICMP echo reply, id 4789, seq 3, length 64
1796420169.664951637 sitelink0 Out IP 10.2.0.10 > 10.1.0.10: ICMP echo reply, id 4789, seq 3, length 64
1796420169.664999638 wan0  Out IP 198.18.2.2.4500 > 198.18.1.2.4500: UDP-encap: ESP(spi=0xa3eb6bdd,seq=0x17), length 120
"""


def test_one_echo_is_cut_into_its_stages() -> None:
    got = breakdown(CLIENT, SERVER, [3])
    assert got["rounds"] == 1
    assert got["client_egress"] == pytest.approx(256.46, abs=0.01)  # sitelink0 out -> wan0 out at the client
    assert got["server_ingress"] == pytest.approx(206.50, abs=0.01)  # wan0 in -> sitelink0 in at the server
    assert got["server_site"] == pytest.approx(17.65, abs=0.01)
    assert got["client_ingress"] == pytest.approx(134.47, abs=0.01)
    assert got["total"] == pytest.approx(691.92, abs=0.01)
    assert sum(got[key] for key, _ in STAGES) == pytest.approx(got["total"], abs=0.01)
    assert set(GATEWAY_STAGES) <= set(got)


def test_an_echo_without_its_datagram_is_left_out_not_guessed() -> None:
    client = "\n".join(line for line in CLIENT.splitlines() if "wan0  Out" not in line)
    assert breakdown(client, SERVER, [3]) == {"rounds": 0}
    assert breakdown(CLIENT, SERVER, [4]) == {"rounds": 0}  # an echo nobody captured


def test_a_datagram_far_from_the_packet_is_not_matched() -> None:
    late = CLIENT.replace("1796420169.664719703 wan0  Out", "1796420169.674719703 wan0  Out")  # 10 ms later
    assert breakdown(late, SERVER, [3]) == {"rounds": 0}
