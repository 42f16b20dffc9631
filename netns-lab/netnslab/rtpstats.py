"""RTP receive statistics as RFC 3550 defines them, and a small UDP receiver that reports them.

:class:`RtpStats` is pure: feed it ``add(arrival_seconds, datagram)`` in arrival order and read
``summary()``. It follows one SSRC, the first one it sees (datagrams of other SSRCs are counted as
``foreign``), and computes

* the extended highest sequence number, expected and lost packets as in RFC 3550 Appendix A.1/A.3
  (sequence numbers are extended over 16-bit wraps; a very large jump is only accepted once two
  sequential packets confirm it, which restarts the statistics as the source did; ``lost`` is
  ``expected - received`` and is negative when duplicates outnumber losses, as in the RFC),
* the interarrival jitter of §6.4.1 / Appendix A.8, ``J += (|D| - J) / 16`` over consecutive arrivals,
  with the transit time taken in RTP timestamp units of ``clock_rate`` (90000 for video, the
  audio codec's sample rate for audio), reported in milliseconds, plus its maximum,
* counts of reordered packets (arrived after a later sequence number), duplicates, and malformed
  datagrams (too short or not RTP version 2); RTCP packets on the same port (RFC 5761 payload type
  range 72-76 with the marker bit, i.e. second byte 200-204) are counted apart and not parsed.

Unlike Appendix A.1 there is no probation: the first packet of the followed SSRC starts the
statistics, so a short lab run loses nothing to it.

``add`` also takes the DSCP the datagram arrived with (from the IP_TOS / IPV6_TCLASS ancillary data
the CLI asks for) and ``summary()["dscp"]`` counts datagrams per DSCP value.

CLI (stdlib only, so it runs under a plain ``python3`` in a lab namespace)::

    python3 netns-lab/netnslab/rtpstats.py --bind 10.2.0.10 --port 5004 --seconds 5
    PYTHONPATH=netns-lab python -m netnslab.rtpstats --bind ... (an interpreter that can import netnslab)

receives for exactly ``--seconds`` (it never stops early), prints one JSON line with the summary and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from typing import Any

# The socket helpers are udpprobe's. Both files also run as plain scripts (python3 .../rtpstats.py), where
# there is no package: importing netnslab would pull in the lab and pyroute2, which a bare python3 lacks.
try:
    from .udpprobe import open_receiver, receive_for
except ImportError:  # run as a script: python3 netns-lab/netnslab/rtpstats.py (no package, no pyroute2)
    from udpprobe import open_receiver, receive_for  # type: ignore[no-redef]

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
RTP_HEADER = struct.Struct("!BBHII")
_DUP_WINDOW = 1 << 15  # how far back (in extended sequence numbers) duplicates are recognised


class RtpStats:
    """RFC 3550 receiver statistics for the first SSRC seen."""

    def __init__(self, clock_rate: int = 90000) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, got {clock_rate}")
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.payload_type: int | None = None
        # RFC 3550 A.1 source state
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.received = 0
        # A.8 jitter state (in timestamp units; float so sub-unit arrival times are not truncated)
        self._transit: float | None = None
        self._ts_ext = 0  # last RTP timestamp, unwrapped over 32-bit wraps
        self.jitter = 0.0
        self.max_jitter = 0.0
        self.jitter_total, self.jitter_count = 0.0, 0  # for the mean of J over the stream
        # extras
        self.reordered = 0
        self.duplicates = 0
        self.malformed = 0
        self.foreign = 0
        self.rtcp = 0
        self.discarded = 0  # packets of a large sequence jump not (yet) confirmed (A.1 returns 0)
        self.restarts = 0  # confirmed jumps: the statistics started over (A.1 init_seq)
        self.bytes = 0  # UDP payload bytes of the followed stream
        self.max_bytes = 0  # largest UDP payload of the followed stream
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self.dscp: dict[int, int] = {}
        self._seen: set[int] = set()  # recent extended sequence numbers, for duplicates

    # ---- feeding ----------------------------------------------------------

    def add(self, arrival_seconds: float, packet: bytes, dscp: int | None = None) -> None:
        """Account one received UDP payload that arrived at ``arrival_seconds`` (any fixed-origin clock)."""
        if dscp is not None:
            self.dscp[dscp] = self.dscp.get(dscp, 0) + 1
        header = parse_rtp_header(packet)
        if header is None:
            if len(packet) >= 2 and packet[0] >> 6 == 2 and 200 <= packet[1] <= 204:
                self.rtcp += 1
            else:
                self.malformed += 1
            return
        pt, seq, ts, ssrc = header
        if self.ssrc is None:
            self.ssrc = ssrc
            self.payload_type = pt
            self._init_seq(seq)
            self.received = 1
        elif ssrc != self.ssrc:
            self.foreign += 1
            return
        elif not self._update_seq(seq):
            self.discarded += 1
            return
        self.bytes += len(packet)
        self.max_bytes = max(self.max_bytes, len(packet))
        if self.first_arrival is None:
            self.first_arrival = arrival_seconds
        self.last_arrival = arrival_seconds
        self._update_jitter(arrival_seconds, ts)

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._seen = {seq}

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 update_seq (after the first packet, no probation); True if it counts as received."""
        udelta = (seq - self.max_seq) % RTP_SEQ_MOD
        if udelta < MAX_DROPOUT:
            ext = self.cycles + seq + (RTP_SEQ_MOD if seq < self.max_seq else 0)
            if udelta == 0:
                self.duplicates += 1
            else:
                if seq < self.max_seq:
                    self.cycles += RTP_SEQ_MOD  # sequence number wrapped
                self.max_seq = seq
                self._remember(ext)
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # a very large jump: accept it only when the next packet follows it (the sender restarted)
            if seq == self.bad_seq:
                self.restarts += 1
                self._init_seq(seq)
                self._transit = None  # a restarted sender has a new timestamp base too
            else:
                self.bad_seq = (seq + 1) % RTP_SEQ_MOD
                return False
        else:
            # duplicate or reordered packet (behind max_seq by at most MAX_MISORDER)
            ext = self.cycles + seq - (RTP_SEQ_MOD if seq > self.max_seq else 0)
            if ext in self._seen:
                self.duplicates += 1
            else:
                self.reordered += 1
                self._remember(ext)
        self.received += 1
        return True

    def _remember(self, ext: int) -> None:
        self._seen.add(ext)
        if len(self._seen) > 2 * _DUP_WINDOW:
            floor = self.cycles + self.max_seq - _DUP_WINDOW
            self._seen = {s for s in self._seen if s >= floor}

    def _update_jitter(self, arrival_seconds: float, ts: int) -> None:
        # Transit = arrival - timestamp in timestamp units. Only differences of transit matter, so
        # keep arrival relative to the first packet (float precision) and unwrap the 32-bit timestamp
        # against the previous one.
        arrival = (arrival_seconds - self.first_arrival) * self.clock_rate
        if self._transit is None:
            self._ts_ext = ts
            self._transit = arrival - ts
            return
        delta = (ts - self._ts_ext) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 1 << 32
        self._ts_ext += delta
        transit = arrival - self._ts_ext
        d = abs(transit - self._transit)
        self._transit = transit
        self.jitter += (d - self.jitter) / 16.0
        self.max_jitter = max(self.max_jitter, self.jitter)
        self.jitter_total += self.jitter
        self.jitter_count += 1

    # ---- results ----------------------------------------------------------

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """RFC 3550 A.3: extended highest sequence number received - base + 1 (0 before any packet)."""
        return 0 if self.ssrc is None or self.received == 0 else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative number of packets lost (A.3): expected - received, negative with duplicates."""
        return self.expected - self.received

    @property
    def loss_pct(self) -> float:
        """Lost over expected in percent; 0 when duplicates make ``lost`` negative (as A.3's fraction)."""
        return 0.0 if self.expected <= 0 or self.lost <= 0 else 100.0 * self.lost / self.expected

    def summary(self) -> dict[str, Any]:
        span = (self.last_arrival - self.first_arrival) if self.first_arrival is not None else 0.0
        return {
            "ssrc": self.ssrc,
            "payload_type": self.payload_type,
            "clock_rate": self.clock_rate,
            "packets": self.received,
            "expected": self.expected,
            "lost": self.lost,
            "loss_pct": round(self.loss_pct, 4),
            "jitter_ms": round(self.jitter * 1000.0 / self.clock_rate, 4),
            "max_jitter_ms": round(self.max_jitter * 1000.0 / self.clock_rate, 4),
            "mean_jitter_ms": round(self.jitter_total / self.jitter_count * 1000.0 / self.clock_rate, 4)
            if self.jitter_count else 0.0,
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "foreign": self.foreign,
            "rtcp": self.rtcp,
            "discarded": self.discarded,
            "restarts": self.restarts,
            "base_seq": self.base_seq if self.ssrc is not None else None,
            "extended_max_seq": self.extended_max if self.ssrc is not None else None,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "duration_s": round(span, 6),
            "bitrate_bps": round(8 * self.bytes / span, 1) if span > 0 else 0.0,
            "dscp": {str(k): v for k, v in sorted(self.dscp.items())},
        }


def parse_rtp_header(packet: bytes) -> tuple[int, int, int, int] | None:
    """(payload type, sequence number, timestamp, SSRC) of an RTP v2 packet, None if it is not one.

    Checks the version, that the CSRC list, header extension and padding fit in the datagram, and that
    the payload type is not in the RTCP range RFC 5761 reserves (72-76 with the marker bit is SR/RR/...).
    """
    if len(packet) < RTP_HEADER.size:
        return None
    b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(packet)
    if b0 >> 6 != 2:
        return None
    if 200 <= b1 <= 204:  # RTCP SR, RR, SDES, BYE, APP multiplexed on the port
        return None
    length = RTP_HEADER.size + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if len(packet) < length + 4:
            return None
        length += 4 + 4 * struct.unpack_from("!H", packet, length + 2)[0]
    if b0 & 0x20:  # padding: the last byte counts the padding bytes, itself included
        if len(packet) <= length or packet[-1] == 0 or length + packet[-1] > len(packet):
            return None
    if len(packet) < length:
        return None
    return b1 & 0x7F, seq, ts, ssrc


# --------------------------------------------------------------------------
# CLI


def from_pcap(path: str, dst_port: int, clock_rate: int) -> RtpStats:
    """The statistics of the RTP datagrams to ``dst_port`` in a classic pcap of an Ethernet interface (what
    tcpdump -w writes), timed by the capture's timestamps: a receiver with the kernel's clock, for
    endpoints whose own statistics are coarser (baresip's arrival times come from a millisecond timer)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D) or struct.unpack_from("<I", data, 20)[0] != 1:
        raise ValueError(f"{path}: not a little-endian pcap of an Ethernet interface")
    scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
    stats, pos = RtpStats(clock_rate), 24
    while pos + 16 <= len(data):
        seconds, fraction, captured = struct.unpack_from("<III", data, pos)
        frame = data[pos + 16:pos + 16 + captured]
        pos += 16 + captured
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 15) * 4
        udp = frame[14 + ihl:]
        if len(udp) >= 8 and struct.unpack_from("!H", udp, 2)[0] == dst_port:
            stats.add(seconds + fraction * scale, udp[8:], frame[15] >> 2)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rtpstats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", required=True, help="local address to receive on (IPv4 or IPv6)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True, help="receive this long, then report")
    ap.add_argument("--clock-rate", type=int, default=90000, help="RTP timestamp rate (90000 for video)")
    args = ap.parse_args(argv)
    stats = RtpStats(args.clock_rate)
    with open_receiver(args.bind, args.port) as sock:
        print(f"rtpstats: listening on {args.bind} port {args.port}", file=sys.stderr, flush=True)
        receive_for(sock, args.seconds, lambda ns, data, dscp: stats.add(ns / 1e9, data, dscp))
    print(json.dumps(stats.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
