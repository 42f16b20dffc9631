"""The pure forwarder: tunnel selection, fail closed, inbound selector checks, counted drops."""

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6

from tunnel.dataplane.events import (
    IkeMessage,
    NeedSa,
    NeedSaReason,
    PeerAlive,
    PeerMoved,
    SaInUse,
    UnknownSpi,
    VolumeLimit,
)
from tunnel.dataplane.forwarder import MAX_UNKNOWN_SPI_HOSTS, Forwarder
from tunnel.dataplane.tunnels import VolumeLimits
from tunnel.esp.drops import DropReason
from tunnel.esp.encap import NAT_KEEPALIVE, frame_ike
from tunnel.esp.sa import InboundSa, OutboundSa

net = ipaddress.ip_network
HQ_KEY_OUT, HQ_KEY_IN = bytes(range(36)), bytes(range(100, 136))
PEER = ("198.18.2.2", 4500)
HQ_PEER = ("198.18.1.2", 4500)


def make_pair() -> tuple[Forwarder, Forwarder]:
    """Two forwarders keyed as mirror images, like hq.yaml and branch-1.yaml."""
    hq, br = Forwarder(), Forwarder()
    hq.add_tunnel("branch1", PEER, [net("10.1.0.0/24"), net("fd00:1::/64")], [net("10.2.0.0/24"), net("fd00:2::/64")])
    br.add_tunnel("hq", HQ_PEER, [net("10.2.0.0/24"), net("fd00:2::/64")], [net("10.1.0.0/24"), net("fd00:1::/64")])
    hq.install_outbound("branch1", OutboundSa(0x1001, HQ_KEY_OUT))
    br.install_inbound("hq", InboundSa(0x1001, HQ_KEY_OUT))
    br.install_outbound("hq", OutboundSa(0x2001, HQ_KEY_IN))
    hq.install_inbound("branch1", InboundSa(0x2001, HQ_KEY_IN))
    return hq, br


def ping(src: str, dst: str) -> bytes:
    if ":" in src:
        return bytes(IPv6(src=src, dst=dst) / ICMP())
    return bytes(IP(src=src, dst=dst) / ICMP())


@pytest.mark.parametrize("src,dst", [("10.1.0.10", "10.2.0.10"), ("fd00:1::10", "fd00:2::10")])
def test_packet_crosses_in_both_directions(src: str, dst: str) -> None:
    hq, br = make_pair()
    packet = ping(src, dst)
    peer, esp = hq.outbound(packet)
    assert peer == PEER
    assert br.inbound(esp, HQ_PEER) == packet
    reply = ping(dst, src)
    peer, esp = br.outbound(reply)
    assert peer == HQ_PEER and hq.inbound(esp, PEER) == reply
    assert hq.tunnels["branch1"].counters.as_dict() == {
        "tx_packets": 1, "tx_bytes": len(packet), "rx_packets": 1, "rx_bytes": len(reply), "keepalives": 0,
        "fragmented": 0, "mss_clamped": 0, "icmp_too_big": 0, "drops": {}
    }


def test_fail_closed_without_sa_emits_one_need_sa() -> None:
    hq = Forwarder()
    hq.add_tunnel("branch1", PEER, [net("10.1.0.0/24")], [net("10.2.0.0/24")])
    for _ in range(3):
        assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is None
    counters = hq.tunnels["branch1"].counters
    assert counters.drops[DropReason.NO_SA] == 3 and counters.tx_packets == 0
    assert hq.take_events() == [NeedSa("branch1", NeedSaReason.NO_SA)]
    assert hq.take_events() == []


def test_exhausted_sa_drops_and_asks_for_a_new_one() -> None:
    hq, _ = make_pair()
    hq.install_outbound("branch1", OutboundSa(0x1001, HQ_KEY_OUT, seq_limit=1))
    assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is not None
    assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is None
    assert hq.tunnels["branch1"].counters.drops[DropReason.SA_EXHAUSTED] == 1
    assert hq.take_events() == [NeedSa("branch1", NeedSaReason.EXHAUSTED)]


def test_unrouted_destination_is_counted_not_sent() -> None:
    hq, _ = make_pair()
    assert hq.outbound(ping("10.1.0.10", "10.9.0.1")) is None
    assert hq.counters.drops[DropReason.NO_TUNNEL] == 1


