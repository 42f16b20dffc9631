"""The gateway's own egress queue: strict priority for real-time media, fair share for the rest.

Existing gateways carry a tunnel through one FIFO, so a call's audio waits behind a file copy's
backlog. The data path here drains the kernel queues in front of it (TUN and socket) into one bounded
queue per QoS class and serves them in this order:

1. the real-time classes (audio, then video) by strict priority, as long as a token bucket
   (``realtime_bps``) allows: a flood marked EF cannot starve everything else;
2. everything else, real-time packets over that cap included, by deficit round robin (RFC-less but
   classic: Shreedhar & Varghese 1995), one quantum of bytes per class and round, so signalling,
   default and bulk traffic share what is left fairly.

A full queue drops the arriving packet (drop-tail, counted per class): TCP in the bulk class backs
off there, where we can see it. Pure: items are opaque, time arrives as ``now``.

Shaping (``shape_bps``): when the WAN link is slower than the gateway, the queue that matters forms in
front of the link (a modem, the provider's router), where nobody sorts it. Sending at most the link's
rate, minus a little, moves that queue here, where priority applies (as SQM and SD-WAN boxes do).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

from policy.qos import REALTIME_CLASSES, QosClass

CLASSES = tuple(QosClass)
DEFAULT_LIMITS = {QosClass.REALTIME_AUDIO: 256, QosClass.INTERACTIVE_VIDEO: 512, QosClass.SIGNALLING: 256,
                  QosClass.DEFAULT: 1024, QosClass.BULK: 1024}
QUANTUM = 1514  # bytes per class and round: one full-size packet
# Sojourn-time histogram bucket bounds (seconds), for the metrics exporter.
SOJOURN_BOUNDS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class ClassStats:
    """Plain counters of one class's queue, read at scrape time."""

    __slots__ = ("enqueued", "dequeued", "dropped", "bytes", "sojourn_sum", "sojourn_buckets", "demoted")

    def __init__(self) -> None:
        self.enqueued = self.dequeued = self.dropped = self.bytes = self.demoted = 0
        self.sojourn_sum = 0.0
        self.sojourn_buckets = [0] * (len(SOJOURN_BOUNDS) + 1)  # the last one is +Inf

    FIELDS = ("enqueued", "dequeued", "dropped", "bytes", "demoted", "sojourn_sum")

    def as_dict(self) -> dict[str, Any]:
        return {"enqueued": self.enqueued, "dequeued": self.dequeued, "dropped": self.dropped,
                "bytes": self.bytes, "demoted": self.demoted, "sojourn_sum": self.sojourn_sum,
                "sojourn_buckets": list(self.sojourn_buckets)}

    def values(self) -> tuple[Any, ...]:
        """Plain values, as a worker reports them (add_values sums them)."""
        return (*(getattr(self, f) for f in self.FIELDS), list(self.sojourn_buckets))

    def add_values(self, values: tuple[Any, ...]) -> None:
        """Sum reported statistics of the same class into these (the gateway's totals over its workers)."""
        for name, value in zip(self.FIELDS, values):
            setattr(self, name, getattr(self, name) + value)
        for i, n in enumerate(values[-1]):
            self.sojourn_buckets[i] += n


