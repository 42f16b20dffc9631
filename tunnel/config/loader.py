"""YAML -> GatewayConfig, reporting every problem as `file:line:col: path: message`.

The schema lives here as code, one parser per field, each with the rule it enforces; configs/hq.yaml
documents the same fields for an admin. A bad value is always an error, never replaced by a default,
and no input (binary, empty, a directory, malformed YAML) ends in a traceback: only ConfigError.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from tunnel.config.keyfile import read_manual_keys, read_psk, read_secret_file
from tunnel.config.model import (
    ANY_PEER,
    DEFAULT_REPLAY_WINDOW,
    ESP_UDP_PORT,
    Announce,
    Endpoint,
    GatewayConfig,
    GatewayQos,
    Ha,
    HaRole,
    HaSync,
    Ike,
    IPAddress,
    IPInterface,
    IPNetwork,
    KeyLog,
    ManualKeys,
    Metrics,
    Ocsp,
    PeerEndpoint,
    Pki,
    PkiCredential,
    Revocation,
    StartMode,
    TunDevice,
    Tunnel,
    TunnelQos,
)
from tunnel.config.policy_config import (
    default_call_quality,
    parse_call_quality,
    parse_firewall,
    parse_gateway_qos,
    parse_services,
    parse_tunnel_qos,
)
from tunnel.config.proposals import parse_esp_proposal, parse_ike_proposal
from tunnel.config.validate import IkeParts, TunnelParts, cross_check, queues_fit_replay_window
from tunnel.config.yamlnodes import (
    FLOAT,
    INT,
    STR,
    Doc,
    FileProblem,
    Problem,
    Problems,
    key_path,
    parse_document,
    quote,
    read_regular_file,
)
from tunnel.errors import ConfigError
from tunnel.ike.constants import IKE_PORT
from tunnel.ike.identity import InvalidIdentity, PeerIdentity
from tunnel.secret import Secret

MAX_CONFIG_BYTES = 1024 * 1024
MAX_LIFETIME = 7 * 24 * 3600
MAX_WORKERS = 16  # data-plane worker processes (gateway.workers)
LIFETIME_KEYS = ("rekey_time", "lifetime", "ike_rekey_time", "ike_lifetime", "dpd_delay", "rekey_bytes",
                 "rekey_packets", "reauth_time")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
NAME_RULE = "1-32 characters from A-Z a-z 0-9 _ . -"
LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_METHODS = ("psk", "cert")
MAX_PKI_FILE_BYTES = 1024 * 1024
IFNAMSIZ = 16  # Linux: 15 bytes and the terminating NUL
_EXPECTED = "a mapping with 'gateway' and 'tunnels'"

Parser = Callable[[Doc, Node, str], Any]


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load and validate a gateway config and the key files it names; raise ConfigError with every
    problem found (sorted by file, line, column) if there is any."""
    file = os.fsdecode(path)
    sink = Problems()
    try:
        data = read_regular_file(Path(file), MAX_CONFIG_BYTES)
    except FileProblem as exc:
        raise ConfigError([str(Problem(file, 0, 0, "", f"config file {exc}"))]) from None
    doc = Doc(file, sink)
    root = parse_document(data, file, sink, _EXPECTED)
    config = _config(doc, root, Path(file)) if root is not None else None
    sink.raise_if_any()
    if config is None:  # unreachable: every None above comes with a reported problem
        raise ConfigError([f"{file}: invalid configuration"])
    return config


