"""Scale-out: several HQ gateways (hubs), each terminating a share of the branches and announcing their
subnets by BGP, with BIRD, to the HQ core router, so that return traffic finds the hub that holds each
branch (README "Several hubs").

:func:`scale_out_topology` makes hubs ``hub1..N`` and branches ``branch1..M`` on the lab's WAN router
(site k: LAN 10.k.0.0/24, WAN 198.18.k.0/24). :class:`ScaleOut` adds the HQ side: a ``core`` router with
a transit link to each hub (10.254.k.0/24: core .1, hub .2) and the HQ ``server`` behind it
(10.100.0.0/24), one BIRD per hub and one in the core (eBGP: core AS 65000, hub k AS 65000+k), sitelink
on every gateway. Hubs announce (``gateway.announce``) the subnets of the branches whose tunnel is up on
them; branches list every hub (``peer.address``), each starting with a different one.
"""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import time
from pathlib import Path

from .lab import Lab, LabError
from .sitelink import TUN_NAME, sitelink_command, write_secret
from .topology import Topology, parse_topology

BIRD = "/usr/sbin/bird"
CORE_AS = 65000
ANNOUNCE_TABLE = 100
SERVER_NET = "10.100.0.0/24"
HUB_ID = "hq.lab.test"  # every hub authenticates as the one HQ


def scale_out_topology(hubs: int = 3, branches: int = 6) -> Topology:
    sites = []
    names = [f"hub{i}" for i in range(1, hubs + 1)] + [f"branch{i}" for i in range(1, branches + 1)]
    for k, name in enumerate(names, start=1):
        sites.append({"name": name,
                      "lan": {"subnet4": f"10.{k}.0.0/24", "host4": f"10.{k}.0.10", "gw4": f"10.{k}.0.1"},
                      "wan": {"subnet4": f"198.18.{k}.0/24", "router4": f"198.18.{k}.1", "gw4": f"198.18.{k}.2"}})
    return parse_topology({"name": "scale-out", "sites": sites}, source=f"scale_out_topology({hubs}, {branches})")


def bird_hub_config(router_id: str, asn: int, local: str, core: str, table: int = ANNOUNCE_TABLE,
                    log: str | None = None) -> str:
    """BIRD 2 on a hub (configs/scale-out/bird-hub.conf): the routes sitelink keeps in `table` for the
    tunnels up here, exported to the core; nothing imported."""
    return f"""\
{f'log "{log}" all;' if log else "log syslog all;"}
router id {router_id};

protocol device {{ }}

# sitelink's announcements (gateway.announce.table): the subnets of the branches up on this hub
protocol kernel sitelink_tunnels {{
    kernel table {table};
    learn;
    ipv4 {{ import all; export none; }};
}}

protocol bgp core {{
    local {local} as {asn};
    neighbor {core} as {CORE_AS};
    hold time 3;
    keepalive time 1;
    connect retry time 1;
    ipv4 {{ import none; export all; next hop self; }};
}}
"""


def bird_core_config(router_id: str, hubs: list[tuple[str, str, int]], log: str | None = None) -> str:
    """BIRD 2 on the HQ core router (configs/scale-out/bird-core.conf): one eBGP session per hub
    (local address, hub address, hub AS); what they announce goes into the kernel's main table."""
    sessions = "\n".join(f"""\
protocol bgp hub{i} {{
    local {local} as {CORE_AS};
    neighbor {hub} as {asn};
    hold time 3;
    keepalive time 1;
    connect retry time 1;
    ipv4 {{ import all; export none; }};
}}
""" for i, (local, hub, asn) in enumerate(hubs, start=1))
    return f"""\
{f'log "{log}" all;' if log else "log syslog all;"}
router id {router_id};

protocol device {{ }}

protocol kernel {{
    ipv4 {{ import none; export all; }};
}}

{sessions}"""


