"""Keying between IKE events and the forwarder, two sites back to back without sockets: real
IKE messages between two ControlPlanes, real ESP between their Forwarders, a hand-driven clock.

The point is make-before-break across a rekey when the rekey's answer is lost: the side that answered
must keep sending on the old SA until the peer shows it has the new one (RFC 7296 §2.8)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.test_config_ike import write_file
from tests.unit.test_config_loader import write
from tunnel.app.assemble import build_forwarder
from tunnel.app.keying import RETRY_DELAY, VOLUME_GRACE, Keying, LocalPlane
from tunnel.config.loader import load_config
from tunnel.ike.constants import ExchangeType
from tunnel.ike.message import parse_header

PSK = b"control-plane-test-psk-0123456789"
ADDR = {"hq": "198.18.1.2", "branch1": "198.18.2.2"}
SUBNET = {"hq": "10.1.0", "branch1": "10.2.0"}

CONFIG = """\
gateway:
  name: {me}
  listen:
    address: {my_addr}
tunnels:
  - name: {peer}
    peer:
      address: {peer_addr}
    local_subnets: [{my_net}.0/24]
    remote_subnets: [{peer_net}.0/24]
    ike:
      auth: psk
      psk_file: {me}.psk
      local_id: gw.{me}.example
      remote_id: gw.{peer}.example
      start: {start}
      rekey_time: 100
      lifetime: 150
      dpd_delay: {dpd}
{extra}"""


class Site:
    def __init__(self, directory: Path, me: str, peer: str, start: str, extra: str = "", workers: int = 1,
                 dpd: int = 0, peer_addr: str | None = None) -> None:
        directory.mkdir()
        write_file(directory / f"{me}.psk", PSK + b"\n")
        path = write(directory, CONFIG.format(me=me, peer=peer, my_addr=ADDR[me], peer_addr=peer_addr or ADDR[peer],
                                              my_net=SUBNET[me], peer_net=SUBNET[peer], start=start,
                                              extra=extra, dpd=dpd))
        config = load_config(path)
        self.name, self.peer = me, peer
        self.forwarders = [build_forwarder(config) for _ in range(workers)]
        self.forwarder = self.forwarders[0]
        planes = [LocalPlane(f) for f in self.forwarders]
        self.keying = Keying(config, self.forwarder if workers == 1 else planes, os.urandom)

    def packet(self, n: int) -> bytes:
        """A minimal IPv4/UDP packet from our host .1 to the peer's host .1, n in the payload."""
        src = bytes(map(int, SUBNET[self.name].split("."))) + b"\x01"
        dst = bytes(map(int, SUBNET[self.peer].split("."))) + b"\x01"
        payload = n.to_bytes(4, "big")
        udp = (5004).to_bytes(2, "big") * 2 + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
        return b"\x45\x00" + (20 + len(udp)).to_bytes(2, "big") + b"\0\0\0\0\x40\x11\0\0" + src + dst + udp


class Link:
    def __init__(self, tmp_path: Path, hq_extra: str = "", br_extra: str = "", workers: tuple[int, int] = (1, 1),
                 dpd: int = 0, peers: tuple[str | None, str | None] = (None, None)) -> None:
        """peers: what each side's config says of the other's address (default: its IP address)."""
        self.now = 100.0
        self.hq = Site(tmp_path / "hq", "hq", "branch1", "initiate", hq_extra, workers[0], dpd, peers[0])
        self.br = Site(tmp_path / "br", "branch1", "hq", "respond", br_extra, workers[1], dpd, peers[1])
        self.sites = {ADDR["hq"]: self.hq, ADDR["branch1"]: self.br}
        self.lose_ike: Callable[[str, bytes], bool] = lambda sender, data: False
        self.ike_log: list[tuple[str, int, bool]] = []  # (sender, exchange, response)

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            for addr, site in self.sites.items():
                site.keying.process_events(self.now)
                for data, remote, local_port in site.keying.dispatcher.datagrams_to_send(self.now):
                    moved = True
                    h = parse_header(data)
                    self.ike_log.append((site.name, h.exchange, h.is_response))
                    to = self.sites.get(remote[0])  # nobody at other addresses
                    if to is not None and not self.lose_ike(site.name, data):
                        to.keying.dispatcher.receive_datagram(data, (addr, local_port), remote[1], self.now)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for site in self.sites.values():
            site.keying.handle_timer(self.now)
        self.pump()

    def send(self, sender: Site, n: int, worker: int = 0) -> bool:
        """One packet through the tunnel from one of the sender's workers; whether the other side (the
        worker its SPI steers it to, as the gateway's socket filter does) delivered it."""
        receiver = self.br if sender is self.hq else self.hq
        out = sender.forwarders[worker].outbound(sender.packet(n))
        if out is None:
            return False
        steer = int.from_bytes(out[1][:4], "big") % len(receiver.forwarders)
        inner = receiver.forwarders[steer].inbound(out[1], (ADDR[sender.name], 4500))
        for site in (sender, receiver):  # what the gateway does after each batch
            for forwarder in site.forwarders:
                site.keying.on_data_events(forwarder.take_events(), self.now)
        self.pump()
        return inner == sender.packet(n)