def _config(doc: Doc, root: Node, path: Path) -> GatewayConfig | None:
    fields = doc.mapping(root, "", required=("gateway", "tunnels"), optional=("services",))
    if fields is None:
        return None
    services = parse_services(doc, fields["services"], "services") if "services" in fields else {}
    gateway = _gateway(doc, fields["gateway"], path.parent) if "gateway" in fields else None
    tunnels = _tunnels(doc, fields["tunnels"], path.parent, services) if "tunnels" in fields else []
    listen, tun = (gateway.get("listen"), gateway["tun"]) if gateway else (None, None)
    ike_port = gateway.get("ike_port", IKE_PORT) if gateway else None
    has_pki = "pki" in gateway if gateway is not None else None
    cross_check(doc, listen, tun, tunnels, ike_port, has_pki, gateway.get("workers", 1) if gateway else None)
    queues_fit_replay_window(doc, gateway.get("qos", GatewayQos()) if gateway else None, tunnels)
    ha = gateway.get("ha") if gateway else None
    if ha is not None and ha.sync is not None and gateway is not None and gateway.get("workers", 1) > 1:
        doc.error_at("gateway.ha.sync", "SA state sync needs workers: 1 (for now): the standby takes over "
                                        "each SA's sequence numbers from one data plane")
    if doc.sink or gateway is None:
        return None
    return GatewayConfig(path=path, tunnels=tuple(_tunnel_model(t) for t in tunnels),
                         services=tuple(services.values()), **gateway)


def _fields(doc: Doc, fields: dict[str, Node], path: str, parsers: dict[str, Parser]) -> dict[str, Any]:
    """Parse the keys present; a value is None when it was invalid (and reported)."""
    return {key: parse(doc, fields[key], key_path(path, key)) for key, parse in parsers.items() if key in fields}


def _section(doc: Doc, node: Node, path: str, model: type, required: tuple[str, ...],
             parsers: dict[str, Parser]) -> Any:
    """A mapping that becomes one model object, or None if anything in it was wrong."""
    start = doc.checkpoint()
    fields = doc.mapping(node, path, required, parsers.keys() - set(required))
    values = _fields(doc, fields, path, parsers) if fields is not None else {}
    return model(**values) if doc.clean_since(start) else None


# -- gateway ---------------------------------------------------------------------------------------------


def _gateway(doc: Doc, node: Node, base_dir: Path) -> dict[str, Any] | None:
    parsers: dict[str, Parser] = {
        "name": _name,
        "listen": _listen,
        "tun": _tun,
        "socket_buffer_bytes": _int_in(64 * 1024, 1024 * 1024 * 1024),
        "log_level": lambda doc, node, path: doc.choice(node, path, LOG_LEVELS),
        "log_format": lambda doc, node, path: doc.choice(node, path, ("text", "json")),
        "ike_port": _PORT,  # must differ from listen.port: checked in validate.py
        "pki": lambda doc, node, path: _pki(doc, node, path, base_dir),
        "workers": _int_in(1, MAX_WORKERS),
        "qos": parse_gateway_qos,
        "metrics": _metrics,
        "control_socket": lambda doc, node, path: _relative_path(doc, node, path, base_dir, "a socket path"),
        "state_dir": lambda doc, node, path: _relative_path(doc, node, path, base_dir, "a directory path"),
        "announce": lambda doc, node, path: _section(doc, node, path, Announce, ("table",), {
            "table": _route_table}),
        "ha": lambda doc, node, path: _section(doc, node, path, Ha, (), {
            "role": lambda doc, node, path: _enum(doc, node, path, HaRole),
            "sync": lambda doc, node, path: _ha_sync(doc, node, path, base_dir)}),
        "key_log": lambda doc, node, path: _section(doc, node, path, KeyLog, (), {
            key: (lambda doc, node, path: _relative_path(doc, node, path, base_dir, "a file path"))
            for key in ("esp_sa", "ikev2_decryption_table")}),
    }
    fields = doc.mapping(node, "gateway", required=("name", "listen"), optional=set(parsers) - {"name", "listen"})
    if fields is None:
        return None
    return {"tun": TunDevice()} | _fields(doc, fields, "gateway", parsers)  # tun: is optional as a whole


