"""The side-by-side benchmark (bench/compare.py) still runs end to end: its --smoke version, as a subprocess.

This guards the benchmark's plumbing (labs, anchors, parsing, JSON, chart), not performance: on a
shared CI machine timings say nothing, so only "a positive figure was measured" is asserted, for plain
routing, sitelink and every anchor whose Debian packages are installed (scripts/bootstrap installs them
all; an anchor that is missing must be reported as unavailable, not crash the run).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from netnslab.anchors import ANCHORS, package_version

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "bench" / "compare.py"


def test_bench_smoke(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "compare.json", tmp_path / "compare.png"
    cp = subprocess.run([sys.executable, str(COMPARE), "--smoke", "--json", str(out_json), "--png", str(out_png)],
                        capture_output=True, text=True, timeout=240)
    print(cp.stdout[-6000:])
    assert cp.returncode == 0, f"compare.py exited {cp.returncode}:\n{cp.stderr[-3000:]}"
    assert "Traceback" not in cp.stderr, cp.stderr[-3000:]
    report = json.loads(out_json.read_text())
    modes = report["modes"]

    expected = ["plain", "sitelink", "sitelink-fifo", "sitelink-2w"]
    for name, cls in ANCHORS.items():
        if all(package_version(p) for p in cls.packages):
            expected.append(name)
        else:
            assert modes[name]["status"] == "unavailable", modes[name]
    for name in expected:
        entry = modes[name]
        assert entry["status"] == "ok", f"{name}: {entry.get('reason')} {entry['rounds']}"
        median = entry["median"]
        for key in ("tcp1_mbps", "tcp4_mbps", "ping_idle_avg_ms", "ping_load_p99_ms"):
            assert median[key] is not None and median[key] > 0, f"{name}: {key} = {median[key]}"
        if name != "plain":
            assert median["cpu_s_per_gbit"] is not None and median["cpu_s_per_gbit"] > 0, name
            assert median["setup_s"] is not None and median["setup_s"] > 0, name
            assert median["cpu_us_per_packet_1k"] is not None and median["cpu_us_per_packet_1k"] > 0, name
            assert entry["stages_us"]["rounds"] > 0 and entry["stages_us"]["total"] > 0, name
    assert {t["figure"] for t in report["targets"]} == {
        "ping_idle_avg_ms", "setup_s", "tcp1_mbps", "ping_load_p99_ms"}
    assert all(t["met"] in (True, False) for t in report["targets"]), report["targets"]
    if importlib.util.find_spec("matplotlib") is not None:  # the [bench] extra; scripts/bootstrap installs it
        assert out_png.stat().st_size > 0
