"""The call-quality observer (tunnel/dataplane/callquality.py) and its E-model (emodel.py): RFC 3550
statistics checked against the lab's independent receiver (netns-lab/netnslab/rtpstats.py), RFC 7983
demultiplexing, the bounds a hostile sender meets, and the observer inside the forwarder."""

from __future__ import annotations

import ipaddress
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.qos import QosClass
from tunnel.dataplane import emodel
from tunnel.dataplane.callquality import (
    EGRESS,
    IDLE,
    INGRESS,
    INTERVAL,
    PROBATION,
    CallQuality,
    CallSettings,
    Skip,
    port_table,
    snap_rate,
)
from tunnel.dataplane.forwarder import Forwarder
from tunnel.dataplane.tunnels import TunnelPolicy
from tunnel.esp.sa import InboundSa, OutboundSa

LAB_DIR = Path(__file__).resolve().parents[2] / "netns-lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))
from netnslab.rtpstats import RtpStats  # noqa: E402  (the lab's receiver: an independent implementation)

MEDIA = port_table([(10000, 20000), (3478, 3478)])
SRC, DST = "10.1.0.10", "10.2.0.10"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rtp(seq: int, ts: int, ssrc: int = 0x11223344, pt: int = 0, csrc: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80 | csrc, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + b"\0" * (4 * csrc) + b"\xaa" * 160


def udp4(payload: bytes, sport: int = 10000, dport: int = 10002, src: str = SRC, dst: str = DST,
         tos: int = 0xB8, flags_frag: int = 0) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(udp), 1, flags_frag, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + udp


def udp6(payload: bytes, sport: int = 10000, dport: int = 10002) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, ipaddress.IPv6Address("fd01::10").packed,
                       ipaddress.IPv6Address("fd02::10").packed) + udp


HQ_HOST, BR_HOST = "10.1.0.10", "10.2.0.10"


def pair(hq_policy: TunnelPolicy, br_policy: TunnelPolicy, clock: Callable[[], float]) -> tuple[Forwarder, Forwarder]:
    """Two forwarders keyed as mirror images, each with a tunnel to the other."""
    net = ipaddress.ip_network
    hq, br = Forwarder(clock), Forwarder(clock)
    hq.add_tunnel("branch", ("198.18.2.2", 4500), [net("10.1.0.0/24")], [net("10.2.0.0/24")], hq_policy)
    br.add_tunnel("hq", ("198.18.1.2", 4500), [net("10.2.0.0/24")], [net("10.1.0.0/24")], br_policy)
    hq.install_outbound("branch", OutboundSa(0x1001, bytes(36)))
    br.install_inbound("hq", InboundSa(0x1001, bytes(36)))
    return hq, br


def observer(max_streams: int = 64) -> tuple[CallQuality, Clock]:
    clock = Clock()
    return CallQuality(CallSettings(MEDIA, max_streams), clock), clock


def feed(obs: CallQuality, clock: Clock, packets: list[tuple[float, bytes]], direction: int = INGRESS,
         cls: int = QosClass.REALTIME_AUDIO) -> None:
    for at, packet in packets:
        clock.now = at
        obs.observe(packet, packet[0] >> 4, direction, cls)


# -- RFC 3550 figures against an independent receiver --------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(3, 600), loss=st.floats(0, 0.2),
       reorder=st.floats(0, 0.1), start_seq=st.integers(0, 65535), start_ts=st.integers(0, 2**32 - 1))
def test_loss_reordering_and_jitter_agree_with_the_lab_receiver(seed: int, count: int, loss: float, reorder: float,
                                                                start_seq: int, start_ts: int) -> None:
    """A 20 ms G.711 stream (PT 0, 8 kHz) with random loss, swaps of neighbours and delay variation,
    wrapping sequence numbers and timestamps: the observer's loss, reordering and jitter are the lab
    receiver's (which follows RFC 3550 A.1/A.8 literally)."""
    rnd = random.Random(seed)
    sent = [(i * 0.020 + rnd.uniform(0, 0.015), rtp(start_seq + i, start_ts + 160 * i)) for i in range(count)]
    kept = sent[:2] + [p for p in sent[2:] if rnd.random() >= loss]  # the first two open the stream
    for i in range(2, len(kept) - 1):
        if rnd.random() < reorder:
            kept[i], kept[i + 1] = (kept[i][0], kept[i + 1][1]), (kept[i + 1][0], kept[i][1])
    arrivals = sorted(kept, key=lambda p: p[0])
    obs, clock = observer()
    feed(obs, clock, [(at, udp4(p)) for at, p in arrivals])
    reference = RtpStats(clock_rate=8000)
    for at, p in arrivals:
        reference.add(at, p)
    (stream,) = obs.report().streams
    assert stream.packets == reference.received
    assert stream.expected == reference.expected
    assert stream.lost == reference.lost
    assert stream.reordered == reference.reordered
    assert stream.duplicates == reference.duplicates == 0
    assert stream.jitter_ms == pytest.approx(reference.jitter * 1000 / 8000, abs=1e-3)
    assert stream.jitter_mean_ms == pytest.approx(reference.summary()["mean_jitter_ms"], abs=2e-3)