def _ha_sync(doc: Doc, node: Node, path: str, base_dir: Path) -> HaSync | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, ("local", "peer", "key_file"), ("port",))
    if fields is None:
        return None
    values = _fields(doc, fields, path, {"local": _listen_address, "peer": _listen_address, "port": _PORT})
    key = None
    if "key_file" in fields:
        here = key_path(path, "key_file")
        file = _relative_path(doc, fields["key_file"], here, base_dir, "a path to a key file")
        key = read_psk(file, doc.at(fields["key_file"], here), doc.sink) if file is not None else None
    if not doc.clean_since(start) or key is None:
        return None
    if values["local"] == values["peer"] or values["local"].version != values["peer"].version:
        doc.error(node, path, "local and peer must be the two gateways' own addresses, of one family")
        return None
    return HaSync(values["local"], values["peer"], key, values.get("port", 4510))


RESERVED_TABLES = {0: "unspecified", 253: "default", 254: "main", 255: "local", 5174: "sitelink's full tunnel"}


def _route_table(doc: Doc, node: Node, path: str) -> int | None:
    """A kernel routing table of the announcements' own, not one that routes traffic."""
    table = doc.integer(node, path, 1, 2**32 - 1)
    if table is not None and table in RESERVED_TABLES:
        doc.error(node, path, f"table {table} is the {RESERVED_TABLES[table]} table; give one of its own "
                              "(e.g. 100) for the routing daemon to read")
        return None
    return table


def _metrics(doc: Doc, node: Node, path: str) -> Metrics | None:
    parsers: dict[str, Parser] = {"enabled": Doc.boolean, "address": _listen_address, "port": _PORT}
    return _section(doc, node, path, Metrics, (), parsers)


def _listen(doc: Doc, node: Node, path: str) -> Endpoint | None:
    """address: one address, or a list of one IPv4 and one IPv6 address (dual stack)."""
    start = doc.checkpoint()
    fields = doc.mapping(node, path, ("address",), ("port",))
    if fields is None or "address" not in fields:  # reported by mapping()
        return None
    port = _PORT(doc, fields["port"], key_path(path, "port")) if "port" in fields else ESP_UDP_PORT
    where = key_path(path, "address")
    if isinstance(fields.get("address"), SequenceNode):
        addresses = _items(_listen_address, non_empty=True)(doc, fields["address"], where) or ()
        if len(addresses) > 2 or len({a.version for a in addresses}) != len(addresses):
            doc.error(fields["address"], where, "give one address, or one IPv4 and one IPv6 address (dual stack)")
            return None
    else:
        one = _listen_address(doc, fields["address"], where)
        addresses = (one,) if one is not None else ()
    if not doc.clean_since(start) or not addresses:
        return None
    return Endpoint(addresses[0], port, addresses[1] if len(addresses) == 2 else None)


def _tun(doc: Doc, node: Node, path: str) -> TunDevice | None:
    parsers: dict[str, Parser] = {
        "name": _ifname,
        "wan_mtu": _int_in(1280, 65535),
        "mtu": _int_in(576, 65535),  # the upper bound that matters is checked in validate.py
        "addresses": _interfaces,
        "txqueuelen": _int_in(1, 100_000),
    }
    return _section(doc, node, path, TunDevice, (), parsers)


def _pki(doc: Doc, node: Node, path: str, base_dir: Path) -> Pki | None:
    certificate = _pki_file(base_dir, "certificate file", private=False)
    private_key = _pki_file(base_dir, "private key file", private=True)
    parsers: dict[str, Parser] = {
        "ca": _one_or_more(_pki_file(base_dir, "CA certificate file", private=False)),
        "certificate": certificate,
        "private_key": private_key,
        "intermediates": _items(_pki_file(base_dir, "intermediate CA certificate file", private=False),
                                non_empty=False),
        "alternates": _items(lambda doc, node, path: _section(
            doc, node, path, PkiCredential, ("certificate", "private_key"),
            {"certificate": certificate, "private_key": private_key}), non_empty=False),
        "crl": _one_or_more(_pki_file(base_dir, "CRL file", private=False)),
        "revocation": lambda doc, node, path: _enum(doc, node, path, Revocation),
        "ocsp": lambda doc, node, path: _section(doc, node, path, Ocsp, (), {
            "url": _http_url, "timeout": _int_in(1, 60)}),
        "rsa_pss": Doc.boolean,
    }
    return _section(doc, node, path, Pki, ("ca", "certificate", "private_key"), parsers)