def _up(link: Link) -> Link:
    link.hq.keying.start(link.now)
    link.pump()
    assert link.send(link.hq, 0) and link.send(link.br, 0)
    return link


@pytest.fixture
def link(tmp_path: Path) -> Link:
    return _up(Link(tmp_path))


def _spi_out(site: Site) -> int:
    return site.forwarder.tunnels[site.peer].outbound.spi


def _lose_once(sender: str, exchange: int) -> Callable[[str, bytes], bool]:
    lost: list[bytes] = []

    def lose(who: str, data: bytes) -> bool:
        if not lost and who == sender and parse_header(data).exchange == exchange:
            lost.append(data)
            return True
        return False
    return lose


@pytest.mark.parametrize("lost", ["answer", "delete"])
def test_rekey_responder_keeps_the_old_sa_until_the_peer_has_the_new_one(link: Link, lost: str) -> None:
    old = _spi_out(link.br), _spi_out(link.hq)
    link.lose_ike = (_lose_once("branch1", ExchangeType.CREATE_CHILD_SA) if lost == "answer"
                     else _lose_once("hq", ExchangeType.INFORMATIONAL))
    link.hq.keying.dispatcher.rekey_child("branch1", link.now)
    link.pump()
    # branch answered and has the new SA, but keeps sending on the old one: hq may not have it
    assert _spi_out(link.br) == old[0]
    assert (_spi_out(link.hq) == old[1]) == (lost == "answer")
    for n in range(1, 20):
        assert link.send(link.br, n), n  # never lost, whether or not hq got the answer
        if n == 5:
            link.advance(2.5)  # hq retransmits what was lost
        if n > 5:
            assert link.send(link.hq, n), n
    assert _spi_out(link.br) != old[0] and _spi_out(link.hq) != old[1]
    assert _spi_out(link.br) == link.hq.keying.tunnels["branch1"].inbound_spis[-1]
    for site in (link.hq, link.br):
        assert site.forwarder.tunnels[site.peer].counters.drops_by_reason() == {}


def test_rekey_responder_switches_on_esp_from_the_new_sa(link: Link) -> None:
    old = _spi_out(link.br)
    link.lose_ike = lambda sender, data: sender == "hq" and parse_header(data).exchange == ExchangeType.INFORMATIONAL
    link.hq.keying.dispatcher.rekey_child("branch1", link.now)
    link.pump()  # hq has switched; its DELETE of the old SA is lost (and stays lost)
    assert _spi_out(link.br) == old
    assert link.send(link.hq, 1)
    assert _spi_out(link.br) == link.hq.keying.tunnels["branch1"].inbound_spis[-1] != old
    assert link.send(link.br, 2)


def test_rekey_responder_switches_when_the_old_sa_is_deleted_without_traffic(link: Link) -> None:
    old = _spi_out(link.br)
    link.hq.keying.dispatcher.rekey_child("branch1", link.now)
    link.pump()  # answer, then hq's DELETE of the old SA, all delivered; no ESP from hq meanwhile
    assert (ExchangeType.INFORMATIONAL, False) in [(e, r) for s, e, r in link.ike_log if s == "hq"]
    assert _spi_out(link.br) != old
    assert link.send(link.br, 1) and link.send(link.hq, 1)


def test_initiator_switches_outbound_at_once(link: Link) -> None:
    old = _spi_out(link.br)
    link.br.keying.dispatcher.rekey_child("hq", link.now)
    link.lose_ike = lambda sender, data: parse_header(data).exchange == ExchangeType.INFORMATIONAL
    link.pump()
    assert _spi_out(link.br) != old
    assert link.send(link.br, 1)  # hq has the new inbound SA since it answered


