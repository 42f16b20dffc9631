"""The shipped Prometheus alerting rules pass promtool, and the Grafana dashboard is well-formed JSON whose
panels all query something (that the metric names exist is checked against a live scrape in
tests/lab/test_metrics_prometheus.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.needs import require_tool

REPO = Path(__file__).resolve().parents[2]


def test_alerting_rules_pass_promtool() -> None:
    promtool = require_tool("promtool", "prometheus")
    cp = subprocess.run([promtool, "check", "rules", str(REPO / "configs/prometheus/sitelink-alerts.yml")],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "SUCCESS: 9 rules found" in cp.stdout


def test_sa_near_hard_expiry_and_call_quality_fire_only_when_they_should(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    text = (REPO / "tests/data/sitelink-alerts-test.yml").read_text()
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(text.replace("RULES", str(REPO / "configs/prometheus/sitelink-alerts.yml")))
    cp = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "SUCCESS" in cp.stdout, cp.stdout + cp.stderr


def test_ha_alerts_fire_for_a_pair_without_an_active_gateway_and_for_a_split_brain(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    rules = REPO / "configs/prometheus/sitelink-ha-alerts.yml"
    cp = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "SUCCESS: 2 rules found" in cp.stdout, cp.stdout + cp.stderr
    tests = tmp_path / "ha-alerts-test.yml"
    tests.write_text((REPO / "tests/data/sitelink-ha-alerts-test.yml").read_text().replace("RULES", str(rules)))
    cp = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "SUCCESS" in cp.stdout, cp.stdout + cp.stderr


def test_dashboard_panels_query_sitelink_metrics() -> None:
    dashboard = json.loads((REPO / "configs/grafana/sitelink-dashboard.json").read_text())
    assert dashboard["uid"] == "sitelink" and len(dashboard["panels"]) >= 8
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"] and all("sitelink_" in t["expr"] or "up{" in t["expr"] for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("tunnel state", "throughput", "drops", "handshakes", "handshake duration", "rekeys", "qos",
                  "hard expiry", "dpd", "tunnels down", "call quality", "call packet loss", "call jitter"):
        assert topic in titles, topic
    # The call-quality row: MOS, loss, jitter and streams, each per tunnel, direction and class.
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Call quality"]
    below = [p for p in dashboard["panels"] if p["gridPos"]["y"] > rows[0]["gridPos"]["y"]]
    exprs = " ".join(t["expr"] for p in below for t in p["targets"])
    for metric in ("sitelink_call_mos", "sitelink_call_packets_lost_total", "sitelink_call_jitter_seconds_bucket",
                   "sitelink_call_streams"):
        assert metric in exprs, metric
    # A hub with hundreds of branches: a tunnel selector that every per-tunnel series follows.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tunnel"]["query"].startswith("label_values(sitelink_tunnel_up")
    per_tunnel = [t["expr"] for p in dashboard["panels"] if "down" not in p["title"].lower() for t in p.get("targets", ())
                  if "tunnel" in t.get("legendFormat", "") or "by (instance, tunnel" in t["expr"]]
    assert per_tunnel and all('tunnel=~"$tunnel"' in e for e in per_tunnel), per_tunnel