def test_duplicates_are_counted_apart_and_never_hide_a_loss() -> None:
    obs, clock = observer()
    seqs = [1, 2, 3, 3, 5, 6, 5, 2, 7]  # 3 twice, 5 again after 6, 2 again: three duplicates; 4 lost
    feed(obs, clock, [(1000 + i * 0.02, udp4(rtp(s, s * 160))) for i, s in enumerate(seqs)])
    (stream,) = obs.report().streams
    assert (stream.packets, stream.expected, stream.lost, stream.duplicates) == (6, 7, 1, 3)


def test_a_restarted_source_is_believed_after_two_packets_in_sequence() -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * 0.02, udp4(rtp(100 + i, i * 160))) for i in range(10)])
    feed(obs, clock, [(1001 + i * 0.02, udp4(rtp(40000 + i, i * 160))) for i in range(5)])
    (stream,) = obs.report().streams
    # RFC 3550 A.1: the jump's first packet is not believed, the next confirms it and counting starts afresh
    assert (stream.packets, stream.expected, stream.lost) == (4, 4, 0)
    assert obs.groups[(INGRESS, QosClass.REALTIME_AUDIO)].packets == 14  # what came before is kept


def test_a_stray_sequence_number_is_not_believed() -> None:
    obs, clock = observer()
    seqs = list(range(1, 11)) + [30000] + list(range(11, 21))
    feed(obs, clock, [(1000 + i * 0.02, udp4(rtp(s, s * 160))) for i, s in enumerate(seqs)])
    (stream,) = obs.report().streams
    assert (stream.packets, stream.expected, stream.lost) == (20, 20, 0)


@pytest.mark.parametrize("pt,step,frame,expected", [(111, 960, 0.020, 48000), (96, 3000, 1 / 30, 90000),
                                                     (9, 160, 0.020, 8000), (100, 320, 0.020, 16000)])
def test_clock_rate_from_static_payload_type_or_learned(pt: int, step: int, frame: float, expected: int) -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * frame, udp4(rtp(i, i * step, pt=pt))) for i in range(2 * int(1 / frame))])
    (stream,) = obs.report().streams
    assert stream.clock_rate == expected


def test_learned_jitter_matches_a_constant_delay_variation() -> None:
    """Packets alternately 0 and 4 ms late: |D| is 4 ms for every pair, so J tends to 4 ms."""
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * 0.02 + (0.004 if i % 2 else 0), udp4(rtp(i, i * 960, pt=111)))
                      for i in range(600)])
    (stream,) = obs.report().streams
    assert stream.clock_rate == 48000
    assert stream.jitter_ms == pytest.approx(4.0, rel=0.01)


@pytest.mark.parametrize("measured,rate", [(47000, 48000), (91000, 90000), (8100, 8000), (30000, 32000), (36000, 0), (60000, 0)])
def test_rates_snap_to_common_clocks_only(measured: float, rate: int) -> None:
    assert snap_rate(measured) == rate


# -- what is looked at ------------------------------------------------------------------------------

def test_rfc7983_demultiplexing_on_one_port() -> None:
    """STUN, DTLS and RTCP on the media port are counted apart; RTP on it makes a stream."""
    obs, clock = observer()
    stun = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"t" * 12)
    dtls = bytes([22, 0xFE, 0xFD]) + b"\0" * 30
    rtcp = bytes([0x81, 201, 0, 7]) + b"\0" * 28
    odd = bytes([0x10]) + b"\0" * 30  # ZRTP-ish: neither
    feed(obs, clock, [(1000, udp4(x)) for x in (stun, dtls, rtcp, odd, b"\x80\x00")])
    assert obs.skipped == [1, 1, 1, 2, 0] and not obs.streams and not obs.candidates


def test_rtp_inside_turn_channel_data_is_seen() -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * 0.02, udp4(struct.pack("!HH", 0x4001, 172) + rtp(i, i * 160), sport=3478,
                                             dport=50123)) for i in range(5)])
    (stream,) = obs.report().streams
    assert stream.packets == 5 and stream.src.endswith(":3478")


