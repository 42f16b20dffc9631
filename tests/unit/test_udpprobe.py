"""netnslab.udpprobe: packet format, percentiles, gap counting, the schedule, and a loopback run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "netns-lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

from netnslab import udpprobe  # noqa: E402
from netnslab.udpprobe import (  # noqa: E402
    MIN_SIZE,
    ProbeReceiver,
    decode,
    delay_report,
    encode,
    parse_hostport,
    percentile,
    schedule,
    sequence_report,
)


def test_format_round_trip() -> None:
    data = encode(123456, 987654321012345, size=200)
    assert len(data) == 200
    assert decode(data) == (123456, 987654321012345)
    assert decode(encode(0, 0)) == (0, 0) and len(encode(0, 0)) == MIN_SIZE


def test_format_rejects_foreign_and_short_datagrams() -> None:
    assert decode(b"XXXX" + encode(1, 2)[4:]) is None
    assert decode(encode(1, 2)[:MIN_SIZE - 1]) is None
    with pytest.raises(ValueError):
        encode(1, 2, size=MIN_SIZE - 1)


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.5], 99) == 7.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # rank ceil(2) = 2: a measured value, no interpolation
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == 3.0  # rank ceil(2.5) = 3, the median
    assert percentile([float(v) for v in range(1, 11)], 91) == 10.0  # rank ceil(9.1) = 10: never rounds down
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_delay_report() -> None:
    r = delay_report([0.1, 0.2, 0.3, 5.0])
    assert (r["delay_p50_ms"], r["delay_p95_ms"], r["delay_p99_ms"], r["delay_max_ms"], r["delay_min_ms"]) == \
        (0.2, 5.0, 5.0, 5.0, 0.1)
    assert delay_report([])["delay_p50_ms"] is None and delay_report([])["delay_max_ms"] is None


@pytest.mark.parametrize("seqs, expected", [
    ([0, 1, 2, 3, 4], dict(received=5, max_seq=4, lost=0, duplicates=0, reordered=0)),
    ([0, 1, 3, 4, 7], dict(received=5, max_seq=7, lost=3, duplicates=0, reordered=0)),
    ([2, 3], dict(received=2, max_seq=3, lost=2, duplicates=0, reordered=0)),  # the first two never came
    ([0, 2, 1, 3], dict(received=4, max_seq=3, lost=0, duplicates=0, reordered=1)),
    ([0, 1, 1, 2, 0], dict(received=5, max_seq=2, lost=0, duplicates=2, reordered=0)),
    ([0, 3, 1], dict(received=3, max_seq=3, lost=1, duplicates=0, reordered=1)),
    ([], dict(received=0, max_seq=None, lost=0, duplicates=0, reordered=0)),
])
def test_gap_counting(seqs: list[int], expected: dict) -> None:
    report = sequence_report(seqs)
    assert {k: report[k] for k in expected} == expected


def test_schedule_is_absolute() -> None:
    # Packet k is due at start + k/rate exactly: rounding never accumulates over a long run.
    assert schedule(1000, 50, 0) == 1000
    assert schedule(1000, 50, 1) == 1000 + 20_000_000
    assert schedule(0, 3, 3) == 1_000_000_000
    assert schedule(0, 3, 300_000) == 100_000 * 1_000_000_000


def test_parse_hostport() -> None:
    assert parse_hostport("10.2.0.10:7000") == ("10.2.0.10", 7000)
    assert parse_hostport("[fd00:2::10]:7000") == ("fd00:2::10", 7000)
    for bad in ("10.2.0.10", "fd00::1", ":7000", "host:port"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_receiver_accumulates() -> None:
    rx = ProbeReceiver()
    for seq, sent, got, dscp in [(0, 1_000_000, 1_500_000, 46), (2, 2_000_000, 4_000_000, 46),
                                 (1, 3_000_000, 3_250_000, 0)]:
        rx.add(got, encode(seq, sent, 64), dscp)
    rx.add(5_000_000, b"not a probe")
    s = rx.summary()
    assert (s["received"], s["lost"], s["reordered"], s["max_seq"], s["foreign"]) == (3, 0, 1, 2, 1)
    assert s["delay_p50_ms"] == 0.5 and s["delay_max_ms"] == 2.0 and s["delay_min_ms"] == 0.25
    assert s["dscp"] == {"0": 1, "46": 2}
    assert (s["longest_gap_ms"], s["gap_start_ns"], s["gap_end_ns"]) == (2.5, 1_500_000, 4_000_000)


def _loopback_run(bind: str, dscp: int) -> tuple[dict, dict]:
    sock = udpprobe.open_receiver(bind, 0)
    port = sock.getsockname()[1]
    rx = ProbeReceiver()
    t = threading.Thread(target=udpprobe.receive_for, args=(sock, 1.2, rx.add))
    t.start()
    try:
        to = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
        sent = udpprobe.send(to, rate=100, seconds=0.5, dscp=dscp, size=120)
    finally:
        t.join(10)
        sock.close()
    return sent, rx.summary()


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1"])
def test_loopback_marks_and_measures(bind: str) -> None:
    if ":" in bind and not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sent, got = _loopback_run(bind, 46)
    except OSError as exc:  # e.g. IPv6 disabled on this host
        pytest.skip(f"{bind}: {exc}")
    assert sent["sent"] == 50 and 0.45 < sent["duration_s"] < 1.0
    assert got["received"] == 50 and got["lost"] == 0 and got["max_seq"] == 49
    assert got["dscp"] == {"46": 50}  # the TOS / traffic class set by the sender, read from the cmsg
    assert 0 < got["delay_p50_ms"] <= got["delay_p99_ms"] <= got["delay_max_ms"] < 1000


def test_cli_runs_stdlib_only() -> None:
    """Both sides as scripts under `python -S` (no site-packages), the way a lab namespace runs them."""
    script = LAB_DIR / "netnslab" / "udpprobe.py"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rx = subprocess.Popen([sys.executable, "-S", str(script), "recv", "--bind", "127.0.0.1", "--port", str(port),
                           "--seconds", "1.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in rx.stderr.readline()
        tx = subprocess.run([sys.executable, "-S", str(script), "send", "--to", f"127.0.0.1:{port}", "--rate", "40",
                             "--seconds", "0.5", "--dscp", "34"], capture_output=True, text=True, timeout=20)
        out, err = rx.communicate(timeout=20)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    assert tx.returncode == 0, tx.stderr
    assert json.loads(tx.stdout)["sent"] == 20
    assert rx.returncode == 0, err
    got = json.loads(out)
    assert got["received"] == 20 and got["lost"] == 0 and got["dscp"] == {"34": 20}


def test_cli_rejects_bad_arguments() -> None:
    script = LAB_DIR / "netnslab" / "udpprobe.py"
    cp = subprocess.run([sys.executable, "-S", str(script), "send", "--to", "127.0.0.1:9", "--seconds", "1",
                         "--dscp", "64"], capture_output=True, text=True, timeout=20)
    assert cp.returncode == 2 and "DSCP" in cp.stderr
