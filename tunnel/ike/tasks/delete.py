"""INFORMATIONAL exchanges (RFC 7296 §1.4): Delete payloads for Child SAs and the IKE SA, ours and the
peer's, and the answer to liveness checks (an empty request gets an empty response, §2.4). Our own DPD
probes are in dpd.py."""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.ike.child import ChildSa, ChildState
from tunnel.ike.constants import ExchangeType, ProtocolId
from tunnel.ike.drops import IkeDrop
from tunnel.ike.message import DeletePayload, Message, Payload
from tunnel.ike.sa import Exchange, IkeSa, IkeState, Task


def on_request(sa: IkeSa, data: bytes, message: Message, now: float) -> None:
    if sa.state not in (IkeState.ESTABLISHED, IkeState.DELETING, IkeState.REKEYED):
        return sa.drop(IkeDrop.INFORMATIONAL_BEFORE_AUTH)
    answer: list[Payload] = []
    delete_ike = False
    for delete in message.all(DeletePayload):
        if delete.protocol == ProtocolId.IKE:
            delete_ike = True
        elif delete.protocol == ProtocolId.ESP:
            answer += _delete_children(sa, delete.spis)
    # §1.4.1: deleting the IKE SA answers with an empty INFORMATIONAL; §2.25.2: it also cancels our rekey.
    sa.send_response(message, [] if delete_ike else answer)
    if delete_ike:
        sa.abandon_request()
        sa.close(f"peer {sa.remote[0]} deleted the IKE SA")


def _delete_children(sa: IkeSa, spis: tuple[bytes, ...]) -> list[Payload]:
    """The peer names its inbound SPIs, i.e. our outbound ones; we answer with our inbound ones (§1.4.1).
    A Child SA we are deleting ourselves is answered without a Delete payload (§2.25.1)."""
    ours: list[bytes] = []
    for child in list(sa.children):
        if any(int.from_bytes(spi, "big") == child.spi_out for spi in spis):
            if child.state is not ChildState.DELETING:
                ours.append(child.spi_in.to_bytes(4, "big"))
            sa.remove_child(child)
    return [DeletePayload(ProtocolId.ESP, tuple(ours))] if ours else []


@dataclass
class ChildDelete(Exchange):
    """Our request to delete one Child SA (after a rekey, a redundant one, or past its hard lifetime)."""

    child: ChildSa
    kind = Task.CHILD_DELETE

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        sa.remove_child(self.child)


def send_delete_child(sa: IkeSa, child: ChildSa, now: float) -> None:
    """§1.4.1: SK{D(ESP, our inbound SPI)}; the SA stays until the answer comes (make before break)."""
    child.enter(ChildState.DELETING)
    if child in sa.owed_deletes:
        sa.owed_deletes.remove(child)
    sa.send_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.ESP, (child.spi_in.to_bytes(4, "big"),))],
                    now, ChildDelete(child))


class IkeDelete(Exchange):
    """Our request to delete the IKE SA with all its Child SAs."""

    kind = Task.IKE_DELETE

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        sa.close("IKE SA deleted")


def send_delete_ike(sa: IkeSa, now: float) -> None:
    if sa.state is IkeState.ESTABLISHED:  # a REKEYED SA stays so: it is already replaced
        sa.enter(IkeState.DELETING, now)
    sa.send_request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())], now, IkeDelete())
    sa.drop_children()
