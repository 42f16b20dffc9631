"""What users would run instead of sitelink, set up between the two gateways of a tunnel-mode lab.

These are the *anchors* of the benchmark (``bench/compare.py``): wireguard-go, OpenVPN 2.6 and
strongSwan 5.9 with kernel-libipsec, all userspace data planes like ours, configured exactly as in
../shared/reference/anchors.md so that a ratio against them compares like with like.

Each anchor is one small class with the same shape::

    anchor = WireguardGo(lab, workdir)     # nothing runs yet; unavailable() says what is missing
    anchor.start()                         # daemons on both gateways, tunnel device, address, routes
    anchor.pids()                          # the gateway daemons (CPU accounting)
    anchor.stop()                          # SIGTERM both; lab teardown would kill them anyway

Every daemon is started through ``lab.popen`` so lab teardown kills it on every exit path.  In
``mode="tunnel"`` the gateways have no clear route between the LANs, so each anchor adds its own
tunnel device and a route to the peer LAN through it: LAN traffic goes through the tunnel or nowhere.
The lab must have exactly two sites (the two-sites topology).
"""

from __future__ import annotations

import base64
import datetime
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .lab import Lab, LabError
from .topology import Site

# Tunnel-internal addresses (only inside the gateway namespaces; never routed to the LANs).
_WG_NET = ("10.254.0.1", "10.254.0.2")
_OVPN_NET = ("10.254.1.1", "10.254.1.2")


class AnchorError(LabError):
    """An anchor could not be set up; the message says which step and carries the daemon's log tail."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _missing(*commands: str) -> str | None:
    gone = [c for c in commands if shutil.which(c) is None]
    return f"not installed: {', '.join(gone)}" if gone else None


def package_version(package: str) -> str | None:
    """The installed Debian package version (what the benchmark reports next to the figures)."""
    try:
        cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                            timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cp.stdout.strip() or None if cp.returncode == 0 else None


class Anchor:
    """Common plumbing: the two sites, a per-anchor workdir, the daemons, device/route helpers."""

    name = "anchor"
    label = "anchor"
    packages: tuple[str, ...] = ()

    def __init__(self, lab: Lab, workdir: Path) -> None:
        if len(lab.topology.sites) != 2:
            raise ValueError(f"{self.name}: the anchors link exactly two sites, the lab has "
                             f"{len(lab.topology.sites)}")
        if lab.mode != "tunnel":
            raise ValueError(f"{self.name}: needs a mode='tunnel' lab (plain mode already routes the LANs)")
        self.lab = lab
        self.a, self.b = lab.topology.sites
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def unavailable(cls) -> str | None:
        """None if this anchor can run here, else why not (a missing package or binary)."""
        raise NotImplementedError

    @classmethod
    def version(cls) -> str | None:
        versions = [f"{p} {v}" for p in cls.packages if (v := package_version(p))]
        return ", ".join(versions) or None

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """PIDs of the gateway daemons (both sites) that are still running."""
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.lab.stop(p, signal.SIGTERM, timeout=5)

    # -- helpers --------------------------------------------------------------------------------------
    def _popen(self, site: Site, argv: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            proc = self.lab.popen(site.gw, argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _ip(self, site: Site, *args: str) -> None:
        self.lab.run(site.gw, ["ip", *args], timeout=10)

    def _wait_link(self, site: Site, ifname: str, proc: subprocess.Popen, log: Path,
                   timeout: float = 10.0) -> None:
        """Wait until the daemon created its tunnel device (it exists before the daemon is configured)."""
        self._wait(site, proc, log, f"device {ifname}", timeout, lambda: self.lab.run(
            site.gw, ["ip", "-o", "link", "show", "dev", ifname], check=False, timeout=5).returncode == 0)

    def _wait(self, site: Site, proc: subprocess.Popen, log: Path, what: str, timeout: float,
              ready: Callable[[], bool]) -> None:
        """Poll until ready(); a daemon that exits first, or a timeout, is an AnchorError with its log."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AnchorError(f"{self.name} on {site.gw} exited with {proc.returncode} before its "
                                  f"{what} appeared:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise AnchorError(f"{self.name} on {site.gw}: no {what} after {timeout}s:\n{_tail(log)}")
            time.sleep(0.01)

    def _route_peer_lan(self, site: Site, peer: Site, ifname: str) -> None:
        self._ip(site, "route", "add", str(peer.lan4), "dev", ifname)


