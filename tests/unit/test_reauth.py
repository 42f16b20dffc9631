"""Re-authentication (reauth_time, RFC 7296 §2.8.3) between two Keyings with real IKE and ESP: a new
IKE SA with a full IKE_AUTH while the old one carries traffic, the old one deleted once the new one
stands (make-before-break, no packet refused at any step); and a certificate that expired during the
SA ends it at the re-authentication, where IKE rekeys alone would have carried it on."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from tests.unit.test_keying import Link, _up
from tests.unit.test_pki_trust import _site, make_company
from tunnel.app.assemble import build_forwarder
from tunnel.app.keying import Keying
from tunnel.config.loader import load_config
from tunnel.ike.sa import IkeState


def established(keying: Keying, tunnel: str) -> list:
    return [s for s in keying.dispatcher.sessions_for(tunnel) if s.state is IkeState.ESTABLISHED]


def test_reauthentication_is_make_before_break(tmp_path: Path) -> None:
    link = _up(Link(tmp_path, hq_extra="      reauth_time: 50\n      ike_rekey_time: 20\n      ike_lifetime: 40\n"))
    hq, br = link.hq, link.br
    first = established(hq.keying, "branch1")[0]
    spis = {first.local_spi}
    for second in range(90):  # rekeys at ~20 s (kept authentication), re-authentication at ~45-50 s
        link.advance(1.0)
        assert link.send(hq, second) and link.send(br, second), f"a packet was lost at {second} s"
        spis |= {s.local_spi for s in established(hq.keying, "branch1")}
        assert len(established(br.keying, "hq")) <= 2
    stats = hq.keying.tunnels["branch1"].stats
    assert stats.handshakes_ok == 2, stats  # one more full IKE_SA_INIT + IKE_AUTH: the re-authentication
    assert stats.ike_rekeys >= 2  # and rekeys of both IKE SAs in between (they do not re-authenticate)
    assert len(established(hq.keying, "branch1")) == 1 and len(established(br.keying, "hq")) == 1
    assert first.state is IkeState.CLOSED and len(spis) >= 4
    assert br.keying.tunnels["hq"].stats.handshakes_failed == {}


def test_without_reauth_time_rekeys_alone_keep_the_first_authentication(tmp_path: Path) -> None:
    link = _up(Link(tmp_path, hq_extra="      ike_rekey_time: 20\n      ike_lifetime: 40\n"))
    for second in range(90):
        link.advance(1.0)
        assert link.send(link.hq, second)
    assert link.hq.keying.tunnels["branch1"].stats.handshakes_ok == 1


def test_an_expired_certificate_ends_the_sa_at_the_next_reauthentication(tmp_path: Path) -> None:
    f = make_company(tmp_path / "pki", now=None)  # valid for 30 days from now
    crl = f["sub"].parent / "ca.crl"
    wall = [dt.datetime.now(dt.UTC)]
    keyings = {}
    for me, peer, addr in (("hq", "br", "198.18.1.2"), ("br", "hq", "198.18.2.2")):
        path = _site(tmp_path, f, me, peer, None)
        path.write_text(path.read_text().replace("      start:", "      reauth_time: 3600\n      ike_rekey_time: 900\n"
                                                 "      ike_lifetime: 1800\n      start:"))
        config = load_config(path)
        keying = Keying(config, build_forwarder(config), os.urandom)
        d = keying.dispatcher  # the wall clock certificates are judged by: the test's
        d.set_configs([(dataclasses.replace(c, wall_clock=lambda: wall[0]), p) for c, p in d._configs.values()])
        keyings[addr] = keying
    hq, br = keyings["198.18.1.2"], keyings["198.18.2.2"]
    assert not crl.exists()

    def run(until: float, now: list[float] = [10.0]) -> None:  # noqa: B006 - the test's monotonic clock
        while now[0] < until:
            now[0] += 5.0
            for keying in keyings.values():
                keying.handle_timer(now[0])
            for _ in range(20):
                moved = False
                for addr, keying in keyings.items():
                    keying.process_events(now[0])
                    for data, remote, port in keying.dispatcher.datagrams_to_send(now[0]):
                        moved = True
                        keyings[remote[0]].dispatcher.receive_datagram(data, (addr, port), remote[1], now[0])
                if not moved:
                    break

    hq.start(10.0)
    run(20.0)
    assert len(established(hq, "br")) == 1
    wall[0] += dt.timedelta(days=31)  # both certificates expire while the SA is up ...
    run(3000.0)  # ... IKE rekeys (every ~15 min) carry it on: they do not authenticate
    assert len(established(hq, "br")) == 1 and hq.tunnels["br"].stats.ike_rekeys >= 2
    run(4000.0)  # the re-authentication (~54-60 min) checks the certificates again: refused, the SA ends
    assert established(hq, "br") == [] and established(br, "hq") == []
    failed = hq.tunnels["br"].stats.handshakes_failed
    assert failed.get("authentication_failed", 0) >= 1, failed


def test_a_lost_reauthentication_keeps_the_old_sa_and_is_tried_again(tmp_path: Path) -> None:
    """The new IKE SA's messages are lost (not refused): the old SA carries traffic on, and the
    re-authentication is tried again REAUTH_RETRY seconds later, successfully."""
    from tunnel.ike.constants import ExchangeType  # noqa: PLC0415
    from tunnel.ike.message import parse_header  # noqa: PLC0415

    link = _up(Link(tmp_path, hq_extra="      reauth_time: 50\n"))
    hq = link.hq
    first = established(hq.keying, "branch1")[0]
    link.lose_ike = lambda sender, data: parse_header(data).exchange == ExchangeType.IKE_SA_INIT
    for second in range(70):  # the re-authentication (45-50 s) times out while the old SA works
        link.advance(1.0)
        assert link.send(hq, second) and link.send(link.br, second)
    assert established(hq.keying, "branch1") == [first] and hq.keying.tunnels["branch1"].stats.handshakes_ok == 1
    link.lose_ike = lambda sender, data: False
    for second in range(40):  # tried again 30 s after the failure
        link.advance(1.0)
        assert link.send(hq, second) and link.send(link.br, second)
    assert hq.keying.tunnels["branch1"].stats.handshakes_ok == 2 and first.state is IkeState.CLOSED