def _http_url(doc: Doc, node: Node, path: str) -> str | None:
    text = doc.scalar_text(node, path, "an http:// URL")
    if text is None:
        return None
    if not re.fullmatch(r"http://[A-Za-z0-9.\-\[\]:]+(/[!-~]*)?", text):
        doc.error(node, path, f"{quote(text)} is not an http:// URL (OCSP is served over plain HTTP, "
                              "RFC 6960 A.1)")
        return None
    return text


def _one_or_more(parse: Parser) -> Parser:
    """One value, or a non-empty list of them: always a tuple."""
    many = _items(parse, non_empty=True)

    def parse_one_or_more(doc: Doc, node: Node, path: str) -> tuple[Any, ...] | None:
        if isinstance(node, SequenceNode):
            return many(doc, node, path)
        one = parse(doc, node, path)
        return None if one is None else (one,)

    return parse_one_or_more


def _enum(doc: Doc, node: Node, path: str, kind: type[enum.Enum]) -> Any:
    value = doc.choice(node, path, tuple(str(m.value) for m in kind))
    return None if value is None else kind(value)


def _pki_file(base_dir: Path, what: str, private: bool) -> Parser:
    """A PEM file that must exist now (so `sitelink check` catches a typo); a private key must be 0600.
    Its content is parsed when the gateway starts."""

    def parse(doc: Doc, node: Node, path: str) -> Path | None:
        file = _relative_path(doc, node, path, base_dir, f"a path to a {what}")
        if file is None:
            return None
        here = doc.at(node, path)
        if private:
            ok = read_secret_file(file, what, MAX_PKI_FILE_BYTES, here, doc.sink) is not None
        else:
            try:
                read_regular_file(file, MAX_PKI_FILE_BYTES)
                ok = True
            except FileProblem as exc:
                doc.sink.add(here.about(f"{what} {file} {exc}"))
                ok = False
        return file if ok else None

    return parse


def _relative_path(doc: Doc, node: Node, path: str, base_dir: Path, what: str) -> Path | None:
    """Relative to the config file's directory, so a config works from any working directory."""
    text = doc.scalar_text(node, path, what)
    if text is None:
        return None
    if not text.strip():
        doc.error(node, path, "must not be empty")
        return None
    return base_dir / text


# -- tunnels ---------------------------------------------------------------------------------------------


def _tunnels(doc: Doc, node: Node, base_dir: Path, services: dict) -> list[TunnelParts]:
    items = doc.sequence(node, "tunnels", non_empty=True)
    parts = (_tunnel(doc, item, f"tunnels[{i}]", base_dir, services) for i, item in enumerate(items or ()))
    return [p for p in parts if p is not None]


def _tunnel(doc: Doc, node: Node, path: str, base_dir: Path, services: dict) -> TunnelParts | None:
    parsers: dict[str, Parser] = {
        "name": _name,
        "peer": _peer,
        "local_subnets": _subnets,
        "remote_subnets": _subnets,
        "manual_keys": lambda doc, node, path: _manual_keys(doc, node, path, base_dir),
        "ike": lambda doc, node, path: _ike(doc, node, path, base_dir),
        "replay_window": _replay_window,
        "mtu": _int_in(576, 65535),  # the upper bound that matters is checked in validate.py
        "firewall": lambda doc, node, path: parse_firewall(doc, node, path, _subnets, services),
        "qos": lambda doc, node, path: parse_tunnel_qos(doc, node, path, _subnets, services),
        "call_quality": lambda doc, node, path: parse_call_quality(doc, node, path, services),
    }
    optional = ("manual_keys", "ike", "replay_window", "mtu", "firewall", "qos", "call_quality")
    fields = doc.mapping(node, path, required=set(parsers) - set(optional), optional=optional)
    if fields is None:
        return None
    if ("ike" in fields) == ("manual_keys" in fields):
        given = "has both 'ike' and 'manual_keys'" if "ike" in fields else "has neither 'ike' nor 'manual_keys'"
        doc.error(node, path, f"{given}; give exactly one: ike (IKEv2, the normal case) or manual_keys "
                              "(static keys, for testing only)")
    v = _fields(doc, fields, path, parsers)
    return TunnelParts(path, v.get("name"), v.get("peer"), v.get("local_subnets"), v.get("remote_subnets"),
                       v.get("manual_keys"), v.get("replay_window", DEFAULT_REPLAY_WINDOW), v.get("ike"),
                       v.get("mtu"), v.get("firewall"), v.get("qos") or TunnelQos(),
                       v.get("call_quality") or default_call_quality(services))


