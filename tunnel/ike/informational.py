"""INFORMATIONAL exchanges (RFC 7296 §1.4): liveness checks, Delete payloads, and the answer to
CREATE_CHILD_SA until rekeying exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnel.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunnel.ike.events import ChildSaDeleted
from tunnel.ike.message import DeletePayload, Message, NotifyPayload

if TYPE_CHECKING:
    from tunnel.ike.session import IkeSession

DELETE_IKE = "delete-ike"


def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    from tunnel.ike.session import State

    if session.state not in (State.ESTABLISHED, State.DELETING):
        return session.drop("informational_before_auth")
    answer: list = []
    delete_ike = False
    for delete in message.all(DeletePayload):
        if delete.protocol == ProtocolId.IKE:
            delete_ike = True
        elif delete.protocol == ProtocolId.ESP and session.child is not None:
            # The peer names its inbound SPIs, i.e. our outbound ones (§1.4.1); we answer with ours.
            child = session.child
            if any(int.from_bytes(spi, "big") == child.spi_out for spi in delete.spis):
                answer.append(DeletePayload(ProtocolId.ESP, (child.spi_in.to_bytes(4, "big"),)))
                session.child = None
                session.event(ChildSaDeleted(session.config.tunnel, child.spi_in, child.spi_out))
    session.send_response(message, [] if delete_ike else answer)
    if delete_ike:
        if session.child is not None:
            child, session.child = session.child, None
            session.event(ChildSaDeleted(session.config.tunnel, child.spi_in, child.spi_out))
        session.close(f"peer {session.remote[0]} deleted the IKE SA")


def refuse_create_child(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    """No rekeying or extra Child SAs yet: say so instead of staying silent (§1.3)."""
    session.send_response(message, [NotifyPayload(NotifyType.NO_ADDITIONAL_SAS)])


def on_response(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    if session.exchange == DELETE_IKE:
        session.close("IKE SA deleted")


def send_delete_ike(session: IkeSession, now: float) -> None:
    from tunnel.ike.session import State

    session.state = State.DELETING
    session.send_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())], now,
                         exchange_state=DELETE_IKE)
    if session.child is not None:
        child, session.child = session.child, None
        session.event(ChildSaDeleted(session.config.tunnel, child.spi_in, child.spi_out))
