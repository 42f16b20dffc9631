"""The namespace lab itself: topology loading, plain/tunnel routing, WAN impairment,
capture, and, above all, that nothing is left behind on any exit path."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import netnslab.lab as lab_module
from netnslab import (
    CommandError,
    CommandTimeout,
    Lab,
    LabBuildError,
    ToolError,
    TopologyError,
    iperf3,
    load_topology,
    parse_ping,
    ping,
    wait_listening,
)

from .conftest import LAB_DIR

TWO_SITES = LAB_DIR / "topologies" / "two-sites.yaml"


# ---------------------------------------------------------------- helpers


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(lab: Lab, pids: list[int] = ()) -> None:
    assert lab_namespaces(lab.prefix) == []
    assert lab.namespaces == []
    for pid in pids:
        deadline = time.monotonic() + 2  # an orphan is reaped by init asynchronously
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(pid), f"pid {pid} survived teardown"


# ---------------------------------------------------------------- topology


def test_two_sites_topology_shape(two_sites_topology) -> None:
    t = two_sites_topology
    assert t.nodes() == ["router", "hq-host", "hq-gw", "branch1-host", "branch1-gw"]
    hq = t.site("hq")
    assert (str(hq.host4), str(hq.gw_lan4), str(hq.gw_wan4), str(hq.router_wan4)) == \
        ("10.1.0.10", "10.1.0.1", "198.18.1.2", "198.18.1.1")
    assert str(t.site("branch1").host6) == "fd00:2::10" and t.mtu == 1500


@pytest.mark.parametrize("edit, expected", [
    (("10.1.0.10", "10.1.0.300"), r"sites\[0\]\.lan\.host4: '10\.1\.0\.300' is not a valid IPv4"),
    (("gw4: 10.1.0.1", "gw4: 10.9.0.1"), "not inside 10.1.0.0/24"),
    (("router: to-hq", "router: a-very-long-ifname"), "interface name"),
    (("198.18.2.", "198.18.1."), "subnets overlap"),
    (("mtu: 1500", "mtu: 1500\nbogus: 1"), "unknown key"),
])
def test_bad_topology_file_names_the_problem(tmp_path, edit, expected) -> None:
    text = TWO_SITES.read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(TopologyError, match=expected):
        load_topology(bad)


# ---------------------------------------------------------------- plain mode


def test_plain_mode_routes_lans_in_clear(two_sites_topology) -> None:
    with Lab(two_sites_topology, mode="plain") as lab:
        assert len(lab_namespaces(lab.prefix)) == 5
        for family in (4, 6):
            there, back = lab.addr("branch1-host", family), lab.addr("hq-host", family)
            for src, dst in (("hq-host", there), ("branch1-host", back)):
                r = ping(lab, src, dst, count=3, interval=0.05)
                assert (r.sent, r.received) == (3, 3), r.output
                assert len(r.rtts_ms) == 3 and 0 < r.median < 100
        tcp = iperf3(lab, "hq-host", "branch1-host", lab.addr("branch1-host"), seconds=1)
        assert tcp.received_bps > 0 and tcp.retransmits is not None
        udp = iperf3(lab, "branch1-host", "hq-host", lab.addr("hq-host", 6), seconds=1,
                     udp=True, bitrate="5M")
        assert udp.received_bps > 0 and udp.lost_percent is not None
    assert_gone(lab)


def test_iperf3_failure_is_reported(two_sites_topology) -> None:
    with Lab(two_sites_topology, mode="plain") as lab:
        # the server cannot bind an address that is not in its namespace
        with pytest.raises(ToolError, match="before listening"):
            iperf3(lab, "hq-host", "branch1-host", "10.99.0.1", seconds=1)
    assert_gone(lab)


# ---------------------------------------------------------------- tunnel mode


def test_tunnel_mode_routes_only_the_wan(two_sites_topology) -> None:
    with Lab(two_sites_topology, mode="tunnel") as lab:
        hq = lab.site("hq")
        remote = ping(lab, "hq-host", lab.addr("branch1-host"), count=1, timeout=0.5)
        assert not remote.ok and remote.loss_pct == 100
        remote6 = ping(lab, "hq-host", lab.addr("branch1-host", 6), count=1, timeout=0.5)
        assert not remote6.ok
        assert ping(lab, "hq-host", str(hq.gw_lan4), count=1).ok
        assert ping(lab, "hq-host", str(hq.gw_lan6), count=1).ok
        assert ping(lab, "hq-gw", lab.addr("branch1-gw"), count=1).ok
        # a real site's gateway has a default route toward the WAN (so a leak would leave by it)
        assert f"default via {hq.router_wan4} dev wan0" in lab.run("hq-gw", ["ip", "route"]).stdout
        assert f"default via {hq.router_wan6} dev wan0" in lab.run("hq-gw", ["ip", "-6", "route"]).stdout


def test_wan_loss_and_block(two_sites_topology) -> None:
    with Lab(two_sites_topology, mode="tunnel") as lab:
        gw2 = lab.addr("branch1-gw")
        lab.set_wan_loss(100)
        assert not ping(lab, "hq-gw", gw2, count=2, interval=0.05, timeout=0.3).ok
        lab.set_wan_loss(0)
        assert ping(lab, "hq-gw", gw2, count=2, interval=0.05).received == 2
        # 30 % per direction: a round trip survives with p = 0.49
        lab.set_wan_loss(30)
        r = ping(lab, "hq-gw", gw2, count=200, interval=0.002, timeout=0.3)
        assert 30 < r.loss_pct < 72, r.loss_pct
        lab.set_wan_loss(0)
        lab.block_wan(True)
        assert not ping(lab, "hq-gw", gw2, count=1, timeout=0.3).ok
        lab.block_wan(False)
        assert ping(lab, "hq-gw", gw2, count=1).ok
        with pytest.raises(ValueError):
            lab.set_wan_loss(101)


_UDP_RECEIVER = "; ".join([
    "import socket, sys", "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "s.bind((sys.argv[1], int(sys.argv[2])))", "s.settimeout(5)", "data, src = s.recvfrom(100)",
    "print(src[0], src[1], data.decode(), flush=True)"])
_UDP_SENDER = "; ".join([
    "import socket, sys", "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "s.bind((sys.argv[1], int(sys.argv[2])))", "s.sendto(sys.argv[5].encode(), (sys.argv[3], int(sys.argv[4])))"])


def _udp_source_seen(lab: Lab, payload: str) -> tuple[str, int]:
    """Send one datagram hq-gw:4500 -> branch1-gw:4500; return the source branch1-gw saw."""
    hq, br = lab.addr("hq-gw"), lab.addr("branch1-gw")
    rx = lab.popen("branch1-gw", [sys.executable, "-c", _UDP_RECEIVER, br, "4500"],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(lab, "branch1-gw", 4500, udp=True, proc=rx)
        lab.run("hq-gw", [sys.executable, "-c", _UDP_SENDER, hq, "4500", br, "4500", payload])
        out, _ = rx.communicate(timeout=10)
    finally:
        lab.stop(rx)
    address, port, data = out.split()
    assert data == payload, out
    return address, int(port)


def test_nat_masquerades_and_rebinds(two_sites_topology) -> None:
    with Lab(two_sites_topology, mode="tunnel") as lab:
        router_side = str(lab.site("branch1").router_wan4)
        assert lab.nat_public_address("hq") == lab.addr("hq-gw")  # no NAT yet
        assert _udp_source_seen(lab, "direct") == (lab.addr("hq-gw"), 4500)

        lab.set_nat("hq", 40000)
        lab.flush_conntrack()  # the datagram above was not tracked as NATed; start clean
        assert lab.nat == ("hq", 40000)
        assert lab.nat_public_address("hq") == router_side
        assert lab.nat_public_address("branch1") == lab.addr("branch1-gw")
        address, first = _udp_source_seen(lab, "one")
        assert address == router_side and 40000 <= first <= 40099, (address, first)
        assert _udp_source_seen(lab, "again") == (address, first)  # conntrack keeps the mapping
        # loss/blocking rewrite the same nft table; the NAT must survive that
        lab.set_wan_loss(0)
        lab.block_wan(False)
        assert _udp_source_seen(lab, "still") == (address, first)
        # ICMP (no ports) is masqueraded too
        assert ping(lab, "hq-gw", lab.addr("branch1-gw"), count=1).ok

        lab.set_nat("hq", 41000)
        assert _udp_source_seen(lab, "tracked") == (address, first)  # old flow: old mapping
        assert lab.flush_conntrack() >= 1
        address2, second = _udp_source_seen(lab, "rebound")
        assert address2 == router_side and 41000 <= second <= 41099, (address2, second)

        lab.set_nat(None)
        lab.flush_conntrack()
        assert lab.nat is None and lab.nat_public_address("hq") == lab.addr("hq-gw")
        assert _udp_source_seen(lab, "plain") == (lab.addr("hq-gw"), 4500)
        with pytest.raises(KeyError):
            lab.set_nat("nowhere")
        with pytest.raises(ValueError):
            lab.set_nat("hq", 70000)
    assert_gone(lab)


def test_capture_records_icmp(two_sites_topology, tmp_path) -> None:
    from scapy.all import ICMP, IP, rdpcap

    pcap = tmp_path / "wan.pcap"
    with Lab(two_sites_topology, mode="tunnel") as lab:
        hq, br = lab.site("hq"), lab.site("branch1")
        with lab.capture("router", hq.router_if, pcap, filter="icmp") as cap:
            assert ping(lab, "hq-gw", str(br.gw_wan4), count=3, interval=0.05).received == 3
    assert cap.packets == 6
    packets = [p for p in rdpcap(str(pcap)) if ICMP in p]
    requests = [p for p in packets if p[ICMP].type == 8]
    replies = [p for p in packets if p[ICMP].type == 0]
    assert len(requests) == 3 and len(replies) == 3
    assert {(p[IP].src, p[IP].dst) for p in requests} == {(str(hq.gw_wan4), str(br.gw_wan4))}
    assert_gone(lab, [cap.proc.pid])


# ---------------------------------------------------------------- commands


def test_run_reports_failures_and_timeouts(two_sites_topology) -> None:
    with Lab(two_sites_topology) as lab:
        assert "198.18.1.2" in lab.run("hq-gw", ["ip", "-4", "addr", "show", "wan0"]).stdout
        with pytest.raises(CommandError, match=r"\[hq-gw\].*exited"):
            lab.run("hq-gw", ["ip", "link", "show", "nonexistent0"])
        assert lab.run("hq-gw", ["false"], check=False).returncode == 1
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout, match="0.3s"):
            lab.run("hq-gw", ["sleep", "5"], timeout=0.3)
        assert time.monotonic() - t0 < 2
        with pytest.raises(KeyError):
            lab.ns("nowhere")


def test_parse_ping_rtts_and_percentiles() -> None:
    out = textwrap.dedent("""\
        PING 10.2.0.10 (10.2.0.10) 56(84) bytes of data.
        64 bytes from 10.2.0.10: icmp_seq=1 ttl=62 time=1.50 ms
        64 bytes from 10.2.0.10: icmp_seq=2 ttl=62 time=0.500 ms
        64 bytes from 10.2.0.10: icmp_seq=2 ttl=62 time=0.900 ms (DUP!)
        64 bytes from 10.2.0.10: icmp_seq=4 ttl=62 time=2.00 ms

        --- 10.2.0.10 ping statistics ---
        4 packets transmitted, 3 received, +1 duplicates, 25% packet loss, time 3004ms
        """)
    r = parse_ping("10.2.0.10", out)
    assert (r.sent, r.received, r.rtts_ms) == (4, 3, (1.5, 0.5, 2.0))
    assert r.loss_pct == 25 and r.median == 1.5 and r.p95 == 2.0 and r.p99 == 2.0


# ---------------------------------------------------------------- teardown


def test_teardown_kills_processes_including_stubborn_ones(two_sites_topology) -> None:
    with Lab(two_sites_topology, grace=0.5) as lab:
        polite = lab.popen("hq-gw", ["sleep", "60"])
        stopped = lab.popen("hq-host", ["sleep", "60"])
        assert lab.stop(stopped) == -signal.SIGTERM
        # ignores SIGTERM, and its background child outlives the SIGKILLed shell
        stubborn = lab.popen("router", ["sh", "-c", 'trap "" TERM; sleep 60 & echo $!; wait'],
                             stdout=subprocess.PIPE, text=True)
        orphan = int(stubborn.stdout.readline())
        assert alive(orphan)
    assert_gone(lab, [polite.pid, stopped.pid, stubborn.pid, orphan])
    lab.close()  # idempotent


def test_exception_inside_with_still_tears_down(two_sites_topology) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(two_sites_topology) as lab:
            assert signal.getsignal(signal.SIGTERM) != before[0]  # teardown handler installed
            proc = lab.popen("hq-gw", ["sleep", "60"])
            raise RuntimeError("boom")
    assert_gone(lab, [proc.pid])
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_invalid_topology_object_is_rejected_before_building(two_sites_topology) -> None:
    t = two_sites_topology
    hq = dataclasses.replace(t.site("hq"), gw_wan_if="wan-interface-too-long")
    bad = dataclasses.replace(t, sites=(hq, t.site("branch1")))
    lab = None
    with pytest.raises(TopologyError, match="interface name"):
        lab = Lab(bad, prefix="slbad001")
    assert lab is None and lab_namespaces("slbad001") == []


def test_failed_kernel_step_tears_down_what_was_built(two_sites_topology, monkeypatch) -> None:
    # Skip validation so the kernel itself rejects the name mid-build.
    monkeypatch.setattr(lab_module, "validate", lambda *a, **k: None)
    t = two_sites_topology
    br = dataclasses.replace(t.site("branch1"), gw_wan_if="wan-interface-too-long")
    lab = Lab(dataclasses.replace(t, sites=(t.site("hq"), br)))
    with pytest.raises(LabBuildError, match=r"create veth links.*wan-interface-too-long"):
        lab.build()
    assert_gone(lab)


def test_failed_late_step_tears_down(two_sites_topology, monkeypatch) -> None:
    def broken(self):
        raise OSError("injected routing failure")

    monkeypatch.setattr(Lab, "_add_routes", broken)
    lab = Lab(two_sites_topology)
    with pytest.raises(LabBuildError, match="add routes.*injected"):
        lab.build()
    assert_gone(lab)


CHILD = """
import sys, time
sys.path.insert(0, {lab_dir!r})
from netnslab import Lab
lab = Lab({topo!r}).build()
proc = lab.popen("hq-gw", ["sleep", "60"])
print(lab.prefix, proc.pid, flush=True)
if sys.argv[1] == "atexit":
    sys.exit(0)
time.sleep(30)
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "atexit"])
def test_signals_and_interpreter_exit_tear_down(how) -> None:
    script = CHILD.format(lab_dir=str(LAB_DIR), topo=str(TWO_SITES))
    child = subprocess.Popen([sys.executable, "-c", script, how], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        prefix, pid = child.stdout.readline().split()
        if how != "atexit":  # (with atexit, teardown may already be running)
            assert len(lab_namespaces(prefix)) == 5 and alive(int(pid))
            child.send_signal(getattr(signal, how))
    finally:
        # Never kill the child early: that would interrupt the very teardown under test.
        rc = child.wait(30)
        stderr = child.stderr.read()
    # An uncaught KeyboardInterrupt makes Python exit by re-raising SIGINT.
    expected = {"SIGTERM": -signal.SIGTERM, "SIGINT": -signal.SIGINT, "atexit": 0}[how]
    assert rc == expected, stderr
    if how == "SIGINT":
        assert "KeyboardInterrupt" in stderr
    assert lab_namespaces(prefix) == []
    assert not alive(int(pid))
