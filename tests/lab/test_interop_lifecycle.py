"""sitelink against strongSwan 5.9 through the whole SA lifecycle: Child SA rekeys and IKE SA rekeys
started by either side, PFS (a DH group in the ESP proposal), dead-peer detection both ways, a crashed
peer (fail closed), and a strongSwan restart. sitelink runs at hq, charon (kernel-libipsec) at branch1.

Every test pings both ways before and after each step, checks that sitelink's and strongSwan's views of
the SPIs agree, that sitelink dropped nothing for a bad ICV or a replay, and that every ESP packet of a
WAN capture over the whole test decrypts and tag-verifies with scapy using the keys sitelink exported.
Figures are printed (run with -s)."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from scapy.layers.inet import UDP

from netnslab import TOPOLOGIES, Lab, iperf3, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan
from tests.lab.wan import analyse, sas_from_esp_log

HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"
TUNNEL = "branch1"  # hq's tunnel to branch1
_ESTABLISHED = re.compile(r"Child SA established \(.*?SPI in (0x[0-9a-f]+), out (0x[0-9a-f]+)")
_DELETED = re.compile(r"Child SA deleted \(SPI in (0x[0-9a-f]+), out (0x[0-9a-f]+)")
_BAD_DROPS = ("auth_failed", "replay")


pytestmark = pytest.mark.usefixtures("strongswan_required")

# -- set-up ----------------------------------------------------------------------------------------------
class Pair:
    """A lab with sitelink at hq and strongSwan at branch1, the WAN captured for the whole test."""

    def __init__(self, stack: ExitStack, tmp_path: Path, *, sitelink_initiates: bool,
                 ike_options: dict | None = None, esp_proposals: list[str] | None = None, keying: str = "psk",
                 **swan_kw) -> None:
        """keying: psk, or cert (the lab's CA from `sitelink pki`, ECDSA P-256 on both sides)."""
        self.lab = stack.enter_context(Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel"))
        self.tmp = tmp_path
        self.sitelink_initiates = sitelink_initiates
        self.dep = Deployment(self.lab, tmp_path / "sitelink", esp_key_log=True, keying=keying,
                              ike_proposals=["aes256gcm16-prfsha256-x25519"],
                              initiators={("hq", "branch1")} if sitelink_initiates else set(),
                              ike_options=ike_options, esp_proposals=esp_proposals)
        swan_kw.setdefault("ike_proposal", "aes256gcm16-prfsha256-curve25519")
        if keying == "cert":
            pki = self.dep.workdir / "pki"
            swan_kw.update(auth="pubkey", ca=pki / "ca.crt", cert=next((pki / "branch1").glob("*.crt")),
                           key=next((pki / "branch1").glob("*.key")))
        else:
            swan_kw["psk"] = self.dep.gateways["hq"].keys["branch1"].read_text().strip()
        self.swan = StrongSwan(self.lab, "branch1", tmp_path / "swan", remote_site="hq",
                               local_id=identity("branch1"), remote_id=identity("hq"), ike_port=500, **swan_kw)
        self.pcap = tmp_path / "wan.pcap"
        self.cap = stack.enter_context(self.lab.capture("router", self.lab.site("hq").router_if, self.pcap))
        self.hq_host, self.br_host = self.lab.addr("hq-host"), self.lab.addr("branch1-host")

    def up(self) -> float:
        """Start both, establish the tunnel; seconds from `sitelink up` to the first ping through."""
        self.swan.start()
        t0 = time.monotonic()
        self.dep.start("hq")
        if not self.sitelink_initiates:
            self.swan.initiate()
        self.dep.wait_established("hq")
        self.traffic("initial")
        return time.monotonic() - t0

    # -- observations ------------------------------------------------------------------------------------
    def log(self) -> str:
        return self.dep.gateways["hq"].log_text()

    def children(self) -> list[tuple[int, int]]:
        """(spi_in, spi_out) of every Child SA sitelink logged as established, oldest first."""
        return [(int(a, 16), int(b, 16)) for a, b in _ESTABLISHED.findall(self.log())]

    def deleted(self) -> list[tuple[int, int]]:
        return [(int(a, 16), int(b, 16)) for a, b in _DELETED.findall(self.log())]

    def swan_agrees(self, timeout: float = 3.0) -> dict:
        """strongSwan's newest installed CHILD_SA has sitelink's newest SPIs (mirrored); its summary."""
        spi_in, spi_out = self.children()[-1]
        summary: dict = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = self.swan.sa_summary()
            if (summary["spi_in"], summary["spi_out"]) == (spi_out, spi_in) and summary["child_state"] == "INSTALLED":
                return summary
            time.sleep(0.05)
        raise AssertionError(f"strongSwan's CHILD_SA {summary.get('spi_in')}/{summary.get('spi_out')} is not "
                             f"sitelink's newest {spi_out:#010x}/{spi_in:#010x}:\n{self.swan.list_sas()}")

    def traffic(self, when: str, count: int = 3) -> None:
        """A ping passes both ways (each probe answered)."""
        there = ping(self.lab, "hq-host", self.br_host, count=count, interval=0.05, timeout=1.0)
        back = ping(self.lab, "branch1-host", self.hq_host, count=count, interval=0.05, timeout=1.0)
        assert there.received == count and back.received == count, (
            f"{when}: hq->branch1 {there.received}/{count}, branch1->hq {back.received}/{count}\n"
            f"--- sitelink ---\n{self.log()[-3000:]}\n--- charon ---\n{self.swan.log_tail()}")

    @contextmanager
    def streams(self, seconds: int) -> Iterator[dict]:
        """UDP streams both ways (iperf3 numbers every datagram, 250 per second each) during the block; the
        dict holds {direction: iperf3 end summary} once the block is left and the streams are over."""
        results: dict = {}
        errors: list[BaseException] = []

        def run(name: str, client: str, server: str, addr: str, port: int) -> None:
            try:
                results[name] = iperf3(self.lab, client, server, addr, seconds=seconds, udp=True, bitrate="2M",
                                       length=1000, port=port).raw["end"]["sum"]
            except BaseException as exc:  # noqa: BLE001 - reported in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=("hq->branch1", "hq-host", "branch1-host", self.br_host, 5201)),
                   threading.Thread(target=run, args=("branch1->hq", "branch1-host", "hq-host", self.hq_host, 5202))]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)  # both streams running
            yield results
        finally:
            for t in threads:
                t.join(seconds + 40)
        if errors:
            raise errors[0]

    def no_bad_drops(self) -> dict:
        c = self.dep.counters("hq")[TUNNEL]
        bad = {k: v for k, v in c["drops"].items() if k in _BAD_DROPS}
        assert not bad, f"sitelink dropped inbound ESP: {c}"
        return c

    def charon_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.swan.log_text()))

    def finish(self, stack: ExitStack, min_esp: int = 1):
        """Stop the capture and check every ESP packet on the WAN against sitelink's exported keys."""
        stack.close()  # tcpdump flushes, then the lab is torn down
        report = analyse(self.pcap, sas_from_esp_log(self.dep.esp_keys_path("hq")), {HQ_WAN, BR_WAN})
        assert self.cap.kernel_drops == 0
        assert report.cleartext == [], report.cleartext[:5]
        assert report.unknown_spi == [], sorted(set(report.unknown_spi))
        assert report.esp >= min_esp and len(report.decrypted) == report.esp  # scapy checked every ICV
        return report


