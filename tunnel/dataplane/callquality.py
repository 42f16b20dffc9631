"""Passive call quality: RTP streams seen in clear on the LAN side of a tunnel, measured as their receiver
would (RFC 3550 loss, reordering, duplicates, interarrival jitter) and rated with the E-model (emodel.py).

Where: a tunnel's observer sees each UDP packet the forwarder admits from the LAN (INGRESS: before the
tunnel, what the local sender sent) and each one it delivers to the LAN (EGRESS: after the tunnel, what
the local receiver gets). One gateway's ingress and the far gateway's egress of the same stream (same
SSRC) tell what the tunnel and the WAN lost apart from what was lost before the first gateway.

What: only UDP packets whose source or destination port is in the tunnel's media ports (the configured
services), demultiplexed as RFC 7983 says for a port that carries STUN, DTLS and RTP together (WebRTC),
through a TURN ChannelData header (RFC 8656 §12) when there is one, with RTCP apart (RFC 5761 §4). Only
the 12-byte RTP header and its CSRC count are read: SSRC, sequence number, timestamp, payload type; SRTP
leaves them in clear (RFC 3711 §3.1). Nothing of the payload is read or kept.

Bounded: a stream is kept only after two packets in sequence (RFC 3550 A.1's probation), candidates and
streams are each at most max_streams per tunnel (the oldest candidate, and the longest-silent of the
oldest streams, make room), a candidate lives PROBATION seconds and a stream IDLE seconds after its last
packet. A hostile sender on either side costs its tunnel's table, never another tunnel's, and never a
packet: the observer only reads.

The clock is injected and read only for media packets. Every packet that is looked at and not counted as
RTP is counted under a Skip reason.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tunnel.dataplane import emodel

INGRESS, EGRESS = 0, 1
DIRECTIONS = ("ingress", "egress")
INTERVAL = 5.0  # seconds between a stream's roll-overs; its loss and MOS cover the last two intervals
IDLE = 15.0  # seconds without a packet: the stream (the call) ended
PROBATION = 2.0  # seconds a candidate waits for its next packet in sequence
RATE_SPAN = 1.0  # seconds of a stream before its clock rate is learned from its timestamps
MAX_STREAMS = 64  # default per tunnel
# Upper bounds (seconds) of the jitter histogram: one observation per stream and interval.
JITTER_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
MAX_DROPOUT, MAX_MISORDER = 3000, 100  # RFC 3550 A.1
_RECENT = 64  # sequence numbers behind the highest whose arrival is remembered (duplicates)
_RECENT_MASK = (1 << _RECENT) - 1
_SEQ_TS_SSRC = struct.Struct("!HII")
_EVICT_SCAN = 16  # streams looked at to choose one to evict

# RFC 3551 §6 (Table 4 and 5): the clock rate of each static payload type.
STATIC_RATES = {
    0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000, 10: 44100, 11: 44100,
    12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025, 17: 22050, 18: 8000,
    25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000, 33: 90000, 34: 90000,
}
# Rates a dynamic payload type is snapped to (audio codecs' and video's 90 kHz, RFC 3551 §4.5, §5).
LEARNABLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 90000)
_SNAP = 0.1  # a measured rate within 10 % of one of them


class Skip(enum.IntEnum):
    """Why a packet on a media port was not counted as RTP (it is forwarded all the same)."""

    STUN = 0  # RFC 7983: first byte 0-3 (ICE connectivity checks, consent)
    DTLS = 1  # 20-63 (the DTLS-SRTP handshake)
    RTCP = 2  # RFC 5761 §4: second byte 192-223
    NOT_RTP = 3  # any other first byte, or an RTP header cut short
    FRAGMENT = 4  # the first fragment of a datagram to a media port (media is never this large)

    @property
    def label(self) -> str:
        return self.name.lower()


def port_table(ranges: Iterable[tuple[int, int]]) -> bytes:
    """One byte per UDP port, 1 where media may flow: a lookup per port on the packet path."""
    table = bytearray(65536)
    for start, end in ranges:
        if not 0 <= start <= end <= 65535:
            raise ValueError(f"port range {start}-{end} outside 0-65535")
        table[start:end + 1] = b"\x01" * (end - start + 1)
    return bytes(table)


@dataclass(frozen=True)
class CallSettings:
    """A tunnel's observer as configured: which UDP ports carry media, how many streams it keeps."""

    ports: bytes  # port_table()
    max_streams: int = MAX_STREAMS


