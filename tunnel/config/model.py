"""Typed gateway configuration. The loader builds these from YAML; nothing else constructs them from
untrusted input. Every field is documented where an admin would look for it (configs/*.yaml)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from policy.model import Action, Rule, Service
from policy.qos import QosClass
from policy.services import CALL_SERVICES, udp_ranges
from tunnel.ike.proposal import EspSuite, IkeSuite
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
    # gateway.listen only: the other family's address of a dual-stack gateway (`address: [v4, v6]`),
    # listened on at the same ports, so IPv4 and IPv6 peers (a branch behind DS-Lite) reach it at once.
    dual: IPAddress | None = None

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return (self.address,) if self.dual is None else (self.address, self.dual)

    def serves(self, version: int) -> bool:
        return any(a.version == version for a in self.addresses)

    def __str__(self) -> str:
        return " and ".join(f"[{a}]:{self.port}" if a.version == 6 else f"{a}:{self.port}" for a in self.addresses)


ANY_PEER = "any"  # peer.address: any -- the tunnel only responds; the peer is known by its IKE ID


@dataclass(frozen=True)
class PeerEndpoint:
    """Where a tunnel's peer is: a literal IP address, a DNS name (resolved at start and before every
    attempt, so a branch on a dynamic address is followed), or nowhere in particular (`any`: a branch
    behind NAT or on a changing address, found by its authenticated IKE ID when it connects)."""

    address: IPAddress | None = None  # a literal address
    host: str | None = None  # a DNS name (address is None)
    port: int = ESP_UDP_PORT
    # `address: [a, b, c]`: the peer is one of several hubs (scale-out, README "Several hubs"): tried in
    # this order after `address`, the next one after each attempt or IKE SA that fails.
    more: tuple[IPAddress, ...] = ()

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """Every literal address the peer may be at, in the order they are tried."""
        return () if self.address is None else (self.address, *self.more)

    @property
    def is_any(self) -> bool:
        return self.address is None and self.host is None

    def __str__(self) -> str:
        if self.more:
            return ", ".join(map(str, self.addresses))
        return str(self.address) if self.address is not None else self.host or ANY_PEER


@dataclass(frozen=True)
class TunDevice:
    name: str = "sitelink0"
    wan_mtu: int = DEFAULT_WAN_MTU
    # MTU of the TUN device; None means wan_mtu. Larger than a tunnel's MTU on purpose: packets that do not
    # fit a tunnel reach the gateway, which fragments them (DF clear) or answers ICMP, and counts each case.
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


class StartMode(str, enum.Enum):
    INITIATE = "initiate"  # set up the IKE SA when the gateway starts (and after it fails)
    ON_DEMAND = "on-demand"  # when the first packet for the tunnel arrives (that packet is dropped)
    RESPOND = "respond"  # only answer the peer


@dataclass(frozen=True)
class Ike:
    """IKEv2 settings of one tunnel. Identities are strings as `sitelink pki` and strongSwan write them:
    an FQDN (optionally with a leading @), an IP address, user@domain, or a DN like CN=gw,O=Acme."""

    auth: str  # "psk" | "cert"
    local_id: str
    remote_id: str
    psk: Secret | None = None  # from psk_file (auth: psk): sent, and accepted from the peer
    # from accept_psk_file: also accepted from the peer, never sent (a key change, README "Changing a PSK")
    accept_psk: Secret | None = None
    ike_proposals: tuple[IkeSuite, ...] = (IkeSuite(),)
    esp_proposals: tuple[EspSuite, ...] = (EspSuite(),)
    start: StartMode = StartMode.INITIATE
    rekey_time: int = 3600  # Child SA soft lifetime (s), shortened by up to 10 % jitter
    lifetime: int | None = None  # Child SA hard lifetime (s); default rekey_time * 1.1
    ike_rekey_time: int = 14400
    ike_lifetime: int | None = None
    # Re-authenticate (a new IKE SA with a full IKE_AUTH, RFC 7296 §2.8.3) this often, so an expired or
    # revoked certificate or a withdrawn key ends the tunnel then; 0 = never (IKE rekeys keep it up).
    reauth_time: int = 0
    dpd_delay: int = 30  # seconds of silence before a liveness check; 0 = no dead-peer detection
    # What follows when the IKE SA dies (dead peer, failure, the peer's delete): "restart" sets it up again
    # (with backoff), "clear" leaves the tunnel down until the peer or, with start: on-demand, traffic
    # brings it back. None: restart when start is initiate, else clear.
    dpd_action: str | None = None
    rekey_bytes: int = 0  # rekey the Child SA after this many bytes sent on it; 0 = no byte limit
    rekey_packets: int = 0  # likewise packets (the 32-bit sequence number space always triggers one)
    fragmentation: bool = True  # offer IKE fragmentation (RFC 7383) for messages beyond 1280-byte packets
    retransmit_timeout: float = 1.0  # seconds to the first retransmission of a request (§2.1), doubling after
    retransmit_tries: int = 6  # transmissions before the peer counts as gone (with 1.0: 63 s in all)


@dataclass(frozen=True)
class PkiCredential:
    """One more certificate of this gateway with its key (e.g. from the new CA during a rollover)."""

    certificate: Path  # PEM: the certificate, optionally followed by its intermediates
    private_key: Path


class Revocation(str, enum.Enum):
    HARD = "hard"  # a certificate whose status is unknown (stale or unverifiable CRL) is refused
    SOFT = "soft"  # ... is accepted, with a warning; a certificate known to be revoked is refused either way


@dataclass(frozen=True)
class Ocsp:
    """Ask an OCSP responder (RFC 6960) about each certificate on a peer's path that no fresh CRL covers."""

    url: str | None = None  # this responder for every certificate; None: the one in the certificate's AIA
    timeout: int = 5  # seconds for an answer; none is an unknown status (pki.revocation decides)


