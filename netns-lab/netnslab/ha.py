"""An active/standby pair of sitelink gateways at one site, with keepalived (VRRPv3) moving the addresses.

:class:`HaPair` rewires a built lab's site (IPv4 only) as a real HA site is cabled: the router's link to
the site becomes a bridge (``br-<site>`` in the router, the WAN segment) and the site's LAN a bridge in
its host (``br0``), and a second gateway node ``<site>-gw2`` joins both. The site's gateway addresses
of the topology become the *virtual* addresses (the branches' peer address on the WAN, the hosts'
default gateway on the LAN); each gateway gets real addresses of its own, the next two on each segment.

Each node runs ``sitelink up`` with ``gateway.ha`` (bound to the virtual address before it is local) and
keepalived with the configuration :func:`keepalived_config` writes, the one README "High availability"
documents: a sync group of a WAN and a LAN instance, 0.2 s adverts, the WAN port tracked, sitelink
tracked by a check on its control socket, and notify scripts that run ``sitelink role active|standby``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .lab import Lab, LabError
from .sitelink import sitelink_command, write_secret

KEEPALIVED = "/usr/sbin/keepalived"
ADVERT_INT = 0.2  # seconds between VRRP adverts: a dead master is noticed after ~3.2 of them (RFC 5798)


@dataclass
class HaNode:
    node: str  # the lab node (namespace)
    wan4: str  # its own addresses; the virtual ones come and go
    lan4: str
    router_port: str  # its port on the router's bridge
    host_port: str  # its port on the host's bridge (LAN)
    priority: int
    workdir: Path
    sitelink: subprocess.Popen | None = None
    keepalived: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.workdir / f"{self.node}.yaml"

    @property
    def socket(self) -> Path:
        return self.workdir / f"{self.node}.sock"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.node}.log"

    @property
    def keepalived_log(self) -> Path:
        return self.workdir / f"{self.node}.keepalived.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def keepalived_config(router_id: str, sitelink: list[str], socket: Path, wan_if: str, lan_if: str,
                      wan_vip: str, lan_vip: str, priority: int, vrid: int = 51,
                      advert_int: float = ADVERT_INT) -> str:
    """keepalived.conf for one gateway of a pair (the documented one: configs/ha/keepalived.conf)."""
    command = " ".join([*sitelink, "role"])
    target = f"--socket {socket}"
    return f"""\
global_defs {{
    router_id {router_id}
    script_user root
    vrrp_version 3
    vrrp_garp_master_repeat 3
    vrrp_garp_master_delay 1
}}

# sitelink is alive when its control socket accepts a connection (kill -9 leaves the file, not a listener)
vrrp_script sitelink_alive {{
    script "/usr/bin/socat -u OPEN:/dev/null UNIX-CONNECT:{socket}"
    interval 1
    timeout 1
    fall 1
    rise 1
}}

vrrp_sync_group {router_id}_pair {{
    group {{
        wan
        lan
    }}
    track_script {{
        sitelink_alive
    }}
    notify_master "{command} active {target}"
    notify_backup "{command} standby {target}"
    notify_fault "{command} standby {target}"
    notify_stop "{command} standby {target}"
}}

vrrp_instance wan {{
    state BACKUP
    interface {wan_if}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert_int:g}
    virtual_ipaddress {{
        {wan_vip} dev {wan_if}
    }}
}}