@dataclass
class GroupTotals:
    """Counters of one (direction, QoS class) of a tunnel: what the metrics export (plain values)."""

    packets: int = 0  # RTP packets of kept streams
    lost: int = 0  # RFC 3550 cumulative loss, as it was reported (never decreases)
    jitter_buckets: list[int] = field(default_factory=lambda: [0] * (len(JITTER_BOUNDS) + 1))
    jitter_sum: float = 0.0  # seconds

    def add(self, other: GroupTotals) -> None:
        self.packets += other.packets
        self.lost += other.lost
        self.jitter_sum += other.jitter_sum
        for i, n in enumerate(other.jitter_buckets):
            self.jitter_buckets[i] += n


@dataclass(frozen=True)
class StreamView:
    """One stream as `sitelink status` lists it."""

    direction: str  # ingress | egress
    cls: int  # QosClass value of its first packet
    ssrc: int
    src: str  # address:port
    dst: str
    payload_type: int
    clock_rate: int  # 0 while not learned
    packets: int  # received (duplicates apart)
    expected: int
    lost: int  # expected - received (RFC 3550 A.3; negative when duplicates outnumber losses)
    reordered: int
    duplicates: int
    jitter_ms: float  # RFC 3550 §6.4.1 interarrival jitter; 0 while the clock rate is not known
    jitter_mean_ms: float  # its mean over the stream's packets: steadier than one moment's value
    loss_pct: float  # over the last two intervals
    mos: float | None  # E-model estimate over the last two intervals; None before the first
    seconds: float  # since the first packet


@dataclass
class CallReport:
    """Everything the operations read of a tunnel's observer (a worker sends it to the main process)."""

    streams: list[StreamView] = field(default_factory=list)
    groups: dict[tuple[int, int], GroupTotals] = field(default_factory=dict)  # (direction, class)
    skipped: list[int] = field(default_factory=lambda: [0] * len(Skip))
    streams_evicted: int = 0  # streams dropped from a full table to make room
    candidates_evicted: int = 0

    def add(self, other: CallReport) -> None:
        self.streams += other.streams
        for key, totals in other.groups.items():
            self.groups.setdefault(key, GroupTotals()).add(totals)
        for i, n in enumerate(other.skipped):
            self.skipped[i] += n
        self.streams_evicted += other.streams_evicted
        self.candidates_evicted += other.candidates_evicted


def _s32(value: int) -> int:
    """A 32-bit timestamp difference as a signed number (timestamps wrap)."""
    return ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def snap_rate(measured: float) -> int:
    """The common clock rate nearest a measured one if within 10 % of it, else 0."""
    rate = min(LEARNABLE_RATES, key=lambda r: abs(measured - r) / r)
    return rate if abs(measured - rate) <= _SNAP * rate else 0