def _tunnel_model(t: TunnelParts) -> Tunnel:
    """Only called when nothing was reported, so every part is present."""
    assert t.name is not None and t.peer is not None and t.local_subnets is not None
    assert t.remote_subnets is not None and t.replay_window is not None
    ike = t.ike.model if t.ike else None
    if ike is not None and t.peer.is_any:  # nowhere to send to: it can only answer (validate.py refuses more)
        ike = dataclasses.replace(ike, start=StartMode.RESPOND)
    return Tunnel(name=t.name, peer=t.peer, local_subnets=t.local_subnets, remote_subnets=t.remote_subnets,
                  manual_keys=t.manual_keys, ike=ike, replay_window=t.replay_window,
                  mtu=t.mtu, firewall=t.firewall, qos=t.qos, call_quality=t.call_quality)


MAX_HUBS = 16  # peer.address as a list: the hubs a branch tries in turn


def _peer(doc: Doc, node: Node, path: str) -> PeerEndpoint | None:
    start = doc.checkpoint()
    fields = doc.mapping(node, path, ("address",), ("port",))
    address_node = fields.get("address") if fields is not None else None
    hubs = isinstance(address_node, SequenceNode)
    parsers: dict[str, Parser] = {"address": _hub_addresses if hubs else _peer_address, "port": _PORT}
    values = _fields(doc, fields, path, parsers) if fields is not None else {}
    if not doc.clean_since(start):
        return None
    address, port = values["address"], values.get("port", ESP_UDP_PORT)
    if hubs:
        return PeerEndpoint(address[0], None, port, tuple(address[1:]))
    if isinstance(address, str):  # a DNS name, or any
        return PeerEndpoint(None, None if address == ANY_PEER else address, port)
    return PeerEndpoint(address, None, port)


def _hub_addresses(doc: Doc, node: Node, path: str) -> tuple[IPAddress, ...] | None:
    """peer.address as a list: IP addresses of the hubs a branch may use, all of one family, each once."""
    items = _items(_peer_address, non_empty=True)(doc, node, path)
    if items is None:
        return None
    if any(isinstance(item, str) for item in items):
        doc.error(node, path, "a list of hub addresses takes IP addresses only (not DNS names or any)")
        return None
    if len(items) > MAX_HUBS or len(set(items)) != len(items) or len({a.version for a in items}) != 1:
        doc.error(node, path, f"give 1 to {MAX_HUBS} different IP addresses of one family (IPv4 or IPv6)")
        return None
    return tuple(items)


def _manual_keys(doc: Doc, node: Node, path: str, base_dir: Path) -> ManualKeys | None:
    file = _relative_path(doc, node, path, base_dir, "a path to a key file")
    return read_manual_keys(file, doc.at(node, path), doc.sink) if file is not None else None