def _spis(summaries: list[dict]) -> str:
    return ", ".join(f"{s['spi_in']:08x}/{s['spi_out']:08x}" for s in summaries)


STREAM_PORTS = {"hq->branch1": 5201, "branch1->hq": 5202}


SWAN_LOSS_SHARE = 0.01  # of a stream's datagrams, plus one: the most strongSwan's side may lose


def _stream_loss(results: dict, report, sitelink_may_lose: int = 0) -> str:  # noqa: ANN001 - tests.lab.wan.WanReport
    """Blame every datagram iperf3 lost on one side, using the decrypted WAN capture: missing on the wire
    means the sending gateway lost it, on the wire but not received means the receiving one did. sitelink
    (hq) must lose none; strongSwan's side at most one datagram plus 1 % of the stream (now and then one
    datagram that sitelink did put on the wire never reaches branch1-host, with nothing in charon's log
    at the lab's log levels; a rekey that lost a burst would exceed it)."""
    on_wire: dict[int, set[int]] = {port: set() for port in STREAM_PORTS.values()}
    for inner in report.decrypted:
        if UDP in inner and inner[UDP].dport in on_wire and len(inner[UDP].payload) == 1000:
            on_wire[inner[UDP].dport].add(int.from_bytes(bytes(inner[UDP].payload)[8:12], "big"))  # iperf3 seq
    figures = []
    for name, end in results.items():
        sent = set(range(1, end["packets"] + 1))
        missing_on_wire = len(sent - on_wire[STREAM_PORTS[name]])
        after_wire = end["lost_packets"] - missing_on_wire
        by_sitelink, by_swan = (missing_on_wire, after_wire) if name == "hq->branch1" else (after_wire, missing_on_wire)
        assert end["packets"] > 0 and by_sitelink <= sitelink_may_lose, (f"{name}: sitelink lost {by_sitelink} "
                                                                          "datagrams", end)
        assert by_swan <= 1 + SWAN_LOSS_SHARE * end["packets"], (f"{name}: strongSwan lost {by_swan}", end)
        figures.append(f"{name} {end['packets']} datagrams, {end['lost_packets']} lost"
                       + (f" (all {by_swan} in strongSwan)" if by_swan else ""))
    return ", ".join(figures)


