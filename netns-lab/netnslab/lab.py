"""Build a topology out of network namespaces and tear it down reliably.

A :class:`Lab` owns everything it creates: namespaces named ``<prefix>-<node>``
(prefix is ``sl`` + 6 random hex chars, unique per run) and every process it
started.  The machine is shared, so teardown only ever touches those: it kills
processes by PID and deletes namespaces by their exact name.  Teardown runs
on normal exit, on exceptions, on a failed build step, on SIGINT/SIGTERM and
at interpreter exit (atexit), and is idempotent.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import Conntrack, IPRoute, netns

from .topology import Site, Topology, TopologyError, iter_links, load_topology, validate

log = logging.getLogger("netnslab")

MODES = ("tunnel", "plain")
NFT_TABLE = "netnslab"
_IFA_F_TENTATIVE = 0x40
_IFA_F_DADFAILED = 0x08
_VETH_INDEX_BASE = 100  # see Lab._create_links


class LabError(RuntimeError):
    """Base class for lab failures."""


class LabBuildError(LabError):
    """A build step failed; whatever had been built was torn down already."""


class LabTeardownError(LabError):
    """Teardown could not remove everything; the message lists what is left."""


class CommandError(subprocess.CalledProcessError):
    """A command run in a lab node exited non-zero (str() includes its output)."""

    def __init__(self, node: str, cp: subprocess.CompletedProcess) -> None:
        super().__init__(cp.returncode, cp.args, cp.stdout, cp.stderr)
        self.node = node

    def __str__(self) -> str:
        out = (self.stderr or "").strip() or (self.stdout or "").strip()
        return (f"[{self.node}] {' '.join(map(str, self.cmd))!r} exited {self.returncode}"
                + (f": {out[-2000:]}" if out else ""))


class CommandTimeout(LabError):
    """A command run in a lab node did not finish in time (it was killed)."""


# --------------------------------------------------------------------------
# registry of live labs: the only module state, needed for atexit / signals


class _Registry:
    """Tracks live labs so a signal or interpreter exit can tear them all down."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.labs: set[Lab] = set()
        self.prev: dict[int, Any] = {}
        self.atexit_registered = False
        self.lock = threading.RLock()
        # pyroute2 forks helper children (netns.create, IPRoute(netns=...)) and
        # stops them with SIGTERM; a child must never run our teardown.
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        self.lock = threading.RLock()
        for sig, handler in self.prev.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.prev.clear()
        self.labs.clear()

    def add(self, lab: Lab) -> None:
        with self.lock:
            if not self.atexit_registered:
                atexit.register(self.teardown_all)
                self.atexit_registered = True
            if not self.labs:
                self._install_handlers()
            self.labs.add(lab)

    def discard(self, lab: Lab) -> None:
        with self.lock:
            self.labs.discard(lab)
            if not self.labs:
                self._restore_handlers()

    def teardown_all(self) -> None:
        for lab in list(self.labs):
            lab.close(raise_errors=False)

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self.prev[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.prev.items():
            if signal.getsignal(sig) == self._on_signal:  # don't clobber someone else's
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.prev.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        prev = self.prev.get(signum, signal.SIG_DFL)
        log.warning("signal %d: tearing down %d lab(s)", signum, len(self.labs))
        self.teardown_all()  # also restores the previous handlers
        if callable(prev):
            prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
        elif prev != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_REGISTRY = _Registry()


# --------------------------------------------------------------------------


@dataclass
class Capture:
    """A running (then finished) tcpdump; ``packets`` is tcpdump's own count."""

    node: str
    iface: str
    path: Path
    proc: subprocess.Popen | None = None
    stderr_lines: list[str] = field(default_factory=list)
    packets: int | None = None
    kernel_drops: int | None = None  # packets tcpdump lost; a complete capture has 0


class Lab:
    """A topology realised in network namespaces; use as a context manager.

    ``mode="plain"`` routes LAN subnets in clear through the router (a
    benchmark baseline); ``mode="tunnel"`` routes only the WAN subnets, so
    remote LANs are reachable only through a tunnel device a test adds.
    """

    def __init__(self, topology: Topology | str | Path, mode: str = "tunnel",
                 prefix: str | None = None, grace: float = 3.0) -> None:
        if not isinstance(topology, Topology):
            topology = load_topology(topology)
        validate(topology, f"topology {topology.name!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.topology = topology
        self.mode = mode
        self.prefix = prefix or "sl" + secrets.token_hex(3)
        self.grace = grace
        self._namespaces: list[str] = []  # created by us, in creation order
        self._procs: list[subprocess.Popen] = []
        self._wan_loss = 0.0
        self._wan_blocked = False
        self._wan_drops_fragments = False
        self._wan_max_packet: int | None = None
        self._nat: tuple[str, int | None] | None = None  # (site behind the NAT, SNAT port base)
        self._nat_sites: tuple[str, ...] = ()  # every site behind the NAT (set_nat with several)
        self._wan_nodes: dict[str, str] = {}  # extra WAN namespaces (add_wan_node): node -> its address
        self._extra_nodes: set[str] = set()  # namespaces a test wires itself (add_node)
        self._state = "new"  # new -> building -> up -> closed
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()  # a forked copy of this object must not tear down

    # ---- context manager / lifecycle ------------------------------------

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Never mask the body's exception with a teardown complaint.
        self.close(raise_errors=exc_type is None)

    def build(self) -> Lab:
        """Create namespaces, links, addresses and routes; tear down on any failure."""
        if self._state != "new":
            raise LabError(f"lab {self.prefix} is {self._state}; build() runs once")
        self._state = "building"
        _REGISTRY.add(self)
        t0 = time.monotonic()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("create namespaces", self._create_namespaces),
            ("set sysctls", self._set_sysctls),
            ("create veth links", self._create_links),
            ("WAN offloads like a physical NIC", self._wan_offloads),
            ("configure addresses", self._configure_addresses),
            ("add routes", self._add_routes),
            ("wait for links and IPv6 addresses", self._wait_ready),
        ]
        for name, step in steps:
            try:
                step()
                if self._state == "closed":  # a signal handler tore us down mid-build
                    raise LabError("lab was torn down during the build")
            except BaseException as exc:
                left = self._teardown()
                self._state = "closed"
                _REGISTRY.discard(self)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt / SystemExit pass through unchanged
                note = f" (teardown left: {'; '.join(left)})" if left else ""
                raise LabBuildError(f"lab {self.prefix}: build step {name!r} failed: {exc}{note}") from exc
        self._state = "up"
        log.info("lab %s (%s, %s) up in %.2fs", self.prefix, self.topology.name, self.mode,
                 time.monotonic() - t0)
        return self

    def close(self, raise_errors: bool = True) -> None:
        """Stop processes and delete namespaces; safe to call any number of times."""
        with self._lock:
            if self._state == "closed" or os.getpid() != self._owner_pid:
                return
            self._state = "closed"
        try:
            left = self._teardown()
        finally:
            _REGISTRY.discard(self)
        if left:
            msg = f"lab {self.prefix}: teardown incomplete: {'; '.join(left)}"
            if raise_errors:
                raise LabTeardownError(msg)
            log.error("%s", msg)

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} {self.topology.name} mode={self.mode} {self._state}>"

    # ---- lookups ----------------------------------------------------------

    def ns(self, node: str) -> str:
        """Namespace name of a node (``<prefix>-<node>``)."""
        if node not in self._wan_nodes and node not in self._extra_nodes:
            self.topology.kind(node)  # raises KeyError for unknown nodes
        return f"{self.prefix}-{node}"

    def add_wan_node(self, node: str, subnet4: str = "203.0.113.0/24") -> str:
        """One more namespace on the WAN, e.g. an attacker: a veth to the router (``to-<node>`` there,
        ``wan0`` in the node), the subnet's first address on the router, the second on the node, and
        the node's default route via the router. Deleted with the lab. Returns the node's address."""
        if self._state != "up":
            raise LabError(f"lab {self.prefix} is {self._state}; add WAN nodes to a built lab")
        if node in self._wan_nodes or node in self.topology.nodes():
            raise LabError(f"node {node!r} exists already")
        net = ipaddress.ip_network(subnet4)
        router_ip, node_ip = net[1], net[2]
        name = f"{self.prefix}-{node}"
        netns.create(name)
        with self._lock:
            self._namespaces.append(name)
            self._wan_nodes[node] = str(node_ip)
        router_if = f"to-{node}"[:15]
        self.run(self.topology.router, ["ip", "link", "add", router_if, "type", "veth", "peer", "name", "wan0",
                                        "netns", name])
        self.run(self.topology.router, ["ip", "addr", "add", f"{router_ip}/{net.prefixlen}", "dev", router_if])
        self.run(self.topology.router, ["ip", "link", "set", router_if, "up"])
        self.run(node, ["ip", "link", "set", "lo", "up"])
        self.run(node, ["ip", "addr", "add", f"{node_ip}/{net.prefixlen}", "dev", "wan0"])
        self.run(node, ["ip", "link", "set", "wan0", "up"])
        self.run(node, ["ip", "route", "add", "default", "via", str(router_ip)])
        for _ in range(50):  # the veth carrier comes up asynchronously
            if self.run(node, ["ping", "-c", "1", "-W", "0.2", str(router_ip)], check=False).returncode == 0:
                return str(node_ip)
            time.sleep(0.1)
        raise LabError(f"WAN node {node} cannot reach the router at {router_ip}")

    def add_node(self, node: str, forwarding: bool = True) -> str:
        """One more namespace, with loopback up and nothing else (the caller wires it, e.g. a second
        gateway of a site: netnslab.ha); a router's sysctls unless forwarding is False. Deleted with the
        lab. Returns the namespace's name."""
        if self._state != "up":
            raise LabError(f"lab {self.prefix} is {self._state}; add nodes to a built lab")
        if node in self._wan_nodes or node in self._extra_nodes or node in self.topology.nodes():
            raise LabError(f"node {node!r} exists already")
        name = f"{self.prefix}-{node}"
        netns.create(name)
        with self._lock:
            self._namespaces.append(name)
            self._extra_nodes.add(node)
        self.run(node, ["ip", "link", "set", "lo", "up"])
        sysctls = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                   "net.ipv6.conf.default.accept_ra=0"]
        if forwarding:
            sysctls += ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        self.run(node, ["sysctl", "-q", "-w", *sysctls], timeout=10)
        return name

    def kill_all(self, node: str) -> None:
        """SIGKILL for every process in the node's namespace, until none is left: a machine losing power
        (nothing gets to clean up, e.g. keepalived's children releasing their addresses)."""
        for _ in range(20):
            pids = _pids_in_netns(self.ns(node))
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        raise LabError(f"processes in {node} survive SIGKILL: {_pids_in_netns(self.ns(node))}")

    def wait_reaches(self, node: str, address: str, timeout: float = 5.0) -> None:
        """Until one ping from node to address is answered (links come up asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(node, ["ping", "-c", "1", "-W", "0.2", address], check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise LabError(f"{node} cannot reach {address} within {timeout}s")

    @property
    def namespaces(self) -> list[str]:
        """Namespaces this lab created and has not yet deleted."""
        return list(self._namespaces)

    @property
    def nodes(self) -> list[str]:
        return self.topology.nodes()

    def site(self, name: str) -> Site:
        """Site data: node names (``.host``, ``.gw``), addresses, subnets, interface names."""
        return self.topology.site(name)

    def addr(self, node: str, family: int = 4) -> str:
        """Primary address of a node: LAN address for hosts, WAN address for gateways.

        The router has one address per WAN link; use ``lab.site(s).router_wan4``.
        """
        if node in self._wan_nodes and family == 4:
            return self._wan_nodes[node]
        kind = self.topology.kind(node)
        if kind == "router":
            raise ValueError("the router has one address per site link; use lab.site(name).router_wan4/6")
        s = self.topology.site_of(node)
        a = {("host", 4): s.host4, ("host", 6): s.host6,
             ("gw", 4): s.gw_wan4, ("gw", 6): s.gw_wan6}.get((kind, family))
        if a is None:
            raise ValueError(f"node {node!r} has no IPv{family} address in this topology")
        return str(a)

    # ---- running things -----------------------------------------------------

    def _nsexec(self, node: str, argv: Sequence[str]) -> list[str]:
        if self._state not in ("building", "up"):
            raise LabError(f"lab {self.prefix} is {self._state}")
        return ["ip", "netns", "exec", self.ns(node), *map(str, argv)]

    def run(self, node: str, argv: Sequence[str], timeout: float = 30.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command in a node's namespace and capture its text output."""
        cmd = self._nsexec(node, argv)
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = exc.stderr or exc.stdout or ""
            out = (out.decode(errors="replace") if isinstance(out, bytes) else out).strip()
            raise CommandTimeout(f"[{node}] {' '.join(map(str, argv))!r} did not finish within "
                                 f"{timeout}s and was killed{': ' + out[-500:] if out else ''}") from None
        if check and cp.returncode != 0:
            raise CommandError(node, cp)
        return cp

    def popen(self, node: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start a long-running process in a node; it is killed at teardown.

        Defaults to a new session so a terminal Ctrl-C reaches only us, and
        teardown decides the order things stop in.
        """
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        with self._lock:
            proc = subprocess.Popen(self._nsexec(node, argv), **popen_kwargs)
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal a process we started, SIGKILL it after ``timeout``; return its returncode."""
        if proc.poll() is not None:
            return proc.returncode
        if proc not in self._procs:
            raise ValueError(f"pid {proc.pid} was not started by lab {self.prefix} (or it was torn down)")
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored signal %d for %.1fs; SIGKILL", proc.pid, sig, timeout)
            proc.kill()
            proc.wait(5)
        return proc.returncode

    # ---- WAN impairment (nftables in the router) ----------------------------

    @property
    def wan_loss(self) -> float:
        return self._wan_loss

    @property
    def wan_blocked(self) -> bool:
        return self._wan_blocked

    def set_wan_loss(self, percent: float) -> None:
        """Drop ``percent`` % of packets forwarded by the router (each direction); 0 removes it."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be within 0..100, got {percent}")
        self._wan_loss = float(percent)
        self._apply_nft()

    def drop_wan_fragments(self, drop: bool = True, max_packet: int | None = None) -> None:
        """The router drops every IP fragment (IPv4 MF flag or fragment offset, IPv6 fragment header), as
        many firewalls and carrier paths do (the count is wan_fragments_dropped()), and with max_packet
        every packet longer than that: a path of that MTU which also refuses fragments."""
        self._wan_drops_fragments = bool(drop)
        self._wan_max_packet = max_packet if drop else None
        self._apply_nft()

    def wan_fragments_dropped(self) -> int:
        """Packets the fragment rule has dropped since it was set."""
        out = self.run(self.topology.router, ["nft", "list", "chain", "inet", NFT_TABLE, "forward"],
                       timeout=10).stdout
        return sum(int(m) for m in re.findall(r"frag[^\n]*counter packets (\d+)", out))

    def block_wan(self, blocked: bool = True) -> None:
        """Drop all forwarding in the router (a WAN outage), or lift that."""
        self._wan_blocked = bool(blocked)
        self._apply_nft()

    # ---- NAT in the router (nftables masquerade + conntrack) ------------------

    NAT_PORT_RANGE = 100  # ports per SNAT range: port_base .. port_base + 99

    @property
    def nat(self) -> tuple[str, int | None] | None:
        """``(site, port_base)`` of the active NAT, or None."""
        return self._nat

    def set_nat(self, site: str | Sequence[str] | None, port_base: int | None = None) -> None:
        """Put ``site``'s gateway behind a NAT in the router; ``None`` removes the NAT. Several sites
        (a list) share the NAT as branches behind one carrier-grade NAT do: seen from any other site,
        all come from the router's address on that site's link, each flow on a port of its own.

        Traffic that enters the router from the site's link and leaves through
        another link is masqueraded to the router's address on the outgoing
        link (``nat_public_address``).  With ``port_base`` TCP/UDP source ports
        are mapped into ``port_base .. port_base+99``; otherwise the kernel
        picks (usually keeping the original port).  The router's conntrack
        decides per flow: flows it already tracks keep their old mapping until
        :meth:`flush_conntrack` (set_nat with a new port_base + flush_conntrack
        is a "NAT rebinding").
        """
        sites = (site,) if isinstance(site, str) else tuple(site or ())
        for one in sites:
            self.site(one)  # KeyError for unknown sites
        if sites:
            if port_base is not None and not 1024 <= port_base <= 65536 - self.NAT_PORT_RANGE:
                raise ValueError(f"port_base must be within 1024..{65536 - self.NAT_PORT_RANGE}, got {port_base}")
        elif port_base is not None:
            raise ValueError("port_base needs a site")
        self._nat = (sites[0], port_base) if sites else None
        self._nat_sites = sites
        self._apply_nft()

    def nat_public_address(self, site: str, peer: str | None = None) -> str:
        """The IPv4 address ``peer``'s gateway sees ``site``'s gateway traffic come from.

        Behind the NAT: the router's address on the peer's link; otherwise the
        gateway's own WAN address.  ``peer`` may be omitted with two sites.
        """
        self.site(site)
        if site not in self._nat_sites:
            return self.addr(self.site(site).gw)
        others = [s.name for s in self.topology.sites if s.name != site]
        if peer is None:
            if len(others) != 1:
                raise ValueError(f"site {site!r} has several peers ({', '.join(others)}); name one")
            peer = others[0]
        if peer not in others:
            raise ValueError(f"{peer!r} is not another site of this lab")
        return str(self.site(peer).router_wan4)

    def flush_conntrack(self) -> int:
        """Drop every conntrack entry in the router (all families); returns how many there were.

        The next packet of each flow is NATed afresh (with the current ``set_nat``).
        """
        if self._state not in ("building", "up"):
            raise LabError(f"lab {self.prefix} is {self._state}")
        try:
            with Conntrack(nfgen_family=socket.AF_UNSPEC, netns=self.ns(self.topology.router),
                           flags=0) as ct:
                before = ct.count()
                ct.flush()
        except Exception as exc:
            raise LabError(f"flushing conntrack in the router: {exc}") from exc
        return before

    def _nat_rules(self) -> list[str]:
        if self._nat is None:
            return []
        _, port_base = self._nat
        inside = ", ".join(f'"{self.site(s).router_if}"' for s in self._nat_sites)
        match = f"iifname {{ {inside} }} oifname != {{ {inside} }}"
        if port_base is None:
            return [f"{match} counter masquerade"]
        ports = f"{port_base}-{port_base + self.NAT_PORT_RANGE - 1}"
        # a port mapping needs a transport-protocol match; everything else (ICMP) is masqueraded plainly
        return [f"{match} meta l4proto {{ tcp, udp }} counter masquerade to :{ports}",
                f"{match} counter masquerade"]

    def _apply_nft(self) -> None:
        # Replace the whole table atomically from our state: idempotent, no rule handles.
        rules = []
        if self._wan_blocked:
            rules.append("counter drop")
        if self._wan_drops_fragments:
            rules.append("ip frag-off & 0x3fff != 0 counter drop")
            rules.append("exthdr frag exists counter drop")
        if self._wan_max_packet:
            rules.append(f"meta length > {int(self._wan_max_packet)} counter drop")
        threshold = round(self._wan_loss * 100)  # in 1/10000 steps
        if threshold >= 10000:
            rules.append("counter drop")  # nft rejects "< 10000" for a mod-10000 value
        elif threshold > 0:
            rules.append(f"numgen random mod 10000 < {threshold} counter drop")
        nat_rules = self._nat_rules()
        script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        if rules or nat_rules:
            script += f"table inet {NFT_TABLE} {{\n"
            if rules:
                body = "\n".join(f"    {r}" for r in rules)
                script += (f"  chain forward {{\n"
                           f"    type filter hook forward priority -10; policy accept;\n{body}\n  }}\n")
            if nat_rules:
                body = "\n".join(f"    {r}" for r in nat_rules)
                script += (f"  chain postrouting {{\n"
                           f"    type nat hook postrouting priority srcnat; policy accept;\n{body}\n  }}\n")
            script += "}\n"
        self.run(self.topology.router, ["nft", "-f", "-"], input=script, timeout=10)

    # ---- packet capture ---------------------------------------------------

    @contextmanager
    def capture(self, node: str, iface: str, pcap_path: str | Path, filter: str | None = None,
                timeout: float = 10.0) -> Iterator[Capture]:
        """tcpdump on ``iface`` in ``node`` for the duration of the block.

        Yields only once tcpdump reports "listening on", so no packet sent in
        the block is missed; on exit SIGINT lets tcpdump flush the pcap.
        """
        cap = Capture(node=node, iface=iface, path=Path(pcap_path))
        # --immediate-mode: without it libpcap's TPACKET_V3 ring hands packets
        # over in blocks (up to 1 s late) and SIGINT discards what is pending.
        # -Z root: Debian's tcpdump otherwise drops to a user that can't write tmp dirs.
        # -B 65536 (KiB): at tunnel speeds the default 2 MiB buffer overflows ("dropped by kernel").
        argv = ["tcpdump", "-i", iface, "-U", "-w", str(cap.path), "-s", "0", "-n",
                "--immediate-mode", "-Z", "root", "-B", "65536"]
        if filter:
            argv.append(filter)
        cap.proc = self.popen(node, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        listening = threading.Event()
        reader = threading.Thread(target=_read_lines, daemon=True,
                                  args=(cap.proc.stderr, cap.stderr_lines, "listening on", listening))
        reader.start()
        try:
            self._wait_listening(cap, listening, timeout)
            yield cap
        finally:
            if self._state == "up":
                self.stop(cap.proc, sig=signal.SIGINT, timeout=timeout)
            reader.join(2)
            cap.packets = _captured_count(cap.stderr_lines)
            cap.kernel_drops = _captured_count(cap.stderr_lines, "dropped by kernel")

    def _wait_listening(self, cap: Capture, listening: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not listening.wait(0.02):
            if cap.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(cap.proc, timeout=1)
                why = "exited" if cap.proc.returncode is not None else f"not listening after {timeout}s"
                raise LabError(f"[{cap.node}] tcpdump on {cap.iface} {why}: "
                               f"{' '.join(cap.stderr_lines).strip()[-1000:]}")

    # ---- build steps --------------------------------------------------------

    def _create_namespaces(self) -> None:
        for node in self.topology.nodes():
            name = self.ns(node)
            try:
                netns.create(name)  # O_EXCL on the mount point: never adopts an existing one
            except Exception as exc:
                raise LabError(f"creating namespace {name}: {exc}") from exc
            self._namespaces.append(name)

    def _set_sysctls(self) -> None:
        common = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv6.conf.default.accept_ra=0"]
        forward = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                   "net.ipv6.conf.default.forwarding=1",
                   # the tunnel makes paths asymmetric by design; don't let rp_filter drop them
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        for node in self.topology.nodes():
            extra = forward if self.topology.kind(node) in ("router", "gw") else []
            self.run(node, ["sysctl", "-q", "-w", *common, *extra], timeout=10)

    def _create_links(self) -> None:
        # Side A gets an explicit, lab-unique ifindex. In fresh namespaces both
        # veth ends would otherwise be ifindex 2; the kernel's linkwatch then
        # deems the carrier change non-urgent and applies it up to 1 s later,
        # and until then the device drops what it sends (first IPv6 ND lost).
        for n, (node_a, if_a, node_b, if_b) in enumerate(iter_links(self.topology)):
            what = f"veth {node_a}:{if_a} <-> {node_b}:{if_b}"
            with self._ipr(node_a, what) as ipr:
                ipr.link("add", ifname=if_a, kind="veth", index=_VETH_INDEX_BASE + n,
                         peer={"ifname": if_b, "net_ns_fd": self.ns(node_b)})

    def _wan_offloads(self) -> None:
        """A veth passes a UDP_SEGMENT (GSO) send to the far end as one 64 KB super-packet, which no
        physical WAN does: the router would forward, and a capture show, one frame per send, and the
        receiving gateway would get the whole run in one read. Turn the gateways' WAN devices into a NIC
        without UDP segmentation offload: the kernel cuts each send into datagrams before the wire."""
        if shutil.which("ethtool") is None:
            raise LabError("ethtool is not installed (apt-get install ethtool); the lab needs it to set WAN offloads")
        for site in self.topology.sites:
            self.run(site.gw, ["ethtool", "-K", site.gw_wan_if, "tx-udp-segmentation", "off"], timeout=10)

    def _configure_addresses(self) -> None:
        for node, addrs in self._addresses_by_node().items():
            with self._ipr(node, f"addresses on {node}") as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                for ifname, ips in addrs.items():
                    idx = _lookup(ipr, ifname, node)
                    ipr.link("set", index=idx, mtu=self.topology.mtu)
                    for ip, plen in ips:
                        ipr.addr("add", index=idx, address=str(ip), prefixlen=plen)
                    ipr.link("set", index=idx, state="up")

    def _addresses_by_node(self) -> dict[str, dict[str, list[tuple[Any, int]]]]:
        out: dict[str, dict[str, list[tuple[Any, int]]]] = {n: {} for n in self.topology.nodes()}
        for s in self.topology.sites:
            out[s.host][s.host_if] = _pairs((s.host4, s.lan4), (s.host6, s.lan6))
            out[s.gw][s.gw_lan_if] = _pairs((s.gw_lan4, s.lan4), (s.gw_lan6, s.lan6))
            out[s.gw][s.gw_wan_if] = _pairs((s.gw_wan4, s.wan4), (s.gw_wan6, s.wan6))
            out[self.topology.router][s.router_if] = _pairs((s.router_wan4, s.wan4),
                                                            (s.router_wan6, s.wan6))
        return out

    def _add_routes(self) -> None:
        for node, routes in self._routes_by_node().items():
            with self._ipr(node, f"routes on {node}") as ipr:
                for dst, via in routes:
                    try:
                        ipr.route("add", dst=str(dst), gateway=str(via))
                    except Exception as exc:
                        raise LabError(f"route {dst} via {via} on {node}: {exc}") from exc

    def _routes_by_node(self) -> dict[str, list[tuple[Any, Any]]]:
        """Static routes per node; the only place "plain" and "tunnel" differ."""
        t = self.topology
        out: dict[str, list[tuple[Any, Any]]] = {n: [] for n in t.nodes()}
        for s in t.sites:
            out[s.host].append(("0.0.0.0/0", s.gw_lan4))
            if s.has_v6:
                out[s.host].append(("::/0", s.gw_lan6))
            # Every gateway has a default route toward the WAN, as at a real site: traffic for a remote
            # LAN that a gateway failed to hold back would leave by it, in clear, and show in a WAN
            # capture (the router itself has no route to the LANs in tunnel mode and drops it after).
            out[s.gw].append(("0.0.0.0/0", s.router_wan4))
            if s.has_wan6:
                out[s.gw].append(("::/0", s.router_wan6))
            for o in t.sites:
                if o is s:
                    continue
                out[s.gw].append((o.wan4, s.router_wan4))
                if s.has_wan6 and o.has_wan6:
                    out[s.gw].append((o.wan6, s.router_wan6))
                if self.mode == "plain":
                    out[s.gw].append((o.lan4, s.router_wan4))
                    if s.has_wan6 and o.has_v6:
                        out[s.gw].append((o.lan6, s.router_wan6))
            if self.mode == "plain":
                out[t.router].append((s.lan4, s.gw_wan4))
                if s.has_v6 and s.has_wan6:
                    out[t.router].append((s.lan6, s.gw_wan6))
        return out

    def _wait_ready(self, timeout: float = 5.0) -> None:
        """Wait until every lab interface is operationally UP and no IPv6 address is tentative.

        Both normally hold within milliseconds (distinct ifindexes, accept_dad=0);
        checking makes the first packet of a test independent of kernel timing.
        """
        deadline = time.monotonic() + timeout
        for node, ifaces in self._addresses_by_node().items():
            with self._ipr(node, f"readiness of {node}") as ipr:
                while True:
                    pending = _not_ready(ipr, set(ifaces))
                    if not pending:
                        break
                    if time.monotonic() > deadline:
                        raise LabError(f"{node}: not ready after {timeout}s: {', '.join(pending)}")
                    time.sleep(0.01)

    @contextmanager
    def _ipr(self, node: str, what: str) -> Iterator[IPRoute]:
        """An IPRoute bound to the node's namespace (flags=0: never create it)."""
        try:
            with IPRoute(netns=self.ns(node), flags=0) as ipr:
                yield ipr
        except LabError:
            raise
        except Exception as exc:
            raise LabError(f"{what}: {exc}") from exc

    # ---- teardown -----------------------------------------------------------

    def _teardown(self) -> list[str]:
        """Kill our processes, then delete our namespaces. Returns what could not be removed."""
        if os.getpid() != self._owner_pid:
            return []
        with self._lock:
            procs, self._procs = self._procs, []
            names, self._namespaces = self._namespaces, []
        left = self._kill_procs(procs)
        for name in reversed(names):
            problem = self._delete_namespace(name)
            if problem:
                left.append(problem)
        return left

    def _kill_procs(self, procs: list[subprocess.Popen]) -> list[str]:
        live = [p for p in procs if p.poll() is None]
        for p in live:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL)
        left = []
        for p in live:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                left.append(f"pid {p.pid} survived SIGKILL")
        for p in procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:
                        pass
        return left

    def _delete_namespace(self, name: str) -> str | None:
        # Anything still running inside our private namespace descends from a
        # process we started (e.g. a child that outlived its killed parent);
        # it would keep the namespace alive, so kill it by PID.
        for pid in _pids_in_netns(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            netns.remove(name)
        except FileNotFoundError:
            pass
        except Exception as exc:
            return f"namespace {name}: {exc}"
        return None


# --------------------------------------------------------------------------
# helpers


def _pairs(*items: tuple[Any, Any]) -> list[tuple[Any, int]]:
    return [(ip, net.prefixlen) for ip, net in items if ip is not None]


def _lookup(ipr: IPRoute, ifname: str, node: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} not found in {node}")
    return found[0]


def _not_ready(ipr: IPRoute, ifnames: set[str]) -> list[str]:
    pending = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        if name in ifnames and link.get_attr("IFLA_OPERSTATE") != "UP":
            pending.append(f"{name} operstate {link.get_attr('IFLA_OPERSTATE')}")
    for m in ipr.get_addr(family=10):
        if (m.get_attr("IFA_FLAGS") or m["flags"]) & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
            pending.append(f"{m.get_attr('IFA_ADDRESS')} tentative")
    return pending


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        p.send_signal(sig)
    except ProcessLookupError:
        pass


def _pids_in_netns(name: str) -> list[int]:
    try:
        cp = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return []
    return [int(x) for x in cp.stdout.split() if x.isdigit() and int(x) != os.getpid()]


def _read_lines(stream, sink: list[str], marker: str, seen: threading.Event) -> None:
    try:
        for line in iter(stream.readline, ""):
            sink.append(line)
            if marker in line:
                seen.set()
    except (ValueError, OSError):
        pass  # stream closed by teardown


def _captured_count(lines: list[str], what: str = "packets captured") -> int | None:
    """A count from tcpdump's closing summary ("N packets captured", "N packets dropped by kernel")."""
    for line in lines:
        if what in line:
            try:
                return int(line.split()[0])
            except ValueError:
                return None
    return None


__all__ = ["Lab", "LabError", "LabBuildError", "LabTeardownError", "CommandError",
           "CommandTimeout", "Capture", "TopologyError", "MODES"]
