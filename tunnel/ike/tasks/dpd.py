"""Dead-peer detection (RFC 7296 §2.4): an empty INFORMATIONAL request when nothing has been heard from
the peer for `dpd_delay` (the engine decides when). Any authenticated message (and, via the gateway,
inbound ESP) counts as liveness. If the request's retransmissions all go unanswered the SA fails as a
dead peer; an answer records the round-trip time in `sa.dpd_rtt`."""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.ike.constants import ExchangeType
from tunnel.ike.message import Message
from tunnel.ike.sa import Exchange, IkeSa, Task


@dataclass
class DpdProbe(Exchange):
    sent_at: float
    kind = Task.DPD

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        # Only the first transmission's time is known, so after a retransmission this overstates the RTT.
        sa.dpd_rtt = now - self.sent_at


def start(sa: IkeSa, now: float) -> None:
    """§1.4: INFORMATIONAL with an empty SK payload; the answer is empty too."""
    sa.send_request(ExchangeType.INFORMATIONAL, [], now, DpdProbe(now))