def test_other_ports_fragments_and_short_headers_are_not_read() -> None:
    obs, clock = observer()
    feed(obs, clock, [
        (1000, udp4(rtp(1, 0), sport=5004, dport=5006)),  # not a media port
        (1000, udp4(rtp(1, 0), flags_frag=0x2000)),  # first fragment (MF) of a media datagram
        (1000, udp4(rtp(1, 0), flags_frag=0x0010)),  # a later fragment: its "ports" are payload
        (1000, udp4(rtp(1, 0, csrc=15)[:40])),  # CSRC count says more than the datagram holds
    ])
    assert obs.skipped[Skip.FRAGMENT] == 1 and obs.skipped[Skip.NOT_RTP] == 1
    assert not obs.streams and not obs.candidates


def test_ipv6_streams_are_observed() -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * 0.02, udp6(rtp(i, i * 160))) for i in range(5)])
    (stream,) = obs.report().streams
    assert stream.src == "[fd01:0000:0000:0000:0000:0000:0000:0010]:10000" and stream.packets == 5


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=64), ihl=st.integers(5, 15), frag=st.integers(0, 0xFFFF),
       first=st.sampled_from([0x00, 0x01, 0x17, 0x40, 0x4F, 0x80, 0x8F, 0xBF, 0xC0]), cut=st.integers(0, 80),
       v6=st.booleans())
def test_hostile_packets_never_raise_and_keep_nothing_unbounded(payload: bytes, ihl: int, frag: int, first: int,
                                                                cut: int, v6: bool) -> None:
    """Whatever sits after an IP header the forwarder accepted (any IHL, fragment bits, length, first
    byte), the observer only counts."""
    obs, clock = observer(max_streams=2)
    body = bytes([first]) + payload
    if v6:
        packet = udp6(body)[:max(40, cut + 40)]
    else:
        packet = bytearray(udp4(body, flags_frag=frag))
        packet[0] = 0x40 | ihl
        packet = packet[:max(20, cut + 20)]
    for _ in range(3):
        feed(obs, clock, [(clock.now + 0.02, bytes(packet))])
    assert len(obs.streams) <= 2 and len(obs.candidates) <= 2
    obs.report()


# -- bounds -------------------------------------------------------------------------------------------

def test_a_single_packet_is_only_a_candidate_and_candidates_expire() -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000, udp4(rtp(1, 0, ssrc=s))) for s in range(10)])
    assert len(obs.candidates) == 10 and not obs.streams
    obs.expire(1000 + PROBATION + 0.1)
    assert not obs.candidates


def test_a_flood_of_ssrcs_stays_within_the_cap_and_keeps_the_live_call() -> None:
    obs, clock = observer(max_streams=8)
    t = 1000.0
    for i in range(2000):  # a real call at 50 packets/s ...
        t += 0.02
        feed(obs, clock, [(t, udp4(rtp(i, i * 160, ssrc=1)))])
        # ... while a hostile host opens a new "stream" (two packets in sequence) every 20 ms
        feed(obs, clock, [(t, udp4(rtp(7, 0, ssrc=1000 + i), sport=12000)), (t, udp4(rtp(8, 160, ssrc=1000 + i),
                                                                                 sport=12000))])
        feed(obs, clock, [(t, udp4(rtp(9, 0, ssrc=5000 + i), sport=13000))])  # and single packets
        assert len(obs.streams) <= 8 and len(obs.candidates) <= 8
    report = obs.report()
    live = [s for s in report.streams if s.ssrc == 1]
    assert live and live[0].packets == 2000 and live[0].lost == 0
    assert report.streams_evicted > 1900 and report.candidates_evicted > 1900


def test_ended_streams_leave_with_their_counts_kept() -> None:
    obs, clock = observer()
    seqs = [0, 1] + list(range(3, 200, 2))  # after the first two, every other one lost
    feed(obs, clock, [(1000 + i * 0.02, udp4(rtp(s, s * 160))) for i, s in enumerate(seqs)])
    obs.expire(clock.now + IDLE + 1)
    assert not obs.streams
    group = obs.groups[(INGRESS, QosClass.REALTIME_AUDIO)]
    assert (group.packets, group.lost) == (101, 99)


def test_counters_never_decrease_when_late_packets_fill_gaps() -> None:
    obs, clock = observer()
    feed(obs, clock, [(1000 + i * 0.02, udp4(rtp(s, s * 160))) for i, s in enumerate([1, 2, 3, 5, 6])])
    lost_before = obs.report().groups[(INGRESS, QosClass.REALTIME_AUDIO)].lost
    feed(obs, clock, [(clock.now + 0.02, udp4(rtp(4, 640)))])
    report = obs.report()
    assert lost_before == 1 and report.groups[(INGRESS, QosClass.REALTIME_AUDIO)].lost == 1
    assert report.streams[0].lost == 0


