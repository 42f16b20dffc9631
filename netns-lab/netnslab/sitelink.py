"""Run real `sitelink up` gateways in a lab: key files, per-site configs, start/stop, counters.

Every site gets a tunnel to every other site (a full mesh). Keying is IKEv2 with a pre-shared key
(default) or with certificates from `sitelink pki`, or manually keyed SAs (`sitelink manual-keys`), so
the configs and key files the lab uses are the same ones an admin would write. Of each pair, the site
listed first initiates and the other responds.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Lab, LabError
from .topology import Site

TUN_NAME = "sitelink0"
_COUNTERS = re.compile(r"counters tunnel=(?P<tunnel>\S+) (?P<fields>.*)$")


class GatewayError(LabError):
    """A sitelink gateway did not start or stop as expected; carries the tail of its log."""


@dataclass
class Gateway:
    site: Site
    config: Path
    log: Path
    proc: subprocess.Popen | None = None
    keys: dict[str, Path] = field(default_factory=dict)  # tunnel name -> key file

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def sitelink_command() -> list[str]:
    """The `sitelink` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("sitelink")
    if script.exists():
        return [str(script)]
    found = shutil.which("sitelink")
    if found is None:
        raise GatewayError("the sitelink command is not installed (pip install -e .)")
    return [found]


def parse_counters(text: str) -> dict[str, dict[str, object]]:
    """The last `counters` log line per tunnel: {tunnel: {tx_packets: int, ..., drops: {reason: n}}}."""
    result: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        match = _COUNTERS.search(line)
        if not match:
            continue
        fields: dict[str, object] = {}
        for item in match["fields"].split():
            key, _, value = item.partition("=")
            if key == "drops":
                fields[key] = {} if value == "none" else {k: int(v) for k, v in (p.split(":") for p in value.split(","))}
            else:
                fields[key] = int(value)
        result[match["tunnel"]] = fields
    return result