def wait_for(what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> float:
    """Poll until predicate() is true; the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - t0


# -- 1. Child SA rekeys ------------------------------------------------------------------------------------
REKEYS = 3


@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiated", "strongswan-initiated"])
def test_child_rekeys_by_strongswan(tmp_path: Path, sitelink_initiates: bool) -> None:
    """swanctl --rekey --child, several times. When sitelink initiated the IKE SA, every rekey is a request
    from the original responder (I flag clear, its own message IDs)."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=sitelink_initiates)
        p.up()
        spis = [p.swan_agrees()]
        times = []
        with p.streams(4) as streams:
            for i in range(1, REKEYS + 1):
                t0 = time.monotonic()
                p.swan.rekey("child")
                times.append(time.monotonic() - t0)
                wait_for(f"rekey {i}: sitelink logs the new Child SA", lambda i=i: len(p.children()) == 1 + i, 3)
                wait_for(f"rekey {i}: sitelink deletes the old one", lambda i=i: len(p.deleted()) == i, 3)
                p.traffic(f"after strongSwan's Child rekey {i}")
                spis.append(p.swan_agrees())
                time.sleep(0.3)
        assert p.deleted() == p.children()[:-1]  # each old SA went, in order, and only those
        assert len({(s["spi_in"], s["spi_out"]) for s in spis}) == REKEYS + 1  # fresh SPIs every time
        assert p.charon_count(r"parsed CREATE_CHILD_SA response \d+ \[ SA No TSi TSr \]") == REKEYS
        assert p.charon_count(r"retransmit") == 0
        c = p.no_bad_drops()
        report = p.finish(stack)
        loss = _stream_loss(streams, report)
    print(f"\nstrongSwan rekeyed the Child SA {REKEYS}x (swanctl --rekey took "
          f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms); SPIs in/out "
          f"{_spis(spis)}; streams meanwhile: {loss}; hq drops {c['drops'] or 'none'}; "
          f"{report.esp} ESP / {report.ike} IKE packets, all ESP decrypted")