@dataclass(frozen=True)
class Pki:
    """Certificate authentication material, shared by all tunnels with auth: cert."""

    # CA certificates peers' certificates must chain to (PEM or DER files, a file may hold several):
    # more than one while moving to a new CA, so old and new certificates are both accepted.
    ca: tuple[Path, ...]
    certificate: Path  # this gateway's certificate (PEM), optionally followed by its intermediates
    private_key: Path  # its key (PEM, mode 0600)
    intermediates: tuple[Path, ...] = ()  # CA certificates between ours and a root, sent after ours
    alternates: tuple[PkiCredential, ...] = ()  # further certificates; the peer's CERTREQ picks one
    crl: tuple[Path, ...] = ()  # CRL files (PEM or DER), read at start and at every reload
    revocation: Revocation = Revocation.HARD
    ocsp: Ocsp | None = None  # None: no OCSP (CRLs only)
    rsa_pss: bool = False  # sign AUTH with RSASSA-PSS (RFC 7427) when the key is RSA


@dataclass(frozen=True)
class Firewall:
    """Allow/deny rules for a tunnel's traffic (both directions), first match wins (policy/match.py)."""

    default: Action
    rules: tuple[Rule[Action], ...] = ()


@dataclass(frozen=True)
class TunnelQos:
    """How a tunnel's packets get their QoS class and DSCP (RFC 2983, RFC 4594)."""

    # "dscp": trust the DSCP the sender put on the inner packet; "rules": the first matching rule gives the
    # class (no match: default) and the inner DSCP is re-marked to the class's (a trust boundary).
    classify: str = "dscp"
    rules: tuple[Rule[QosClass], ...] = ()
    outer_dscp: int | None = None  # None: copy the inner DSCP outward (uniform model); else this (pipe model)
    copy_dscp_inward: bool = False  # copy the outer DSCP into the inner packet on decapsulation


@dataclass(frozen=True)
class CallQuality:
    """tunnels[].call_quality: the passive RTP observer (tunnel/dataplane/callquality.py): which UDP
    ports carry media (named services), how many streams it keeps; on unless enabled: false."""

    enabled: bool = True
    # UDP ports of these services are looked at (RTP, or STUN/DTLS/RTP on one port as WebRTC does).
    services: tuple[str, ...] = CALL_SERVICES
    # Their UDP port ranges (the loader resolves them with the config's own service definitions).
    ports: tuple[tuple[int, int], ...] = field(default_factory=lambda: udp_ranges(CALL_SERVICES))
    max_streams: int = 64  # per tunnel; an old, silent stream makes room