@pytest.mark.parametrize("hq_action,br_action,who_restarts", [
    ("", "", "hq"),  # defaults: the initiating side restarts, the responding side clears
    ("      dpd_action: clear\n", "", None),
    ("      dpd_action: clear\n", "      dpd_action: restart\n", "branch1"),
])
def test_dpd_action_after_the_ike_sa_dies(tmp_path: Path, hq_action: str, br_action: str, who_restarts) -> None:
    link = _up(Link(tmp_path, hq_action, br_action))
    link.lose_ike = lambda sender, data: True  # the peer is unreachable: DPD-like death by retransmission
    for site in (link.hq, link.br):
        site.keying.dispatcher.rekey_child(site.peer, link.now)  # a request that will never be answered
    link.pump()
    for _ in range(70):
        link.advance(1.0)
    for site in (link.hq, link.br):  # dead peer: its SAs are gone, traffic fails closed
        assert site.forwarder.tunnels[site.peer].outbound is None
        assert not any(s.established for s in site.keying.dispatcher.sessions_for(site.peer))
    link.lose_ike = lambda sender, data: False
    link.ike_log.clear()
    for _ in range(70):
        link.advance(1.0)
    initiators = {s for s, exchange, response in link.ike_log if exchange == ExchangeType.IKE_SA_INIT and not response}
    assert initiators == ({who_restarts} if who_restarts else set())
    if who_restarts:
        assert link.send(link.hq, 2) and link.send(link.br, 2)


@pytest.mark.parametrize("workers", [(2, 2), (3, 1), (1, 2)])
def test_every_worker_sends_and_receives_on_child_sas_of_its_own(tmp_path: Path, workers) -> None:
    link = Link(tmp_path, workers=workers)  # rekey_time 100, lifetime 150
    link.hq.keying.start(link.now)
    link.pump()
    link.advance(1.5)  # the extra Child SAs
    for second in range(330):  # across three rekeys of every Child SA
        for site in (link.hq, link.br):
            for worker in range(len(site.forwarders)):
                assert link.send(site, second, worker), (site.name, worker, second)
        link.advance(1.0)
    for site in (link.hq, link.br):
        n = len(site.forwarders)
        outs = [f.tunnels[site.peer].outbound.spi for f in site.forwarders]
        assert len(set(outs)) == n  # no outbound SA shared between workers
        ins = [spi for f in site.forwarders for spi in f._inbound]
        assert all(spi % n == w for w, f in enumerate(site.forwarders) for spi in f._inbound), ins
        for f in site.forwarders:
            assert f.tunnels[site.peer].counters.drops_by_reason() == {} and f.counters.drops_by_reason() == {}


def test_terminated_tunnel_stays_down_until_initiated(link: Link) -> None:
    """`sitelink terminate`: no restart policy, no on-demand initiation by traffic, until `initiate`."""
    hq = link.hq
    assert hq.keying.terminate("branch1", link.now) == 1
    link.pump()
    assert hq.forwarder.tunnels["branch1"].outbound is None and not hq.keying.dispatcher.sessions_for("branch1")
    link.ike_log.clear()
    assert not link.send(hq, 1)  # fails closed; the NeedSa it raises must not start IKE
    hq.keying.on_need_sa("branch1", link.now)
    for _ in range(30):
        link.advance(1.0)
    assert link.ike_log == [] and hq.forwarder.tunnels["branch1"].outbound is None
    hq.keying.initiate("branch1", link.now, operator=True)
    link.pump()
    assert link.send(hq, 2) and link.send(link.br, 2)
    assert hq.keying.tunnels["branch1"].stats.handshakes_ok == 2 and hq.keying.tunnels["branch1"].stats.children == 2


def test_volume_limit_rekeys_at_once(tmp_path: Path) -> None:
    """rekey_packets: the forwarder reports the soft limit with the packet that reaches it, and keying
    asks IKE for a rekey there and then (no polling)."""
    link = _up(Link(tmp_path, "      rekey_packets: 20\n"))
    old = _spi_out(link.hq)
    sent = 1  # _up sent one
    while _spi_out(link.hq) == old and sent < 40:
        assert link.send(link.hq, sent)
        sent += 1
    assert sent == 20 and link.hq.keying.tunnels["branch1"].stats.child_rekeys == 1