@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiated", "strongswan-initiated"])
def test_child_rekeys_by_sitelink(tmp_path: Path, sitelink_initiates: bool) -> None:
    """sitelink's Child soft lifetime (2 s) against strongSwan's 1 h."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=sitelink_initiates, ike_options={"rekey_time": 2, "lifetime": 10})
        p.up()
        spis = [p.swan_agrees()]
        t_est = [time.monotonic()]
        with p.streams(8) as streams:
            for i in range(1, REKEYS + 1):
                wait_for(f"sitelink's Child rekey {i}", lambda i=i: len(p.children()) >= 1 + i, 5)
                t_est.append(time.monotonic())
                p.traffic(f"after sitelink's Child rekey {i}")
                wait_for(f"rekey {i}: sitelink deletes the old one", lambda i=i: len(p.deleted()) >= i, 3)
                spis.append(p.swan_agrees())
        assert p.deleted()[:REKEYS] == p.children()[:REKEYS]
        assert len({(s["spi_in"], s["spi_out"]) for s in spis}) == REKEYS + 1
        assert p.charon_count(r"parsed CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No TSi TSr \]") >= REKEYS
        assert p.charon_count(r"parsed INFORMATIONAL request \d+ \[ D \]") >= REKEYS
        assert p.charon_count(r"retransmit") == 0
        c = p.no_bad_drops()
        report = p.finish(stack)
        loss = _stream_loss(streams, report)
    gaps = [b - a for a, b in zip(t_est, t_est[1:])]
    print(f"\nsitelink rekeyed the Child SA {REKEYS}x, every {', '.join(f'{g:.1f}' for g in gaps)} s "
          f"(rekey_time 2 s); SPIs in/out {_spis(spis)}; streams meanwhile: {loss}; "
          f"hq drops {c['drops'] or 'none'}; {report.esp} ESP / {report.ike} IKE packets, all ESP decrypted")


# -- 2. IKE SA rekeys ----------------------------------------------------------------------------------
IKE_REKEYS = 2


@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiated", "strongswan-initiated"])
def test_ike_rekeys_by_strongswan(tmp_path: Path, sitelink_initiates: bool) -> None:
    """swanctl --rekey --ike twice (if sitelink initiated the first IKE SA, the roles flip: strongSwan is
    the initiator of the new one); the Child SA survives each, then a Child rekey on the rekeyed IKE SA
    proves the new SK_d."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=sitelink_initiates)
        p.up()
        first = p.swan_agrees()
        ike_spis = [(first["ike_spi_i"], first["ike_spi_r"])]
        for i in range(1, IKE_REKEYS + 1):
            p.swan.rekey("ike")
            wait_for(f"sitelink logs IKE rekey {i}", lambda i=i: p.log().count("IKE SA rekeyed") == i, 3)
            p.traffic(f"after strongSwan's IKE rekey {i}")
            s = p.swan_agrees()
            assert (s["spi_in"], s["spi_out"]) == (first["spi_in"], first["spi_out"])  # the Child SA moved
            ike_spis.append((s["ike_spi_i"], s["ike_spi_r"]))
        assert len(p.children()) == 1 and p.deleted() == []
        assert len(set(ike_spis)) == IKE_REKEYS + 1
        p.swan.rekey("child")  # keys from the newest SK_d
        wait_for("Child rekey on the rekeyed IKE SA", lambda: len(p.children()) == 2 and len(p.deleted()) == 1, 3)
        p.traffic("after a Child rekey on the rekeyed IKE SA")
        p.swan_agrees()
        assert p.charon_count(r"parsed CREATE_CHILD_SA response \d+ \[ SA No KE \]") == IKE_REKEYS
        assert p.charon_count(r"retransmit") == 0
        c = p.no_bad_drops()
        report = p.finish(stack)
    print(f"\nstrongSwan rekeyed the IKE SA {IKE_REKEYS}x: {' -> '.join(f'{i}_i/{r}_r' for i, r in ike_spis)}; "
          f"Child SA kept; hq drops {c['drops'] or 'none'}; {report.esp} ESP packets, all decrypted")


def _rekeyed(summary: dict, old_spis: list) -> bool:
    """strongSwan holds an established IKE SA with SPIs not among old_spis."""
    return (summary["ike_spi_i"], summary["ike_spi_r"]) not in old_spis and summary["ike_state"] == "ESTABLISHED"