def _ike(doc: Doc, node: Node, path: str, base_dir: Path) -> IkeParts | None:
    """The IKEv2 settings of one tunnel. psk_file is required with auth: psk and refused with auth: cert;
    that auth: cert has a gateway.pki to use is checked in validate.py."""
    parsers: dict[str, Parser] = {
        "auth": lambda doc, node, path: doc.choice(node, path, AUTH_METHODS),
        "local_id": _identity,
        "remote_id": _identity,
        "ike_proposals": _ike_proposals,
        "esp_proposals": _esp_proposals,
        "start": lambda doc, node, path: doc.choice(node, path, [m.value for m in StartMode]),
        # Lifetimes in seconds (RFC 7296 §2.8): rekey (soft) and expire (hard); DPD interval (§2.4), 0 = off.
        "rekey_time": lambda doc, node, path: doc.integer(node, path, 1, MAX_LIFETIME),
        "lifetime": lambda doc, node, path: doc.integer(node, path, 1, MAX_LIFETIME),
        "ike_rekey_time": lambda doc, node, path: doc.integer(node, path, 1, MAX_LIFETIME),
        "ike_lifetime": lambda doc, node, path: doc.integer(node, path, 1, MAX_LIFETIME),
        "reauth_time": lambda doc, node, path: doc.integer(node, path, 0, MAX_LIFETIME),
        "dpd_delay": lambda doc, node, path: doc.integer(node, path, 0, MAX_LIFETIME),
        "dpd_action": lambda doc, node, path: doc.choice(node, path, ["restart", "clear"]),
        # Volume lifetimes (RFC 4301 §4.4.2.1): rekey after so many bytes / packets; 0 = none.
        "rekey_bytes": lambda doc, node, path: doc.integer(node, path, 0, 2**62),
        "rekey_packets": lambda doc, node, path: doc.integer(node, path, 0, 2**32 - 1),
        "fragmentation": Doc.boolean,
        # Retransmissions (§2.1): the first after retransmit_timeout seconds, each next one twice as late;
        # the peer counts as gone after retransmit_tries transmissions (defaults 1 s and 6: 63 s in all).
        "retransmit_timeout": _seconds(0.1, 30.0),
        "retransmit_tries": lambda doc, node, path: doc.integer(node, path, 1, 20),
    }
    start = doc.checkpoint()
    required = ("auth", "local_id", "remote_id")
    fields = doc.mapping(node, path, required, (set(parsers) | {"psk_file", "accept_psk_file"}) - set(required))
    if fields is None:
        return None
    v = _fields(doc, fields, path, parsers)
    auth, psk = v.get("auth"), None
    here = key_path(path, "psk_file")
    if auth == "psk" and "psk_file" not in fields:
        doc.error(node, here, "missing required key (auth: psk reads the pre-shared key from this file)")
    elif auth == "psk":
        psk = _psk_file(doc, fields["psk_file"], here, base_dir)
    elif auth == "cert" and "psk_file" in fields:
        doc.error(fields["psk_file"], here, "only for auth: psk; auth: cert uses the certificate and key in "
                                            "gateway.pki")
    accept = None
    if "accept_psk_file" in fields:
        there = key_path(path, "accept_psk_file")
        if auth == "psk":
            accept = _psk_file(doc, fields["accept_psk_file"], there, base_dir)
            if accept is not None and psk is not None and accept.reveal() == psk.reveal():
                doc.error(fields["accept_psk_file"], there, "holds the same key as psk_file")
        elif auth is not None:
            doc.error(fields["accept_psk_file"], there, "only for auth: psk")
    for soft, hard in (("rekey_time", "lifetime"), ("ike_rekey_time", "ike_lifetime")):
        if soft in v and hard in v and v[hard] <= v[soft]:
            doc.error(fields[hard], key_path(path, hard), f"must be longer than {soft} ({v[soft]} s), so the "
                                                         "rekey has time to finish before the SA expires")
    remote = v.get("remote_id")
    parts = {"auth": auth, "remote_id": remote[0] if remote else None,
             "remote_identity": remote[1] if remote else None, "start": v.get("start")}
    if not doc.clean_since(start) or auth is None or remote is None:
        return IkeParts(**parts, model=None)
    model = Ike(auth=auth, local_id=v["local_id"][0], remote_id=remote[0], psk=psk, accept_psk=accept,
                **{key: v[key] for key in ("ike_proposals", "esp_proposals", "dpd_action", "fragmentation",
                                           "retransmit_timeout", "retransmit_tries", *LIFETIME_KEYS) if key in v},
                start=StartMode(v.get("start", StartMode.INITIATE)))
    return IkeParts(**parts, model=model)