class PriorityScheduler:
    """enqueue() returns False for a drop; dequeue() gives up to n items in service order."""

    def __init__(self, realtime_bps: int, limits: dict[QosClass, int] | None = None,
                 burst_bytes: int = 64 * 1024, quantum: int = QUANTUM, shape_bps: int = 0,
                 shape_burst_bytes: int = 16 * 1024, overhead: int = 0) -> None:
        """shape_bps: total rate sent (0: as fast as it comes); overhead: bytes added to each item on the
        wire (ESP, UDP and IP headers), counted against the shaper."""
        limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.limits = [limits[c] for c in CLASSES]
        self.queues: list[deque[tuple[Any, int, float]]] = [deque() for _ in CLASSES]
        self.stats = [ClassStats() for _ in CLASSES]
        self.rate = realtime_bps / 8.0  # bytes per second
        self.burst = float(burst_bytes)
        self.tokens = self.burst
        self._refilled: float | None = None
        self.quantum = quantum
        self.deficit = [0] * len(CLASSES)
        self._next = 0  # where the round robin resumes
        self._resume = False  # the visit to _next was interrupted: go on without adding a quantum
        self.length = 0
        self.shape_rate = shape_bps / 8.0
        self.shape_burst = float(shape_burst_bytes)
        self.shape_tokens = self.shape_burst
        self.overhead = overhead

    def __len__(self) -> int:
        return self.length

    def depth(self, cls: QosClass) -> int:
        return len(self.queues[cls])

    def enqueue(self, cls: int, item: Any, size: int, now: float) -> bool:
        queue = self.queues[cls]
        if len(queue) >= self.limits[cls]:
            self.stats[cls].dropped += 1
            return False
        queue.append((item, size, now))
        self.stats[cls].enqueued += 1
        self.length += 1
        return True

    def pass_through(self, cls: int, size: int, now: float) -> bool:
        """Whether a packet may skip the queues: with nothing queued and no shaper, enqueue() then
        dequeue() would hand it straight back. Accounted as they would (counts, a zero wait, real-time
        tokens, a demotion when over the cap), so the statistics do not depend on the shortcut; an idle
        tunnel's lone packet then costs no queue work (issue 17: the delay added on an idle tunnel)."""
        if self.length or self.shape_rate:
            return False
        stats = self.stats[cls]
        self._refill(now)
        if cls in REALTIME_CLASSES:
            if self.tokens >= size:
                self.tokens -= size
            else:
                stats.demoted += 1
        stats.enqueued += 1
        stats.dequeued += 1
        stats.bytes += size
        stats.sojourn_buckets[0] += 1
        return True

    def dequeue(self, n: int, now: float) -> list[Any]:
        out = self.dequeue_realtime(n, now)
        if len(out) < n and self.length:
            self._round_robin(n, now, out)
        return out

    def realtime_waiting(self) -> bool:
        """Whether a real-time packet is queued (the pump then serves it before the rest of its batch)."""
        queues = self.queues
        return bool(queues[QosClass.REALTIME_AUDIO] or queues[QosClass.INTERACTIVE_VIDEO])

    def dequeue_realtime(self, n: int, now: float) -> list[Any]:
        """Up to n real-time packets within their cap, audio first: the strict-priority part of dequeue(),
        which the pump also calls alone in the middle of a bulk batch."""
        out: list[Any] = []
        if not self.length:
            return out
        self._refill(now)
        for cls in (QosClass.REALTIME_AUDIO, QosClass.INTERACTIVE_VIDEO):
            queue = self.queues[cls]
            while queue and len(out) < n and self.tokens >= queue[0][1]:
                # Real-time packets within their cap do not wait for the shaper: they go now and the
                # debt delays the next bulk packet instead (the link's own buffer absorbs one packet).
                if self.shape_rate:
                    self.shape_tokens -= queue[0][1] + self.overhead
                self.tokens -= queue[0][1]
                self._take(cls, now, out)
        return out

    def sendable(self, now: float) -> bool:
        """Whether a dequeue now would give something (the shaper may be holding the queue back)."""
        if not self.length:
            return False
        self._refill(now)
        return not self.shape_rate or self.shape_tokens >= 0

    def ready_at(self, now: float) -> float | None:
        """When the shaper will let the next packet go, if it holds one back now; else None."""
        if not self.length or not self.shape_rate or self.shape_tokens >= 0:
            return None
        return now + -self.shape_tokens / self.shape_rate

    def _shaper_allows(self, size: int) -> bool:
        """Spend the packet's bytes; the bucket may go negative by one packet (so any size passes), and
        nothing more goes until it is refilled above zero."""
        if not self.shape_rate:
            return True
        if self.shape_tokens < 0:
            return False
        self.shape_tokens -= size + self.overhead
        return True

    def _refill(self, now: float) -> None:
        if self._refilled is not None and now > self._refilled:
            elapsed = now - self._refilled
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            if self.shape_rate:
                self.shape_tokens = min(self.shape_burst, self.shape_tokens + elapsed * self.shape_rate)
        self._refilled = now

    def _round_robin(self, n: int, now: float, out: list[Any]) -> None:
        """Deficit round robin over the non-empty queues; real-time queues still holding packets here
        are over their rate cap and take a fair share like the others (counted as demoted). A class alone
        with packets is served without rounds (nobody to share with)."""
        queues, deficit, count = self.queues, self.deficit, len(CLASSES)
        active = [c for c in range(count) if queues[c]]
        if len(active) == 1:
            cls = active[0]
            deficit[cls] = 0
            self._visit(cls, n, now, out, unlimited=True)
            self._next, self._resume = cls, False
            return
        cls = self._next
        while len(out) < n and self.length:
            queue = queues[cls]
            if not queue:
                deficit[cls] = 0
                self._resume = False
                cls = (cls + 1) % count
                continue
            if self._resume:
                self._resume = False
            else:
                deficit[cls] += self.quantum
            if not self._visit(cls, n, now, out):
                self._next, self._resume = cls, True  # the shaper stopped us: continue this visit later
                return
            if queue and len(out) >= n:
                self._next, self._resume = cls, True  # resume this visit, keeping its deficit
                return
            if not queue:
                deficit[cls] = 0
            cls = (cls + 1) % count
        self._next = cls

    def _visit(self, cls: int, n: int, now: float, out: list[Any], unlimited: bool = False) -> bool:
        """Take packets of one class while its deficit (or, alone, the batch) allows; False when the
        shaper stopped it. The hot loop of the data path: locals only, statistics summed once."""
        queue, deficit, append = self.queues[cls], self.deficit, out.append
        budget = deficit[cls]
        room = n - len(out)
        shaping, overhead = self.shape_rate, self.overhead
        buckets, bounds = self.stats[cls].sojourn_buckets, SOJOURN_BOUNDS
        taken = total = 0
        waited = 0.0
        allowed = True
        while queue and taken < room:
            item, size, since = queue[0]
            if not unlimited and size > budget:
                break
            if shaping:
                if self.shape_tokens < 0:
                    allowed = False
                    break
                self.shape_tokens -= size + overhead
            queue.popleft()
            budget -= size
            wait = now - since
            waited += wait
            buckets[bisect_left(bounds, wait)] += 1
            append(item)
            taken += 1
            total += size
        deficit[cls] = 0 if unlimited else budget
        self.length -= taken
        stats = self.stats[cls]
        stats.dequeued += taken
        stats.bytes += total
        stats.sojourn_sum += waited
        if cls in REALTIME_CLASSES:
            stats.demoted += taken
        return allowed

    def _take(self, cls: int, now: float, out: list[Any]) -> None:
        item, size, since = self.queues[cls].popleft()
        self.length -= 1
        stats = self.stats[cls]
        stats.dequeued += 1
        stats.bytes += size
        sojourn = now - since
        stats.sojourn_sum += sojourn
        stats.sojourn_buckets[bisect_left(SOJOURN_BOUNDS, sojourn)] += 1
        out.append(item)