# --------------------------------------------------------------------------------------------------


class WireguardGo(Anchor):
    """wireguard-go (Debian 0.0.20220316) with one peer per side, UDP 51820, keys made here.

    The UAPI socket ``/var/run/wireguard/<ifname>.sock`` lives in the shared file system, not in the
    namespace, so both interfaces (and those of any other lab running on this machine) need distinct
    names: they carry the lab's random prefix.
    """

    name = "wireguard-go"
    label = "wireguard-go"
    packages = ("wireguard-go", "wireguard-tools")
    PORT = 51820
    SOCKET_DIR = Path("/var/run/wireguard")

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        tag = lab.prefix[-6:]
        self.ifnames = {self.a.name: f"wg{tag}a", self.b.name: f"wg{tag}b"}  # <= 15 chars
        self.keys = {s.name: _x25519_keypair() for s in (self.a, self.b)}

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("wireguard-go", "wg")

    def start(self) -> None:
        procs = {}
        for site in (self.a, self.b):
            log = self.workdir / f"{site.name}.log"
            ifname = self.ifnames[site.name]
            # env execs wireguard-go, so the Popen's pid is the daemon itself
            procs[site.name] = self._popen(site, ["env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", ifname], log)
        # The second site first: a handshake the first site sends before its peer has keys is lost and
        # only retried after REKEY_TIMEOUT (5 s), which would count as setup time.
        for site, peer, (addr, peer_addr) in ((self.b, self.a, _WG_NET[::-1]), (self.a, self.b, _WG_NET)):
            ifname = self.ifnames[site.name]
            self._wait_socket(site, ifname, procs[site.name])
            conf = self.workdir / f"{site.name}.conf"
            conf.write_text(f"[Interface]\nPrivateKey = {self.keys[site.name][0]}\nListenPort = {self.PORT}\n\n"
                            f"[Peer]\nPublicKey = {self.keys[peer.name][1]}\n"
                            f"Endpoint = {peer.gw_wan4}:{self.PORT}\n"
                            f"AllowedIPs = {peer.lan4}, {peer_addr}/32\n")
            conf.chmod(0o600)
            self.lab.run(site.gw, ["wg", "setconf", ifname, str(conf)], timeout=10)
            self._ip(site, "address", "add", f"{addr}/24", "dev", ifname)
            self._ip(site, "link", "set", ifname, "up")
            self._route_peer_lan(site, peer, ifname)

    def _wait_socket(self, site: Site, ifname: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        sock = self.SOCKET_DIR / f"{ifname}.sock"
        self._wait(site, proc, self.workdir / f"{site.name}.log", f"UAPI socket {sock}", timeout, sock.exists)

    def stop(self) -> None:
        super().stop()
        self.remove_sockets()

    def remove_sockets(self) -> None:
        """A SIGKILLed wireguard-go leaves its socket behind; the names are ours (lab prefix), so remove them."""
        for ifname in self.ifnames.values():
            (self.SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)


def _x25519_keypair() -> tuple[str, str]:
    """(private, public) as WireGuard writes them: base64 of the raw 32-byte X25519 keys."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = X25519PrivateKey.generate()
    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


# --------------------------------------------------------------------------------------------------


class OpenVpn(Anchor):
    """OpenVPN 2.6 point-to-point over UDP 1194: TLS with self-signed P-256 certificates pinned by
    ``--peer-fingerprint`` (no CA), AES-256-GCM data channel, no DCO (there is no ovpn-dco module here,
    and DCO would not be a userspace data plane).  The first site is the TLS server."""

    name = "openvpn"
    label = "OpenVPN"
    packages = ("openvpn",)
    PORT = 1194
    IFNAME = "ovpn0"  # device names are per namespace

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        self.certs = {s.name: _self_signed_p256(self.workdir, s.name) for s in (self.a, self.b)}

    @classmethod
    def unavailable(cls) -> str | None:
        return _missing("openvpn")

    def start(self) -> None:
        procs = {}
        for site, peer, role, (addr, peer_addr) in ((self.a, self.b, ["--tls-server", "--dh", "none"], _OVPN_NET),
                                                     (self.b, self.a, ["--tls-client"], _OVPN_NET[::-1])):
            cert, key, _ = self.certs[site.name]
            argv = ["openvpn", "--dev", self.IFNAME, "--dev-type", "tun", "--disable-dco",
                    "--proto", "udp", "--local", str(site.gw_wan4), "--lport", str(self.PORT),
                    "--remote", str(peer.gw_wan4), "--rport", str(self.PORT),
                    "--ifconfig", addr, peer_addr, *role,  # --dh none: ECDHE only (server side)
                    "--cert", str(cert), "--key", str(key),
                    "--peer-fingerprint", self.certs[peer.name][2],
                    "--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM",
                    "--verb", "3"]
            procs[site.name] = self._popen(site, argv, self.workdir / f"{site.name}.log")
        for site, peer in ((self.a, self.b), (self.b, self.a)):
            self._wait_link(site, self.IFNAME, procs[site.name], self.workdir / f"{site.name}.log")
            self._wait_address(site, procs[site.name])
            self._route_peer_lan(site, peer, self.IFNAME)

    def _wait_address(self, site: Site, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        """OpenVPN creates the device, then configures it; a route added in between would fail (device down)."""
        deadline = time.monotonic() + timeout
        while True:
            cp = self.lab.run(site.gw, ["ip", "-o", "-4", "address", "show", "dev", self.IFNAME, "up"],
                              check=False, timeout=5)
            if cp.returncode == 0 and "inet " in cp.stdout:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AnchorError(f"openvpn on {site.gw}: {self.IFNAME} not configured "
                                  f"(exit {proc.returncode}):\n{_tail(self.workdir / f'{site.name}.log')}")
            time.sleep(0.01)


def _self_signed_p256(workdir: Path, name: str) -> tuple[Path, Path, str]:
    """(cert path, key path, SHA-256 fingerprint as AB:CD:..) of a fresh self-signed P-256 certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.bench.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / f"{name}.crt", workdir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    fingerprint = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    return cert_path, key_path, fingerprint


# --------------------------------------------------------------------------------------------------


class StrongSwanPair(Anchor):
    """strongSwan 5.9 (charon, kernel-libipsec) on both gateways: IKEv2 PSK, AES-256-GCM for IKE and
    ESP, ESP in UDP 4500; the first site initiates.  The whole setup — configs, the private /run per
    instance, routes to the peer LAN in table 220 via ipsec0 — is :class:`netnslab.strongswan.StrongSwan`,
    the same class the interop tests use against sitelink."""

    name = "strongswan"
    label = "strongSwan kernel-libipsec"
    packages = ("strongswan-charon", "strongswan-swanctl")

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        from .strongswan import StrongSwan

        ids = {s.name: f"@{s.name}.bench.test" for s in (self.a, self.b)}
        self.swan_a = StrongSwan(lab, self.a.name, self.workdir / "a", remote_site=self.b.name,
                                 local_id=ids[self.a.name], remote_id=ids[self.b.name])
        self.swan_b = StrongSwan(lab, self.b.name, self.workdir / "b", remote_site=self.a.name,
                                 local_id=ids[self.b.name], remote_id=ids[self.a.name], psk=self.swan_a.psk)

    @classmethod
    def unavailable(cls) -> str | None:
        from .strongswan import strongswan_installed

        return strongswan_installed()

    def start(self) -> None:
        self.swan_b.start()  # the responder first
        self.swan_a.start()
        self.swan_a.initiate()

    def pids(self) -> list[int]:
        # StrongSwan execs charon in place of the unshare/sh wrappers: the Popen's pid is charon
        return [s.proc.pid for s in (self.swan_a, self.swan_b) if s.running()]

    def stop(self) -> None:
        for s in (self.swan_a, self.swan_b):
            if s.running():
                s.stop()


ANCHORS: dict[str, type[Anchor]] = {cls.name: cls for cls in (WireguardGo, OpenVpn, StrongSwanPair)}

__all__ = ["Anchor", "AnchorError", "ANCHORS", "OpenVpn", "StrongSwanPair", "WireguardGo", "package_version"]
