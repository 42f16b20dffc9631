"""Run a real strongSwan (charon + swanctl) IKEv2 gateway in a lab site's gateway namespace.

strongSwan 5.9.8 as packaged by Debian runs fully in userspace here: the ``kernel-libipsec`` plugin
(listed *before* ``kernel-netlink``) does ESP over a TUN device (``ipsec0``) and installs routes to the
remote traffic selectors in table 220.  See /work/shared/reference/ikev2-interop.md for the facts this
module relies on.  Per instance it writes, under ``workdir``::

    strongswan.conf        selected with STRONGSWAN_CONF (plugins, vici socket, file loggers)
    swanctl/swanctl.conf   selected with SWANCTL_DIR (connection "lab", child "lan", secrets)
    swanctl/x509/, swanctl/x509ca/, swanctl/{ecdsa,rsa,pkcs8}/   (certificate auth only; see below)
    run/                   bind-mounted over /run in charon's private mount namespace (PID file)
    charon.vici            the vici socket swanctl talks to
    charon.log             the readable debug log (``log_path``)
    charon-keys.log        LAB ONLY: IKE/CHILD keys (no save-keys plugin in Debian's build)
    charon.out             charon's own stdout/stderr

The charon process is started with ``lab.popen`` so lab teardown kills it; ``swanctl`` runs through
``lab.run`` in the same network namespace.

Private keys: swanctl 5.9.8 reads typed keys from ``swanctl/ecdsa/``, ``swanctl/rsa/`` and
``swanctl/pkcs8/`` (siblings of ``x509/``), and untyped ones from ``swanctl/private/``; it does *not*
descend into ``private/ecdsa/`` etc. (a key there is silently ignored and charon later says "no private
key found for '<id>'").  :meth:`StrongSwan.start` therefore also checks that ``--load-all`` loaded the key.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lab import CommandTimeout, Lab, LabError

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
CONNECTION = "lab"
CHILD = "lan"
# kernel-libipsec MUST come before kernel-netlink, else charon tries XFRM (ENOSYS here) for the SAs.
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 pkcs8 x509 pubkey "
           "constraints revocation curl kernel-libipsec kernel-netlink socket-default vici")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_AUTHS = ("psk", "pubkey")


class StrongSwanError(LabError):
    """charon or swanctl failed; the message carries the tail of the charon log."""


def strongswan_installed() -> str | None:
    """None if charon and swanctl are installed, else what is missing."""
    missing = [p for p in (CHARON,) if not Path(p).exists()]
    if shutil.which(SWANCTL) is None:
        missing.append(SWANCTL)
    for plugin in ("kernel-libipsec", "curve25519", "openssl", "gcm", "vici"):
        if not Path(f"/usr/lib/ipsec/plugins/libstrongswan-{plugin}.so").exists():
            missing.append(f"plugin {plugin}")
    return f"strongSwan is not installed: missing {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------------------------------
# configuration: pure data + rendering (no root needed, unit-testable)


def common_sections(vici: str) -> str:
    """The charon { } lines every lab charon shares: its vici socket, IPv4 sockets only, no syslog."""
    return f"""    plugins {{
        vici {{
            socket = {vici}
        }}
        socket-default {{
            use_ipv6 = no
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
"""


@dataclass
class SwanPeer:
    """Everything one charon instance needs: its files, addresses, identities, credentials, timers."""

    name: str                      # label used in messages (the site name)
    workdir: Path
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    local_ts: list[str]
    remote_ts: list[str]
    auth: str = "psk"
    psk: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    intermediates: list[Path] = field(default_factory=list)  # more CA certificates (x509ca/)
    crls: list[Path] = field(default_factory=list)  # CRL files (x509crl/), checked by the revocation plugin
    fragmentation: bool = True  # IKE fragmentation (RFC 7383); strongSwan's default is yes
    rsa_pss: bool = False  # sign with RSASSA-PSS (charon.rsa_pss) instead of PKCS#1 v1.5
    reauth_time: str = "0s"  # swanctl reauth_time: 0 = IKE rekeys only (strongSwan's default)
    make_before_break: bool = False  # charon.make_before_break: 5.9 re-authenticates break-before-make
    ike_proposal: str = "aes256gcm16-prfsha256-curve25519"
    esp_proposal: str = "aes256gcm16"
    ike_port: int = 4500
    start_action: str = "none"
    dpd_delay: str = "10s"
    rekey_time: str = "4h"
    child_rekey_time: str = "1h"
    key_files: dict[str, str] = field(default_factory=dict)  # filled by write(): role -> file name

    # -- paths --------------------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def swanctl_dir(self) -> Path:
        return self.workdir / "swanctl"

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def keylog_path(self) -> Path:
        return self.workdir / "charon-keys.log"

    @property
    def out_path(self) -> Path:
        return self.workdir / "charon.out"

    @property
    def env(self) -> dict[str, str]:
        return {"STRONGSWAN_CONF": str(self.conf_path), "SWANCTL_DIR": str(self.swanctl_dir)}

    # -- checks -------------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.auth not in _AUTHS:
            raise ValueError(f"auth must be one of {_AUTHS}, got {self.auth!r}")
        if self.auth == "psk" and not self.psk:
            raise ValueError("auth='psk' needs a psk")
        if self.auth == "pubkey" and (self.cert is None or self.key is None or self.ca is None):
            raise ValueError("auth='pubkey' needs cert, key and ca (PEM files)")
        for a in (self.local_addr, self.remote_addr):
            ipaddress.ip_address(a)  # raises ValueError; also keeps charon from resolving names
        for ts in (*self.local_ts, *self.remote_ts):
            ipaddress.ip_network(ts, strict=False)
        if not 0 < self.ike_port < 65536:
            raise ValueError(f"bad ike_port {self.ike_port}")
        if self.start_action not in ("none", "start", "trap", "trap|start"):
            raise ValueError(f"bad start_action {self.start_action!r}")
        for v in (self.local_id, self.remote_id, self.ike_proposal, self.esp_proposal, self.dpd_delay,
                  self.rekey_time, self.child_rekey_time):
            if not v or any(c in v for c in '"{}\n#'):
                raise ValueError(f"value {v!r} cannot be written to swanctl.conf")
        if len(str(self.vici_path)) > _UNIX_PATH_MAX:
            raise ValueError(f"vici socket path too long for AF_UNIX ({len(str(self.vici_path))} > "
                             f"{_UNIX_PATH_MAX}): {self.vici_path}; use a shorter workdir")

    # -- rendering ----------------------------------------------------------------------------------
    def strongswan_conf(self) -> str:
        nat_t = self.ike_port if self.ike_port != 500 else 4500
        vici = f"unix://{self.vici_path}"
        return f"""# strongswan.conf for lab gateway {self.name}, written by netnslab.strongswan
charon {{
    load_modular = no
    load = {PLUGINS}
    port = 500
    port_nat_t = {nat_t}
    install_routes = yes
    retransmit_tries = 3
    rsa_pss = {'yes' if self.rsa_pss else 'no'}
    make_before_break = {'yes' if self.make_before_break else 'no'}
{common_sections(vici)}    filelog {{
        main {{
            path = {self.log_path}
            time_format = %H:%M:%S
            ike_name = yes
            append = no
            flush_line = yes
            default = 1
            cfg = 2
            ike = 2
            chd = 2
            knl = 1
            enc = 1
            net = 1
        }}
        # LAB ONLY: level 4 logs the derived IKE and CHILD keys (Debian's build has no save-keys plugin)
        keys {{
            path = {self.keylog_path}
            ike_name = yes
            append = no
            flush_line = yes
            default = 0
            enc = 1
            ike = 4
            chd = 4
        }}
    }}
}}
swanctl {{
    socket = {vici}
}}
"""

    def swanctl_conf(self) -> str:
        port = self.ike_port
        if self.auth == "psk":
            local_auth = f"            auth = psk\n            id = {self.local_id}\n"
            remote_auth = f"            auth = psk\n            id = {self.remote_id}\n"
            assert self.psk is not None
            secrets_block = (f"    ike-{CONNECTION} {{\n        id-a = {self.local_id}\n"
                             f"        id-b = {self.remote_id}\n"
                             f"        secret = 0x{self.psk.encode().hex()}\n    }}\n")
        else:
            local_auth = (f"            auth = pubkey\n            id = {self.local_id}\n"
                          f"            certs = {self.key_files['cert']}\n")
            remote_auth = (f"            auth = pubkey\n            id = {self.remote_id}\n"
                           f"            cacerts = {self.key_files['ca']}\n")
            secrets_block = ""  # keys in private/<type>/ are loaded without a secrets entry
        send_cert = "        send_cert = always\n" if self.auth == "pubkey" else ""
        send_cert += f"        fragmentation = {'yes' if self.fragmentation else 'no'}\n"
        return f"""# swanctl.conf for lab gateway {self.name}, written by netnslab.strongswan
connections {{
    {CONNECTION} {{
        version = 2
        local_addrs = {self.local_addr}
        remote_addrs = {self.remote_addr}
        local_port = {port}
        remote_port = {port}
        encap = yes
        mobike = no
        dpd_delay = {self.dpd_delay}
        rekey_time = {self.rekey_time}
        reauth_time = {self.reauth_time}
        proposals = {self.ike_proposal}
{send_cert}        local {{
{local_auth}        }}
        remote {{
{remote_auth}        }}
        children {{
            {CHILD} {{
                mode = tunnel
                local_ts = {', '.join(self.local_ts)}
                remote_ts = {', '.join(self.remote_ts)}
                esp_proposals = {self.esp_proposal}
                dpd_action = restart
                start_action = {self.start_action}
                rekey_time = {self.child_rekey_time}
            }}
        }}
    }}
}}
secrets {{
{secrets_block}}}
"""

    def write(self) -> None:
        """Create the directory layout and write both config files (and credentials)."""
        self.validate()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        for sub in ("x509", "x509ca", "x509crl", "x509ocsp", "x509aa", "x509ac", "private", "ecdsa", "rsa",
                    "pkcs8", "pkcs12", "bliss", "pubkey"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.auth == "pubkey":
            assert self.cert and self.key and self.ca
            self.key_files["cert"] = "gateway.pem"
            self.key_files["ca"] = "ca.pem"
            shutil.copyfile(self.cert, self.swanctl_dir / "x509" / "gateway.pem")
            shutil.copyfile(self.ca, self.swanctl_dir / "x509ca" / "ca.pem")
            for n, extra in enumerate(self.intermediates):
                shutil.copyfile(extra, self.swanctl_dir / "x509ca" / f"intermediate-{n}.pem")
            for n, crl in enumerate(self.crls):
                shutil.copyfile(crl, self.swanctl_dir / "x509crl" / f"crl-{n}.pem")
            key_dir = _private_key_dir(Path(self.key).read_text())
            dst = self.swanctl_dir / key_dir / "gateway.pem"
            self.key_files["key"] = str(dst.relative_to(self.swanctl_dir))
            shutil.copyfile(self.key, dst)
            dst.chmod(0o600)
        self.conf_path.write_text(self.strongswan_conf())
        conf = self.swanctl_dir / "swanctl.conf"
        conf.write_text(self.swanctl_conf())
        conf.chmod(0o600)  # holds the PSK
        for p in (self.log_path, self.keylog_path):
            p.unlink(missing_ok=True)


def _private_key_dir(pem: str) -> str:
    """The swanctl subdirectory (ecdsa, rsa or pkcs8) a PEM private key must go to."""
    if "BEGIN EC PRIVATE KEY" in pem:
        return "ecdsa"
    if "BEGIN RSA PRIVATE KEY" in pem:
        return "rsa"
    if "BEGIN PRIVATE KEY" in pem:
        return "pkcs8"
    if "BEGIN ENCRYPTED PRIVATE KEY" in pem:
        raise ValueError("encrypted private keys are not supported by the lab (no secret to unlock them)")
    raise ValueError("key is not a PEM private key (EC, RSA or PKCS#8)")


def launch_charon(lab: Lab, node: str, conf: Path, run_dir: Path, out_path: Path) -> subprocess.Popen:
    """charon in `node` with the strongswan.conf `conf`: `ip netns exec` -> unshare (own mount namespace,
    /run replaced by run_dir: the PID file is hard-coded to /var/run/charon.pid) -> sh -> exec charon, so
    the Popen's pid is charon itself; stdout and stderr to out_path."""
    script = f'mount --bind "$1" /run && exec {CHARON}'
    argv = ["env", f"STRONGSWAN_CONF={conf}", "unshare", "-m", "--propagation", "private",
            "sh", "-c", script, "sh", str(run_dir)]
    with out_path.open("w") as out:
        return lab.popen(node, argv, stdout=out, stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------------------------------
# parsing swanctl --list-sas


_IKE_RE = re.compile(r"^(?P<name>\S+): #(?P<uid>\d+), (?P<state>[A-Z_]+), IKEv(?P<version>\d)"
                     r"(?:, (?P<spi_i>[0-9a-f]{16})_i(?P<i_star>\*?) (?P<spi_r>[0-9a-f]{16})_r(?P<r_star>\*?))?")
_ENDPOINT_RE = re.compile(r"^\s+(?P<side>local|remote)\s+'(?P<id>[^']*)' @ (?P<addr>\S+?)\[(?P<port>\d+)\]")
_CHILD_RE = re.compile(r"^\s+(?P<name>\S+): #(?P<uid>\d+), reqid (?P<reqid>\d+), (?P<state>[A-Z_]+), "
                       r"(?P<mode>[A-Za-z-]+)(?:-in-UDP)?, (?P<proto>ESP|AH):(?P<algs>\S+)")
_CHILD_MODE_RE = re.compile(r", (?P<mode>[A-Z]+(?:-in-UDP)?), (?:ESP|AH):")
_TRAFFIC_RE = re.compile(r"^\s+(?P<dir>in|out)\s+(?P<spi>[0-9a-f]{8})[^,\s]*(?:\s*\([^)]*\))?"
                         r"(?:,\s+(?P<bytes>\d+) bytes,\s+(?P<packets>\d+) packets)?")
_TS_RE = re.compile(r"^\s+(?P<side>local|remote)\s+(?P<ts>\d[\d./,: -]*\S)\s*$")
_IKE_ALGS_RE = re.compile(r"^\s+[A-Z0-9_]+(?:-\d+)?(?:/[A-Z0-9_-]+)+\s*$")


def parse_list_sas(text: str) -> list[dict]:
    """Parse ``swanctl --list-sas`` into [{IKE SA fields..., "children": [{...}]}]."""
    sas: list[dict] = []
    ike: dict | None = None
    child: dict | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _IKE_RE.match(line)
        if m and not line.startswith(" "):
            ike = {"name": m["name"], "uniqueid": int(m["uid"]), "state": m["state"],
                   "version": int(m["version"]), "spi_i": m["spi_i"], "spi_r": m["spi_r"],
                   "initiator": bool(m["i_star"]), "algorithms": None, "children": []}
            sas.append(ike)
            child = None
            continue
        if ike is None:
            continue
        m = _CHILD_RE.match(line)
        if m:
            mode = _CHILD_MODE_RE.search(line)
            child = {"name": m["name"], "uniqueid": int(m["uid"]), "reqid": int(m["reqid"]),
                     "state": m["state"], "mode": mode["mode"] if mode else m["mode"],
                     "algorithms": m["algs"], "spi_in": None, "spi_out": None,
                     "bytes_in": None, "packets_in": None, "bytes_out": None, "packets_out": None,
                     "local_ts": [], "remote_ts": []}
            ike["children"].append(child)
            continue
        m = _TRAFFIC_RE.match(line)
        if m and child is not None:
            d = m["dir"]
            child[f"spi_{d}"] = int(m["spi"], 16)
            if m["bytes"] is not None:
                child[f"bytes_{d}"] = int(m["bytes"])
                child[f"packets_{d}"] = int(m["packets"])
            continue
        m = _ENDPOINT_RE.match(line)
        if m and child is None:
            side = m["side"]
            ike[f"{side}_id"] = m["id"]
            ike[f"{side}_addr"] = m["addr"]
            ike[f"{side}_port"] = int(m["port"])
            continue
        m = _TS_RE.match(line)
        if m and child is not None:
            child[f"{m['side']}_ts"] = [t.strip() for t in m["ts"].split()]
            continue
        if child is None and ike["algorithms"] is None and _IKE_ALGS_RE.match(line):
            ike["algorithms"] = line.strip()
    return sas


def summarize(sas: list[dict], connection: str = CONNECTION, child_name: str = CHILD) -> dict:
    """A flat summary of the connection's (first established) IKE SA and its newest installed CHILD_SA."""
    out: dict = {"ike_state": None, "ike_algorithms": None, "child_state": None, "esp_algorithms": None,
                 "spi_in": None, "spi_out": None, "bytes_in": None, "packets_in": None,
                 "bytes_out": None, "packets_out": None, "ike_sas": sas}
    ikes = [s for s in sas if s["name"] == connection]
    if not ikes:
        return out
    ike = next((s for s in ikes if s["state"] == "ESTABLISHED"), ikes[0])
    out.update(ike_state=ike["state"], ike_algorithms=ike["algorithms"], ike_uniqueid=ike["uniqueid"],
               ike_spi_i=ike["spi_i"], ike_spi_r=ike["spi_r"], initiator=ike["initiator"],
               local_id=ike.get("local_id"), remote_id=ike.get("remote_id"),
               local_addr=ike.get("local_addr"), remote_addr=ike.get("remote_addr"),
               local_port=ike.get("local_port"), remote_port=ike.get("remote_port"))
    children = [c for c in ike["children"] if c["name"] == child_name]
    installed = [c for c in children if c["state"] == "INSTALLED"]
    if installed or children:
        c = max(installed or children, key=lambda c: c["uniqueid"])
        out.update(child_state=c["state"], child_mode=c["mode"], esp_algorithms=c["algorithms"],
                   child_uniqueid=c["uniqueid"], spi_in=c["spi_in"], spi_out=c["spi_out"],
                   bytes_in=c["bytes_in"], packets_in=c["packets_in"], bytes_out=c["bytes_out"],
                   packets_out=c["packets_out"], local_ts=c["local_ts"], remote_ts=c["remote_ts"])
    out["child_sas"] = len(children)
    return out


# --------------------------------------------------------------------------------------------------
# parsing the key log (Gotcha 3 of the reference)

# " 08[CHD] <lab|1> encryption initiator key => 36 bytes @ 0x7f..."  then hexdump lines
# " 08[CHD] <lab|1>    0: 7B 3C ...  {<..."
_LOG_RE = re.compile(r"^(?:\S+ )?\s*(?P<thread>\d+)\[(?P<group>[A-Z]+)\] (?:<(?P<ike>[^>]*)> )?(?P<msg>.*)$")
_KEY_HDR_RE = re.compile(r"^(?P<what>encryption (?:initiator|responder) key|Sk_e[ir] secret) => "
                         r"(?P<len>\d+) bytes")
_HEX_RE = re.compile(r"^\s*(?P<off>\d+): (?P<hex>(?:[0-9A-Fa-f]{2} ?)+)")
_PARSED_RE = re.compile(r"^(?:parsed|generating) (?P<ex>IKE_AUTH|CREATE_CHILD_SA) (?P<kind>request|response)")
_ADDING_RE = re.compile(r"^adding (?P<dir>inbound|outbound) ESP SA")
_SA_ADDR_RE = re.compile(r"^\s*SPI 0x(?P<spi>[0-9a-f]{8}), src (?P<src>\S+) dst (?P<dst>\S+)")
_ESTABLISHED_RE = re.compile(r"CHILD_SA (?P<child>\S+)\{(?P<uid>\d+)\} established with SPIs "
                             r"(?P<spi_i>[0-9a-f]{8})_i (?P<spi_o>[0-9a-f]{8})_o")


def parse_key_log(text: str) -> list[dict]:
    """CHILD_SAs in a key log: [{"child", "uniqueid", "initiator", "spi_in", "spi_out", "key_i", "key_r",
    "addrs": {spi: (src, dst)}}].

    charon derives a CHILD_SA's keys and then logs "established with SPIs x_i y_o" on the same
    thread; whether it is the CHILD_SA initiator follows from the exchange that thread last
    *parsed*: a response (we sent the request) or a request (we answer).
    """
    per_thread: dict[str, dict] = {}
    found: list[dict] = []
    pending_hex: tuple[str, str, int] | None = None  # (thread, key name, length)
    for line in text.splitlines():
        m = _LOG_RE.match(line)
        if not m:
            continue
        thread, msg = m["thread"], m["msg"]
        st = per_thread.setdefault(thread, {"keys": {}, "role": None, "buf": {}, "addrs": {}})
        if pending_hex and pending_hex[0] == thread:
            h = _HEX_RE.match(msg)
            if h:
                name = pending_hex[1]
                st["buf"][name] = st["buf"].get(name, b"") + bytes.fromhex(h["hex"].replace(" ", ""))
                if len(st["buf"][name]) >= pending_hex[2]:
                    st["keys"][name] = st["buf"].pop(name)[: pending_hex[2]]
                    pending_hex = None
                continue
        k = _KEY_HDR_RE.match(msg)
        if k:
            pending_hex = (thread, k["what"], int(k["len"]))
            st["buf"][k["what"]] = b""
            continue
        p = _PARSED_RE.match(msg)
        if p and msg.startswith("parsed"):
            st["role"] = "initiator" if p["kind"] == "response" else "responder"
            continue
        a = _SA_ADDR_RE.match(msg)
        if a:
            st["addrs"][int(a["spi"], 16)] = (a["src"], a["dst"])
            continue
        e = _ESTABLISHED_RE.search(msg)
        if e:
            ki = st["keys"].pop("encryption initiator key", None)
            kr = st["keys"].pop("encryption responder key", None)
            if ki is None or kr is None or st["role"] is None:
                continue  # log started mid-exchange; nothing usable
            spi_in, spi_out = int(e["spi_i"], 16), int(e["spi_o"], 16)
            addrs = {spi: st["addrs"].pop(spi) for spi in (spi_in, spi_out) if spi in st["addrs"]}
            found.append({"child": e["child"], "uniqueid": int(e["uid"]),
                          "initiator": st["role"] == "initiator", "spi_in": spi_in, "spi_out": spi_out,
                          "key_i": ki, "key_r": kr, "addrs": addrs})
    return found


def esp_keys_from_log(text: str, local_addr: str, remote_addr: str) -> list[dict]:
    """One entry per direction of every CHILD_SA: {"spi", "src", "dst", "key"(36 bytes), ...}.

    On the CHILD_SA initiator the initiator key seals its *outbound* SPI; on the responder the
    initiator key belongs to its *inbound* SPI.  src/dst are the addresses charon logged when it
    installed the SA ("adding inbound ESP SA"), falling back to the configured ones.
    """
    out = []
    for c in parse_key_log(text):
        k_out, k_in = (c["key_i"], c["key_r"]) if c["initiator"] else (c["key_r"], c["key_i"])
        for spi, key, direction, default in ((c["spi_out"], k_out, "out", (local_addr, remote_addr)),
                                             (c["spi_in"], k_in, "in", (remote_addr, local_addr))):
            src, dst = c["addrs"].get(spi, default)
            out.append({"spi": spi, "src": src, "dst": dst, "key": key, "direction": direction,
                        "child": c["child"], "uniqueid": c["uniqueid"],
                        "role": "initiator" if c["initiator"] else "responder"})
    return out


# --------------------------------------------------------------------------------------------------


class StrongSwan:
    """One charon instance in a lab site's gateway namespace, configured as connection "lab"/child "lan"."""

    def __init__(self, lab: Lab, site: str, workdir: Path, *, local_id: str, remote_id: str,
                 remote_site: str | None = None, remote_addr: str | None = None,
                 local_ts: list[str] | None = None, remote_ts: list[str] | None = None,
                 auth: str = "psk", psk: str | None = None, cert: Path | None = None,
                 key: Path | None = None, ca: Path | None = None, intermediates: list[Path] | None = None,
                 crls: list[Path] | None = None, fragmentation: bool = True, rsa_pss: bool = False,
                 reauth_time: str = "0s", make_before_break: bool = False,
                 ike_proposal: str = "aes256gcm16-prfsha256-curve25519", esp_proposal: str = "aes256gcm16",
                 ike_port: int = 4500, start_action: str = "none", dpd_delay: str = "10s",
                 rekey_time: str = "4h", child_rekey_time: str = "1h") -> None:
        self.lab = lab
        self.site = lab.site(site)
        self.node = self.site.gw
        if remote_site is None and remote_addr is None:
            others = [s.name for s in lab.topology.sites if s.name != site]
            if len(others) != 1:
                raise ValueError("give remote_site or remote_addr (the topology has several other sites)")
            remote_site = others[0]
        remote = lab.site(remote_site) if remote_site is not None else None
        if remote_addr is None:
            assert remote is not None
            remote_addr = str(remote.gw_wan4)
        if remote_ts is None:
            if remote is None:
                raise ValueError("remote_ts is required when the peer is given by remote_addr only")
            remote_ts = [str(remote.lan4)]
        if auth == "psk" and psk is None:
            psk = secrets.token_urlsafe(24)  # random; pass .psk to the peer
        self.peer = SwanPeer(
            name=site, workdir=Path(workdir), local_addr=str(self.site.gw_wan4), remote_addr=remote_addr,
            local_id=local_id, remote_id=remote_id, local_ts=list(local_ts or [str(self.site.lan4)]),
            remote_ts=list(remote_ts), auth=auth, psk=psk, cert=cert, key=key, ca=ca,
            intermediates=list(intermediates or []), crls=list(crls or []), fragmentation=fragmentation,
            rsa_pss=rsa_pss, reauth_time=reauth_time, make_before_break=make_before_break,
            ike_proposal=ike_proposal, esp_proposal=esp_proposal, ike_port=ike_port,
            start_action=start_action, dpd_delay=dpd_delay, rekey_time=rekey_time,
            child_rekey_time=child_rekey_time)
        self.peer.validate()
        self.proc: subprocess.Popen | None = None

    # -- convenience ----------------------------------------------------------------------------------
    @property
    def psk(self) -> str | None:
        return self.peer.psk

    @property
    def log_path(self) -> Path:
        return self.peer.log_path

    @property
    def keylog_path(self) -> Path:
        return self.peer.keylog_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        text = self.log_text()
        if text:
            parts.append("\n".join(text.splitlines()[-lines:]))
        if self.peer.out_path.exists():
            out = self.peer.out_path.read_text(errors="replace").strip()
            if out:
                parts.append("charon stdout/stderr:\n" + "\n".join(out.splitlines()[-10:]))
        return "\n".join(parts) or "(charon log is empty)"

    def _error(self, what: str) -> StrongSwanError:
        return StrongSwanError(f"strongSwan on {self.node} ({self.lab.ns(self.node)}): {what}\n"
                               f"--- tail of {self.log_path} ---\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Write the configs, start charon in a private mount namespace, wait for vici, load the config."""
        if self.running():
            raise self._error(f"already running (pid {self.proc.pid})")
        self.peer.write()
        self.proc = launch_charon(self.lab, self.node, self.peer.conf_path, self.peer.run_dir, self.peer.out_path)
        deadline = time.monotonic() + timeout
        while not self.peer.vici_path.exists():
            if self.proc.poll() is not None:
                raise self._error(f"charon exited with {self.proc.returncode} before opening vici")
            if time.monotonic() > deadline:
                raise self._error(f"no vici socket {self.peer.vici_path} after {timeout}s")
            time.sleep(0.02)
        # the socket file appears before charon accepts; retry until --load-all gets through
        while True:
            cp = self._swanctl(["--load-all"], check=False, timeout=max(1.0, deadline - time.monotonic()))
            text = cp.stdout + cp.stderr
            if cp.returncode == 0 and f"loaded connection '{CONNECTION}'" in text:
                break
            connect_failed = "connecting to" in text and "failed" in text
            if not connect_failed or time.monotonic() > deadline or self.proc.poll() is not None:
                raise self._error(f"swanctl --load-all failed (exit {cp.returncode}):\n{text.strip()}")
            time.sleep(0.05)
        if re.search(r"^loading .* failed", text, re.M):
            raise self._error(f"swanctl --load-all reported a failure:\n{text.strip()}")
        if self.peer.auth == "pubkey" and not re.search(r"^loaded \S+ key from", text, re.M):
            raise self._error(f"swanctl --load-all loaded no private key:\n{text.strip()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Stop charon (SIGTERM makes it delete its SAs first); returns its exit code."""
        if self.proc is None:
            return None
        return self.lab.stop(self.proc, sig, timeout)

    # -- swanctl ------------------------------------------------------------------------------------
    def _swanctl(self, args: list[str], check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
        argv = ["env", *(f"{k}={v}" for k, v in self.peer.env.items()), SWANCTL, *args]
        try:
            cp = self.lab.run(self.node, argv, check=False, timeout=timeout)
        except CommandTimeout as exc:
            raise self._error(f"swanctl {' '.join(args)} timed out: {exc}") from None
        if check and cp.returncode != 0:
            raise self._error(f"swanctl {' '.join(args)} exited {cp.returncode}:\n"
                              f"{(cp.stdout + cp.stderr).strip()[-2000:]}")
        return cp

    def swanctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run any swanctl command against this instance and return its stdout."""
        return self._swanctl(list(args), timeout=timeout).stdout

    def initiate(self, timeout: float = 15.0) -> None:
        """Bring up IKE SA "lab" and CHILD_SA "lan" (blocks until established or failed)."""
        self._require_running()
        t = max(1, int(timeout))
        cp = self._swanctl(["--initiate", "--ike", CONNECTION, "--child", CHILD, "--timeout", str(t)],
                           check=False, timeout=timeout + 5)
        if cp.returncode != 0 or "initiate completed successfully" not in cp.stdout:
            raise self._error(f"initiate failed (exit {cp.returncode}):\n{(cp.stdout + cp.stderr).strip()[-2000:]}")

    def list_sas(self) -> str:
        return self._swanctl(["--list-sas"]).stdout

    def sa_summary(self) -> dict:
        return summarize(parse_list_sas(self.list_sas()))

    def rekey(self, what: str = "child", wait: bool = True, timeout: float = 10.0) -> None:
        """Rekey the CHILD_SA "lan" or the IKE SA "lab"; with ``wait`` until the new SA is up."""
        self._require_running()
        before = self.sa_summary()
        if what == "child":
            self._swanctl(["--rekey", "--child", CHILD])
            key, old = "child_uniqueid", before.get("child_uniqueid")
        elif what == "ike":
            self._swanctl(["--rekey", "--ike", CONNECTION])
            key, old = "ike_uniqueid", before.get("ike_uniqueid")
        else:
            raise ValueError("what must be 'child' or 'ike'")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            s = self.sa_summary()
            ok = s.get(key) not in (None, old) and s["ike_state"] == "ESTABLISHED"
            if ok and what == "child" and s["child_state"] == "INSTALLED":
                return
            if ok and what == "ike":
                return
            if time.monotonic() > deadline:
                raise self._error(f"{what} rekey did not complete within {timeout}s:\n{self.list_sas()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 10.0) -> None:
        """Delete the IKE SA "lab" (and its CHILD_SAs); waits for the peer's answer."""
        self._require_running()
        t = max(1, int(timeout))
        cp = self._swanctl(["--terminate", "--ike", CONNECTION, "--timeout", str(t)], check=False,
                           timeout=timeout + 5)
        if cp.returncode != 0:
            raise self._error(f"terminate failed (exit {cp.returncode}):\n{(cp.stdout + cp.stderr).strip()}")

    def _require_running(self) -> None:
        if not self.running():
            code = None if self.proc is None else self.proc.returncode
            raise self._error("charon is not running" + (f" (exit {code})" if code is not None else ""))

    # -- keys -----------------------------------------------------------------------------------------
    def esp_keys(self) -> list[dict]:
        """ESP keys of every CHILD_SA so far, one dict per direction, from the key log.

        ``{"spi": int, "src": str, "dst": str, "key": bytes}`` (36 bytes for AES-GCM-256: 32 key + 4
        salt, as scapy's ``SecurityAssociation(crypt_algo="AES-GCM", crypt_key=...)`` wants it), plus
        ``direction`` ("in"/"out" seen from this gateway), ``child`` and ``uniqueid``.
        """
        text = self.keylog_path.read_text(errors="replace") if self.keylog_path.exists() else ""
        return esp_keys_from_log(text, self.peer.local_addr, self.peer.remote_addr)

    def write_esp_sa(self, path: Path) -> Path:
        """Write esp_keys() as a Wireshark ``esp_sa`` file (put it in WIRESHARK_CONFIG_DIR for tshark)."""
        path = Path(path)
        path.write_text(esp_sa_rows(self.esp_keys()))
        return path


def esp_sa_rows(keys: list[dict]) -> str:
    """Wireshark's ``esp_sa`` UAT file (the format strongSwan's save-keys plugin writes) for esp_keys()."""
    return "".join(f'"IPv4","{k["src"]}","{k["dst"]}","0x{k["spi"]:08x}",'
                   f'"AES-GCM with 16 octet ICV [RFC4106]","0x{k["key"].hex()}","NULL",""\n' for k in keys)


def scapy_sas(keys: list[dict], encap_port: int = 4500) -> dict:
    """{spi: scapy SecurityAssociation} for esp_keys() output (imports scapy lazily)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    return {k["spi"]: SecurityAssociation(ESP, spi=k["spi"], crypt_algo="AES-GCM", crypt_key=k["key"],
                                          crypt_icv_size=16, tunnel_header=IP(src=k["src"], dst=k["dst"]),
                                          nat_t_header=UDP(sport=encap_port, dport=encap_port))
            for k in keys}


__all__ = ["StrongSwan", "SwanPeer", "StrongSwanError", "strongswan_installed", "parse_list_sas",
           "summarize", "parse_key_log", "esp_keys_from_log", "esp_sa_rows", "scapy_sas", "CONNECTION", "CHILD"]
