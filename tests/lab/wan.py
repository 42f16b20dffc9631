"""Reading a WAN capture back: every ESP packet decrypted with scapy's independent ESP code using the
key files the gateways were given, and every other packet checked for clear-text LAN traffic."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from tunnel.config.keyfile import load_manual_keys

LAN_NETS = [ipaddress.ip_network(n) for n in ("10.1.0.0/24", "10.2.0.0/24", "fd00:1::/64", "fd00:2::/64")]
# IPv6 neighbour discovery and MLD on the WAN link itself are expected; nothing else in clear.
ICMPV6_LINK_TYPES = {133, 134, 135, 136, 143}


def is_lan(address: str) -> bool:
    a = ipaddress.ip_address(address)
    return any(a in n for n in LAN_NETS)


@dataclass
class WanReport:
    esp: int = 0
    decrypted: list = field(default_factory=list)  # inner scapy packets
    by_sender: dict = field(default_factory=dict)  # outer source -> ESP packet count
    nonzero_checksums: int = 0
    cleartext: list = field(default_factory=list)  # summaries of packets that should not be there


def sa_for(keyfile: Path, src: str, dst: str) -> SecurityAssociation:
    """The scapy SA for packets leaving the gateway that owns `keyfile` (its outbound direction)."""
    keys = load_manual_keys(keyfile, "test")
    return SecurityAssociation(
        ESP, spi=keys.outbound.spi, crypt_algo="AES-GCM", crypt_key=keys.outbound.key.reveal(),
        tunnel_header=IP(src=src, dst=dst), nat_t_header=UDP(sport=4500, dport=4500),
    )


def _quotes_our_esp(ip: IP) -> bool:
    """An ICMP error (e.g. port unreachable from a stopped peer) that quotes one of our ESP packets."""
    if ICMP not in ip or IPerror not in ip or UDPerror not in ip:
        return False
    return ip[UDPerror].dport == 4500 and not (is_lan(ip.src) or is_lan(ip.dst))


def analyse(pcap: Path, sas: dict[tuple[str, str], SecurityAssociation]) -> WanReport:
    """sas maps (outer source, outer destination) to the SA that sealed packets in that direction."""
    report = WanReport()
    for frame in rdpcap(str(pcap)):
        if IP in frame:
            ip = frame[IP]
            if UDP in ip and ip[UDP].dport == 4500 and (ip.src, ip.dst) in sas:
                report.esp += 1
                report.by_sender[ip.src] = report.by_sender.get(ip.src, 0) + 1
                if ip[UDP].chksum != 0:
                    report.nonzero_checksums += 1
                packet = IP(bytes(ip))  # re-dissect the UDP payload as ESP
                report.decrypted.append(sas[(ip.src, ip.dst)].decrypt(packet))
            elif not _quotes_our_esp(ip):
                report.cleartext.append(frame.summary())
        elif IPv6 in frame:
            ip6 = frame[IPv6]
            icmp_type = getattr(ip6.payload, "type", None) if ip6.nh == 58 else None
            hop_by_hop_mld = ip6.nh == 0  # MLD reports ride behind a hop-by-hop header
            if is_lan(ip6.src) or is_lan(ip6.dst) or not (icmp_type in ICMPV6_LINK_TYPES or hop_by_hop_mld):
                report.cleartext.append(frame.summary())
    return report
