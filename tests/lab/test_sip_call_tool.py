"""The SIP call tool on two sites routed in clear (plain mode, no tunnel): a real baresip call comes up with
SRTP, each receiver reports ~50 Opus packets/s with no loss and a small non-zero jitter, the packets arrive
marked EF (video AF41) and encrypted, and 5 % WAN loss shows up in the callee's own loss figure."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab
from netnslab.rtpstats import from_pcap
from netnslab.sipcall import SipCallError, missing, sip_call
from tests.needs import require

TOS_EF, TOS_AF41 = 46 << 2, 34 << 2
SUITE = "AES_CM_128_HMAC_SHA1_80"
RTP_FILTER = "udp portrange 10000-20001"  # RTP ports 10000-20000, RTCP on the next port


@pytest.fixture(scope="module")
def lab():
    require(missing(video=True), "baresip")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="plain") as lab:
        yield lab


@dataclass(frozen=True)
class Datagram:
    src: str
    dst: str
    sport: int
    dport: int
    tos: int
    payload: bytes


def read_udp4(path: Path) -> list[Datagram]:
    """The IPv4 UDP datagrams of a classic pcap of an Ethernet interface (what lab.capture writes)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), f"{path} is not a little-endian pcap"
    assert struct.unpack("<I", data[20:24])[0] == 1, "not an Ethernet capture"
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack("<I", data[pos + 8:pos + 12])[0]
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        sport, dport, length = struct.unpack("!HHH", frame[udp:udp + 6])
        out.append(Datagram(str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34])),
                            sport, dport, frame[15], frame[udp + 8:udp + length]))
    return out


def rtp_payload(d: Datagram) -> bytes:
    """The RTP payload (after CSRCs and header extension); with SRTP it is encrypted, the header is not."""
    b = d.payload
    off = 12 + 4 * (b[0] & 0x0F)
    if b[0] & 0x10:
        off += 4 + 4 * struct.unpack("!H", b[off + 2:off + 4])[0]
    return b[off:]


def port_of(side: dict, stream: str) -> int:
    return int(side["ports"][stream]["local"].rsplit(":", 1)[1])


def show(label: str, r: dict) -> None:
    print(f"\n{label}: setup {r['setup_s']} s, call {r['duration_s']} s")
    for role in ("caller", "callee"):
        for stream in ("audio", "video"):
            if stream in r[role]:
                s = r[role][stream]
                print(f"  {role} rx {stream}: {s['rx_packets']} packets in {s['as_of_s']} s "
                      f"({s['rx_packets'] / s['as_of_s']:.1f}/s), lost {s['rx_lost']} ({s['loss_pct']} %), "
                      f"jitter {s['jitter_ms']} ms; sent {s['tx_packets']}, RTT {s['rtt_ms']} ms; "
                      f"SRTP {r[role]['srtp'].get(stream)}")


def check_clean_stream(s: dict, seconds: float, heard: dict | None = None) -> None:
    """A receiver's figures on a clean path, against what the same run shows: its own packet spacing and,
    when captured, the packets its interface saw arrive (heard: netnslab.rtpstats' summary of them)."""
    assert s["as_of_s"] >= seconds - 0.5  # the snapshot was taken after the requested call time
    assert s["rx_lost"] <= 1 and s["loss_pct"] < 1.0
    spacing_ms = 1000.0 * s["as_of_s"] / s["rx_packets"]
    assert 0.0 < s["jitter_ms"] < spacing_ms  # a real stream's jitter is never 0, nor its packets' spacing
    assert s["tx_packets"] > 0
    if heard is not None:  # the call's packet rate is what arrived at the interface
        arrived = heard["packets"] / heard["duration_s"]
        assert abs(s["rx_packets"] / s["as_of_s"] - arrived) <= 0.1 * arrived, (s, heard)


def check_arrivals(dgrams: list[Datagram], dst: str, port: int, tos: int, reported: int) -> None:
    """Every RTP packet arriving at dst:port carries ``tos`` and an encrypted payload; at least as many
    arrived as the receiver reported (its snapshot came before the hang-up)."""
    rtp = [d for d in dgrams if d.dst == dst and d.dport == port]
    assert len(rtp) >= reported, f"only {len(rtp)} RTP packets reached {dst}:{port}, {reported} reported"
    assert {d.tos for d in rtp} == {tos}, f"TOS seen: {sorted({d.tos for d in rtp})}"
    # In plain RTP the first payload byte is Opus' TOC (one constant value for a fixed mode) or VP8's
    # payload descriptor (a few values); SRTP's AES counter mode makes it uniformly random.
    first = {rtp_payload(d)[0] for d in rtp if rtp_payload(d)}
    assert len(first) > 64, f"payload looks unencrypted: first bytes {sorted(first)[:20]}"


def test_audio_call_srtp_ef_clean(lab, tmp_path: Path) -> None:
    seconds = 6
    hosts = {"caller": lab.addr("hq-host"), "callee": lab.addr("branch1-host")}
    with lab.capture("branch1-host", "eth0", tmp_path / "callee.pcap", RTP_FILTER), \
            lab.capture("hq-host", "eth0", tmp_path / "caller.pcap", RTP_FILTER):
        r = sip_call(lab, "hq-host", "branch1-host", seconds)
    show("audio call, clean WAN", r)
    assert 10000 <= port_of(r["callee"], "audio") <= 20000 and 10000 <= port_of(r["caller"], "audio") <= 20000
    for role, host in hosts.items():
        assert r[role]["srtp"] == {"audio": SUITE}
        pcap = tmp_path / f"{role}.pcap"
        port = port_of(r[role], "audio")
        check_clean_stream(r[role]["audio"], seconds, from_pcap(str(pcap), port, 48000).summary())
        check_arrivals(read_udp4(pcap), host, port, TOS_EF, r[role]["audio"]["rx_packets"])


def test_wan_loss_shows_in_callee_report(lab) -> None:
    lab.set_wan_loss(5)
    try:
        r = sip_call(lab, "hq-host", "branch1-host", 8)
    finally:
        lab.set_wan_loss(0)
    show("audio call, 5 % WAN loss", r)
    for role in ("caller", "callee"):
        s = r[role]["audio"]
        assert s["rx_packets"] > 0 and s["rx_lost"] > 0
    assert 1.0 <= r["callee"]["audio"]["loss_pct"] <= 12.0


def test_video_call_af41(lab, tmp_path: Path) -> None:
    seconds = 6
    br = lab.addr("branch1-host")
    with lab.capture("branch1-host", "eth0", tmp_path / "callee.pcap", RTP_FILTER):
        r = sip_call(lab, "hq-host", "branch1-host", seconds, video=True)
    show("audio+video call, clean WAN", r)
    for role in ("caller", "callee"):
        assert r[role]["srtp"] == {"audio": SUITE, "video": SUITE}
        check_clean_stream(r[role]["audio"], seconds)
        check_clean_stream(r[role]["video"], seconds)
    dgrams = read_udp4(tmp_path / "callee.pcap")
    check_arrivals(dgrams, br, port_of(r["callee"], "audio"), TOS_EF, r["callee"]["audio"]["rx_packets"])
    check_arrivals(dgrams, br, port_of(r["callee"], "video"), TOS_AF41, r["callee"]["video"]["rx_packets"])


def test_unreachable_callee_raises(lab) -> None:
    lab.block_wan(True)
    try:
        with pytest.raises(SipCallError, match="not established"):
            sip_call(lab, "hq-host", "branch1-host", 5, setup_timeout=3)
    finally:
        lab.block_wan(False)
