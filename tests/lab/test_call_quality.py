"""Call quality measured by the gateways against the receivers' own figures, with real media through a real
tunnel: a GStreamer 720p VP8 RTP stream (received by the lab's RFC 3550 receiver) and a baresip SIP call
with SRTP and Opus (libre's RTCP statistics), hq -> branch1, with 0, 1 and 5 % loss on the WAN (nftables
numgen on the router).

At branch1 (egress: what the tunnel delivered to its LAN) each stream's loss is the receiver's within
0.5 percentage points and its jitter within 25 %; at hq (ingress: what hq's LAN sent) the same streams
show no loss: the WAN's share is the difference. The MOS falls with loss, and the shipped alert
(SitelinkCallQualityLow: MOS < 3.6 for a minute) fires in a real Prometheus scraping both gateways at 5 %
and not before.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netnslab import TOPOLOGIES, Lab, sipcall
from netnslab.lab import NFT_TABLE
from netnslab.media import rtp_receive, start_rtp_video
from netnslab.rtpstats import from_pcap
from netnslab.sipcall import sip_call
from netnslab.sitelink import Deployment
from tests.lab.test_metrics_prometheus import CALL_SERIES, PORT, api, query, start_prometheus, wait_for
from tests.needs import require

AF41 = 34
# WAN loss %, seconds of media (5 % runs past the alert's minute). Not multiples of 5: baresip's figures are
# its last RTCP snapshot (one each 5 s) and sip_call hangs up right after the first one past `seconds`, so
# the snapshot and the gateway's count then cover the same packets.
PHASES = ((0, 12), (1, 22), (5, 87))


def streams(dep: Deployment, site: str, tunnel: str) -> list[dict[str, Any]]:
    status = json.loads(dep.sitelink(site, "status", "--json").stdout)
    (entry,) = [t for t in status["tunnels"] if t["name"] == tunnel]
    return entry["calls"]


def one(found: list[dict[str, Any]], direction: str, dst_port: int) -> dict[str, Any]:
    matching = [s for s in found if s["direction"] == direction and s["dst"].endswith(f":{dst_port}")]
    assert len(matching) == 1, (direction, dst_port, found)
    return matching[0]


def loss_pct(stream: dict[str, Any]) -> float:
    return 100.0 * stream["lost"] / stream["expected"]


def nft_drops(lab: Lab, node: str, table: str) -> int:
    """What the one `counter drop` rule of an nftables table in node has dropped."""
    listing = lab.run(node, ["nft", "list", "table", "inet", table]).stdout
    (found,) = re.findall(r"counter packets (\d+) bytes \d+ drop", listing)
    return int(found)


def firing(lab: Lab) -> list[dict[str, Any]]:
    return query(lab, 'ALERTS{alertname="SitelinkCallQualityLow",alertstate="firing"}')


LAN_TABLE = "lanloss"


def both_sides(lab: Lab, dep: Deployment, dst: str) -> dict[str, int]:
    """Loss before the first gateway (hq's LAN) and on the WAN: hq's
    ingress sees the first, branch1's egress both, so the difference is the WAN's and the tunnel's."""
    port = 10044
    # In hq-gw's kernel as packets arrive from the LAN, before they are routed to sitelink's TUN: a lossy LAN
    # switch. (Dropped in the sending host's output, the sender would get EPERM and GStreamer send again.)
    lab.run("hq-gw", ["nft", "-f", "-"], input=(
        f"table inet {LAN_TABLE} {{\n  chain lan {{\n    type filter hook prerouting priority 0; policy accept;\n"
        f"    udp dport {port} numgen random mod 100 < 3 counter drop\n  }}\n}}\n"))
    lab.set_wan_loss(1)
    video = rtp_receive(lab, "branch1-host", dst, port, 12,
                        lambda: start_rtp_video(lab, "hq-host", dst, port, dscp=AF41))
    wan = nft_drops(lab, "router", NFT_TABLE)  # only the video crossed the WAN meanwhile (and IKE, rarely)
    lan = nft_drops(lab, "hq-gw", LAN_TABLE)
    lab.set_wan_loss(0)
    ingress = one(streams(dep, "hq", "branch1"), "ingress", port)
    egress = one(streams(dep, "branch1", "hq"), "egress", port)
    split = {"ingress": ingress["lost"], "egress": egress["lost"], "receiver": video["lost"], "lan": lan, "wan": wan}
    # Each drop is seen as a gap by whoever is behind it (a drop after the last packet by nobody: +-2).
    assert lan > 0 and wan > 0, split
    assert abs(ingress["lost"] - lan) <= 2, split
    assert abs(egress["lost"] - (lan + wan)) <= 2 and abs(egress["lost"] - video["lost"]) <= 2, split
    return split


def test_gateways_report_what_the_receivers_measured(tmp_path: Path) -> None:
    require([t for t in ("gst-launch-1.0", "prometheus") if shutil.which(t) is None], "GStreamer and Prometheus")
    require(sipcall.missing(), "baresip")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "gw", gateway_yaml=[f"metrics: {{address: 0.0.0.0, port: {PORT}}}"])
        dep.start_all()
        server = start_prometheus(lab, tmp_path)
        dst = lab.addr("branch1-host")
        rows, mos = [], {}
        try:
            wait_for(lab, 'up{job="sitelink"}', lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r))
            for i, (loss, seconds) in enumerate(PHASES):
                lab.set_wan_loss(loss)
                port = 10004 + 10 * i
                pcap = tmp_path / f"callee-{loss}.pcap"
                with ThreadPoolExecutor(1) as pool, \
                        lab.capture("branch1-host", "eth0", pcap, f"udp portrange 10000-20000 and not port {port}"):
                    video_job = pool.submit(rtp_receive, lab, "branch1-host", dst, port, seconds,
                                            lambda port=port: start_rtp_video(lab, "hq-host", dst, port, dscp=AF41))
                    call = sip_call(lab, "hq-host", "branch1-host", seconds)
                    video = video_job.result()
                here, there = streams(dep, "branch1", "hq"), streams(dep, "hq", "branch1")
                alerts = firing(lab)
                audio_port = int(str(call["callee"]["ports"]["audio"]["local"]).rsplit(":", 1)[-1])
                audio = call["callee"]["audio"]
                # Jitter as the callee's interface saw the packets arrive (kernel timestamps): libre's own
                # comes from a millisecond timer after the application's wake-up, ~0.4 ms more (noted below).
                heard = from_pcap(str(pcap), audio_port, 48000).summary()
                measured = {"video": (one(here, "egress", port), one(there, "ingress", port), video["loss_pct"],
                                      video["mean_jitter_ms"]),
                            "audio": (one(here, "egress", audio_port), one(there, "ingress", audio_port),
                                      audio["loss_pct"], heard["mean_jitter_ms"])}
                for kind, (egress, ingress, receiver_loss, receiver_jitter) in measured.items():
                    own = video["mean_jitter_ms"] if kind == "video" else audio["jitter_mean_ms"]
                    rows.append((loss, kind, egress["class"], loss_pct(egress), egress["jitter_mean_ms"], egress["mos"],
                                 receiver_loss, receiver_jitter, own, loss_pct(ingress)))
                    mos[(loss, kind)] = egress["mos"]
                    assert abs(loss_pct(egress) - receiver_loss) <= 0.5, (kind, loss, egress, receiver_loss)
                    assert abs(egress["jitter_mean_ms"] - receiver_jitter) <= 0.25 * receiver_jitter, \
                        (kind, loss, egress["jitter_mean_ms"], receiver_jitter)
                    assert loss_pct(ingress) <= 0.5  # hq's LAN lost nothing: the loss is the WAN's
                    assert egress["mos"] is not None and egress["ssrc"] == ingress["ssrc"]
                if loss < 5:
                    assert alerts == [], alerts
                else:
                    # Where the lossy WAN delivers: video and audio at branch1, the callee's audio back at hq;
                    # never on ingress (both LANs are clean).
                    fired = wait_for(lab, 'ALERTS{alertname="SitelinkCallQualityLow",alertstate="firing"}',
                                     lambda r: len(r) == 3, timeout=15)
                    assert {(a["metric"]["tunnel"], a["metric"]["direction"], a["metric"]["class"]) for a in fired} \
                        == {("hq", "egress", "realtime-audio"), ("hq", "egress", "interactive-video"),
                            ("branch1", "egress", "realtime-audio")}, fired
                    exported = {re.sub(r"_(bucket|sum|count|total)$", "", n)
                                for n in api(lab, "/api/v1/label/__name__/values")["data"]}
                    assert {n.removesuffix("_total") for n in CALL_SERIES} <= exported
            split = both_sides(lab, dep, dst)
        finally:
            lab.set_wan_loss(0)
            lab.run("hq-gw", ["nft", "delete", "table", "inet", LAN_TABLE], check=False)
            lab.stop(server)
    print("\nWAN loss -> sitelink at branch1 (egress) | the receiver (video: RFC 3550 receiver; audio: libre's RTCP "
          "loss, jitter at the callee's interface) | libre's own jitter | hq ingress loss")
    print(f"{'WAN':>4} {'stream':6} {'class':17} {'loss %':>7} {'jitter':>7} {'MOS':>5} | {'loss %':>7} {'jitter':>7} | "
          f"{'own':>6} | {'hq in %':>7}")
    for loss, kind, cls, sl_loss, sl_jitter, sl_mos, rx_loss, rx_jitter, own, hq_loss in rows:
        print(f"{loss:3}% {kind:6} {cls:17} {sl_loss:7.2f} {sl_jitter:7.3f} {sl_mos:5.2f} | {rx_loss:7.2f} "
              f"{rx_jitter:7.3f} | {own:6.3f} | {hq_loss:7.2f}")
    print("3 % lost on hq's LAN and 1 % on the WAN (video, 12 s): hq ingress lost {ingress}, branch1 egress lost "
          "{egress} (receiver {receiver}); nftables dropped {lan} on the LAN and {wan} on the WAN".format(**split))
    assert mos[(0, "video")] > mos[(1, "video")] > mos[(5, "video")]
    assert mos[(0, "audio")] > mos[(5, "audio")] and mos[(5, "audio")] < 3.6 < mos[(0, "audio")]