def _seconds(lo: float, hi: float) -> Parser:
    """A duration in seconds, a whole or decimal number within lo..hi."""

    def parse(doc: Doc, node: Node, path: str) -> float | None:
        text = doc.scalar_text(node, path, "a number of seconds", (INT, FLOAT))
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:  # YAML 1.1 floats such as .inf or 1_000.0
            value = float("nan")
        if not lo <= value <= hi:
            doc.error(node, path, f"{quote(text)} is not a number of seconds within {lo:g}..{hi:g}")
            return None
        return value

    return parse


def _psk_file(doc: Doc, node: Node, path: str, base_dir: Path) -> Secret | None:
    file = _relative_path(doc, node, path, base_dir, "a path to a PSK file")
    return read_psk(file, doc.at(node, path), doc.sink) if file is not None else None


def _identity(doc: Doc, node: Node, path: str) -> tuple[str, PeerIdentity] | None:
    """An IKE identity as strongSwan and `sitelink pki issue --id` write it; kept as text for the model,
    parsed here so a bad one is reported with its position."""
    text = _address_text(doc, node, path, "an identity (host name, IP address, user@domain or DN)")
    if text is None:
        return None
    try:
        return text, PeerIdentity.parse(text)
    except InvalidIdentity as exc:
        message = str(exc).replace(repr(text.strip()), quote(text.strip()))  # shorten a long echo
    except (ValueError, TypeError, UnicodeError):  # defensive: x509 name parsing beyond what certs.py maps
        message = f"{quote(text)} is not a valid identity"
    doc.error(node, path, f"{message}; expected a host name (gw.example), IP address, user@domain or a DN "
                          "(CN=gw,O=Acme)")
    return None


def _proposals(parse: Callable[[str], Any]) -> Parser:
    """A non-empty list of proposal strings, strongest first; a duplicate is an error (a typo, likely)."""

    def parse_one(doc: Doc, node: Node, path: str) -> Any:
        text = doc.scalar_text(node, path, "a proposal string")
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            doc.error(node, path, str(exc))
            return None

    parse_list = _items(parse_one, non_empty=True)

    def parse_unique(doc: Doc, node: Node, path: str) -> tuple[Any, ...] | None:
        suites = parse_list(doc, node, path)
        if suites is None:
            return None
        for i, suite in enumerate(suites):
            if suites.index(suite) != i:
                doc.error(node.value[i], f"{path}[{i}]", f"same proposal as {path}[{suites.index(suite)}]")
                return None
        return suites

    return parse_unique


def _replay_window(doc: Doc, node: Node, path: str) -> int | None:
    value = doc.integer(node, path, 64, 1024 * 1024)
    if value is not None and value % 64:
        doc.error(node, path, f"{value} is not a multiple of 64 (the window is kept in 64-bit words, RFC 6479)")
        return None
    return value


# -- scalar fields ---------------------------------------------------------------------------------------


def _int_in(lo: int, hi: int) -> Parser:
    return lambda doc, node, path: doc.integer(node, path, lo, hi)


_PORT = _int_in(1, 65535)


def _name(doc: Doc, node: Node, path: str) -> str | None:
    return doc.string(node, path, NAME, NAME_RULE)


