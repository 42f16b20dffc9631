"""The pure forwarder: tunnel selection, fail closed, inbound selector checks, counted drops."""

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6

from tunnel.dataplane import Forwarder, NeedSa, NeedSaReason
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
        "tx_packets": 1, "tx_bytes": len(packet), "rx_packets": 1, "rx_bytes": len(reply), "keepalives": 0, "drops": {}
    }


def test_fail_closed_without_sa_emits_one_need_sa() -> None:
    hq = Forwarder()
    hq.add_tunnel("branch1", PEER, [net("10.1.0.0/24")], [net("10.2.0.0/24")])
    for _ in range(3):
        assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is None
    counters = hq.tunnels["branch1"].counters
    assert counters.drops[DropReason.NO_SA] == 3 and counters.tx_packets == 0
    assert hq.next_event() == NeedSa("branch1", NeedSaReason.NO_SA)
    assert hq.next_event() is None


def test_exhausted_sa_drops_and_asks_for_a_new_one() -> None:
    hq, _ = make_pair()
    hq.install_outbound("branch1", OutboundSa(0x1001, HQ_KEY_OUT, seq_limit=1))
    assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is not None
    assert hq.outbound(ping("10.1.0.10", "10.2.0.10")) is None
    assert hq.tunnels["branch1"].counters.drops[DropReason.SA_EXHAUSTED] == 1
    assert hq.next_event() == NeedSa("branch1", NeedSaReason.EXHAUSTED)


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


def test_ike_goes_to_the_inbox_when_accepted() -> None:
    hq, _ = make_pair()
    hq.accept_ike = True
    hq.inbound(frame_ike(b"I" * 28), PEER)
    assert hq.ike_inbox.popleft() == (b"I" * 28, PEER)


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
    assert br.outbound(ping("10.2.0.10", "10.1.0.10"))[0] == nat


def test_forged_esp_from_a_new_address_does_not_move_the_peer() -> None:
    hq, br = make_pair()
    _, esp = hq.outbound(ping("10.1.0.10", "10.2.0.10"))
    forged = esp[:-1] + bytes([esp[-1] ^ 1])
    assert br.inbound(forged, ("203.0.113.66", 4500)) is None
    assert br.tunnels["hq"].peer == HQ_PEER


def test_unknown_spi_remembers_the_sender() -> None:
    hq, _ = make_pair()
    hq.inbound(b"\x00\x00\x99\x99" + bytes(60), ("198.18.2.2", 4500))
    assert hq.unknown_spi_peers == {"198.18.2.2"}
