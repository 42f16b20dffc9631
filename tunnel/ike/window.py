"""Message IDs and retransmission with window size 1 (RFC 7296 §2.1-§2.3).

Each side numbers its own requests from 0. The requester alone retransmits, with exponential backoff,
until a response with the same ID arrives or it gives up; the responder keeps its last response and
sends it again for a duplicate request instead of processing it twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0  # seconds until the first retransmission
    factor: float = 2.0
    tries: int = 6  # transmissions in all before the peer counts as unreachable (1+2+4+8+16+32 s = 63 s)

    def delay(self, attempt: int) -> float:
        return self.initial * self.factor**attempt

    @property
    def span(self) -> float:
        """Seconds from the first transmission until the requester gives up (RequestWindow.on_timer)."""
        return sum(self.delay(attempt) for attempt in range(self.tries))


FIRST_CONTACT_PROBE = 0.2  # seconds: IKE_SA_INIT is sent once more this soon, outside the backoff schedule


class RequestWindow:
    """Our outgoing requests: at most one outstanding (window size 1).

    A new IKE SA's first request (IKE_SA_INIT, message ID 0) gets one extra, early transmission: two
    gateways started together (a site's power coming back, `systemctl start` on both) are each up at
    some moment in the same second, and an IKE_SA_INIT that reached the peer before its socket existed
    would otherwise wait the whole first backoff step (1 s by default). It is small, stateless to the
    peer until answered, and a duplicate gets the cached answer."""

    __slots__ = ("backoff", "next_id", "outstanding", "packets", "attempt", "deadline", "probe")

    def __init__(self, backoff: Backoff, first_id: int = 0) -> None:
        self.backoff = backoff
        self.next_id = first_id
        self.outstanding: int | None = None
        self.packets: list[bytes] = []  # the request as sent: one message, or its fragments (RFC 7383)
        self.attempt = 0
        self.deadline: float | None = None
        self.probe = False  # the early transmission of IKE_SA_INIT is still due

    @property
    def busy(self) -> bool:
        return self.outstanding is not None

    def send(self, message_id: int, packets: list[bytes], now: float) -> None:
        self.outstanding = message_id
        self.packets = packets
        self.attempt = 0
        self.probe = message_id == 0 and FIRST_CONTACT_PROBE < self.backoff.delay(0)
        self.deadline = now + (FIRST_CONTACT_PROBE if self.probe else self.backoff.delay(0))
        self.next_id = message_id + 1

    def resend_same(self, packet: bytes, now: float) -> None:
        """The same request again with changed content (COOKIE, INVALID_KE retry): same ID, fresh timer."""
        self.outstanding = self.next_id - 1
        self.packets = [packet]
        self.attempt = 0
        self.probe = False  # the peer answered: it is there
        self.deadline = now + self.backoff.delay(0)

    def hold(self) -> tuple[int | None, list[bytes], int]:
        """The outstanding request as it stands (see resume)."""
        return self.outstanding, self.packets, self.attempt

    def resume(self, held: tuple[int | None, list[bytes], int], now: float) -> None:
        """The request outstanding again after its response could not be used yet (an OCSP status is
        being asked): retransmitted on the usual schedule, without a new try."""
        self.outstanding, self.packets, self.attempt = held
        self.deadline = now + self.backoff.delay(self.attempt)

    def matches(self, message_id: int) -> bool:
        return self.outstanding == message_id

    def complete(self) -> None:
        self.outstanding = None
        self.packets = []
        self.deadline = None

    def on_timer(self, now: float) -> list[bytes]:
        """The packets to retransmit now (none yet: empty). Raises TimeoutError once every try is used."""
        if self.deadline is None or now < self.deadline:
            return []
        if self.probe:  # the early IKE_SA_INIT: not a try; the backoff schedule runs from the first send
            self.probe = False
            self.deadline += self.backoff.delay(0) - FIRST_CONTACT_PROBE
            return self.packets
        self.attempt += 1
        if self.attempt >= self.backoff.tries:
            self.complete()
            raise TimeoutError(f"no response after {self.backoff.tries} transmissions")
        self.deadline = now + self.backoff.delay(self.attempt)
        return self.packets


class ResponseWindow:
    """The peer's requests: the next ID we expect and our cached last response, with a digest of the
    request it answered: only the same request again gets the cache (a forged datagram with the right
    SPIs and message ID, header only, must not make us send kilobytes to anyone, as strongSwan checks)."""

    __slots__ = ("expected", "last_id", "last_response", "last_digest", "pending_digest")

    def __init__(self, first_id: int = 0) -> None:
        self.expected = first_id
        self.last_id: int | None = None
        self.last_response: list[bytes] = []
        self.last_digest = b""
        self.pending_digest = b""  # the request being answered now

    def classify(self, message_id: int, request: bytes) -> str:
        """'new', 'duplicate' (the same request again: answer from cache) or 'invalid' (drop, §2.3)."""
        if message_id == self.expected:
            self.pending_digest = _digest(request)
            return "new"
        if message_id == self.last_id and _digest(request) == self.last_digest:
            return "duplicate"
        return "invalid"

    def answered(self, message_id: int, packets: list[bytes]) -> None:
        self.last_id = message_id
        self.last_response = list(packets)
        self.last_digest = self.pending_digest
        self.expected = message_id + 1


def _digest(request: bytes) -> bytes:
    return hashlib.sha256(request).digest()