# -- loss over intervals, MOS ----------------------------------------------------------------------------

def _stream_with_loss(loss: float, seconds: float = 3 * INTERVAL) -> float | None:
    obs, clock = observer()
    rnd = random.Random(7)
    packets = [(1000 + i * 0.02, udp4(rtp(i, i * 160))) for i in range(int(seconds / 0.02))]
    feed(obs, clock, packets[:2] + [p for p in packets[2:] if rnd.random() >= loss])
    (stream,) = obs.report().streams
    return stream.mos


def test_mos_falls_with_loss_across_the_alert_line() -> None:
    clean, one, five = _stream_with_loss(0), _stream_with_loss(0.01), _stream_with_loss(0.05)
    assert clean is not None and one is not None and five is not None
    assert clean > one > five
    assert clean > 4.3 and five < 3.6 < one


def test_no_mos_before_the_first_interval() -> None:
    assert _stream_with_loss(0, seconds=INTERVAL / 2) is None


def test_emodel_reference_points() -> None:
    """G.107 Annex B: R 93.2 -> MOS 4.41; R 50 -> 2.58; the ends clamp."""
    assert emodel.mos(93.2) == pytest.approx(4.41, abs=0.01)
    assert emodel.mos(50) == pytest.approx(2.58, abs=0.01)
    assert emodel.mos(-5) == 1.0 and emodel.mos(120) == 4.5
    assert emodel.loss_impairment(0) == 0 and emodel.loss_impairment(1.0) < 95
    assert emodel.delay_impairment(200) > emodel.delay_impairment(100) * 2  # past 177.3 ms it climbs


# -- inside the forwarder ----------------------------------------------------------------------------

def test_the_forwarder_observes_ingress_at_one_side_and_egress_at_the_other() -> None:
    clock = Clock()
    settings_ = CallSettings(MEDIA)
    hq, br = pair(TunnelPolicy(calls=settings_), TunnelPolicy(calls=settings_), clock=clock)
    for i in range(50):
        clock.now = 1000 + i * 0.02
        if i % 10 == 5:
            continue  # lost before the first gateway: both see it
        sealed = hq.outbound(udp4(rtp(i, i * 160), src=HQ_HOST, dst=BR_HOST))
        assert sealed is not None
        if i % 10 == 7:
            continue  # lost on the WAN: only the far side sees it
        assert br.inbound(sealed[1], sealed[0]) is not None
    (sent,) = hq.tunnels["branch"].calls.report().streams  # type: ignore[union-attr]
    (got,) = br.tunnels["hq"].calls.report().streams  # type: ignore[union-attr]
    assert (sent.direction, sent.packets, sent.lost) == ("ingress", 45, 5)
    assert (got.direction, got.packets, got.lost) == ("egress", 40, 10)
    assert got.cls == QosClass.REALTIME_AUDIO  # from the inner DSCP (EF)
    assert sent.ssrc == got.ssrc


def test_tcp_never_reaches_the_observer_and_off_means_off() -> None:
    clock = Clock()
    every_port = CallSettings(port_table([(0, 65535)]))
    hq, _ = pair(TunnelPolicy(calls=every_port), TunnelPolicy(), clock=clock)
    tcp = bytearray(udp4(rtp(1, 0)))
    tcp[9] = 6
    for _ in range(3):
        assert hq.outbound(bytes(tcp)) is not None
    calls = hq.tunnels["branch"].calls
    assert calls is not None and not calls.seen
    off, _ = pair(TunnelPolicy(), TunnelPolicy(), clock=clock)
    assert off.tunnels["branch"].calls is None


def test_a_reload_keeps_the_streams_unless_the_settings_changed() -> None:
    clock = Clock()
    hq, _ = pair(TunnelPolicy(calls=CallSettings(MEDIA)), TunnelPolicy(), clock=clock)
    state = hq.tunnels["branch"]
    before = state.calls
    state.apply(TunnelPolicy(calls=CallSettings(MEDIA)))
    assert state.calls is before
    state.apply(TunnelPolicy(calls=CallSettings(MEDIA, max_streams=4)))
    assert state.calls is not before and state.calls is not None
    state.apply(TunnelPolicy())
    assert state.calls is None


def test_egress_direction_constant() -> None:
    assert (INGRESS, EGRESS) == (0, 1)
