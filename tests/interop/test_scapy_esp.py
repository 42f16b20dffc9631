"""Independent check of the wire format: scapy's ESP implementation (RFC 4303/4106 with a RFC 3948
NAT-T header) decrypts what we seal, and we open what scapy seals, for IPv4 and IPv6 inner packets."""

import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from tunnel.esp.drops import DropReason
from tunnel.esp.sa import EspDrop, InboundSa, OutboundSa

SPI = 0x0000_5A5A
GW_A, GW_B = "198.18.1.2", "198.18.2.2"

INNER = {
    "ipv4-icmp": IP(src="10.1.0.10", dst="10.2.0.10") / ICMP() / Raw(b"ping" * 10),
    "ipv4-udp-rtp": IP(src="10.1.0.10", dst="10.2.0.10", tos=0xB8) / UDP(sport=10000, dport=20000) / Raw(bytes(1200)),
    "ipv4-tcp-full": IP(src="10.1.0.10", dst="10.2.0.10") / TCP(sport=40000, dport=5001) / Raw(bytes(1398)),
    "ipv6-udp": IPv6(src="fd00:1::10", dst="fd00:2::10") / UDP(sport=5060, dport=5060) / Raw(b"INVITE" * 30),
    "ipv6-empty": IPv6(src="fd00:1::10", dst="fd00:2::10", nh=59),
}


def scapy_sa(key: bytes) -> SecurityAssociation:
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo="AES-GCM",
        crypt_key=key,  # a 16-, 24- or 32-byte key + 4-byte salt, as RFC 4106 keys ESP
        tunnel_header=IP(src=GW_A, dst=GW_B),
        nat_t_header=UDP(sport=4500, dport=4500),
    )


@pytest.mark.parametrize("key_len", [20, 28, 36], ids=["aes128", "aes192", "aes256"])
@pytest.mark.parametrize("name", sorted(INNER))
def test_scapy_decrypts_what_we_seal(name: str, key_len: int) -> None:
    key = os.urandom(key_len)  # the AES key and a 4-byte salt
    inner = bytes(INNER[name])
    out = OutboundSa(SPI, key)
    sa = scapy_sa(key)
    for _ in range(3):  # several packets: sequence numbers and IVs advance
        esp = out.seal(inner, 41 if inner[0] >> 4 == 6 else 4)
        wire = IP(bytes(IP(src=GW_A, dst=GW_B) / UDP(sport=4500, dport=4500) / Raw(esp)))
        assert wire[ESP].seq == out.seq
        decrypted = sa.decrypt(wire)
        assert bytes(decrypted) == inner


@pytest.mark.parametrize("key_len", [20, 28, 36], ids=["aes128", "aes192", "aes256"])
@pytest.mark.parametrize("name", sorted(INNER))
def test_we_open_what_scapy_seals(name: str, key_len: int) -> None:
    key = os.urandom(key_len)
    inner_pkt = INNER[name]
    sa = scapy_sa(key)
    inb = InboundSa(SPI, key)
    for seq in (1, 2, 5):
        sa.seq_num = seq
        wire = sa.encrypt(inner_pkt.__class__(bytes(inner_pkt)))
        payload = bytes(wire[UDP].payload)
        next_header, inner = inb.open(payload)
        assert inner == bytes(inner_pkt)
        assert next_header == (41 if isinstance(inner_pkt, IPv6) else 4)


def test_scapy_packet_replayed_is_refused() -> None:
    key = os.urandom(36)
    sa = scapy_sa(key)
    payload = bytes(sa.encrypt(IP(bytes(INNER["ipv4-icmp"])))[UDP].payload)
    inb = InboundSa(SPI, key)
    inb.open(payload)
    with pytest.raises(EspDrop) as info:
        inb.open(payload)
    assert info.value.reason is DropReason.REPLAY


def test_scapy_packet_with_wrong_key_fails_authentication() -> None:
    payload = bytes(scapy_sa(os.urandom(36)).encrypt(IP(bytes(INNER["ipv4-icmp"])))[UDP].payload)
    with pytest.raises(EspDrop) as info:
        InboundSa(SPI, os.urandom(36)).open(payload)
    assert info.value.reason is DropReason.AUTH_FAILED