@dataclass(frozen=True)
class GatewayQos:
    """The gateway's egress/ingress queues (tunnel/dataplane/scheduler.py)."""

    scheduler: str = "priority"  # "priority" (per-class queues) | "fifo" (the kernel's queues decide)
    realtime_rate_mbit: int = 50  # cap for the strict-priority classes together; beyond it they share fairly
    queue_packets: tuple[tuple[QosClass, int], ...] = ()  # per-class queue limits overriding the defaults
    # Upload rate of the WAN link; the gateway sends at most this (ESP bytes), so the queue forms here, in
    # priority order, not in the modem's FIFO. 0: not shaped (the gateway's CPU is the bottleneck).
    wan_rate_mbit: float = 0


@dataclass(frozen=True)
class Metrics:
    """The Prometheus exporter (tunnel/ops/metrics.py): GET http://address:port/metrics."""

    enabled: bool = True
    address: IPAddress = ipaddress.IPv4Address("127.0.0.1")  # loopback: only local scrapers see it
    port: int = 9548


class HaRole(str, enum.Enum):
    ACTIVE = "active"  # holds the virtual address: initiates, answers, carries traffic
    STANDBY = "standby"  # waits: initiates nothing and keeps no SA until keepalived makes it active


@dataclass(frozen=True)
class HaSync:
    """gateway.ha.sync: the active gateway streams its SA state to the standby, which takes over with the
    same SAs (no new IKE SA for the peers). Over UDP between the two gateways' own addresses, sealed with
    a key both hold (AES-256-GCM under a per-start key derived from it)."""

    local: IPAddress  # this gateway's own address on the sync link
    peer: IPAddress  # the other gateway's
    key: Secret  # from key_file (a PSK-style file, mode 0600)
    port: int = 4510


@dataclass(frozen=True)
class Ha:
    """An active/standby pair behind keepalived (README "High availability"): both gateways listen on the
    virtual address (bound before it is local) and keepalived's notify scripts switch the role."""

    role: HaRole = HaRole.STANDBY  # the role at start
    sync: HaSync | None = None


@dataclass(frozen=True)
class Announce:
    """gateway.announce: the remote subnets of the tunnels up here, as routes in this kernel table, for
    BIRD or FRR to export by BGP (app/announce.py)."""

    table: int


@dataclass(frozen=True)
class KeyLog:
    """DEBUGGING ONLY: files that receive every SA's keys in Wireshark's formats (off unless named)."""

    esp_sa: Path | None = None
    ikev2_decryption_table: Path | None = None


@dataclass(frozen=True)
class Tunnel:
    name: str
    peer: PeerEndpoint
    local_subnets: tuple[IPNetwork, ...]
    remote_subnets: tuple[IPNetwork, ...]
    # Exactly one of the two: IKEv2 (the normal case) or manually keyed SAs (testing only).
    manual_keys: ManualKeys | None = None
    ike: Ike | None = None
    replay_window: int = DEFAULT_REPLAY_WINDOW
    mtu: int | None = None  # largest inner packet; None: derived from gateway.tun.wan_mtu and the peer's family
    firewall: Firewall | None = None  # None: everything the selectors allow passes
    qos: TunnelQos = TunnelQos()
    call_quality: CallQuality = CallQuality()


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    name: str
    listen: Endpoint
    tun: TunDevice
    tunnels: tuple[Tunnel, ...] = field(default_factory=tuple)
    socket_buffer_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per line)
    ike_port: int = 500  # IKE_SA_INIT is sent and accepted here; everything after moves to listen.port
    pki: Pki | None = None
    # Data-plane worker processes, each with a TUN queue, a socket and Child SAs of its own (tunnel/app/workers.py).
    workers: int = 1
    qos: GatewayQos = GatewayQos()
    services: tuple[Service, ...] = ()  # named services defined or overridden in the config's `services:`
    metrics: Metrics = Metrics()
    # The control socket `sitelink status` and friends talk to (root-only); None: /run/sitelink/<name>.sock.
    control_socket: Path | None = None
    key_log: KeyLog = KeyLog()
    # Where the gateway keeps what must outlive it: the ledger of manual keys already used (config/ledger.py).
    state_dir: Path = Path("/var/lib/sitelink")
    ha: Ha | None = None  # gateway.ha: one of an active/standby pair
    announce: Announce | None = None  # gateway.announce: one of several hubs, its tunnels' routes for BGP