@pytest.mark.parametrize("dst", ["ff02::16", "fe80::1", "224.0.0.22", "255.255.255.255"])
def test_kernel_link_scope_packets_are_counted_apart(dst: str) -> None:
    hq, _ = make_pair()
    src = "::" if ":" in dst else "0.0.0.0"
    assert hq.outbound(ping(src, dst)) is None
    assert hq.counters.drops_by_reason() == {"link_scope": 1}


def test_source_outside_local_selector_is_dropped() -> None:
    hq, _ = make_pair()
    assert hq.outbound(ping("192.168.7.7", "10.2.0.10")) is None
    assert hq.tunnels["branch1"].counters.drops[DropReason.SELECTOR_MISMATCH] == 1


def test_longest_prefix_selects_the_tunnel() -> None:
    hq = Forwarder()
    hq.add_tunnel("wide", PEER, [net("10.1.0.0/24")], [net("10.0.0.0/8")])
    hq.add_tunnel("narrow", ("198.18.3.2", 4500), [net("10.1.0.0/24")], [net("10.3.0.0/16")])
    for name in ("wide", "narrow"):
        hq.install_outbound(name, OutboundSa(0x3001, HQ_KEY_OUT))
    assert hq.outbound(ping("10.1.0.10", "10.3.1.1"))[0] == ("198.18.3.2", 4500)
    assert hq.outbound(ping("10.1.0.10", "10.4.1.1"))[0] == PEER


def test_same_remote_subnet_twice_is_refused() -> None:
    hq = Forwarder()
    hq.add_tunnel("a", PEER, [net("10.1.0.0/24")], [net("10.2.0.0/24")])
    with pytest.raises(ValueError):
        hq.add_tunnel("b", PEER, [net("10.1.0.0/24")], [net("10.2.0.0/24")])


def test_spoofed_inner_source_is_dropped_after_decryption() -> None:
    hq, br = make_pair()
    # hq seals a packet claiming a source outside what branch1 gave hq: build it with a raw SA.
    rogue = OutboundSa(0x1001, HQ_KEY_OUT)
    esp = rogue.seal(ping("10.7.0.1", "10.2.0.10"), 4)
    assert br.inbound(esp, HQ_PEER) is None
    assert br.tunnels["hq"].counters.drops[DropReason.SELECTOR_MISMATCH] == 1


def test_inner_destination_outside_local_selector_is_dropped() -> None:
    hq, br = make_pair()
    esp = OutboundSa(0x1001, HQ_KEY_OUT).seal(ping("10.1.0.10", "10.9.9.9"), 4)
    assert br.inbound(esp, HQ_PEER) is None
    assert br.tunnels["hq"].counters.drops[DropReason.SELECTOR_MISMATCH] == 1


def test_next_header_must_match_inner_version() -> None:
    hq, br = make_pair()
    esp = OutboundSa(0x1001, HQ_KEY_OUT).seal(ping("10.1.0.10", "10.2.0.10"), 41)
    assert br.inbound(esp, HQ_PEER) is None
    assert br.tunnels["hq"].counters.drops[DropReason.MALFORMED] == 1


def test_dummy_packets_are_counted() -> None:
    _, br = make_pair()
    esp = OutboundSa(0x1001, HQ_KEY_OUT).seal(b"", 59)
    assert br.inbound(esp, HQ_PEER) is None
    assert br.tunnels["hq"].counters.drops[DropReason.DUMMY] == 1


def test_unknown_spi_keepalive_ike_and_garbage() -> None:
    hq, _ = make_pair()
    assert hq.inbound(b"\x00\x00\x99\x99" + bytes(60), PEER) is None
    assert hq.inbound(NAT_KEEPALIVE, PEER) is None
    assert hq.inbound(frame_ike(bytes(28)), PEER) is None
    assert hq.inbound(b"\x01\x02", PEER) is None
    c = hq.counters
    assert c.drops[DropReason.UNKNOWN_SPI] == 1 and c.keepalives == 1
    assert c.drops[DropReason.IKE_UNHANDLED] == 1 and c.drops[DropReason.MALFORMED] == 1


def test_ike_goes_up_as_an_event_when_accepted() -> None:
    hq, _ = make_pair()
    hq.accept_ike = True
    hq.inbound(frame_ike(b"I" * 28), PEER)
    assert hq.ike_pending  # the driver hands it up before the ESP behind it
    assert hq.take_events() == [IkeMessage(b"I" * 28, PEER)] and not hq.ike_pending


