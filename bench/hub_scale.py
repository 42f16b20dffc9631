#!/usr/bin/env python3
"""One hub, many branches: ONE strongSwan charon plays N branches (each with its own source address, IKE
identity, subnet and PSK, all in one namespace) against a sitelink hub and, in the same run, against a
strongSwan hub (charon, kernel-libipsec) as the anchor. Per hub it measures and prints:

- cold start: seconds from loading the N branch connections until the hub holds N Child SAs (tunnels/s);
- hub RSS: idle with N tunnels configured, with N established, and per established tunnel;
- forwarding: iperf3 TCP through the hub from a probe branch (a sitelink site) with only its tunnel up,
  and with the N branches up too (same run);
- operations: `sitelink status` (or `swanctl --list-sas`) and one /metrics scrape: time and size;
- (sitelink) a reload that removes 100 tunnels and adds 100 new ones: time, and whether every other
  tunnel kept its Child SA (same SPIs) with a ping flowing through one of them.

    sudo .venv/bin/python bench/hub_scale.py                 # 1,000 branches, both hubs (about 2 minutes)
    sudo .venv/bin/python bench/hub_scale.py --branches 200 --hubs sitelink

Writes bench/results/hub_scale.json. Needs root, strongSwan (charon, swanctl) and iperf3.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import Lab, hub_and_spoke_topology, parse_ping  # noqa: E402
from netnslab.sitelink import sitelink_command, write_secret  # noqa: E402
from netnslab.strongswan import PLUGINS, SWANCTL, common_sections, launch_charon  # noqa: E402

BRANCH_WAN = ipaddress.ip_network("100.64.0.0/16")  # the branches' addresses, all on the one charon
BRANCH_LANS = ipaddress.ip_network("172.16.0.0/12")  # branch i: the i-th /24 of it
HUB_ID, HUB_LAN = "hub.scale.test", "10.1.0.0/24"
PROBE_ID, PROBE_LAN, PROBE_WAN = "probe.scale.test", "10.3.0.0/24", "198.18.3.2"  # branch2 of the topology
PROPOSAL, ESP = "aes256gcm16-prfsha256-curve25519", "aes256gcm16"
RELOAD_CHURN = 100


def branch_addr(i: int) -> str:
    return str(BRANCH_WAN[i + 10])


def branch_lan(i: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network((int(BRANCH_LANS.network_address) + 256 * i, 24))


def branch_id(i: int) -> str:
    return f"branch{i}.scale.test"


def rss_kib(lab: Lab, node: str, pid: int) -> int:
    out = lab.run(node, ["grep", "VmRSS", f"/proc/{pid}/status"]).stdout
    return int(out.split()[1])


class Charon:
    """One charon (kernel-libipsec) in a node, with many connections."""

    def __init__(self, lab: Lab, node: str, workdir: Path, name: str) -> None:
        self.lab, self.node, self.dir, self.name = lab, node, workdir / name, name
        self.dir.mkdir(parents=True)
        (self.dir / "run").mkdir()
        (self.dir / "swanctl").mkdir()
        self.vici = self.dir / "charon.vici"
        self.log = self.dir / "charon.log"
        (self.dir / "strongswan.conf").write_text(f"""charon {{
    load_modular = no
    load = {PLUGINS}
    port = 500
    port_nat_t = 4500
    install_routes = yes
    retransmit_tries = 3
    ikesa_table_size = 4096
    ikesa_table_segments = 16
{common_sections(f'unix://{self.vici}')}    filelog {{
        main {{
            path = {self.log}
            default = 0
            flush_line = yes
        }}
    }}
}}
swanctl {{
    socket = unix://{self.vici}
}}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> list[str]:
        return [f"STRONGSWAN_CONF={self.dir / 'strongswan.conf'}", f"SWANCTL_DIR={self.dir / 'swanctl'}"]

    def write(self, connections: str, secrets_: str) -> None:
        path = self.dir / "swanctl" / "swanctl.conf"
        path.write_text(f"connections {{\n{connections}}}\nsecrets {{\n{secrets_}}}\n")
        path.chmod(0o600)

    def start(self) -> None:
        self.proc = launch_charon(self.lab, self.node, self.dir / "strongswan.conf", self.dir / "run",
                                  self.dir / "charon.out")
        deadline = time.monotonic() + 10
        while not self.vici.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"charon {self.name} did not start: {(self.dir / 'charon.out').read_text()}")
            time.sleep(0.02)
        time.sleep(0.2)

    def swanctl(self, *args: str, timeout: float = 120) -> str:
        return self.lab.run(self.node, ["env", *self.env, SWANCTL, *args], timeout=timeout).stdout

    def established(self) -> int:
        """CHILD_SAs established (a rekey's new one is logged twice, as inbound then outbound)."""
        if not self.log.exists():
            return 0
        text = self.log.read_text(errors="replace")
        return text.count(" established with SPIs") - text.count("outbound CHILD_SA")

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=10)
            self.proc = None


