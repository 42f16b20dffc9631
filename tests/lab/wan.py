"""Reading a WAN capture back: every ESP packet decrypted with scapy's independent ESP code using the
keys the gateways were given (manual key files) or exported (--esp-key-log), and every other packet
checked for clear-text LAN traffic. IKE (UDP 500, or 4500 behind the non-ESP marker) is counted."""

from __future__ import annotations

import csv
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
    ike: int = 0
    decrypted: list = field(default_factory=list)  # inner scapy packets
    by_sender: dict = field(default_factory=dict)  # outer source -> ESP packet count
    unknown_spi: list = field(default_factory=list)
    nonzero_checksums: int = 0
    esp_sizes_max: int = 0  # largest UDP datagram carrying ESP (a GSO super-packet would exceed the MTU)
    cleartext: list = field(default_factory=list)  # summaries of packets that should not be there


def _sa(spi: int, key: bytes, src: str, dst: str) -> SecurityAssociation:
    return SecurityAssociation(
        ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key,
        tunnel_header=IP(src=src, dst=dst), nat_t_header=UDP(sport=4500, dport=4500),
    )


def sa_for(keyfile: Path, src: str, dst: str) -> SecurityAssociation:
    """The scapy SA for packets leaving the gateway that owns a manual `keyfile` (its outbound direction)."""
    keys = load_manual_keys(keyfile, "test")
    return _sa(keys.outbound.spi, keys.outbound.key.reveal(), src, dst)


def sas_from_manual(keyfile: Path, src: str, dst: str) -> dict[int, SecurityAssociation]:
    sa = sa_for(keyfile, src, dst)
    return {sa.spi: sa}


def sas_from_esp_log(path: Path) -> dict[int, SecurityAssociation]:
    """SAs from a Wireshark esp_sa file written by `sitelink up --esp-key-log`."""
    result = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            _family, src, dst, spi, _alg, key = row[:6]
            result[int(spi, 16)] = _sa(int(spi, 16), bytes.fromhex(key[2:]), src if src != "*" else "0.0.0.0", dst)
    return result


def _quotes_our_traffic(ip: IP) -> bool:
    """An ICMP error (e.g. port unreachable from a stopped peer) that quotes one of our UDP packets."""
    if ICMP not in ip or IPerror not in ip or UDPerror not in ip:
        return False
    return ip[UDPerror].dport in (500, 4500) and not (is_lan(ip.src) or is_lan(ip.dst))


def analyse(pcap: Path, sas: dict[int, SecurityAssociation], gateways: set[str]) -> WanReport:
    """sas maps SPI to the scapy SA that decrypts it; gateways are the WAN addresses tunnels run between."""
    report = WanReport()
    for frame in rdpcap(str(pcap)):
        if IP in frame:
            ip = frame[IP]
            if UDP in ip and {ip.src, ip.dst} <= gateways and 4500 in (ip[UDP].sport, ip[UDP].dport):
                payload = bytes(ip[UDP].payload)
                if payload[:4] == b"\x00\x00\x00\x00" or payload == b"\xff":
                    report.ike += 1
                    continue
                report.esp += 1
                report.by_sender[ip.src] = report.by_sender.get(ip.src, 0) + 1
                report.esp_sizes_max = max(report.esp_sizes_max, len(ip[UDP]))
                if ip[UDP].chksum != 0:
                    report.nonzero_checksums += 1
                sa = sas.get(int.from_bytes(payload[:4], "big"))
                if sa is None:
                    report.unknown_spi.append(payload[:4].hex())
                    continue
                report.decrypted.append(sa.decrypt(IP(bytes(ip))))  # raises on a bad ICV
            elif UDP in ip and {ip.src, ip.dst} <= gateways and 500 in (ip[UDP].sport, ip[UDP].dport):
                report.ike += 1
            elif not _quotes_our_traffic(ip):
                report.cleartext.append(frame.summary())
        elif IPv6 in frame:
            ip6 = frame[IPv6]
            icmp_type = getattr(ip6.payload, "type", None) if ip6.nh == 58 else None
            hop_by_hop_mld = ip6.nh == 0  # MLD reports ride behind a hop-by-hop header
            if is_lan(ip6.src) or is_lan(ip6.dst) or not (icmp_type in ICMPV6_LINK_TYPES or hop_by_hop_mld):
                report.cleartext.append(frame.summary())
    return report
