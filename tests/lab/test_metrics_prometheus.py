"""A real Prometheus server (Debian's prometheus 2.42) scrapes both gateways of a lab; its HTTP API shows
the tunnels up and the byte counters rising while traffic crosses."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, iperf3
from netnslab.sitelink import Deployment
from tests.needs import require_tool

PORT = 9548
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "sitelink-dashboard.json"
ALERTS = REPO / "configs" / "prometheus" / "sitelink-alerts.yml"
NAME = re.compile(r"\bsitelink_[a-z0-9_]+")
# Series that exist once a tunnel has carried something on a media port (tunnel/ops/metrics.py _calls)
CALL_SERIES = {"sitelink_call_streams", "sitelink_call_packets_total", "sitelink_call_packets_lost_total",
               "sitelink_call_jitter_seconds", "sitelink_call_mos", "sitelink_call_skipped_total",
               "sitelink_call_evicted_total"}
QUERY = """
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[1]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=5))))
"""


@pytest.fixture(autouse=True)
def _need_prometheus() -> None:
    require_tool("prometheus")


def query(lab: Lab, promql: str) -> list[dict]:
    answer = json.loads(lab.run("router", ["python3", "-c", QUERY, promql]).stdout)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def api(lab: Lab, path: str) -> dict:
    script = ("import json, sys, urllib.request\n"
              "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:9090' + sys.argv[1], timeout=5))))")
    return json.loads(lab.run("router", ["python3", "-c", script, path]).stdout)


def names_used() -> set[str]:
    """Metric names the dashboard's panels and the alerting rules query (histogram series by base name)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]  # rows have none
    exprs += [dashboard["templating"]["list"][1]["query"], ALERTS.read_text()]
    return {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in NAME.findall(e)}


def start_prometheus(lab: Lab, tmp_path: Path) -> subprocess.Popen:
    """A real Prometheus on the router scraping both gateways' exporters each second, with the shipped
    alerting rules evaluated each second; stop it with lab.stop()."""
    targets = [f"{lab.site(s).gw_wan4}:{PORT}" for s in ("hq", "branch1")]
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      f"rule_files: [{ALERTS}]\n"
                      "scrape_configs:\n  - job_name: sitelink\n"
                      f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n")
    (tmp_path / "tsdb").mkdir()
    return lab.popen("router", ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                "--web.listen-address=127.0.0.1:9090"],
                     stdout=(tmp_path / "prometheus.log").open("w"), stderr=-2)


def wait_for(lab: Lab, promql: str, ok, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = query(lab, promql)
        except Exception:  # noqa: BLE001 - Prometheus still starting
            result = None
        if result is not None and ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql}: {result}")
        time.sleep(0.5)


def test_prometheus_scrapes_tunnel_state_and_rising_byte_counters(tmp_path: Path) -> None:
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        # DPD after 1 s of silence, so a liveness check has a round-trip time to export before traffic
        dep = Deployment(lab, tmp_path / "gw", gateway_yaml=[f"metrics: {{address: 0.0.0.0, port: {PORT}}}"],
                         ike_options={"dpd_delay": 1})
        dep.start_all()
        server = start_prometheus(lab, tmp_path)
        try:
            up = wait_for(lab, 'up{job="sitelink"}', lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r))
            tunnels = wait_for(lab, "sitelink_tunnel_up", lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r))
            assert {s["metric"]["tunnel"] for s in tunnels} == {"hq", "branch1"}
            wait_for(lab, "sitelink_dpd_rtt_seconds", lambda r: len(r) == 2)
            handshakes = wait_for(lab, "sum(sitelink_ike_handshake_duration_seconds_count)", lambda r: len(r) == 1)
            assert float(handshakes[0]["value"][1]) == 2  # one IKE SA, seen from both ends
            remaining = wait_for(lab, "sitelink_child_sa_lifetime_remaining_seconds", lambda r: len(r) == 2)
            assert all(0 < float(s["value"][1]) <= 3960 for s in remaining), remaining  # default lifetime
            tx = 'sum(sitelink_esp_bytes_total{direction="tx",tunnel="branch1"})'
            before = float(wait_for(lab, tx, lambda r: len(r) == 1)[0]["value"][1])
            result = iperf3(lab, "hq-host", "branch1-host", lab.addr("branch1-host"), seconds=2, bitrate="20M")
            assert result.received_bps > 5e6
            after = wait_for(lab, tx, lambda r: len(r) == 1 and float(r[0]["value"][1]) >= before + 4e6)
            rate = wait_for(lab, 'rate(sitelink_esp_bytes_total{direction="rx",tunnel="hq"}[5s])',
                            lambda r: len(r) == 1)
            # Every metric the dashboard and the alerts use is one the gateways actually export, and
            # Prometheus evaluates every alerting rule without error against the live series.
            exported = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in api(lab, "/api/v1/label/__name__/values")["data"]}
            # (The per-direction call figures appear with the first RTP stream: test_call_quality.py checks
            # them against its own live Prometheus during real calls.)
            used = {n for n in names_used() if n not in CALL_SERIES}
            assert used and {re.sub(r"_total$", "", n) for n in used} <= exported, sorted(used - exported)
            rules = wait_for_rules(lab)
            assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), rules
            down = [r["name"] for r in rules if r["state"] != "inactive"]
            assert down == [], down  # tunnels up, nothing dropped: no alert pending or firing
            print(f"\nPrometheus: up {[s['value'][1] for s in up]}, tunnels up {len(tunnels)}, hq->branch1 tx bytes "
                  f"{before:.0f} -> {float(after[0]['value'][1]):.0f}, branch1 rx rate "
                  f"{float(rate[0]['value'][1]) * 8 / 1e6:.1f} Mbit/s")
        finally:
            lab.stop(server)


def wait_for_rules(lab: Lab, timeout: float = 15.0) -> list[dict]:
    """The alerting rules once each has been evaluated at least once."""
    deadline = time.monotonic() + timeout
    while True:
        groups = api(lab, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) or time.monotonic() > deadline:
            return rules
        time.sleep(0.5)