def _ifname(doc: Doc, node: Node, path: str) -> str | None:
    """Linux dev_valid_name(): what the kernel would refuse, refused here with a line number."""
    text = doc.scalar_text(node, path, "an interface name")
    if text is None:
        return None
    if not 0 < len(text.encode()) < IFNAMSIZ:
        problem = f"must be 1-{IFNAMSIZ - 1} bytes long"
    elif text in (".", ".."):
        problem = "must not be '.' or '..'"
    elif any(c in "/:\0" or c.isspace() for c in text):
        problem = "must not contain '/', ':' or whitespace"
    else:
        return text
    doc.error(node, path, f"{quote(text)} is not a valid interface name: {problem}")
    return None


def _address_text(doc: Doc, node: Node, path: str, what: str) -> str | None:
    # INT too: YAML 1.1 reads some IPv6 literals (1:2:3:4:5:6:7:8) as base-60 integers.
    return doc.scalar_text(node, path, what, (STR, INT))


def _ip_address(doc: Doc, node: Node, path: str) -> IPAddress | None:
    text = _address_text(doc, node, path, "an IP address")
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        doc.error(node, path, f"{quote(text)} is not an IPv4 or IPv6 address")
        return None


def _listen_address(doc: Doc, node: Node, path: str) -> IPAddress | None:
    address = _ip_address(doc, node, path)
    if address is not None and address.is_multicast:
        doc.error(node, path, f"{address} is a multicast address; listen on a local unicast address "
                              "or on 0.0.0.0 / ::")
        return None
    return address


# RFC 1123 §2.1 host names: dot-separated labels of letters, digits and inner hyphens, 63 characters each,
# 253 in all, not all digits at the end (that would be a mistyped IPv4 address).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _peer_address(doc: Doc, node: Node, path: str) -> IPAddress | str | None:
    """An IP address, a DNS name (as a str) or `any` (ANY_PEER)."""
    text = _address_text(doc, node, path, "an IP address, a DNS name or any")
    if text is None:
        return None
    if text == ANY_PEER:
        return ANY_PEER
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        name = text[:-1] if text.endswith(".") else text
        labels = name.split(".")
        if len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels) \
                and not labels[-1].isdigit():
            return name.lower()
        doc.error(node, path, f"{quote(text)} is not an IPv4 or IPv6 address, a DNS name or 'any'")
        return None
    if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        doc.error(node, path, f"{address} is not a unicast address; the peer needs its concrete WAN address")
        return None
    return address


def _subnet(doc: Doc, node: Node, path: str) -> IPNetwork | None:
    text = _address_text(doc, node, path, "a subnet in CIDR form")
    if text is None:
        return None
    if "/" not in text:
        doc.error(node, path, f"{quote(text)} needs a prefix length, e.g. 10.1.0.0/24 "
                              "(a single host is /32 or /128)")
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        doc.error(node, path, f"{quote(text)} is not a subnet in CIDR form (address/prefix)")
        return None
    doc.error(node, path, f"{text} has host bits set; did you mean {loose}?")
    return None


def _interface(doc: Doc, node: Node, path: str) -> IPInterface | None:
    text = _address_text(doc, node, path, "an interface address in CIDR form")
    if text is None:
        return None
    try:
        if "/" not in text:
            raise ValueError
        return ipaddress.ip_interface(text)
    except ValueError:
        doc.error(node, path, f"{quote(text)} is not an interface address with prefix length, e.g. 10.1.0.1/24")
        return None


def _items(parse: Parser, non_empty: bool) -> Parser:
    """A list parser: all items valid gives a tuple; any bad item is reported and gives None."""

    def parse_list(doc: Doc, node: Node, path: str) -> tuple[Any, ...] | None:
        start = doc.checkpoint()
        items = doc.sequence(node, path, non_empty=non_empty)
        values = tuple(parse(doc, item, f"{path}[{i}]") for i, item in enumerate(items or ()))
        return values if items is not None and doc.clean_since(start) else None

    return parse_list


_subnets = _items(_subnet, non_empty=True)
_interfaces = _items(_interface, non_empty=False)
_ike_proposals = _proposals(parse_ike_proposal)
_esp_proposals = _proposals(parse_esp_proposal)