class Stream:
    """One RTP stream (an SSRC between two transport addresses, in one direction): RFC 3550 A.1, A.3, A.8."""

    __slots__ = ("key", "cls", "group", "pt", "rate", "first", "last", "base", "max_seq", "cycles", "bad_seq",
                 "received", "recent", "reordered", "duplicates", "prev_at", "prev_ts", "jitter",
                 "rate_at", "rate_ts", "roll_at", "exp_prior", "rec_prior", "last_exp", "last_lost",
                 "loss", "mos", "rec_reported", "lost_reported", "jitter_total", "jitter_count")

    def __init__(self, key: tuple[int, bytes, int, int, int], cls: int, group: GroupTotals, pt: int,
                 seq: int, ts: int, first: tuple[float, int], now: float) -> None:
        """Made from a candidate's packet (first: its arrival and timestamp, sequence number seq - 1)
        and the packet in sequence after it."""
        self.key, self.cls, self.group, self.pt = key, cls, group, pt
        self.rate = STATIC_RATES.get(pt, 0)
        self.first, self.last = first[0], now
        self._restart(seq, 2)
        self.bad_seq = -1
        self.recent = 0b11
        self.jitter = self.jitter_total = 0.0
        self.jitter_count = 0
        self.prev_at, self.prev_ts = now, ts
        self.rate_at, self.rate_ts = first
        if self.rate:
            self._jitter(first[0], first[1], now, ts)
        self.roll_at = now + INTERVAL
        self.loss = 0.0
        self.mos: float | None = None

    def _restart(self, seq: int, received: int) -> None:
        self.base = (seq - received + 1) & 0xFFFF
        self.max_seq, self.received = seq, received
        self.cycles = 0x10000 if self.base > seq else 0  # the first two straddle a wrap
        self.reordered = self.duplicates = 0
        self.exp_prior = self.rec_prior = self.rec_reported = self.lost_reported = 0
        self.last_exp = self.last_lost = 0  # the previous interval's, for the 10 s window

    def update(self, seq: int, ts: int, now: float) -> None:
        """One packet of the stream, in arrival order."""
        udelta = (seq - self.max_seq) & 0xFFFF
        if 0 < udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += 0x10000
            self.max_seq = seq
            self.recent = ((self.recent << udelta) | 1) & _RECENT_MASK
        elif udelta == 0:
            self.duplicates += 1
            return
        elif udelta <= 0x10000 - MAX_MISORDER:
            # A very large jump: the source restarted, or a stray packet. Believed once two in a row agree.
            if seq != self.bad_seq:
                self.bad_seq = (seq + 1) & 0xFFFF
                return
            self._settle()
            self._restart(seq, 1)
            self.recent = 1
            self.prev_at, self.prev_ts, self.last = now, ts, now  # a new timestamp base too: jitter from here
            return
        else:  # up to MAX_MISORDER behind the highest: late, or a duplicate of a recent one
            back = 0x10000 - udelta
            if back < _RECENT:
                bit = 1 << back
                if self.recent & bit:
                    self.duplicates += 1
                    return
                self.recent |= bit
            self.reordered += 1
        self.received += 1
        if self.rate:
            self._jitter(self.prev_at, self.prev_ts, now, ts)
        elif now - self.rate_at >= RATE_SPAN:
            self.rate = snap_rate(((ts - self.rate_ts) & 0xFFFFFFFF) / (now - self.rate_at))
            if not self.rate:  # no common rate (a pause, an odd codec): measure again from here
                self.rate_at, self.rate_ts = now, ts
        self.prev_at, self.prev_ts = now, ts
        self.last = now
        if now >= self.roll_at:
            self.roll(now)

    def _jitter(self, prev_at: float, prev_ts: int, now: float, ts: int) -> None:
        # RFC 3550 §6.4.1: D = (Rj - Ri) - (Sj - Si) in timestamp units, J += (|D| - J) / 16
        d = (now - prev_at) * self.rate - _s32(ts - prev_ts)
        self.jitter += (abs(d) - self.jitter) / 16.0
        self.jitter_total += self.jitter
        self.jitter_count += 1

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base + 1

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.rate if self.rate else 0.0

    def _settle(self) -> None:
        """Hand what was received and lost since the last time to the group's counters."""
        group = self.group
        group.packets += self.received - self.rec_reported
        self.rec_reported = self.received
        lost = self.expected - self.received
        if lost > self.lost_reported:
            group.lost += lost - self.lost_reported
            self.lost_reported = lost

    def roll(self, now: float) -> None:
        """End an interval: its loss with the one before gives the stream's loss and MOS."""
        self._settle()
        expected = self.expected
        exp_int, rec_int = expected - self.exp_prior, self.received - self.rec_prior
        self.exp_prior, self.rec_prior = expected, self.received
        lost_int = max(exp_int - rec_int, 0)
        window = exp_int + self.last_exp
        self.loss = (lost_int + self.last_lost) / window if window > 0 else 0.0
        self.last_exp, self.last_lost = exp_int, lost_int
        jitter_ms = self.jitter_ms
        self.mos = emodel.mos(emodel.r_factor(self.loss, jitter_ms))
        group = self.group
        seconds = jitter_ms / 1000.0
        group.jitter_sum += seconds
        for i, bound in enumerate(JITTER_BOUNDS):
            if seconds <= bound:
                group.jitter_buckets[i] += 1
                break
        else:
            group.jitter_buckets[-1] += 1
        self.roll_at = now + INTERVAL

    def view(self, now: float) -> StreamView:
        direction, addrs, sport, dport, ssrc = self.key
        half = len(addrs) // 2
        return StreamView(
            direction=DIRECTIONS[direction], cls=self.cls, ssrc=ssrc,
            src=_endpoint(addrs[:half], sport), dst=_endpoint(addrs[half:], dport),
            payload_type=self.pt, clock_rate=self.rate, packets=self.received, expected=self.expected,
            lost=self.expected - self.received, reordered=self.reordered, duplicates=self.duplicates,
            jitter_ms=round(self.jitter_ms, 3),
            jitter_mean_ms=round(self.jitter_total / self.jitter_count * 1000.0 / self.rate, 3)
            if self.jitter_count else 0.0,
            loss_pct=round(self.loss * 100.0, 3),
            mos=None if self.mos is None else round(self.mos, 2), seconds=round(now - self.first, 1))


def _endpoint(address: bytes, port: int) -> str:
    if len(address) == 4:
        return f"{'.'.join(str(b) for b in address)}:{port}"
    groups = ":".join(address[i:i + 2].hex() for i in range(0, 16, 2))
    return f"[{groups}]:{port}"


