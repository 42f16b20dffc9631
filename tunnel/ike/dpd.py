"""Dead-peer detection (RFC 7296 §2.4): an empty INFORMATIONAL request when nothing has been heard from
the peer for `dpd_delay`. Any authenticated message (and, via the gateway, inbound ESP) counts as
liveness. If the request's retransmissions all go unanswered the session fails as a dead peer
(IkeSession.handle_timer); an answer records the round-trip time in `session.dpd_rtt`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnel.ike.constants import ExchangeType
from tunnel.ike.message import Message

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession


@dataclass
class DpdProbe:
    sent_at: float

    def on_response(self, session: IkeSession, data: bytes, message: Message, now: float) -> None:
        # Only the first transmission's time is known, so after a retransmission this overstates the RTT.
        session.dpd_rtt = now - self.sent_at


def start(session: IkeSession, now: float) -> None:
    """§1.4: INFORMATIONAL with an empty SK payload; the answer is empty too."""
    session.send_request(ExchangeType.INFORMATIONAL, [], now, exchange_state=DpdProbe(now))