vrrp_instance lan {{
    state BACKUP
    interface {lan_if}
    virtual_router_id {vrid + 1}
    priority {priority}
    advert_int {advert_int:g}
    virtual_ipaddress {{
        {lan_vip} dev {lan_if}
    }}
}}
"""


class HaPair:
    """Two sitelink gateways of one site behind keepalived. ``nodes[0]`` is the preferred (active) one."""

    def __init__(self, lab: Lab, site: str, workdir: Path, sitelink_yaml: str,
                 priorities: tuple[int, int] = (150, 100), sync: bool = False,
                 advert_int: float = ADVERT_INT) -> None:
        """sitelink_yaml: the site's gateway configuration as netnslab.Deployment wrote it (listening on the
        site's WAN address, which becomes the virtual one); each node gets a copy of its own. sync: the
        gateways stream SA state over the LAN (gateway.ha.sync, a key file of their own)."""
        self.sync, self.advert_int = sync, advert_int
        if shutil.which(KEEPALIVED) is None and not Path(KEEPALIVED).exists():
            raise LabError("keepalived is not installed (apt-get install keepalived)")
        self.lab, self.site = lab, lab.site(site)
        if self.site.has_v6 or self.site.has_wan6:
            raise LabError(f"site {site}: HaPair wires IPv4 sites only")
        self.workdir = Path(workdir)
        self.command = sitelink_command()
        s = self.site
        wan_vip, lan_vip = s.gw_wan4, s.gw_lan4
        self.wan_vip, self.lan_vip = str(wan_vip), str(lan_vip)
        self.wan_plen, self.lan_plen = s.wan4.prefixlen, s.lan4.prefixlen
        self.bridge = f"br-{s.name}"[:15]
        self._dark: set[int] = set()  # nodes whose cables are all out (kill_node)
        names = (s.gw, f"{s.name}-gw2")
        ports = (s.router_if, f"{s.router_if}-2"[:15])
        self.nodes = [HaNode(names[i], str(wan_vip + 1 + i), str(lan_vip + 1 + i), ports[i],
                             s.host_if if i == 0 else "eth1", priorities[i], self.workdir) for i in range(2)]
        if sync:
            write_secret(self.workdir / "ha-sync.key", base64.b64encode(secrets.token_bytes(32)) + b"\n")
        for n in self.nodes:
            for a, net in ((n.wan4, s.wan4), (n.lan4, s.lan4)):
                if ipaddress.ip_address(a) not in net or a in (str(s.host4), str(s.router_wan4)):
                    raise LabError(f"site {site}: no room for {n.node}'s address {a} in {net}")
            n.config.write_text(self._node_yaml(sitelink_yaml, n))
        self._wire()

    # -- wiring -------------------------------------------------------------------------------------------
    def _wire(self) -> None:
        lab, s, a, b = self.lab, self.site, self.nodes[0], self.nodes[1]
        router, mtu = lab.topology.router, str(lab.topology.mtu)
        lab.add_node(b.node)
        # the WAN segment: a bridge in the router with both gateways' ports
        lab.run(router, ["ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0"])
        lab.run(router, ["ip", "addr", "del", f"{s.router_wan4}/{self.wan_plen}", "dev", s.router_if])
        lab.run(router, ["ip", "link", "set", s.router_if, "master", self.bridge])
        lab.run(router, ["ip", "link", "add", b.router_port, "mtu", mtu, "type", "veth", "peer", "name",
                         s.gw_wan_if, "netns", lab.ns(b.node)])
        lab.run(router, ["ip", "link", "set", b.router_port, "master", self.bridge])
        lab.run(router, ["ip", "link", "set", b.router_port, "up"])
        lab.run(router, ["ip", "link", "set", self.bridge, "up"])
        lab.run(router, ["ip", "addr", "add", f"{s.router_wan4}/{self.wan_plen}", "dev", self.bridge])
        # the LAN segment: a bridge in the host with both gateways' ports
        lab.run(s.host, ["ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0"])
        lab.run(s.host, ["ip", "addr", "del", f"{s.host4}/{self.lan_plen}", "dev", s.host_if])
        lab.run(s.host, ["ip", "link", "set", s.host_if, "master", "br0"])
        lab.run(s.host, ["ip", "link", "add", b.host_port, "mtu", mtu, "type", "veth", "peer", "name",
                         s.gw_lan_if, "netns", lab.ns(b.node)])
        lab.run(s.host, ["ip", "link", "set", b.host_port, "master", "br0"])
        lab.run(s.host, ["ip", "link", "set", b.host_port, "up"])
        lab.run(s.host, ["ip", "link", "set", "br0", "up"])
        lab.run(s.host, ["ip", "addr", "add", f"{s.host4}/{self.lan_plen}", "dev", "br0"])
        lab.run(s.host, ["ip", "route", "replace", "default", "via", self.lan_vip])
        # each gateway: addresses of its own (the virtual ones are keepalived's), default route to the WAN
        lab.run(a.node, ["sysctl", "-q", "-w", f"net.ipv4.conf.{s.gw_wan_if}.promote_secondaries=1",
                         f"net.ipv4.conf.{s.gw_lan_if}.promote_secondaries=1"])
        lab.run(a.node, ["ip", "addr", "add", f"{a.wan4}/{self.wan_plen}", "dev", s.gw_wan_if])
        lab.run(a.node, ["ip", "addr", "del", f"{self.wan_vip}/{self.wan_plen}", "dev", s.gw_wan_if])
        lab.run(a.node, ["ip", "addr", "add", f"{a.lan4}/{self.lan_plen}", "dev", s.gw_lan_if])
        lab.run(a.node, ["ip", "addr", "del", f"{self.lan_vip}/{self.lan_plen}", "dev", s.gw_lan_if])
        lab.run(b.node, ["ip", "addr", "add", f"{b.wan4}/{self.wan_plen}", "dev", s.gw_wan_if])
        lab.run(b.node, ["ip", "addr", "add", f"{b.lan4}/{self.lan_plen}", "dev", s.gw_lan_if])
        for ifname in (s.gw_wan_if, s.gw_lan_if):
            lab.run(b.node, ["ip", "link", "set", ifname, "up"])
        lab.run(b.node, ["ethtool", "-K", s.gw_wan_if, "tx-udp-segmentation", "off"])  # a NIC, as Lab does
        for n in self.nodes:
            lab.run(n.node, ["ip", "route", "replace", "default", "via", str(s.router_wan4)])
        for n in self.nodes:
            lab.wait_reaches(n.node, str(s.router_wan4))
            lab.wait_reaches(n.node, str(s.host4))

    def _node_yaml(self, text: str, n: HaNode) -> str:
        s = self.site
        lines = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("control_socket:"):
                line = f"  control_socket: {n.socket}"
            elif stripped.startswith("state_dir:"):
                line = f"  state_dir: {self.workdir / (n.node + '-state')}"
            elif stripped.startswith("tun:"):  # the TUN's address: the node's own, never the virtual one
                line = line.replace(f"{s.gw_lan4}/32", f"{n.lan4}/32")
            lines.append(line)
            if line == "gateway:" and not self.sync:
                lines.append("  ha: {role: standby}")
            elif line == "gateway:":
                other = next(m for m in self.nodes if m is not n)
                lines.append(f"  ha: {{role: standby, sync: {{local: {n.lan4}, peer: {other.lan4}, "
                             f"key_file: {self.workdir / 'ha-sync.key'}}}}}")
        if f"address: {self.wan_vip}," not in text:
            raise LabError(f"the site's configuration does not listen on {self.wan_vip}")
        return "\n".join(lines) + "\n"

    # -- processes ----------------------------------------------------------------------------------------
    def start_sitelink(self, i: int, timeout: float = 10.0) -> None:
        n = self.nodes[i]
        started = n.log_text().count("control socket")  # a restart appends to the same log
        with n.log.open("a") as log:
            n.sitelink = self.lab.popen(n.node, [*self.command, "up", str(n.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if n.sitelink.poll() is not None:
                raise LabError(f"sitelink on {n.node} exited {n.sitelink.returncode}:\n{n.log_text()[-2000:]}")
            if n.log_text().count("control socket") > started:
                return
            time.sleep(0.05)
        raise LabError(f"sitelink on {n.node} not ready after {timeout}s:\n{n.log_text()[-2000:]}")

    def start_keepalived(self, i: int) -> None:
        n, s = self.nodes[i], self.site
        conf = self.workdir / f"{n.node}.keepalived.conf"
        conf.write_text(keepalived_config(n.node.replace("-", "_"), self.command, n.socket, s.gw_wan_if,
                                          s.gw_lan_if, f"{self.wan_vip}/{self.wan_plen}",
                                          f"{self.lan_vip}/{self.lan_plen}", n.priority,
                                          advert_int=self.advert_int))
        pids = {k: self.workdir / f"{n.node}.{k}.pid" for k in ("main", "vrrp", "checkers")}
        argv = [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
                "--use-file", str(conf), "--pid", str(pids["main"]), "--vrrp_pid", str(pids["vrrp"]),
                "--checkers_pid", str(pids["checkers"])]
        with n.keepalived_log.open("a") as log:
            n.keepalived = self.lab.popen(n.node, argv, stdout=log, stderr=subprocess.STDOUT)

    def start(self, i: int) -> None:
        """sitelink first (standby), then keepalived, which makes it active when it wins."""
        self.start_sitelink(i)
        self.start_keepalived(i)

    def kill_sitelink(self, i: int) -> None:
        """kill -9 of the gateway process only: keepalived stays and notices (its check on the socket)."""
        n = self.nodes[i]
        if n.sitelink is not None and n.sitelink.poll() is None:
            n.sitelink.send_signal(signal.SIGKILL)
            n.sitelink.wait(5)

    def kill_node(self, i: int) -> None:
        """The machine dies: every process in its namespace gets SIGKILL (sitelink, keepalived and its
        children, which would otherwise release the addresses on their way out) and its links go dark."""
        n = self.nodes[i]
        self.lab.kill_all(n.node)
        self.set_links(i, up=False)
        for proc in (n.sitelink, n.keepalived):
            if proc is not None:
                proc.wait(5)

    def revive_node(self, i: int) -> None:
        """The dead machine boots again: without the virtual addresses it held when it died, cables back,
        sitelink (standby) and then keepalived started."""
        s = self.site
        for vip, plen, ifname in ((self.wan_vip, self.wan_plen, s.gw_wan_if), (self.lan_vip, self.lan_plen, s.gw_lan_if)):
            self.lab.run(self.nodes[i].node, ["ip", "addr", "del", f"{vip}/{plen}", "dev", ifname], check=False)
        self.set_links(i, up=True)
        self.start(i)

    def set_links(self, i: int, up: bool, wan_only: bool = False) -> None:
        """The node's cables: its port on the WAN bridge (a WAN cut) and, unless wan_only, on the LAN's."""
        if up or not wan_only:
            (self._dark.discard if up else self._dark.add)(i)
        n, state = self.nodes[i], "up" if up else "down"
        self.lab.run(self.lab.topology.router, ["ip", "link", "set", n.router_port, state])
        if not wan_only:
            self.lab.run(self.site.host, ["ip", "link", "set", n.host_port, state])

    def holder(self) -> int | None:
        """The node that has the WAN virtual address now (both: a split brain, reported as an error); a
        dead machine's (kill_node) does not count."""
        have = [i for i, n in enumerate(self.nodes) if i not in self._dark
                and f" {self.wan_vip}/" in self.lab.run(n.node, ["ip", "-o", "-4", "addr", "show"], timeout=5).stdout]
        if len(have) > 1:
            raise LabError(f"both gateways hold {self.wan_vip}")
        return have[0] if have else None

    def wait_holder(self, i: int, timeout: float = 10.0) -> float:
        """Wait until node i holds the virtual address and its sitelink says it is active; seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.holder() == i and self.role(i) == "active":
                return time.monotonic() - t0
            time.sleep(0.05)
        raise LabError(f"{self.nodes[i].node} did not become active within {timeout}s:\n"
                       f"{self.nodes[i].keepalived_log.read_text(errors='replace')[-2000:]}")

    def role(self, i: int) -> str | None:
        n = self.nodes[i]
        cp = subprocess.run([*self.command, "role", "--socket", str(n.socket)], capture_output=True, text=True,
                            timeout=10)
        return cp.stdout.strip() if cp.returncode == 0 else None

    def stop(self) -> None:
        for n in self.nodes:
            for proc in (n.keepalived, n.sitelink):
                if proc is not None and proc.poll() is None:
                    self.lab.stop(proc, timeout=5)




# -- failover measurement (tests/lab/test_ha_keepalived.py, bench/ha_failover.py) -------------------------
FAILURES = ("sitelink-kill", "node-kill", "wan-cut")
PING_INTERVAL = 0.02


def fail(pair: HaPair, i: int, failure: str) -> None:
    """sitelink-kill: kill -9 of the gateway process; node-kill: the machine dies (every process, every
    cable); wan-cut: its WAN cable is pulled (keepalived sees the port go down)."""
    if failure == "sitelink-kill":
        pair.kill_sitelink(i)
    elif failure == "node-kill":
        pair.kill_node(i)
    elif failure == "wan-cut":
        pair.set_links(i, up=False, wan_only=True)
    else:
        raise ValueError(f"failure must be one of {FAILURES}, not {failure!r}")


def restore(pair: HaPair, i: int, failure: str) -> None:
    """Undo fail(): sitelink restarted, the machine booted, the cable back."""
    if failure == "sitelink-kill":
        pair.start_sitelink(i)
    elif failure == "node-kill":
        pair.revive_node(i)
    else:
        pair.set_links(i, up=True, wan_only=True)


def wait_for_holder(pair: HaPair, i: int, timeout: float = 10.0) -> float:
    """time.monotonic() when node i was first seen holding the WAN virtual address (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pair.holder() == i:
            return time.monotonic()
        time.sleep(0.01)
    raise LabError(f"{pair.nodes[i].node} did not take the virtual address within {timeout}s")


def ping_gap(output: str, interval: float = PING_INTERVAL) -> tuple[int, int, float]:
    """(sent, received, longest run of lost echo requests in seconds) from `ping -i interval` output."""
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", output)})
    sent_match = re.search(r"(\d+) packets transmitted", output)
    sent = int(sent_match.group(1)) if sent_match else (seqs[-1] if seqs else 0)
    longest, previous = 0, 0
    for seq in [*seqs, sent + 1]:
        longest = max(longest, seq - previous - 1)
        previous = seq
    return sent, len(seqs), round(longest * interval, 3)


def _streams(lab: Lab, a_host: str, a_addr: str, b_host: str, b_addr: str, seconds: float,
             port: int) -> tuple[list, subprocess.Popen]:
    from .media import BackgroundProbe

    probes = [BackgroundProbe(lab, b_host, a_host, a_addr, port, rate=200, seconds=seconds),
              BackgroundProbe(lab, a_host, b_host, b_addr, port + 1, rate=200, seconds=seconds)]
    ping = lab.popen(b_host, ["ping", "-n", "-i", f"{PING_INTERVAL:g}", "-w", f"{seconds:g}", a_addr],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return probes, ping


def _collect(probes: list, ping: subprocess.Popen, seconds: float) -> dict:
    out, _ = ping.communicate(timeout=seconds + 30)
    fwd, rev = (p.result() for p in probes)
    sent, received, gap = ping_gap(out)
    return {"to_hq": fwd, "to_branch": rev, "ping": {"sent": sent, "received": received, "longest_gap_s": gap}}


def measure_failover(pair: HaPair, branch_host: str, failure: str, seconds: float = 6.0,
                     port: int = 7000) -> dict:
    """Probes (200 datagrams/s each way, RTP-like) and a ping from the branch while node 0 (active) fails
    and node 1 takes over, then again while node 0 comes back and takes over again (failback).
    Returns {"failover": {...}, "failback": {...}}, each with both probes' reports, the ping's, and
    "detect_s": from the failure to the virtual address on the other node (keepalived's share)."""
    lab, site = pair.lab, pair.site
    hq_host, hq_addr = site.host, str(site.host4)
    b_addr = str(lab.site(lab.topology.site_of(branch_host).name).host4)
    result = {}
    for phase, act, winner in (("failover", fail, 1), ("failback", restore, 0)):
        probes, ping = _streams(lab, hq_host, hq_addr, branch_host, b_addr, seconds, port)
        time.sleep(1.5)
        t0 = time.monotonic()
        act(pair, 0, failure)
        t_vip = wait_for_holder(pair, winner)
        report = _collect(probes, ping, seconds)
        report["detect_s"] = round(t_vip - t0, 3)
        report["outage_s"] = round(max(report[d]["longest_gap_ms"] for d in ("to_hq", "to_branch")) / 1000, 3)
        result[phase] = report
        pair.wait_holder(winner)
    return result


__all__ = ["HaPair", "HaNode", "keepalived_config", "ADVERT_INT", "FAILURES", "fail", "restore", "measure_failover",
           "ping_gap", "wait_for_holder"]