def connection(name: str, local_addr: str, remote_addr: str, local_id: str, remote_id: str, local_ts: object,
               remote_ts: object, psk: str, start_action: str = "none") -> tuple[str, str]:
    """One swanctl.conf connection (PSK, ESP in UDP, one child "c") and its secret."""
    conn = f"""  {name} {{
    version = 2
    local_addrs = {local_addr}
    remote_addrs = {remote_addr}
    encap = yes
    mobike = no
    proposals = {PROPOSAL}
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      c {{
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = {ESP}
        start_action = {start_action}
      }}
    }}
  }}
"""
    secret = f"  ike-{name} {{\n    id-a = {local_id}\n    id-b = {remote_id}\n    secret = 0x{psk.encode().hex()}\n  }}\n"
    return conn, secret


def _joined(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    return "".join(conn for conn, _ in pairs), "".join(secret for _, secret in pairs)


def branch_connections(n: int, psks: list[str], hub_addr: str) -> tuple[str, str]:
    """The N branches, each initiating as soon as it is loaded."""
    return _joined([connection(f"b{i}", branch_addr(i), hub_addr, branch_id(i), HUB_ID, branch_lan(i), HUB_LAN,
                               psks[i], "start") for i in range(n)])


def hub_connections(n: int, psks: list[str], hub_addr: str, any_peer: bool) -> tuple[str, str]:
    """The strongSwan hub: one connection per branch (by address, or %any and identity), and the probe's."""
    pairs = [connection(f"h{i}", hub_addr, "%any" if any_peer else branch_addr(i), HUB_ID, branch_id(i), HUB_LAN,
                        branch_lan(i), psks[i]) for i in range(n)]
    pairs.append(connection("probe", hub_addr, PROBE_WAN, HUB_ID, PROBE_ID, HUB_LAN, PROBE_LAN, psks[-1]))
    return _joined(pairs)


def write_psk(path: Path, psk: str) -> Path:
    return path if path.exists() else write_secret(path, f"{psk}\n".encode())


class Probe:
    """The probe branch: a sitelink gateway on branch2 with a tunnel to the hub (it initiates)."""

    def __init__(self, lab: Lab, workdir: Path, psk: str) -> None:
        self.lab, self.dir = lab, workdir
        workdir.mkdir(parents=True)
        key = write_psk(workdir / "hub.psk", psk)
        self.config, self.log = workdir / "probe.yaml", workdir / "probe.log"
        self.config.write_text("\n".join([
            "gateway:", "  name: probe", f"  listen: {{address: {PROBE_WAN}, port: 4500}}",
            f"  tun: {{name: sitelink0, addresses: [{lab.site('branch2').gw_lan4}/32]}}",
            f"  control_socket: {workdir / 'probe.sock'}", f"  state_dir: {workdir / 'state'}",
            "  metrics: {enabled: false}", "tunnels:", "  - name: hub", f"    peer: {{address: {lab.addr('hq-gw')}}}",
            f"    local_subnets: [{PROBE_LAN}]", f"    remote_subnets: [{HUB_LAN}]",
            f"    ike: {{auth: psk, psk_file: {key.name}, local_id: {PROBE_ID}, remote_id: {HUB_ID}}}"]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = self.lab.popen("branch2-gw", [*sitelink_command(), "up", str(self.config)], stdout=log,
                                       stderr=log)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=10)
            self.proc = None


class SitelinkHub:
    def __init__(self, lab: Lab, workdir: Path, psks: list[str], any_peer: bool, profile: Path | None = None) -> None:
        self.lab, self.dir, self.psks, self.any_peer = lab, workdir / "sitelink-hub", psks, any_peer
        self.profile = profile  # cProfile output of the hub's whole run
        self.dir.mkdir(parents=True)
        self.config = self.dir / "hub.yaml"
        self.log = self.dir / "hub.log"
        self.socket = self.dir / "hub.sock"
        self.proc: subprocess.Popen | None = None

    def write(self, tunnels: range | list[int]) -> None:
        lines = ["gateway:", "  name: hub", f"  listen: {{address: {self.lab.addr('hq-gw')}, port: 4500}}",
                 "  tun: {name: sitelink0, addresses: [10.1.0.1/32]}", f"  control_socket: {self.socket}",
                 f"  state_dir: {self.dir / 'state'}", "  metrics: {port: 9548}", "tunnels:"]
        for i in tunnels:
            psk = write_psk(self.dir / f"b{i}.psk", self.psks[i])
            lines += [f"  - name: b{i}",
                      f"    peer: {{address: {'any' if self.any_peer else branch_addr(i)}}}",
                      f"    local_subnets: [{HUB_LAN}]", f"    remote_subnets: [{branch_lan(i)}]",
                      f"    ike: {{auth: psk, psk_file: {psk.name}, local_id: {HUB_ID}, remote_id: {branch_id(i)}, "
                      "start: respond}"]
        probe = write_psk(self.dir / "probe.psk", self.psks[-1])
        lines += ["  - name: probe", f"    peer: {{address: {PROBE_WAN}}}", f"    local_subnets: [{HUB_LAN}]",
                  f"    remote_subnets: [{PROBE_LAN}]",
                  f"    ike: {{auth: psk, psk_file: {probe.name}, local_id: {HUB_ID}, remote_id: {PROBE_ID}, "
                  "start: respond}"]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        with self.log.open("a") as log:
            command = sitelink_command() if self.profile is None else [
                sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "tunnel.cli.main"]
            self.proc = self.lab.popen("hq-gw", [*command, "up", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while "control socket" not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"sitelink hub did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def established(self) -> int:
        return self.log.read_text(errors="replace").count("Child SA established")

    def control(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*sitelink_command(), *args, "--socket", str(self.socket)], capture_output=True,
                              text=True, timeout=timeout, check=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=20)
            self.proc = None


def wait_for(count: Any, target: int, limit: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if count() >= target:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def iperf(lab: Lab, seconds: float) -> float:
    """Mbit/s of one TCP stream from the probe branch's LAN host to the hub's LAN host."""
    out = lab.run("branch2-host", ["iperf3", "-c", lab.addr("hq-host"), "-t", f"{seconds:g}", "-J"],
                  timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def timed(lab: Lab, node: str, argv: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    out = lab.run(node, argv, timeout=120).stdout
    return time.monotonic() - t0, len(out.encode())


def samples(n: int) -> list[int]:
    """The branches whose tunnels carry a test ping: first, middle and last."""
    return sorted({0, n // 2, n - 1})


def prepare(lab: Lab, n: int) -> None:
    """The branches' WAN addresses and an address in each branch's subnet (kernel-libipsec installs a
    child's policy only with a local address inside its local traffic selector; the sampled ones are the
    sources of the pings and the iperf3 stream) on the branches' node."""
    script = "".join(f"addr add {branch_addr(i)}/16 dev wan0\n" for i in range(n))
    script += "".join(f"addr add {branch_lan(i)[1]}/32 dev lo\n" for i in range(n + RELOAD_CHURN))
    lab.run("branch1-gw", ["ip", "-batch", "-"], input=script)
    lab.run("router", ["ip", "route", "add", str(BRANCH_WAN), "via", lab.addr("branch1-gw")])
    lab.popen("hq-host", ["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)


def run_hub(lab: Lab, workdir: Path, kind: str, n: int, psks: list[str], args: argparse.Namespace) -> dict:
    hub_addr = lab.addr("hq-gw")
    result: dict[str, Any] = {"hub": kind, "branches": n}
    if kind == "sitelink":
        hub: Any = SitelinkHub(lab, workdir, psks, args.any, args.profile)
        hub.write(range(n))
        hub.start()
        pid = hub.proc.pid
    else:
        hub = Charon(lab, "hq-gw", workdir, "hub-strongswan")
        hub.write(*hub_connections(n, psks, hub_addr, args.any))
        hub.start()
        hub.swanctl("--load-all")
        pid = hub.proc.pid
    # The probe branch, a sitelink site with a LAN host, carries the measured flow: with only it up,
    # then with all N up. (Through the N-branch charon itself the flow would measure charon's libipsec,
    # which slows down with each policy it holds, not the hub.)
    probe = Probe(lab, workdir / f"probe-{kind}", psks[-1])
    probe.start()
    if wait_for(hub.established, 1, 30) is None:
        raise RuntimeError(f"{kind}: the probe branch's tunnel did not come up")
    time.sleep(0.5)
    result["tcp_mbit_1"] = round(iperf(lab, args.seconds), 1)
    # Cold start of the N branches.
    before = hub.established()
    result["rss_idle_kib"] = rss_kib(lab, "hq-gw", pid)
    branches = Charon(lab, "branch1-gw", workdir, f"branches-{kind}")
    branches.write(*branch_connections(n, psks, hub_addr))
    branches.start()
    t0 = time.monotonic()
    branches.swanctl("--load-all", timeout=300)
    took = wait_for(lambda: hub.established() - before, n, args.limit)
    result["setup_s"] = None if took is None else round(time.monotonic() - t0, 3)
    result["established"] = hub.established() - before
    result["tunnels_per_s"] = None if took is None else round(n / result["setup_s"], 1)
    time.sleep(1.0)
    result["rss_up_kib"] = rss_kib(lab, "hq-gw", pid)
    result["rss_per_tunnel_kib"] = round((result["rss_up_kib"] - result["rss_idle_kib"]) / n, 2)
    if kind == "sitelink":  # up now, not merely established once (a child the branch deleted again)
        status = json.loads(hub.control("status", "--json").stdout)
        result["up_verified"] = sum(t["state"] == "up" for t in status["tunnels"])
    else:
        result["up_verified"] = hub.swanctl("--list-sas").count("INSTALLED, TUNNEL")
    result["sample_pings"] = sum(_ping_from(lab, i) for i in samples(n))
    result["sample_size"] = len(samples(n))
    result["tcp_mbit_n"] = round(iperf(lab, args.seconds), 1)
    result["tcp_ratio_n_to_1"] = round(result["tcp_mbit_n"] / result["tcp_mbit_1"], 3)
    result.update(rekey_storm(lab, hub, branches, n))
    if kind == "sitelink":
        seconds, size = timed(lab, "hq-gw", [*sitelink_command(), "status", "--socket", str(hub.socket)])
        result["status_s"], result["status_bytes"] = round(seconds, 3), size
        seconds, size = timed(lab, "hq-gw", [sys.executable, "-c", "import urllib.request,sys;"
                                             "sys.stdout.write(urllib.request.urlopen("
                                             "'http://127.0.0.1:9548/metrics',timeout=60).read().decode())"])
        result["scrape_s"], result["scrape_bytes"] = round(seconds, 3), size
        result.update(reload_churn(lab, hub, n))
    else:
        seconds, size = timed(lab, "hq-gw", ["env", *hub.env, SWANCTL, "--list-sas"])
        result["status_s"], result["status_bytes"] = round(seconds, 3), size
    branches.stop()
    probe.stop()
    hub.stop()
    return result


def rekey_storm(lab: Lab, hub: Any, branches: Charon, n: int) -> dict:
    """Every branch rekeys its Child SA (the hub answers N CREATE_CHILD_SA requests) as fast as swanctl
    can ask, while a ping crosses one of the tunnels every 20 ms: how long until the hub holds N new
    Child SAs, and what the flow lost."""
    before = hub.established()
    source = str(branch_lan(n // 2)[1])
    replies = Path(branches.dir) / "storm-ping.txt"  # a file, not a pipe: ping never blocks on its output
    with replies.open("w") as out:
        flow = lab.popen("branch1-gw", ["ping", "-n", "-i", "0.02", "-I", source, lab.addr("hq-host")],
                         stdout=out, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    t0 = time.monotonic()
    script = (f"for i in $(seq 0 {n - 1}); do {SWANCTL} --rekey --ike b$i --child c >/dev/null "
              "|| echo failed $i; done")
    failed = lab.run("branch1-gw", ["env", *branches.env, "sh", "-c", script], timeout=600).stdout.count("failed")
    asked = time.monotonic() - t0
    took = wait_for(lambda: hub.established() - before, n, 120)
    done = time.monotonic() - t0
    time.sleep(1.0)
    lab.stop(flow, sig=signal.SIGINT)
    sent, lost = ping_loss(replies.read_text())
    return {"rekey_requests_s": round(asked, 2), "rekey_all_done_s": None if took is None else round(done, 2),
            "rekeyed": hub.established() - before, "rekey_swanctl_failed": failed,
            "rekey_flow_sent": sent, "rekey_flow_lost": lost}


def ping_loss(text: str) -> tuple[int, int]:
    """(echo requests, those never answered) from ping's output, leaving out the last two requests: a
    SIGINT ends ping without waiting for the answer to what it has just sent."""
    found = re.search(r"(\d+) packets transmitted", text)
    sent = int(found[1]) - 2 if found else 0
    answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ", text)}
    return max(sent, 0), sum(1 for seq in range(1, sent + 1) if seq not in answered)


def reload_churn(lab: Lab, hub: SitelinkHub, n: int) -> dict:
    """Remove RELOAD_CHURN tunnels and add as many new ones (whose branches never come): every other
    tunnel keeps its Child SA, and a ping through one of them (the last branch, bound source) flows on."""
    churn = min(RELOAD_CHURN, n // 2)
    kept = list(range(churn, n))

    def spis() -> dict[str, list]:
        status = json.loads(hub.control("status", "--json").stdout)
        return {t["name"]: [c["spi_in"] for c in t["child_sas"]] for t in status["tunnels"]}

    before = spis()
    source = str(branch_lan(n - 1)[1])
    flow = lab.popen("branch1-gw", ["ping", "-n", "-q", "-i", "0.02", "-c", "250", "-I", source, lab.addr("hq-host")],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    hub.write([*kept, *range(n, n + churn)])
    t0 = time.monotonic()
    answer = hub.control("reload").stdout
    took = time.monotonic() - t0
    out, _ = flow.communicate(timeout=30)
    after = spis()
    changed = {f"b{i}": (before.get(f"b{i}"), after.get(f"b{i}")) for i in kept
               if not before.get(f"b{i}") or before[f"b{i}"] != after.get(f"b{i}")}
    return {"reload_s": round(took, 3), "reload_summary": answer.strip()[:200], "reload_kept": len(kept),
            "reload_kept_unchanged": len(kept) - len(changed),
            "reload_flow_received": parse_ping(lab.addr("hq-host"), out).received,
            "reload_flow_sent": 250, "reload_changed": dict(list(changed.items())[:5])}


def _ping_from(lab: Lab, i: int) -> int:
    """Replies to 3 pings from branch i's subnet to the hub's LAN host (through branch i's tunnel)."""
    dst = lab.addr("hq-host")
    out = lab.run("branch1-gw", ["ping", "-n", "-c", "3", "-i", "0.05", "-W", "2", "-I", str(branch_lan(i)[1]),
                                 dst], check=False).stdout
    return parse_ping(dst, out).received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--branches", type=int, default=1000)
    parser.add_argument("--hubs", default="strongswan,sitelink")
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds allowed for the cold start")
    parser.add_argument("--any", action="store_true", help="the hub lists every branch as `any` / %%any")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the sitelink hub's run here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hub_scale.json")
    args = parser.parse_args()
    n = args.branches
    if not 1 <= n <= 4000:
        parser.error("--branches must be within 1..4000")
    psks = [secrets.token_hex(32) for _ in range(n + RELOAD_CHURN + 1)]  # the last: the probe's
    results = []
    work = Path(f"/tmp/hub-scale-{os.getpid()}")  # configs, PSKs and logs; kept only when a run fails
    try:
        with Lab(hub_and_spoke_topology(2), mode="tunnel") as lab:
            prepare(lab, n)
            for kind in args.hubs.split(","):
                results.append(run_hub(lab, work, kind, n, psks, args))
                print(json.dumps(results[-1]), flush=True)
    except BaseException:
        print(f"hub_scale failed; configs and logs are in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"branches": n, "any": args.any, "results": results}, indent=2) + "\n")


def report(results: list[dict]) -> None:
    by = {r["hub"]: r for r in results}
    rows = [("Child SAs established", "established"), ("tunnels up (status)", "up_verified"),
            ("sample pings received (3 each)", "sample_pings"), ("cold start, s", "setup_s"),
            ("tunnels per second", "tunnels_per_s"), ("hub RSS idle, MiB", "rss_idle_kib"),
            ("hub RSS with all up, MiB", "rss_up_kib"), ("RSS per tunnel, KiB", "rss_per_tunnel_kib"),
            ("TCP via the hub, 1 tunnel up, Mbit/s", "tcp_mbit_1"),
            ("TCP via the hub, all up, Mbit/s", "tcp_mbit_n"),
            ("TCP all / 1", "tcp_ratio_n_to_1"), ("status, s", "status_s"), ("status, bytes", "status_bytes"),
            ("/metrics scrape, s", "scrape_s"), ("/metrics, bytes", "scrape_bytes"),
            ("rekey storm: all N Child SAs rekeyed, s", "rekey_all_done_s"), ("rekeyed", "rekeyed"),
            ("ping through a rekeyed tunnel: lost / sent", "rekey_flow_lost"), ("", "rekey_flow_sent"),
            ("reload removing and adding tunnels, s", "reload_s"), ("kept tunnels untouched", "reload_kept_unchanged"),
            ("flow through reload, received/250", "reload_flow_received")]
    hubs = list(by)
    print(f"\n| figure | {' | '.join(hubs)} |" + (" sitelink / strongSwan |" if len(hubs) == 2 else ""))
    print("|---" * (len(hubs) + 1 + (len(hubs) == 2)) + "|")
    for label, key in rows:
        cells = []
        for hub in hubs:
            value = by[hub].get(key)
            if value is not None and key.startswith("rss_") and key.endswith("_kib") and "per" not in key:
                value = round(value / 1024, 1)
            cells.append("-" if value is None else str(value))
        ratio = ""
        if len(hubs) == 2:
            a, b = by["sitelink"].get(key) if "sitelink" in by else None, by.get("strongswan", {}).get(key)
            ratio = f" {a / b:.2f} |" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else " - |"
        print(f"| {label} | {' | '.join(cells)} |{ratio}")


if __name__ == "__main__":
    main()
