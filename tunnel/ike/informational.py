"""INFORMATIONAL exchanges (RFC 7296 §1.4): Delete payloads for Child SAs and the IKE SA, and the answer
to liveness checks (an empty request gets an empty response, §2.4). Our own DPD probes are in dpd.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnel.ike.constants import ExchangeType, ProtocolId
from tunnel.ike.message import DeletePayload, Message

if TYPE_CHECKING:
    from tunnel.ike.ike_auth import ChildState
    from tunnel.ike.session import IkeSession

DELETE_IKE = "delete-ike"


def on_request(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    from tunnel.ike.session import State

    if session.state not in (State.ESTABLISHED, State.DELETING, State.REKEYED):
        return session.drop("informational_before_auth")
    answer: list = []
    delete_ike = False
    for delete in message.all(DeletePayload):
        if delete.protocol == ProtocolId.IKE:
            delete_ike = True
        elif delete.protocol == ProtocolId.ESP:
            answer += _delete_children(session, delete.spis)
    # §1.4.1: deleting the IKE SA answers with an empty INFORMATIONAL; §2.25.2: it also cancels our rekey.
    session.send_response(message, [] if delete_ike else answer)
    if delete_ike:
        from tunnel.ike.ike_rekey import on_old_sa_deleted

        on_old_sa_deleted(session)
        session.close(f"peer {session.remote[0]} deleted the IKE SA")


def _delete_children(session: IkeSession, spis: tuple[bytes, ...]) -> list[DeletePayload]:
    """The peer names its inbound SPIs, i.e. our outbound ones; we answer with our inbound ones (§1.4.1).
    A Child SA we are deleting ourselves is answered without a Delete payload (§2.25.1)."""
    ours: list[bytes] = []
    for child in list(session.children):
        if any(int.from_bytes(spi, "big") == child.spi_out for spi in spis):
            if child.state != "deleting":
                ours.append(child.spi_in.to_bytes(4, "big"))
            session.remove_child(child)
    return [DeletePayload(ProtocolId.ESP, tuple(ours))] if ours else []


@dataclass
class ChildDelete:
    """Our request to delete one Child SA (after a rekey, a redundant one, or at its hard lifetime)."""

    child: ChildState

    def on_response(self, session: IkeSession, data: bytes, message: Message, now: float) -> None:
        session.remove_child(self.child)


def send_delete_child(session: IkeSession, child: ChildState, now: float) -> None:
    """§1.4.1: SK{D(ESP, our inbound SPI)}; the SA stays until the answer comes (make before break)."""
    child.state = "deleting"
    session.send_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.ESP, (child.spi_in.to_bytes(4, "big"),))],
                         now, exchange_state=ChildDelete(child))


def on_response(session: IkeSession, data: bytes, message: Message, now: float) -> None:
    if session.exchange == DELETE_IKE:
        session.close("IKE SA deleted")


def send_delete_ike(session: IkeSession, now: float) -> None:
    from tunnel.ike.session import State

    session.state = State.DELETING if session.state is not State.REKEYED else State.REKEYED
    session.send_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())], now,
                         exchange_state=DELETE_IKE)
    session.drop_children()
