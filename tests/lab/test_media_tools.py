"""The media tools themselves, on two sites routed in clear (plain mode, no tunnel): GStreamer's 720p30 VP8
RTP stream arrives with its AF41 marking and RFC 3550 statistics that make sense, the EF probe delivers
rate x seconds datagrams with DSCP 46 and plausible one-way delays, and both tools see WAN loss when the
router drops packets."""

from __future__ import annotations

import re
import shutil

import pytest

from netnslab import TOPOLOGIES, Lab
from netnslab.lab import NFT_TABLE
from netnslab.media import probe, rtp_receive, start_rtp_video, video_pipeline
from tests.needs import require

AF41, EF = 34, 46


@pytest.fixture(scope="module")
def lab():
    missing = [t for t in ("gst-launch-1.0", "gst-inspect-1.0") if shutil.which(t) is None]
    require(missing, "GStreamer")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="plain") as lab:
        yield lab


def test_pipeline_elements_exist(lab) -> None:
    argv = video_pipeline("10.2.0.10", 5004)
    elements = [argv[2]] + [argv[i + 1] for i, a in enumerate(argv) if a == "!" and "/" not in argv[i + 1]]
    assert elements == ["videotestsrc", "vp8enc", "rtpvp8pay", "udpsink"]
    for element in elements:
        cp = lab.run("hq-host", ["gst-inspect-1.0", element], check=False, timeout=30)
        assert cp.returncode == 0, f"GStreamer element {element} missing: {cp.stderr.strip()[-300:]}"


def test_video_stream_arrives_marked_af41(lab) -> None:
    dst = lab.addr("branch1-host")
    seconds = 6
    stats = rtp_receive(lab, "branch1-host", dst, 5004, seconds,
                        sender=lambda: start_rtp_video(lab, "hq-host", dst, 5004, dscp=AF41))
    sender = stats["sender"]
    print(f"\nVP8 720p30 RTP: {stats['packets']} packets, {stats['bitrate_bps'] / 1e6:.2f} Mbit/s, "
          f"loss {stats['loss_pct']}%, jitter {stats['jitter_ms']:.2f} ms (max {stats['max_jitter_ms']:.2f}), "
          f"largest {stats['max_bytes']} B, DSCP {stats['dscp']}; gst-launch {sender['cpu_s']} CPU s = "
          f"{sender['cpu_pct']}% of a core")
    assert sender["returncode"] is not None  # it was still running at the end, and was stopped
    assert stats["packets"] > 30 * (seconds - 3)  # at least a packet a frame for all but startup
    assert stats["foreign"] == stats["malformed"] == 0
    assert stats["loss_pct"] < 1.0 and stats["lost"] <= stats["duplicates"] + stats["expected"] // 100
    assert 0.0 < stats["jitter_ms"] < 30.0  # RFC 3550 jitter of a real stream is never exactly 0
    assert stats["max_bytes"] <= 1200  # rtpvp8pay mtu=1200
    assert 0.5e6 < stats["bitrate_bps"] < 4e6  # the encoder's 1.5 Mbit/s target, plus RTP headers
    assert stats["dscp"] == {str(AF41): stats["packets"]}  # every datagram arrived marked AF41


@pytest.mark.parametrize("family", [4, 6])
def test_probe_delivers_every_datagram_marked_ef(lab, family: int) -> None:
    rate, seconds = 50, 4
    result = probe(lab, "hq-host", "branch1-host", lab.addr("branch1-host", family), 7000 + family,
                   rate=rate, seconds=seconds, dscp=EF)
    print(f"\nprobe IPv{family}: {result['received']}/{result['sender']['sent']} received, one-way delay "
          f"p50 {result['delay_p50_ms']} ms p99 {result['delay_p99_ms']} ms max {result['delay_max_ms']} ms, "
          f"DSCP {result['dscp']}")
    assert result["sender"]["sent"] == rate * seconds
    assert result["received"] >= 0.99 * rate * seconds and result["lost"] <= 0.01 * rate * seconds
    assert result["max_seq"] >= rate * seconds - 2
    assert result["dscp"] == {str(EF): result["received"]}
    assert 0.0 < result["delay_min_ms"] <= result["delay_p50_ms"] <= result["delay_p99_ms"] <= result["delay_max_ms"]
    assert result["delay_p50_ms"] < 20.0  # plain routing through three namespaces: well under a millisecond


def _router_drops(lab) -> int:
    """Packets the router's WAN-loss rule dropped since it was (re)installed (nft counter)."""
    listing = lab.run("router", ["nft", "list", "table", "inet", NFT_TABLE]).stdout
    found = [int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ drop", listing)]
    assert len(found) == 1, listing
    return found[0]


def test_tools_count_wan_loss(lab) -> None:
    dst = lab.addr("branch1-host")
    rate, seconds = 200, 3
    try:
        lab.set_wan_loss(5)
        result = probe(lab, "hq-host", "branch1-host", dst, 7100, rate=rate, seconds=seconds, dscp=EF)
        dropped = _router_drops(lab)  # only the probe crossed the router meanwhile
        lab.set_wan_loss(5)  # a fresh table: the counter starts again from 0
        video = rtp_receive(lab, "branch1-host", dst, 5006, 5,
                            sender=lambda: start_rtp_video(lab, "hq-host", dst, 5006, dscp=AF41))
    finally:
        lab.set_wan_loss(0)
    sent = result["sender"]["sent"]
    print(f"\nwith 5% WAN loss: router dropped {dropped}, probe lost {result['lost']} + "
          f"{sent - 1 - result['max_seq']} after its last; RTP lost {video['lost']}/{video['expected']} "
          f"({video['loss_pct']:.2f}%)")
    # Every drop is one datagram the probe found missing, in a gap or after its last received one.
    assert dropped > 0 and result["lost"] > 0
    assert result["lost"] + (sent - 1 - result["max_seq"]) == dropped
    assert result["received"] + dropped == sent == rate * seconds
    assert 1.0 <= video["loss_pct"] <= 12.0  # 5 % of ~900 packets: 45 expected
    assert video["lost"] == video["expected"] - video["packets"]