def test_replayed_datagram_counted_on_the_tunnel() -> None:
    hq, br = make_pair()
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    assert br.inbound(esp, HQ_PEER) is not None
    assert br.inbound(esp, HQ_PEER) is None
    assert br.tunnels["hq"].counters.drops[DropReason.REPLAY] == 1


def test_removed_inbound_sa_means_unknown_spi() -> None:
    hq, br = make_pair()
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    br.remove_inbound(0x1001)
    assert br.inbound(esp, HQ_PEER) is None
    assert br.counters.drops[DropReason.UNKNOWN_SPI] == 1


def test_authenticated_esp_from_a_new_address_moves_the_peer() -> None:
    hq, br = make_pair()
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    nat = ("198.18.2.1", 40001)  # hq now appears behind a NAT
    assert br.inbound(esp, nat) is not None
    assert br.tunnels["hq"].peer == nat and br.tunnels["hq"].peer_changes == 1
    assert PeerMoved("hq", nat) in br.take_events()
    assert br.outbound(ping("10.2.0.10", "10.1.0.10"))[0] == nat


def test_forged_esp_from_a_new_address_does_not_move_the_peer() -> None:
    hq, br = make_pair()
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    forged = esp[:-1] + bytes([esp[-1] ^ 1])
    assert br.inbound(forged, ("203.0.113.66", 4500)) is None
    assert br.tunnels["hq"].peer == HQ_PEER and br.take_events() == []


def test_unknown_spi_reports_the_sender_once_per_take_and_boundedly() -> None:
    hq, _ = make_pair()
    for _ in range(3):
        hq.inbound(b"\x00\x00\x99\x99" + bytes(60), ("198.18.2.2", 4500))
    assert hq.take_events() == [UnknownSpi("198.18.2.2")]
    for i in range(1000):  # a spray from many (spoofed) sources: counted, but reported for a few only
        hq.inbound(b"\x00\x00\x99\x99" + bytes(60), (f"203.0.{i // 256}.{i % 256}", 4500))
    assert len(hq.take_events()) == MAX_UNKNOWN_SPI_HOSTS
    assert hq.counters.drops[DropReason.UNKNOWN_SPI] == 1003


def test_authenticated_esp_reports_liveness_once_per_take_and_the_first_use_of_an_sa() -> None:
    hq, br = make_pair()
    for _ in range(3):
        _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
        assert br.inbound(esp, HQ_PEER) is not None
    assert br.take_events() == [PeerAlive("hq"), SaInUse("hq", 0x1001)]
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    br.inbound(esp, HQ_PEER)
    assert br.take_events() == [PeerAlive("hq")]  # the SA was in use already
    br.remove_inbound(0x1001)
    br.install_inbound("hq", InboundSa(0x1001, HQ_KEY_OUT))  # installed again: a first use again
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    br.inbound(esp, HQ_PEER)
    assert br.take_events() == [PeerAlive("hq"), SaInUse("hq", 0x1001)]


def test_volume_limits_are_reported_soft_then_hard_once_each() -> None:
    hq, _ = make_pair()
    packet = ping("10.1.0.10", "10.2.0.10")
    hq.install_outbound("branch1", OutboundSa(0x1003, HQ_KEY_OUT),
                        VolumeLimits(soft_packets=3, soft_bytes=10 * len(packet), hard_packets=5))
    reports = []
    for _ in range(8):
        assert hq.outbound(packet) is not None  # volume limits report; they never stop the SA here
        reports += hq.take_events()
    assert reports == [VolumeLimit("branch1", 0x1003, False), VolumeLimit("branch1", 0x1003, True)]
    hq.install_outbound("branch1", OutboundSa(0x1004, HQ_KEY_OUT), VolumeLimits(soft_bytes=2 * len(packet)))
    for _ in range(3):  # counted in bytes from this SA's installation, not the tunnel's
        hq.outbound(packet)
    assert hq.take_events() == [VolumeLimit("branch1", 0x1004, False)]


# -- policy on the packet path (issue #6) -------------------------------------------------------------
from scapy.layers.inet import TCP  # noqa: E402
from scapy.layers.inet6 import ICMPv6PacketTooBig  # noqa: E402

