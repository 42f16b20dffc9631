"""Typed gateway configuration. The loader builds these from YAML; nothing else constructs them from
untrusted input. Every field is documented where an admin would look for it (configs/*.yaml)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from tunnel.secret import Secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ESP_UDP_PORT = 4500  # RFC 3948
DEFAULT_REPLAY_WINDOW = 8192
DEFAULT_WAN_MTU = 1500


@dataclass(frozen=True)
class Endpoint:
    address: IPAddress
    port: int = ESP_UDP_PORT


@dataclass(frozen=True)
class TunDevice:
    name: str = "sitelink0"
    wan_mtu: int = DEFAULT_WAN_MTU
    # Explicit inner MTU; None means derived from wan_mtu minus the ESP-in-UDP overhead.
    mtu: int | None = None
    # Addresses put on the TUN device; the first of each family becomes the preferred source of the
    # routes to the remote subnets, so the gateway's own traffic matches the local selectors.
    addresses: tuple[IPInterface, ...] = ()
    txqueuelen: int = 500


@dataclass(frozen=True)
class ManualSa:
    """One direction of a manually keyed ESP SA, as `ip xfrm state` would take it."""

    spi: int = field(repr=False)  # kept out of reprs and tracebacks like the key (ARCHITECTURE.md §13)
    key: Secret  # 36 bytes: AES-256 key (32) + salt (4), RFC 4106 §8.1


@dataclass(frozen=True)
class ManualKeys:
    path: Path
    outbound: ManualSa
    inbound: ManualSa


@dataclass(frozen=True)
class Tunnel:
    name: str
    peer: Endpoint
    local_subnets: tuple[IPNetwork, ...]
    remote_subnets: tuple[IPNetwork, ...]
    manual_keys: ManualKeys
    replay_window: int = DEFAULT_REPLAY_WINDOW


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    name: str
    listen: Endpoint
    tun: TunDevice
    tunnels: tuple[Tunnel, ...] = field(default_factory=tuple)
    socket_buffer_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