def test_past_the_hard_volume_limit_the_sa_goes_after_a_grace(tmp_path: Path) -> None:
    """The rekey asked for at the soft limit gets nowhere (IKE is lost): past the hard limit (1.1 x) the
    outbound SA is still used until VOLUME_GRACE after the rekey was asked for, then dropped: fail
    closed, never on past its limits."""
    link = _up(Link(tmp_path, "      rekey_packets: 20\n"))
    link.lose_ike = lambda sender, data: True
    for n in range(1, 22):  # sequence numbers 2..22: the soft limit (20), then the hard one (22)
        assert link.send(link.hq, n)
    lane = link.hq.keying.tunnels["branch1"].lanes[0]
    assert lane.volume_rekey_spi == lane.outbound_spi and lane.drop_at == lane.volume_rekey_at + VOLUME_GRACE
    link.advance(VOLUME_GRACE - 1.0)
    assert link.send(link.hq, 100)
    link.advance(1.0)
    assert link.hq.forwarder.tunnels["branch1"].outbound is None and not link.send(link.hq, 101)


def test_both_sides_time_their_handshake(link: Link) -> None:
    """The initiator and the responder each find the IKE SA an IkeSaEstablished names (by both SPIs; the
    dispatcher indexes each side's SA by its own SPI) and record its handshake duration."""
    for site, peer in ((link.hq, "branch1"), (link.br, "hq")):
        stats = site.keying.tunnels[peer].stats
        assert stats.handshakes_ok == 1 and sum(stats.handshake_buckets) == 1


@pytest.mark.parametrize("proposal", ["aes128gcm16", "aes192gcm16"])
def test_shorter_aes_gcm_keys_carry_traffic(tmp_path: Path, proposal: str) -> None:
    """aes128gcm16 and aes192gcm16 are accepted by the config, so the data plane takes their 20- and
    28-byte key material too (it took only 36 bytes, and dropped or crashed on the rest, issue #13)."""
    extra = f"      esp_proposals: [{proposal}]\n"
    link = _up(Link(tmp_path, extra, extra))
    assert link.send(link.hq, 7) and link.send(link.br, 7)
    assert link.hq.keying.dispatcher.sessions_for("branch1")[0].children[0].suite.key_bits == int(proposal[3:6])


def test_simultaneous_start_carries_traffic_at_once(tmp_path: Path) -> None:
    """Both gateways initiate at the same instant: the IKE layer keeps one IKE SA on both sides, and the
    data plane, which installed both Child SAs as they came, moves to the one kept when the other is
    deleted, so traffic flows both ways without waiting for DPD (issue #13 item 16)."""
    link = Link(tmp_path)
    link.hq.keying.initiate("branch1", link.now)
    link.br.keying.initiate("hq", link.now)
    link.pump()
    for n in range(3):
        assert link.send(link.hq, n) and link.send(link.br, n)
    assert len(link.hq.keying.dispatcher.sessions) == len(link.br.keying.dispatcher.sessions) == 1
    assert _spi_out(link.hq) == link.br.keying.tunnels["hq"].inbound_spis[-1]


def test_a_dns_named_peer_is_resolved_before_every_attempt_and_an_any_peer_is_learnt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """HQ knows the branch by a DNS name, the branch knows HQ as `any`: nothing goes out before the name
    resolves, a failed lookup is retried with backoff (and counted), a changed answer is followed."""
    link = Link(tmp_path, peers=("branch1.example", "any"))
    hq = link.hq.keying
    hq.start(link.now)
    assert hq.take_resolves() == {"branch1": "branch1.example"} and not hq.dispatcher.sessions
    hq.resolved("branch1", None, link.now, "Name or service not known")
    assert hq.tunnels["branch1"].stats.handshakes_failed == {"dns": 1} and not hq.dispatcher.sessions
    assert hq.take_resolves() == {}
    link.advance(RETRY_DELAY)
    assert hq.take_resolves() == {"branch1": "branch1.example"}
    hq.resolved("branch1", "198.18.9.9", link.now)  # an old address: nobody answers there
    assert [s.remote[0] for s in hq.dispatcher.sessions.values()] == ["198.18.9.9"]
    hq.terminate("branch1", link.now)
    link.pump()
    hq.initiate("branch1", link.now, operator=True)
    assert hq.take_resolves() == {"branch1": "branch1.example"}
    hq.resolved("branch1", ADDR["branch1"], link.now)  # the branch's new address
    assert "branch1.example now resolves to 198.18.2.2 (was 198.18.9.9)" in caplog.text
    link.pump()
    assert link.send(link.hq, 1) and link.send(link.br, 2)  # the `any` side learnt where HQ is
    assert link.br.forwarder.tunnels["hq"].peer == (ADDR["hq"], 4500)