from policy.match import compile_rules  # noqa: E402
from policy.model import Action, PortMatch, PortRange, Rule  # noqa: E402
from policy.qos import QosClass  # noqa: E402
from tunnel.dataplane.tunnels import TunnelPolicy  # noqa: E402


def policy_pair(hq_policy: TunnelPolicy, br_policy: TunnelPolicy | None = None) -> tuple[Forwarder, Forwarder]:
    hq, br = Forwarder(), Forwarder()
    hq.add_tunnel("branch1", PEER, [net("10.1.0.0/24"), net("fd00:1::/64")], [net("10.2.0.0/24"), net("fd00:2::/64")],
                  hq_policy)
    br.add_tunnel("hq", HQ_PEER, [net("10.2.0.0/24"), net("fd00:2::/64")], [net("10.1.0.0/24"), net("fd00:1::/64")],
                  br_policy)
    hq.install_outbound("branch1", OutboundSa(0x1001, HQ_KEY_OUT))
    br.install_inbound("hq", InboundSa(0x1001, HQ_KEY_OUT))
    br.install_outbound("hq", OutboundSa(0x2001, HQ_KEY_IN))
    hq.install_inbound("branch1", InboundSa(0x2001, HQ_KEY_IN))
    return hq, br


SIP_ONLY = compile_rules([Rule(Action.ALLOW, matches=(PortMatch(17, PortRange(5060, 5060)),))], Action.DENY)


def test_firewall_allows_the_service_and_its_replies_and_counts_the_rest() -> None:
    hq, br = policy_pair(TunnelPolicy(firewall=SIP_ONLY), TunnelPolicy(firewall=SIP_ONLY))
    invite = bytes(IP(src="10.1.0.10", dst="10.2.0.10") / UDP(sport=40000, dport=5060) / b"INVITE")
    peer, esp = hq.outbound(invite)
    assert br.inbound(esp, HQ_PEER) == invite
    reply = bytes(IP(src="10.2.0.10", dst="10.1.0.10") / UDP(sport=5060, dport=40000) / b"200 OK")
    _, esp = br.outbound(reply)
    assert hq.inbound(esp, PEER) == reply
    assert hq.outbound(bytes(IP(src="10.1.0.10", dst="10.2.0.10") / UDP(sport=40000, dport=53))) is None
    assert hq.tunnels["branch1"].counters.drops[DropReason.POLICY_DENY] == 1
    # Inbound too: a peer without the rule cannot push denied traffic in.
    open_hq, open_br = policy_pair(TunnelPolicy(), TunnelPolicy(firewall=SIP_ONLY))
    _, esp = open_hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    assert open_br.inbound(esp, HQ_PEER) is None
    assert open_br.tunnels["hq"].counters.drops[DropReason.POLICY_DENY] == 1


def test_outer_dscp_copies_inner_or_is_fixed_and_ecn_is_copied() -> None:
    hq, _ = policy_pair(TunnelPolicy())
    out: list = []
    hq.outbound_into(bytes(IP(src="10.1.0.10", dst="10.2.0.10", tos=0xB8 | 1) / ICMP()), out)  # EF, ECT(1)
    hq.outbound_into(bytes(IPv6(src="fd00:1::10", dst="fd00:2::10", tc=0x88) / ICMP()), out)  # AF41
    assert [tos for _, _, tos in out] == [0xB9, 0x88]
    pipe, _ = policy_pair(TunnelPolicy(outer_dscp=10))
    out = []
    pipe.outbound_into(bytes(IP(src="10.1.0.10", dst="10.2.0.10", tos=0xB8 | 2) / ICMP()), out)
    assert out[0][2] == (10 << 2) | 2


def test_ce_on_the_wan_reaches_an_ect_inner_packet_and_drops_a_not_ect_one() -> None:
    hq, br = policy_pair(TunnelPolicy())
    ect = bytes(IP(src="10.1.0.10", dst="10.2.0.10", tos=0x02) / ICMP())
    _, esp = hq.outbound(ect)
    inner = br.inbound(esp, HQ_PEER, tos=0x03)  # CE on the outer header
    recomputed = IP(inner)
    del recomputed.chksum
    assert IP(inner).tos == 0x03 and IP(bytes(recomputed)).chksum == IP(inner).chksum  # header checksum updated
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))  # Not-ECT
    assert br.inbound(esp, HQ_PEER, tos=0x03) is None
    assert br.tunnels["hq"].counters.drops[DropReason.ECN_NOT_ECT] == 1
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    assert IP(br.inbound(esp, HQ_PEER, tos=0xB8)).tos == 0  # no DSCP copied inward unless configured