@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiated", "strongswan-initiated"])
def test_ike_rekeys_by_sitelink(tmp_path: Path, sitelink_initiates: bool) -> None:
    """sitelink's IKE soft lifetime of 3 s (strongSwan's is 4 h)."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=sitelink_initiates, ike_options={"ike_rekey_time": 3, "ike_lifetime": 20})
        p.up()
        first = p.swan_agrees()
        ike_spis = [(first["ike_spi_i"], first["ike_spi_r"])]
        for i in range(1, IKE_REKEYS + 1):
            wait_for(f"sitelink's IKE rekey {i}", lambda i=i: p.log().count("IKE SA rekeyed") >= i, 6)
            p.traffic(f"after sitelink's IKE rekey {i}")
            wait_for(f"strongSwan sees IKE rekey {i}",
                     lambda: _rekeyed(p.swan.sa_summary(), ike_spis), 3)
            s = p.swan_agrees()
            assert (s["spi_in"], s["spi_out"]) == (first["spi_in"], first["spi_out"])
            ike_spis.append((s["ike_spi_i"], s["ike_spi_r"]))
        wait_for("strongSwan holds one IKE SA", lambda: len(p.swan.sa_summary()["ike_sas"]) == 1, 3)
        assert len(p.children()) == 1 and p.deleted() == []
        p.swan.rekey("child")
        wait_for("Child rekey on the rekeyed IKE SA", lambda: len(p.children()) == 2 and len(p.deleted()) == 1, 3)
        p.traffic("after a Child rekey on the rekeyed IKE SA")
        p.swan_agrees()
        assert p.charon_count(r"parsed CREATE_CHILD_SA request \d+ \[ SA No KE \]") >= IKE_REKEYS
        assert p.charon_count(r"retransmit") == 0
        c = p.no_bad_drops()
        report = p.finish(stack)
    print(f"\nsitelink rekeyed the IKE SA {IKE_REKEYS}x: {' -> '.join(f'{i}_i/{r}_r' for i, r in ike_spis)}; "
          f"Child SA kept; hq drops {c['drops'] or 'none'}; {report.esp} ESP packets, all decrypted")


# -- 3. PFS -------------------------------------------------------------------------------------------------
def test_child_rekeys_with_pfs(tmp_path: Path) -> None:
    """ESP proposal with a DH group on both sides: each Child rekey carries KE, from either side."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=True,
                 ike_options={"rekey_time": 4, "lifetime": 20}, esp_proposals=["aes256gcm16-x25519"],
                 esp_proposal="aes256gcm16-curve25519")
        p.up()
        p.swan_agrees()
        p.swan.rekey("child")  # strongSwan's KE, answered with ours
        wait_for("strongSwan's PFS rekey", lambda: len(p.children()) == 2 and len(p.deleted()) == 1, 3)
        p.traffic("after strongSwan's PFS rekey")
        by_swan = p.swan_agrees()
        wait_for("sitelink's PFS rekey", lambda: len(p.children()) >= 3 and len(p.deleted()) >= 2, 6)
        p.traffic("after sitelink's PFS rekey")
        by_sitelink = p.swan_agrees()
        generated = p.charon_count(r"generating CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No KE TSi TSr \]")
        parsed = p.charon_count(r"parsed CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No KE TSi TSr \]")
        answered = p.charon_count(r"parsed CREATE_CHILD_SA response \d+ \[ SA No KE TSi TSr \]")
        assert generated == 1 and answered == 1 and parsed >= 1
        for s in (by_swan, by_sitelink):
            assert s["esp_algorithms"] == "AES_GCM_16-256/CURVE_25519", s["esp_algorithms"]
        assert p.charon_count(r"retransmit") == 0
        c = p.no_bad_drops()
        report = p.finish(stack)
    print(f"\nPFS: strongSwan's rekey and {parsed} of sitelink's carried KE (curve25519); strongSwan lists "
          f"ESP:{by_sitelink['esp_algorithms']}; hq drops {c['drops'] or 'none'}; {report.esp} ESP packets, "
          f"all decrypted")