class CallQuality:
    """A tunnel's observer: feed it the UDP packets the forwarder admits and delivers."""

    def __init__(self, settings: CallSettings, clock: Callable[[], float]) -> None:
        if settings.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.settings = settings
        self.ports = settings.ports
        self.clock = clock
        self.streams: dict[tuple[int, bytes, int, int, int], Stream] = {}
        self.candidates: dict[tuple[int, bytes, int, int, int], tuple[int, int, int, float]] = {}
        self.groups: dict[tuple[int, int], GroupTotals] = {}
        self.skipped = [0] * len(Skip)
        self.streams_evicted = self.candidates_evicted = 0

    def observe(self, packet: bytes, version: int, direction: int, cls: int) -> None:
        """An IP packet carrying UDP (the caller checked the protocol), admitted from the LAN (INGRESS)
        or delivered to it (EGRESS), with its QoS class."""
        off = (packet[0] & 15) << 2 if version == 4 else 40
        end = len(packet)
        if end < off + 8:
            return
        ports = self.ports
        sport = (packet[off] << 8) | packet[off + 1]
        dport = (packet[off + 2] << 8) | packet[off + 3]
        if not (ports[sport] or ports[dport]):
            return  # not media: the cost of every other UDP packet ends here
        if version == 4:
            if packet[6] & 0x3F or packet[7]:  # a fragment (MF or an offset)
                if not (packet[6] & 0x1F or packet[7]):  # the first: its ports are real (media never is this large)
                    self.skipped[Skip.FRAGMENT] += 1
                return  # a later one's "ports" are payload bytes
            addrs = packet[12:20]
        else:
            addrs = packet[8:40]
        p = off + 8
        b0 = packet[p] if p < end else 0
        if 64 <= b0 <= 79:  # RFC 8656 §12: TURN ChannelData (channel 0x4000-0x4FFF, length), then the data
            p += 4
            b0 = packet[p] if p < end else 0
        if not 128 <= b0 <= 191:
            self.skipped[Skip.STUN if b0 < 4 else Skip.DTLS if 20 <= b0 <= 63 else Skip.NOT_RTP] += 1
            return
        if end - p < 12 + 4 * (b0 & 15):
            self.skipped[Skip.NOT_RTP] += 1
            return
        b1 = packet[p + 1]
        if 192 <= b1 <= 223:
            self.skipped[Skip.RTCP] += 1
            return
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, p + 2)
        key = (direction, addrs, sport, dport, ssrc)
        stream = self.streams.get(key)
        if stream is not None:
            stream.update(seq, ts, self.clock())
        else:
            self._candidate(key, b1 & 0x7F, seq, ts, cls)

    def _candidate(self, key: tuple[int, bytes, int, int, int], pt: int, seq: int, ts: int, cls: int) -> None:
        """RFC 3550 A.1's probation: a stream is kept from its second packet in sequence on."""
        now = self.clock()
        candidates = self.candidates
        held = candidates.get(key)
        if held is not None and held[0] == pt and (held[1] + 1) & 0xFFFF == seq:
            del candidates[key]
            streams = self.streams
            if len(streams) >= self.settings.max_streams:
                # The longest silent of the oldest few: O(1) however large the table, and a flood of new
                # streams (appended last) evicts itself, not the calls that came before it.
                self._evict(min(itertools.islice(streams.values(), _EVICT_SCAN), key=lambda s: s.last))
            group = self.groups.get((key[0], cls))
            if group is None:
                group = self.groups[(key[0], cls)] = GroupTotals()
            streams[key] = Stream(key, cls, group, pt, seq, ts, (held[3], held[2]), now)
            return
        if held is None and len(candidates) >= self.settings.max_streams:
            del candidates[next(iter(candidates))]
            self.candidates_evicted += 1
        candidates[key] = (pt, seq, ts, now)

    def _evict(self, stream: Stream) -> None:
        stream._settle()
        del self.streams[stream.key]
        self.streams_evicted += 1

    @property
    def seen(self) -> bool:
        """Anything to report: a media port was ever looked at."""
        return bool(self.streams or self.candidates or self.groups or any(self.skipped))

    def expire(self, now: float) -> None:
        """Roll the intervals that are due and forget ended streams and stale candidates (a timer)."""
        for stream in list(self.streams.values()):
            if now - stream.last > IDLE:
                stream._settle()
                del self.streams[stream.key]
            elif now >= stream.roll_at:
                stream.roll(now)
        stale = [key for key, held in self.candidates.items() if now - held[3] > PROBATION]
        for key in stale:
            del self.candidates[key]

    def report(self) -> CallReport:
        """What operations read: every stream, and counters that include the packets of the streams'
        current interval (as of the observer's clock)."""
        now = self.clock()
        self.expire(now)
        for stream in self.streams.values():
            stream._settle()
        return CallReport(
            streams=[s.view(now) for s in self.streams.values()],
            groups={key: GroupTotals(g.packets, g.lost, list(g.jitter_buckets), g.jitter_sum)
                    for key, g in self.groups.items()},
            skipped=list(self.skipped), streams_evicted=self.streams_evicted,
            candidates_evicted=self.candidates_evicted)