def test_qos_rules_classify_and_remark_the_inner_dscp() -> None:
    rules = compile_rules([Rule(QosClass.REALTIME_AUDIO, matches=(PortMatch(17, PortRange(50000, 50019)),))],
                          QosClass.DEFAULT)
    hq, _ = policy_pair(TunnelPolicy(qos_rules=rules))
    items: list = []
    hq.classify_into(bytes(IP(src="10.1.0.10", dst="10.2.0.10") / UDP(sport=50001, dport=50002)), items)
    hq.classify_into(bytes(IP(src="10.1.0.10", dst="10.2.0.10", tos=0xB8) / UDP(sport=1, dport=2)), items)
    (c1, _, p1), (c2, _, p2) = items
    assert (c1, IP(p1).tos) == (QosClass.REALTIME_AUDIO, 0xB8)
    assert (c2, IP(p2).tos) == (QosClass.DEFAULT, 0)  # the trust boundary: EF from an unknown flow re-marked
    trusting, _ = policy_pair(TunnelPolicy())
    items = []
    trusting.classify_into(bytes(IP(src="10.1.0.10", dst="10.2.0.10", tos=0x88) / UDP()), items)
    assert items[0][0] == QosClass.INTERACTIVE_VIDEO


def test_too_big_fragmented_or_answered_and_mss_clamped() -> None:
    hq, br = policy_pair(TunnelPolicy(mtu=1438, icmp_source4=int(ipaddress.ip_address("10.1.0.1"))))
    big = bytes(IP(src="10.1.0.10", dst="10.2.0.10", flags=0) / UDP(sport=1, dport=7000) / (b"x" * 1452))
    out: list = []
    hq.outbound_into(big, out)
    assert len(out) == 2 and hq.tunnels["branch1"].counters.fragmented == 1
    pieces = [br.inbound(esp, HQ_PEER) for esp, _, _ in out]
    assert all(len(p) <= 1438 for p in pieces) and sum(len(IP(p).payload) for p in pieces) == 8 + 1452
    df = bytes(IP(src="10.1.0.10", dst="10.2.0.10", flags="DF") / UDP(sport=1, dport=7000) / (b"x" * 1452))
    out = []
    hq.outbound_into(df, out)
    assert out == [] and len(hq.to_tun) == 1
    error = IP(hq.to_tun[0])
    assert (error.src, error.dst, error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (
        "10.1.0.1", "10.1.0.10", 3, 4, 1438)
    counters = hq.tunnels["branch1"].counters
    assert counters.icmp_too_big == 1 and counters.drops[DropReason.TOO_BIG] == 1
    v6 = bytes(IPv6(src="fd00:1::10", dst="fd00:2::10") / UDP(sport=1, dport=7000) / (b"x" * 1432))
    hq.outbound_into(v6, out)
    assert ICMPv6PacketTooBig in IPv6(hq.to_tun[1]) and IPv6(hq.to_tun[1])[ICMPv6PacketTooBig].mtu == 1438
    syn = bytes(IP(src="10.1.0.10", dst="10.2.0.10") / TCP(flags="S", options=[("MSS", 1460)]))
    _, esp = hq.outbound(syn)
    assert dict(IP(br.inbound(esp, HQ_PEER))[TCP].options)["MSS"] == 1398
    assert counters.mss_clamped == 1


def test_only_the_newest_packet_moves_the_peer() -> None:
    """An authenticated but older packet (delayed, or re-sent by someone who captured it) arriving from
    another address is delivered if the window allows, but never redirects our traffic (issue #13)."""
    hq, br = make_pair()
    first = hq.outbound(ping("10.1.0.10", "10.2.0.10"))[1]
    second = hq.outbound(ping("10.1.0.10", "10.2.0.10"))[1]
    nat = ("198.18.2.1", 40001)
    assert br.inbound(second, nat) is not None  # the newest, from the peer's new address: followed
    assert br.tunnels["hq"].peer == nat
    assert br.inbound(first, ("203.0.113.66", 4500)) is not None  # older, inside the window: delivered
    assert br.tunnels["hq"].peer == nat and br.tunnels["hq"].peer_changes == 1
