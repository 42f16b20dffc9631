"""netnslab.rtpstats: RFC 3550 receiver statistics on synthetic RTP, and its CLI on loopback."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "netns-lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from netnslab.rtpstats import RtpStats, parse_rtp_header  # noqa: E402

SSRC = 0x1234ABCD


def rtp(seq: int, ts: int = 0, ssrc: int = SSRC, pt: int = 96, payload: bytes = b"x" * 20,
        first: int = 0x80) -> bytes:
    return struct.pack("!BBHII", first, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def feed(stats: RtpStats, seqs: list[int], interval: float = 0.02, ts_step: int = 1800) -> RtpStats:
    """Packets in the given arrival order; each one's timestamp and arrival follow its sequence number
    (constant transit), so only the sequence accounting is under test."""
    for seq in seqs:
        stats.add(seq * interval + 0.005, rtp(seq, seq * ts_step))
    return stats


def test_in_order_stream() -> None:
    s = feed(RtpStats(), list(range(100, 200))).summary()
    assert (s["packets"], s["expected"], s["lost"], s["loss_pct"]) == (100, 100, 0, 0.0)
    assert (s["reordered"], s["duplicates"], s["malformed"], s["foreign"]) == (0, 0, 0, 0)
    assert s["base_seq"] == 100 and s["extended_max_seq"] == 199
    assert s["ssrc"] == SSRC and s["payload_type"] == 96
    assert s["bytes"] == 100 * 32 and s["max_bytes"] == 32


def test_loss_counts_the_gaps() -> None:
    seqs = [s for s in range(1, 101) if s not in (10, 11, 50)]
    s = feed(RtpStats(), seqs).summary()
    assert (s["packets"], s["expected"], s["lost"]) == (97, 100, 3)
    assert s["loss_pct"] == pytest.approx(3.0)


def test_reordered_packets_are_not_lost() -> None:
    s = feed(RtpStats(), [1, 2, 4, 3, 5, 7, 6, 8]).summary()
    assert (s["packets"], s["expected"], s["lost"]) == (8, 8, 0)
    assert s["reordered"] == 2 and s["duplicates"] == 0


def test_duplicates_make_lost_negative_as_in_rfc() -> None:
    s = feed(RtpStats(), [1, 2, 2, 3, 4, 2]).summary()  # a repeat of the highest, then of an older one
    assert s["duplicates"] == 2 and s["reordered"] == 0
    assert (s["packets"], s["expected"], s["lost"]) == (6, 4, -2)
    assert s["loss_pct"] == 0.0


def test_sequence_wrap_at_65535() -> None:
    seqs = [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    s = feed(RtpStats(), seqs).summary()
    assert (s["packets"], s["expected"], s["lost"]) == (12, 12, 0)
    assert s["extended_max_seq"] == 65536 + 5


def test_loss_and_reorder_across_the_wrap() -> None:
    lossy = feed(RtpStats(), [65533, 65534, 1, 2, 3]).summary()  # 65535 and 0 lost
    assert (lossy["packets"], lossy["expected"], lossy["lost"]) == (5, 7, 2)
    reordered = feed(RtpStats(), [65534, 0, 65535, 1, 2]).summary()  # 65535 arrives after the wrap
    assert (reordered["packets"], reordered["expected"], reordered["lost"]) == (5, 5, 0)
    assert reordered["reordered"] == 1 and reordered["extended_max_seq"] == 65536 + 2
    dup = feed(RtpStats(), [65534, 65535, 0, 65535]).summary()  # a repeat from before the wrap
    assert dup["duplicates"] == 1 and dup["reordered"] == 0 and dup["lost"] == -1


def test_large_jump_restarts_only_when_confirmed() -> None:
    stats = feed(RtpStats(), [1, 2, 3])
    stats.add(1.0, rtp(20000))  # a stray: not counted until the next packet follows it
    assert stats.summary()["discarded"] == 1 and stats.summary()["expected"] == 3
    stats.add(1.02, rtp(20001))  # confirmed: the sender restarted (RFC 3550 A.1 init_seq)
    stats.add(1.04, rtp(20002))
    s = stats.summary()
    assert s["restarts"] == 1 and s["base_seq"] == 20001
    assert (s["packets"], s["expected"], s["lost"]) == (2, 2, 0)


def test_malformed_foreign_and_rtcp_are_counted_apart() -> None:
    stats = RtpStats()
    stats.add(0.0, rtp(1))
    stats.add(0.01, rtp(2, first=0x40))  # version 1
    stats.add(0.02, b"\x80\x60\x00")  # shorter than a header
    stats.add(0.03, rtp(3, first=0x8F, payload=b""))  # claims 15 CSRCs that are not there
    stats.add(0.04, rtp(2, ssrc=SSRC + 1))  # another source
    stats.add(0.05, struct.pack("!BBHI", 0x80, 200, 6, SSRC) + bytes(20))  # an RTCP SR on the same port
    stats.add(0.06, rtp(2))
    s = stats.summary()
    assert (s["packets"], s["expected"], s["lost"]) == (2, 2, 0)
    assert (s["malformed"], s["foreign"], s["rtcp"]) == (3, 1, 1)


def test_header_parsing_respects_csrc_extension_and_padding() -> None:
    base = struct.pack("!BBHII", 0x80, 0xE0, 7, 9, SSRC)  # marker bit set, PT 96
    assert parse_rtp_header(base) == (96, 7, 9, SSRC)
    csrc = struct.pack("!BBHII", 0x82, 96, 7, 9, SSRC)
    assert parse_rtp_header(csrc + bytes(8)) is not None and parse_rtp_header(csrc + bytes(7)) is None
    ext = struct.pack("!BBHII", 0x90, 96, 7, 9, SSRC) + struct.pack("!HH", 0xBEDE, 2)
    assert parse_rtp_header(ext + bytes(8)) is not None and parse_rtp_header(ext + bytes(4)) is None
    pad = struct.pack("!BBHII", 0xA0, 96, 7, 9, SSRC)
    assert parse_rtp_header(pad + b"ab\x00\x02") is not None
    assert parse_rtp_header(pad + b"ab\x00\x09") is None and parse_rtp_header(pad + b"ab\x00\x00") is None


def test_jitter_is_zero_for_constant_transit() -> None:
    stats = RtpStats(clock_rate=90000)
    for k in range(200):  # 20 ms apart, 1800 ticks apart, starting near the 32-bit timestamp wrap
        stats.add(1000.0 + 0.02 * k + 0.0123, rtp(k, 0xFFFFF000 + 1800 * k))
    s = stats.summary()
    assert s["jitter_ms"] == pytest.approx(0.0, abs=1e-6) and s["max_jitter_ms"] == pytest.approx(0.0, abs=1e-6)


def test_jitter_matches_hand_computed_rfc3550_value() -> None:
    # Packets sent every 20 ms (1800 ticks at 90 kHz); arrivals late by 0, 2, 0, 1 ms.
    # |D| in ticks: 180, 180, 90.  J = J + (|D| - J) / 16:
    #   J1 = 180/16 = 11.25;  J2 = 11.25 + (180 - 11.25)/16 = 21.796875;
    #   J3 = 21.796875 + (90 - 21.796875)/16 = 26.0595703125 ticks = 0.289550781 ms
    stats = RtpStats(clock_rate=90000)
    for k, late in enumerate([0.0, 0.002, 0.0, 0.001]):
        stats.add(5.0 + 0.02 * k + late, rtp(k, 4242 + 1800 * k))
    assert stats.jitter == pytest.approx(26.0595703125, abs=1e-6)
    s = stats.summary()
    assert s["jitter_ms"] == pytest.approx(26.0595703125 / 90, abs=1e-4)
    assert s["max_jitter_ms"] == s["jitter_ms"]  # it only grew
    # Then steady transit again: J decays by 15/16 per packet and the maximum stays.
    for k in range(4, 8):
        stats.add(5.0 + 0.02 * k + 0.001, rtp(k, 4242 + 1800 * k))
    assert stats.jitter == pytest.approx(26.0595703125 * (15 / 16) ** 4, abs=1e-6)
    assert stats.summary()["max_jitter_ms"] == pytest.approx(26.0595703125 / 90, abs=1e-4)


def test_jitter_handles_a_timestamp_that_steps_back_across_the_wrap() -> None:
    # RTP timestamps are modulo 2^32: 0 followed by 2^32 - 1800 is a step of -1800 ticks, not +4294965496.
    # Both arrive at once: D = (0) - (-1800) = 1800 ticks, J = 1800/16 = 112.5 ticks = 1.25 ms.
    stats = RtpStats(clock_rate=90000)
    stats.add(1.0, rtp(1, 0))
    stats.add(1.0, rtp(2, (1 << 32) - 1800))
    assert stats.jitter == pytest.approx(112.5, abs=1e-6)
    assert stats.summary()["jitter_ms"] == pytest.approx(1.25, abs=1e-4)


def test_jitter_uses_the_clock_rate() -> None:
    # Same 2 ms arrival deviation at an 8 kHz audio clock: |D| = 16 ticks, J1 = 1 tick = 0.125 ms.
    stats = RtpStats(clock_rate=8000)
    stats.add(0.0, rtp(0, 0))
    stats.add(0.022, rtp(1, 160))
    assert stats.jitter == pytest.approx(1.0, abs=1e-9)
    assert stats.summary()["jitter_ms"] == pytest.approx(0.125, abs=1e-4)


def test_dscp_is_counted_per_value() -> None:
    stats = RtpStats()
    for k in range(5):
        stats.add(0.02 * k, rtp(k), dscp=34 if k < 4 else 0)
    assert stats.summary()["dscp"] == {"0": 1, "34": 4}


def test_empty_summary() -> None:
    s = RtpStats().summary()
    assert (s["packets"], s["expected"], s["lost"], s["loss_pct"], s["ssrc"]) == (0, 0, 0, 0.0, None)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_runs_stdlib_only_and_reports_dscp() -> None:
    """The script form under `python -S` (no site-packages at all), as it runs inside a lab namespace."""
    port = _free_udp_port()
    script = LAB_DIR / "netnslab" / "rtpstats.py"
    proc = subprocess.Popen([sys.executable, "-S", str(script), "--bind", "127.0.0.1", "--port", str(port),
                             "--seconds", "1.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stderr.readline()
        t0 = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 34 << 2)
            for k in [0, 1, 2, 4, 3, 5]:
                tx.sendto(rtp(k, 3000 * k), ("127.0.0.1", port))
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - t0 >= 1.0  # it never stops early
    assert proc.returncode == 0, err
    s = json.loads(out)
    assert (s["packets"], s["expected"], s["lost"], s["reordered"]) == (6, 6, 0, 1)
    assert s["dscp"] == {"34": 6}