# -- 4. DPD ---------------------------------------------------------------------------------------------
def test_dpd_by_strongswan(tmp_path: Path) -> None:
    """strongSwan dpd_delay=2s: it probes the idle tunnel, sitelink answers, the SA stays up."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=True, dpd_delay="2s")
        p.up()
        before = p.swan.sa_summary()
        wait_for("strongSwan sends 2 DPD requests", lambda: p.charon_count(r"sending DPD request") >= 2, 8, 0.2)
        probes = p.charon_count(r"sending DPD request")
        answers = p.charon_count(r"parsed INFORMATIONAL response \d+ \[ \]")
        s = p.swan.sa_summary()
        assert s["ike_state"] == "ESTABLISHED" and s["ike_uniqueid"] == before["ike_uniqueid"]
        assert answers >= probes - 1 and p.charon_count(r"retransmit") == 0
        p.traffic("after strongSwan's DPD")
        assert "dead peer" not in p.log() and len(p.children()) == 1
        p.no_bad_drops()
        p.finish(stack)
    print(f"\nstrongSwan sent {probes} DPD requests (dpd_delay 2 s), sitelink answered {answers}")


DPD_IDLE = 8.0


def test_dpd_by_sitelink_then_peer_dies(tmp_path: Path) -> None:
    """sitelink dpd_delay=2: strongSwan answers every probe while idle. Then charon is SIGKILLed: sitelink
    declares the peer dead after dpd_delay plus its retransmission schedule (1+2+4+8+16+32 s) and the
    tunnel fails closed."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=False, ike_options={"dpd_delay": 2})
        p.up()
        time.sleep(DPD_IDLE)
        answered = p.charon_count(r"parsed INFORMATIONAL request \d+ \[ \]")
        assert answered >= 3, p.swan.log_tail()
        assert p.charon_count(r"generating INFORMATIONAL response \d+ \[ \]") == answered
        assert "dead peer" not in p.log() and "does not answer" not in p.log()
        assert p.swan.sa_summary()["ike_state"] == "ESTABLISHED"
        p.traffic("after sitelink's DPD")

        last_heard = time.monotonic()  # the ping replies above were the last thing from branch1
        p.swan.stop(signal.SIGKILL)
        wait_for("sitelink declares the peer dead", lambda: "dead peer" in p.log(), 75, 0.2)
        dead_after = time.monotonic() - last_heard
        line = next(line for line in p.log().splitlines() if "dead peer" in line)
        wait_for("sitelink drops the Child SA", lambda: len(p.deleted()) == 1, 3)
        there = ping(p.lab, "hq-host", p.br_host, count=3, interval=0.05, timeout=0.5)
        assert there.received == 0
        c = p.dep.counters("hq")[TUNNEL]
        assert c["drops"].get("no_sa", 0) >= 3, c
        assert not {k for k in c["drops"] if k in _BAD_DROPS}, c
        report = p.finish(stack)
    print(f"\nsitelink's DPD (delay 2 s): strongSwan answered {answered} probes in {DPD_IDLE:.0f} s idle. "
          f"After SIGKILL of charon the peer was declared dead {dead_after:.1f} s after it was last heard "
          f"(2 s + 63 s of retransmissions):\n  {line.strip()}\n  then hq drops {c['drops']}; "
          f"{report.esp} ESP packets, all decrypted, no clear text")


# -- 5. restart ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_strongswan_restart(tmp_path: Path, sig: int) -> None:
    """charon stops (SIGTERM: it deletes its SAs first; SIGKILL: sitelink keeps stale ones, and the new
    IKE_AUTH's INITIAL_CONTACT clears them), starts again and initiates: traffic flows again."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=False)
        p.up()
        old = p.children()[-1]
        t_stop = time.monotonic()
        p.swan.stop(sig)
        if sig == signal.SIGTERM:
            wait_for("sitelink hears the IKE delete", lambda: "deleted the IKE SA" in p.log(), 5)
            assert p.deleted() == [old]
        t0 = time.monotonic()
        p.swan.start()
        p.swan.initiate()
        t_initiated = time.monotonic() - t0
        p.dep.wait_established("hq", count=2)
        p.traffic("after the restart")
        t_traffic = time.monotonic() - t0
        assert p.deleted()[0] == old and p.children()[-1] != old
        if sig == signal.SIGKILL:
            assert "INITIAL_CONTACT" in p.log()
        p.swan_agrees()
        c = p.no_bad_drops()
        report = p.finish(stack)
    print(f"\nstrongSwan {signal.Signals(sig).name} + restart: charon start to IKE/Child SA up "
          f"{t_initiated:.2f} s, to traffic both ways {t_traffic:.2f} s ({time.monotonic() - t_stop:.1f} s "
          f"incl. teardown); hq drops {c['drops'] or 'none'}; {report.esp} ESP packets, all decrypted")


# -- 6. certificates through the lifecycle ------------------------------------------------------------
@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiated", "strongswan-initiated"])
def test_certificates_through_the_lifecycle(tmp_path: Path, sitelink_initiates: bool) -> None:
    """Certificate authentication (the lab CA, ECDSA) instead of a PSK, under UDP streams both ways: a
    Child rekey by each side and an IKE rekey by strongSwan with loss asserted on both sides, strongSwan's
    DPD answered, then each side restarted in turn (strongSwan SIGKILLed, sitelink SIGTERMed) and the
    tunnel set up again by certificates."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=sitelink_initiates, keying="cert", dpd_delay="2s",
                 ike_options={"rekey_time": 4, "lifetime": 30})
        p.up()
        p.swan_agrees()
        with p.streams(8) as streams:
            p.swan.rekey("child")
            wait_for("strongSwan's Child rekey", lambda: len(p.children()) >= 2 and len(p.deleted()) >= 1, 3)
            wait_for("sitelink's Child rekey", lambda: len(p.children()) >= 3 and len(p.deleted()) >= 2, 8)
            p.swan.rekey("ike")
            wait_for("strongSwan's IKE rekey", lambda: p.log().count("IKE SA rekeyed") >= 1, 3)
            p.traffic("after the rekeys")
        wait_for("strongSwan's DPD answered", lambda: p.charon_count(r"parsed INFORMATIONAL response") >= 1, 8, 0.2)
        p.swan.stop(signal.SIGKILL)  # strongSwan crashes and comes back
        p.swan.start()
        p.swan.initiate()
        wait_for("tunnel back after strongSwan's restart", lambda: "INITIAL_CONTACT" in p.log(), 10)
        p.traffic("after strongSwan's restart")
        established = p.log().count("Child SA established")
        p.dep.stop("hq")  # sitelink stops (deleting its SAs at strongSwan) and starts again
        p.dep.start("hq")
        if not sitelink_initiates:
            p.swan.initiate()
        wait_for("tunnel back after sitelink's restart", lambda: p.log().count("Child SA established") > established, 15)
        p.traffic("after sitelink's restart")
        p.swan_agrees()
        c = p.no_bad_drops()
        report = p.finish(stack)
        loss = _stream_loss(streams, report)  # asserts both sides' share of the loss during the rekeys
    print(f"\ncertificates, {'sitelink' if sitelink_initiates else 'strongSwan'} initiated: rekeys under streams "
          f"({loss}); DPD answered; strongSwan SIGKILL + restart and sitelink restart recovered; hq drops "
          f"{c['drops'] or 'none'}; {report.esp} ESP packets, all decrypted")