class Deployment:
    """sitelink gateways for every site of a lab (tunnel mode)."""

    def __init__(self, lab: Lab, workdir: Path, log_level: str = "info", keying: str = "psk",
                 esp_key_log: bool = False, ike_proposals: list[str] | None = None,
                 initiators: set[tuple[str, str]] | None = None, start_mode: str = "initiate",
                 ike_options: dict[str, int] | None = None, esp_proposals: list[str] | None = None,
                 peer_address_overrides: dict[tuple[str, str], str] | None = None, workers: int = 1,
                 gateway_yaml: list[str] | None = None, tunnel_yaml: list[str] | None = None,
                 services_yaml: list[str] | None = None, pairs: set[tuple[str, str]] | None = None,
                 subnets: dict[tuple[str, str], tuple[list[str], list[str]]] | None = None,
                 listen: dict[str, str] | None = None, pki: dict[str, str] | None = None) -> None:
        """initiators: (site, peer) pairs where site initiates; default: the first-listed site of each pair.
        peer_address_overrides: {(site, peer): address} writes that address into site's config for peer
        instead of the peer's WAN address (e.g. lab.nat_public_address(peer) when peer is behind the NAT).
        A site the lab runs something else on (e.g. strongSwan) simply is not started.
        gateway_yaml / tunnel_yaml: extra YAML lines for every gateway: section / tunnel entry (e.g.
        "qos: {scheduler: fifo}", "firewall: {default: deny, rules: [...]}"); services_yaml: a top-level
        services: section's lines. pairs: the site pairs that get a tunnel (default: every pair, a full
        mesh; hub_and_spoke() gives a hub's). subnets: {(site, peer): (local, remote)} for that site's
        tunnel to peer instead of the two sites' LAN subnets (summaries, a full tunnel's 0.0.0.0/0). listen:
        {site: YAML for gateway.listen.address} instead of the site's IPv4 WAN address (IPv6, dual stack).
        pki: {site: YAML flow mapping for gateway.pki} (keying cert) instead of the lab's one-CA PKI (a
        company PKI with intermediates and CRLs made by the test)."""
        if keying not in ("psk", "cert", "manual"):
            raise ValueError(f"keying must be psk, cert or manual, not {keying!r}")
        self.lab = lab
        self.keying = keying
        self.esp_key_log = esp_key_log
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command = sitelink_command()
        self.initiators: set[tuple[str, str]] = set()
        self.ike_proposals = ike_proposals
        self.esp_proposals = esp_proposals
        self.start_mode = start_mode  # what initiating sites use: initiate | on-demand
        self.ike_options = ike_options or {}  # extra keys of each tunnel's ike: mapping (lifetimes, dpd_delay)
        self.peer_address_overrides = dict(peer_address_overrides or {})
        self.workers = workers  # gateway.workers: data-plane processes per gateway
        self.gateway_yaml = list(gateway_yaml or [])
        self.tunnel_yaml = list(tunnel_yaml or [])
        self.services_yaml = list(services_yaml or [])
        self.subnets = dict(subnets or {})
        self.listen = dict(listen or {})
        sites = lab.topology.sites
        self.gateways: dict[str, Gateway] = {
            s.name: Gateway(s, self.workdir / f"{s.name}.yaml", self.workdir / f"{s.name}.log") for s in sites
        }
        self.pki = dict(pki or {})
        if keying == "cert" and not self.pki:
            self._make_pki(sites)
        for i, a in enumerate(sites):
            for b in sites[i + 1 :]:
                if pairs is not None and (a.name, b.name) not in pairs and (b.name, a.name) not in pairs:
                    continue
                if initiators is None:
                    self.initiators.add((a.name, b.name))
                self._make_keys(a, b)
        if initiators is not None:
            self.initiators = set(initiators)
        for gw in self.gateways.values():
            gw.config.write_text(self._config_text(gw, log_level))

    def _make_keys(self, a: Site, b: Site) -> None:
        if self.keying == "cert":
            self.gateways[a.name].keys.setdefault(b.name, self.workdir / "pki")
            self.gateways[b.name].keys.setdefault(a.name, self.workdir / "pki")
            return
        if self.keying == "psk":
            ka, kb = self.workdir / f"{a.name}-{b.name}.psk", self.workdir / f"{b.name}-{a.name}.psk"
            psk = base64.b64encode(secrets.token_bytes(32)) + b"\n"
            for path in (ka, kb):
                write_secret(path, psk)
        else:
            ka, kb = self.workdir / f"{a.name}-{b.name}.keys", self.workdir / f"{b.name}-{a.name}.keys"
            subprocess.run([*self.command, "manual-keys", str(ka), str(kb)], check=True, capture_output=True, timeout=30)
        self.gateways[a.name].keys[b.name] = ka
        self.gateways[b.name].keys[a.name] = kb

    def _make_pki(self, sites) -> None:
        pki = self.workdir / "pki"
        def run(*argv: str) -> None:
            subprocess.run([*self.command, "pki", *argv], check=True, capture_output=True, timeout=60)

        run("ca", str(pki), "--name", "sitelink lab CA")
        for site in sites:
            run("issue", "--ca-dir", str(pki), "--out", str(pki / site.name), "--id", identity(site.name))
            for a in sites:
                if a is not site:
                    self.gateways[site.name].keys[a.name] = pki / site.name
    def _config_text(self, gw: Gateway, log_level: str) -> str:
        s = gw.site
        tun_addrs = [f"{s.gw_lan4}/32"] + ([f"{s.gw_lan6}/128"] if s.has_v6 else [])
        lines = [
            f"# sitelink gateway for site {s.name}, written by netns-lab",
            "gateway:",
            f"  name: {s.name}",
            f"  listen: {{address: {self.listen.get(s.name, s.gw_wan4)}, port: 4500}}",
            f"  tun: {{name: {TUN_NAME}, wan_mtu: {self.lab.topology.mtu}, addresses: [{', '.join(tun_addrs)}]}}",
            f"  log_level: {log_level}",
            f"  control_socket: {self.control_socket(s.name)}",  # one per lab gateway, not /run/sitelink/<name>
            f"  state_dir: {self.workdir / (s.name + '-state')}",  # not /var/lib/sitelink
        ]
        if self.workers > 1:
            lines.append(f"  workers: {self.workers}")
        lines += [f"  {line}" for line in self.gateway_yaml]
        if self.keying == "cert" and s.name in self.pki:
            lines.append(f"  pki: {self.pki[s.name]}")
        elif self.keying == "cert" and not self.pki:  # (with a test's own PKI, sites it omits do not run)
            pki = self.workdir / "pki"
            lines.append(f"  pki: {{ca: {pki / 'ca.crt'}, certificate: {_one(pki / s.name, '*.crt')}, "
                         f"private_key: {_one(pki / s.name, '*.key')}}}")
        if self.services_yaml:
            lines.append("services:")
            lines += [f"  {line}" for line in self.services_yaml]
        lines.append("tunnels:")
        for peer_name, keyfile in gw.keys.items():
            p = self.gateways[peer_name].site
            local, remote = self.subnets.get((s.name, peer_name), (_subnets(s), _subnets(p)))
            lines += [
                f"  - name: {peer_name}",
                f"    peer: {{address: {self.peer_address_overrides.get((s.name, peer_name), p.gw_wan4)}, port: 4500}}",
                f"    local_subnets: [{', '.join(map(_quoted, local))}]",
                f"    remote_subnets: [{', '.join(map(_quoted, remote))}]",
                *(f"    {line}" for line in self.tunnel_yaml),
            ]
            if self.keying == "manual":
                lines.append(f"    manual_keys: {keyfile.name}")
                continue
            start = self.start_mode if (s.name, peer_name) in self.initiators else "respond"
            auth = f"auth: psk, psk_file: {keyfile.name}" if self.keying == "psk" else "auth: cert"
            proposals = f", ike_proposals: [{', '.join(self.ike_proposals)}]" if self.ike_proposals else ""
            if self.esp_proposals:
                proposals += f", esp_proposals: [{', '.join(self.esp_proposals)}]"
            proposals += "".join(f", {key}: {value}" for key, value in self.ike_options.items())
            lines.append(f"    ike: {{{auth}, local_id: {identity(s.name)}, remote_id: {identity(peer_name)}, "
                         f"start: {start}{proposals}}}")
        return "\n".join(lines) + "\n"

    # -- processes ------------------------------------------------------------------------------------
    def launch(self, site: str) -> Gateway:
        """Start `sitelink up` in the site's gateway namespace without waiting for it (see start())."""
        gw = self.gateways[site]
        if gw.proc is not None and gw.proc.poll() is None:
            raise GatewayError(f"gateway {site} is already running (pid {gw.proc.pid})")
        argv = [*self.command, "up", str(gw.config)]
        if self.esp_key_log:
            argv += ["--esp-key-log", str(self.esp_keys_path(site))]
        with gw.log.open("a") as log:
            gw.proc = self.lab.popen(site_gw(gw), argv, stdout=log, stderr=log)
        return gw

    def start(self, site: str, timeout: float = 10.0) -> Gateway:
        """Start `sitelink up` in the site's gateway namespace and wait until its TUN device is up."""
        gw = self.launch(site)
        self._wait_ready(gw, timeout)
        return gw

    def launch_all(self, timeout: float = 10.0) -> None:
        """Start every gateway at once (no order, as sites come up on their own), then wait until each
        is serving."""
        for site in self.gateways:
            self.launch(site)
        for gw in self.gateways.values():
            self._wait_ready(gw, timeout)

    def _wait_ready(self, gw: Gateway, timeout: float) -> None:
        site = gw.site.name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if gw.proc is None or gw.proc.poll() is not None:
                code = gw.proc.returncode if gw.proc is not None else None
                raise GatewayError(f"gateway {site} exited with {code}:\n{gw.log_text()[-2000:]}")
            if "listening on" in gw.log_text() and self._tun_up(gw):
                return
            time.sleep(0.02)
        raise GatewayError(f"gateway {site} not ready after {timeout}s:\n{gw.log_text()[-2000:]}")

    def start_all(self, established: bool = True, timeout: float = 15.0) -> None:
        """Start every gateway; unless told otherwise, wait until every tunnel has a Child SA."""
        initiating = {a for a, _ in self.initiators}
        for site in sorted(self.gateways, key=lambda name: name in initiating):  # responders first
            self.start(site)
        if established and self.keying != "manual":
            for site in self.gateways:
                self.wait_established(site, timeout)

    def wait_established(self, site: str, timeout: float = 15.0, count: int | None = None) -> float:
        """Wait until the site logged a Child SA for each tunnel and worker (every worker has Child SAs of
        its own, so a flow hashed to any of them finds one), or `count` in all; returns seconds waited."""
        gw = self.gateways[site]
        want = count if count is not None else len(gw.keys) * self.workers
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if gw.log_text().count("Child SA established") >= want:
                return time.monotonic() - t0
            if gw.proc is not None and gw.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise GatewayError(f"gateway {site}: no Child SA within {timeout}s:\n{gw.log_text()[-3000:]}")

    def control_socket(self, site: str) -> Path:
        return self.workdir / f"{site}.sock"

    def sitelink(self, site: str, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run a `sitelink` control command (status, initiate, ...) against the site's gateway."""
        return subprocess.run([*self.command, *args, "--socket", str(self.control_socket(site))],
                              capture_output=True, text=True, timeout=timeout)

    def down(self, site: str) -> subprocess.CompletedProcess:
        """`sitelink down` in the site's gateway namespace: remove its (stopped) TUN device and routes."""
        gw = self.gateways[site]
        return self.lab.run(f"{site}-gw", [*self.command, "down", "-c", str(gw.config)], check=False)

    def esp_keys_path(self, site: str) -> Path:
        return self.workdir / f"{site}.esp_sa"

    def stop(self, site: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        gw = self.gateways[site]
        if gw.proc is None:
            raise GatewayError(f"gateway {site} was not started")
        return self.lab.stop(gw.proc, sig, timeout)

    def counters(self, site: str, timeout: float = 5.0) -> dict[str, dict[str, object]]:
        """Ask a running gateway for its counters (SIGUSR1) and parse what it logs."""
        gw = self.gateways[site]
        before = gw.log_text().count("counters tunnel=(none)")
        gw.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = gw.log_text()
            if text.count("counters tunnel=(none)") > before:
                return parse_counters(text)
            time.sleep(0.05)
        raise GatewayError(f"gateway {site} logged no counters within {timeout}s")

    def _tun_up(self, gw: Gateway) -> bool:
        out = self.lab.run(site_gw(gw), ["ip", "-o", "link", "show", "dev", TUN_NAME], check=False, timeout=5)
        return out.returncode == 0 and ",UP" in out.stdout


def write_secret(path: Path, data: bytes) -> Path:
    """A key file as sitelink wants it: new (never overwritten), mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def identity(site: str) -> str:
    return f"{site}.lab.test"


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise GatewayError(f"expected one {pattern} in {directory}, found {[p.name for p in found]}")
    return found[0]


def site_gw(gw: Gateway) -> str:
    return gw.site.gw


def _quoted(subnet: str) -> str:
    return f"'{subnet}'" if ":" in subnet else subnet  # YAML: '::/0' would be a mapping key otherwise


def hub_and_spoke(lab: Lab, hub: str, summary: str = "10.0.0.0/8",
                  full_tunnel: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deployment arguments for a hub and the lab's other sites as its branches: one tunnel per branch,
    to the hub only, the branch initiating. A branch reaches the hub and every other branch through the
    hub by one summary route (spoke to spoke), or with full_tunnel sends everything (0.0.0.0/0) through
    the hub, which offers it every destination (local 0.0.0.0/0)."""
    branches = [s for s in lab.topology.sites if s.name != hub]
    subnets: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for branch in branches:
        everything = branch.name in full_tunnel
        subnets[(branch.name, hub)] = (_subnets(branch), ["0.0.0.0/0"] if everything else [summary])
        subnets[(hub, branch.name)] = (["0.0.0.0/0"] if everything else [summary], _subnets(branch))
    return {"pairs": {(b.name, hub) for b in branches}, "initiators": {(b.name, hub) for b in branches},
            "subnets": subnets}


def _subnets(site: Site) -> list[str]:
    return [str(site.lan4)] + ([str(site.lan6)] if site.has_v6 else [])