class ScaleOut:
    def __init__(self, lab: Lab, workdir: Path, dpd_delay: int = 1, retransmit: tuple[float, int] = (0.5, 2)) -> None:
        self.lab, self.workdir = lab, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command = sitelink_command()
        sites = lab.topology.sites
        self.hubs = [s for s in sites if s.name.startswith("hub")]
        self.branches = [s for s in sites if s.name.startswith("branch")]
        if not self.hubs or not self.branches:
            raise LabError("a scale-out lab needs hub* and branch* sites (scale_out_topology)")
        self.dpd_delay, self.retransmit = dpd_delay, retransmit
        self.procs: dict[str, subprocess.Popen] = {}
        self._starts: dict[str, int] = {}  # "control socket" lines in a gateway's log before its last start
        self._wire()
        self._write_configs()

    # -- addresses ----------------------------------------------------------------------------------------
    @staticmethod
    def transit(k: int) -> tuple[str, str]:
        """(core, hub) addresses of hub k's transit link (k from 1)."""
        return f"10.254.{k}.1", f"10.254.{k}.2"

    def hub_order(self, j: int) -> list[int]:
        """Branch j's hubs (indexes from 0), in the order it tries them: each branch starts elsewhere."""
        n = len(self.hubs)
        first = (j * n) // len(self.branches)
        return [(first + i) % n for i in range(n)]

    # -- wiring -------------------------------------------------------------------------------------------
    def _wire(self) -> None:
        lab = self.lab
        lab.add_node("core")
        lab.add_node("server", forwarding=False)
        lab.run("core", ["ip", "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", lab.ns("server")])
        lab.run("core", ["ip", "addr", "add", "10.100.0.1/24", "dev", "srv0"])
        lab.run("core", ["ip", "link", "set", "srv0", "up"])
        lab.run("server", ["ip", "addr", "add", "10.100.0.10/24", "dev", "eth0"])
        lab.run("server", ["ip", "link", "set", "eth0", "up"])
        lab.run("server", ["ip", "route", "add", "default", "via", "10.100.0.1"])
        for k, hub in enumerate(self.hubs, start=1):
            core_ip, hub_ip = self.transit(k)
            lab.run("core", ["ip", "link", "add", f"to-{hub.name}", "type", "veth", "peer", "name", "core0",
                             "netns", lab.ns(hub.gw)])
            lab.run("core", ["ip", "addr", "add", f"{core_ip}/24", "dev", f"to-{hub.name}"])
            lab.run("core", ["ip", "link", "set", f"to-{hub.name}", "up"])
            lab.run(hub.gw, ["ip", "addr", "add", f"{hub_ip}/24", "dev", "core0"])
            lab.run(hub.gw, ["ip", "link", "set", "core0", "up"])
            lab.run(hub.gw, ["ip", "route", "add", SERVER_NET, "via", core_ip])
        for k in range(1, len(self.hubs) + 1):
            lab.wait_reaches("core", self.transit(k)[1])
        lab.wait_reaches("server", "10.100.0.1")

    # -- configuration ------------------------------------------------------------------------------------
    def path(self, name: str, suffix: str) -> Path:
        return self.workdir / f"{name}.{suffix}"

    def _write_configs(self) -> None:
        timeout, tries = self.retransmit
        ike_common = (f"dpd_delay: {self.dpd_delay}, retransmit_timeout: {timeout:g}, retransmit_tries: {tries}")
        hub_tunnels: list[str] = []
        for j, branch in enumerate(self.branches):
            psk = self.path(f"{branch.name}", "psk")
            write_secret(psk, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            hub_tunnels += [
                f"  - name: {branch.name}",
                f"    peer: {{address: {branch.gw_wan4}, port: 4500}}",
                f"    local_subnets: ['{SERVER_NET}']",
                f"    remote_subnets: ['{branch.lan4}']",
                f"    ike: {{auth: psk, psk_file: {psk}, local_id: {HUB_ID}, remote_id: {branch.name}.lab.test, "
                f"start: respond, {ike_common}}}",
            ]
            hubs = ", ".join(str(self.hubs[i].gw_wan4) for i in self.hub_order(j))
            self.path(branch.name, "yaml").write_text("\n".join([
                *self._gateway_lines(branch),
                "tunnels:",
                "  - name: hq",
                f"    peer: {{address: [{hubs}], port: 4500}}",
                f"    local_subnets: ['{branch.lan4}']",
                f"    remote_subnets: ['{SERVER_NET}']",
                f"    ike: {{auth: psk, psk_file: {psk}, local_id: {branch.name}.lab.test, remote_id: {HUB_ID}, "
                f"start: initiate, {ike_common}}}",
            ]) + "\n")
        for k, hub in enumerate(self.hubs, start=1):
            lines = [*self._gateway_lines(hub), f"  announce: {{table: {ANNOUNCE_TABLE}}}", "tunnels:", *hub_tunnels]
            self.path(hub.name, "yaml").write_text("\n".join(lines) + "\n")
            core_ip, hub_ip = self.transit(k)
            self.path(hub.name, "bird.conf").write_text(bird_hub_config(
                hub_ip, CORE_AS + k, hub_ip, core_ip, log=str(self.path(hub.name, "bird.log"))))
        self.path("core", "bird.conf").write_text(bird_core_config(
            "10.254.0.1", [(*self.transit(k), CORE_AS + k) for k in range(1, len(self.hubs) + 1)],
            log=str(self.path("core", "bird.log"))))

    def _gateway_lines(self, site) -> list[str]:
        return ["gateway:", f"  name: {site.name}", f"  listen: {{address: {site.gw_wan4}, port: 4500}}",
                f"  tun: {{name: {TUN_NAME}, addresses: [{site.gw_lan4}/32]}}",
                f"  control_socket: {self.path(site.name, 'sock')}",
                f"  state_dir: {self.workdir / (site.name + '-state')}",
                "  metrics: {enabled: false}"]

    # -- processes ----------------------------------------------------------------------------------------
    def start_bird(self, node: str, name: str) -> None:
        argv = [BIRD, "-f", "-c", str(self.path(name, "bird.conf")), "-s", str(self.path(name, "bird.ctl")),
                "-P", str(self.path(name, "bird.pid"))]
        with self.path(name, "bird.out").open("a") as out:
            self.procs[f"bird-{name}"] = self.lab.popen(node, argv, stdout=out, stderr=subprocess.STDOUT)

    def start_sitelink(self, site) -> None:
        """Start (or restart) `sitelink up`; wait_started() waits until it answers."""
        self._starts[site.name] = self.log_text(site.name).count("control socket")
        with self.path(site.name, "log").open("a") as log:
            self.procs[site.name] = self.lab.popen(site.gw, [*self.command, "up", str(self.path(site.name, "yaml"))],
                                                   stdout=log, stderr=log)

    def log_text(self, name: str) -> str:
        path = self.path(name, "log")
        return path.read_text(errors="replace") if path.exists() else ""

    def start_all(self) -> None:
        self.start_bird("core", "core")
        for hub in self.hubs:
            self.start_bird(hub.gw, hub.name)
            self.start_sitelink(hub)
        for hub in self.hubs:
            self.wait_started(hub)
        for branch in self.branches:
            self.start_sitelink(branch)

    def wait_started(self, site, timeout: float = 10.0) -> None:
        """Until the last start_sitelink(site) opened its control socket."""
        name = site.name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text(name).count("control socket") > self._starts.get(name, 0):
                return
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        raise LabError(f"{name}: not started within {timeout}s:\n{self.log_text(name)[-2000:]}")

    def core_routes(self) -> dict[str, str]:
        """{branch subnet: next hop} as the core's kernel has them (BIRD's routes)."""
        out = self.lab.run("core", ["ip", "-4", "route", "show", "proto", "bird"], timeout=5).stdout
        return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+) via (\S+)", out, re.M)}

    def hub_holding(self, branch) -> int | None:
        """Which hub (index from 0) the core sends the branch's traffic to now, if any."""
        via = self.core_routes().get(str(branch.lan4))
        for k in range(len(self.hubs)):
            if via == self.transit(k + 1)[1]:
                return k
        return None

    def wait_converged(self, timeout: float = 30.0, dead: set[int] = frozenset()) -> float:
        """Wait until the core routes every branch's subnet to a live hub; seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            holders = [self.hub_holding(b) for b in self.branches]
            if all(h is not None and h not in dead for h in holders):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise LabError(f"not converged within {timeout}s: core routes {self.core_routes()}\n"
                       + "\n".join(f"--- {b.name}\n{self.log_text(b.name)[-800:]}" for b in self.branches))

    def kill_hub(self, k: int) -> None:
        """Hub k (from 0) dies: SIGKILL for every process in its namespace (sitelink, BIRD), and its cables
        (WAN and transit) go dark, as when the machine loses power."""
        hub = self.hubs[k]
        self.lab.kill_all(hub.gw)
        self.lab.run(self.lab.topology.router, ["ip", "link", "set", hub.router_if, "down"])
        self.lab.run("core", ["ip", "link", "set", f"to-{hub.name}", "down"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                self.lab.stop(proc, timeout=5)


def announced(lab: Lab, hub, table: int = ANNOUNCE_TABLE) -> set[str]:
    """The subnets a hub's sitelink announces now (its routes in the announcements' table)."""
    out = lab.run(hub.gw, ["ip", "-4", "route", "show", "table", str(table)], timeout=5).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def measure_hub_failure(so: ScaleOut, k: int, seconds: float = 10.0, rate: float = 100,
                        fail_after: float = 2.0) -> dict:
    """Probes (rate datagrams/s each way) between the HQ server and every branch host while hub k dies.
    Per branch: the hub before and after, the longest silence each way, packets lost; and "routes_s":
    from the failure to the core routing every branch to a live hub (BGP's share, polled)."""
    from .media import BackgroundProbe

    lab = so.lab
    before = {b.name: so.hub_holding(b) for b in so.branches}
    probes = {}
    for j, b in enumerate(so.branches):
        probes[b.name] = (BackgroundProbe(lab, "server", b.host, str(b.host4), 7000 + 2 * j, rate=rate,
                                          seconds=seconds),
                          BackgroundProbe(lab, b.host, "server", "10.100.0.10", 7001 + 2 * j, rate=rate,
                                          seconds=seconds))
    time.sleep(fail_after)
    t0 = time.monotonic()
    so.kill_hub(k)
    routes_s = so.wait_converged(timeout=seconds, dead={k})
    result: dict = {"routes_s": round(routes_s, 3), "failed_at_ns": int(t0 * 1e9), "branches": {}}
    for b in so.branches:
        down, up = (p.result() for p in probes[b.name])
        result["branches"][b.name] = {
            "hub_before": before[b.name], "hub_after": so.hub_holding(b),
            "outage_s": round(max(down["longest_gap_ms"], up["longest_gap_ms"]) / 1000, 3),
            # a stream that never came back shows as loss beyond its longest silence (which only an
            # arrival ends): lost_s well over outage_s
            "lost_s": round(max(down["lost"], up["lost"]) / rate, 3),
            "sent": down["sender"]["sent"] + up["sender"]["sent"],
        }
    return result


__all__ = ["ScaleOut", "scale_out_topology", "bird_hub_config", "bird_core_config", "SERVER_NET", "ANNOUNCE_TABLE",
           "announced", "measure_hub_failure"]