# -- 7. re-authentication -------------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["sitelink", "strongswan"])
def test_reauthentication_make_before_break(tmp_path: Path, by: str) -> None:
    """reauth_time 5 s on one side (certificates): a new IKE SA with a full IKE_AUTH, then the old one
    deleted, twice, under UDP streams both ways with loss asserted on both sides. strongSwan 5.9
    re-authenticates break-before-make unless charon.make_before_break is set, as it is here."""
    with ExitStack() as stack:
        p = Pair(stack, tmp_path, sitelink_initiates=True, keying="cert",
                 ike_options={"reauth_time": 5} if by == "sitelink" else None,
                 **({"reauth_time": "5s", "make_before_break": True} if by == "strongswan" else {}))
        p.up()
        first = p.swan.sa_summary()
        seen = {(first["ike_spi_i"], first["ike_spi_r"])}
        with p.streams(14) as streams:
            for i in (1, 2):
                wait_for(f"re-authentication {i}", lambda i=i: p.log().count("IKE SA established") >= 1 + i, 9)
                wait_for(f"old IKE SA {i} deleted", lambda i=i: p.log().count("IKE SA deleted") >= i, 5)
                p.traffic(f"after re-authentication {i}")
                s = p.swan.sa_summary()
                seen.add((s["ike_spi_i"], s["ike_spi_r"]))
                wait_for("strongSwan holds one IKE SA", lambda: len(p.swan.sa_summary()["ike_sas"]) == 1, 5)
        assert len(seen) == 3  # two new IKE SAs, each from a full IKE_SA_INIT + IKE_AUTH
        assert p.charon_count(r"authentication of '[^']*' with ECDSA\S* successful") >= 3
        c = p.no_bad_drops()
        report = p.finish(stack)
        # When sitelink re-authenticates, strongSwan answers its IKE_AUTH and may send its next ESP packet
        # on the new Child SA before that answer has reached sitelink: one datagram per re-authentication
        # can meet an SPI sitelink does not know yet (counted unknown_spi; a CI run lost 1 of 3500).
        loss = _stream_loss(streams, report, sitelink_may_lose=2 if by == "sitelink" else 0)
    print(f"\nre-authentication by {by} every 5 s: IKE SAs {', '.join(f'{i}_i' for i, _ in seen)}; "
          f"streams meanwhile: {loss}; hq drops {c['drops'] or 'none'}")
