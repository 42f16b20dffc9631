"""One IKE SA with its sans-I/O interface (after aioquic's QuicConnection): datagrams and `now` in,
datagrams, events and one timer out. The state lives in sa.py; the exchanges in tasks/. This module is
the engine between them: it opens and routes each message to its task, retransmits, enforces every
state's deadline, and decides which request of ours goes next (§2.3: one at a time), from the SA's
lifetimes (§2.8) and liveness (§2.4): the one place that says "rekey now" or "delete now".
"""

from __future__ import annotations

from collections.abc import Callable

from tunnel.errors import MalformedPacket
from tunnel.ike.child import ChildSa, ChildState
from tunnel.ike.constants import NAT_T_PORT, ExchangeType, ProtocolId
from tunnel.ike.drops import IkeDrop
from tunnel.ike.errors import IkeError, RevocationPending
from tunnel.ike.events import ReauthDue
from tunnel.ike.message import IkeHeader, Message, NotifyPayload, SaPayload, SkfPayload, parse_message
from tunnel.ike.payloads import TooManySelectors
from tunnel.ike.sa import Address, IkeSa, IkeState
from tunnel.ike.tasks import child_create, delete, dpd, ike_auth, ike_init, ike_rekey

Handler = Callable[[IkeSa, bytes, Message, float], None]
_REQUEST_HANDLERS: dict[int, Handler] = {
    ExchangeType.IKE_SA_INIT: ike_init.on_request,
    ExchangeType.IKE_AUTH: ike_auth.on_request,
    ExchangeType.INFORMATIONAL: delete.on_request,
}


class IkeSession(IkeSa):
    # -- commands ------------------------------------------------------------------------------------
    def initiate(self, now: float) -> None:
        if not self.initiator or self.state is not IkeState.IDLE:
            raise RuntimeError("initiate() is for a fresh initiator session")
        self.spi_i = self.random(8)
        self.started_at = now
        ike_init.start(self, now)

    def rekey_child(self, now: float) -> None:
        """Rekey the Child SAs now, or as soon as the outstanding request completes (e.g. when the data
        plane's byte, packet or sequence-number limits approach)."""
        for child in self.active_children:
            child.rekey_at = now
        self.proceed(now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA now, or as soon as the outstanding request completes (§1.3.2)."""
        if self.ike_rekey_at is not None:
            self.ike_rekey_at = now
            self.proceed(now)

    def delete(self, now: float, when_idle: bool = False) -> None:
        """Tell the peer the IKE SA (and its Child SAs) is going away (RFC 7296 §1.4.1). With a request of
        ours outstanding, the Delete cannot go out yet (§2.3: one at a time): when_idle sends it once that
        exchange ends; otherwise the SA is closed here without telling the peer."""
        if self.state is IkeState.ESTABLISHED and not self.requests.busy:
            delete.send_delete_ike(self, now)
        elif when_idle and self.state is IkeState.ESTABLISHED:
            self.delete_when_idle = True
        else:
            self.close("deleted locally")

    def note_esp_received(self, now: float) -> None:
        """An authenticated ESP packet of one of our Child SAs arrived: liveness for DPD (§2.4)."""
        self.heard(now)

    # -- sans-I/O interface ---------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, remote: Address, local_port: int, now: float) -> None:
        """One IKE message (without the non-ESP marker) that arrived from `remote` on `local_port`. The
        one error boundary of an IKE SA: whatever the datagram holds, it ends as an answer, a change of
        state the message was entitled to, or a counted drop."""
        if self.state is IkeState.CLOSED:
            return self.drop(IkeDrop.CLOSED)
        if self.started_at is None:
            self.started_at = now
        try:
            message = parse_message(data)
            header = message.header
            if not self._addressed_to_us(header):
                return self.drop(IkeDrop.WRONG_ROLE)
            if header.is_response:
                self._on_response(data, message, remote, local_port, now)
            else:
                self._on_request(data, message, remote, local_port, now)
        except TooManySelectors:
            self.drop(IkeDrop.TOO_MANY_SELECTORS)
        except MalformedPacket:
            self.drop(IkeDrop.MALFORMED)
        except Exception as exc:  # noqa: BLE001 - a bug must end this SA, never the gateway
            self._internal_error(exc)

    def get_timer(self) -> float | None:
        deadlines = [d for d in (self.requests.deadline, self.state_deadline) if d is not None]
        deadlines += self._due_times()
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        try:  # the other error boundary: timers run our own code only, but a bug must end only this SA
            if self.state_deadline is not None and now >= self.state_deadline:
                return self._state_expired()
            try:
                packets = self.requests.on_timer(now)
            except TimeoutError as exc:
                dead = " (dead peer)" if self.ike_expire_at is not None else ""
                return self.fail(f"peer {self.remote[0]} does not answer{dead}: {exc}")
            for packet in packets:
                self._emit(packet)
            self.proceed(now)
        except Exception as exc:  # noqa: BLE001
            self._internal_error(exc)

    # -- what goes next -------------------------------------------------------------------------------
    def proceed(self, now: float) -> None:
        """Hard expiries first, then at most one new request: IKE_AUTH after IKE_SA_INIT, a Delete that
        waited, a Child SA ours to delete, IKE rekey, Child rekey, a new Child SA, or DPD, in that order."""
        busy = self.requests.busy
        if self.state is IkeState.INIT_SENT and self.crypto is not None and not busy:
            return ike_auth.start(self, now)
        if self.state is IkeState.REKEYED and self.delete_when_idle and not busy:
            self.delete_when_idle = False
            return delete.send_delete_ike(self, now)
        if self.state is not IkeState.ESTABLISHED:
            return
        for child in [c for c in self.children if _expired(c, now)]:
            child_create.expire(self, child, now)
        if self.ike_expire_at is not None and self.ike_expire_at <= now:
            self.quiet = False
            return self.delete(now)
        if self.reauth_at is not None and self.reauth_at <= now and not self.reauth_requested:
            self.reauth_requested = True
            self.event(ReauthDue(self.config.tunnel, self.spi_i, self.spi_r))
        if busy:
            return
        if self.delete_when_idle:
            self.delete_when_idle = False
            return self.delete(now)
        retiring = self.retiring()
        if retiring is not None:
            return delete.send_delete_child(self, retiring, now)
        if self.ike_rekey_at is not None and self.ike_rekey_at <= now:
            self.ike_rekey_pending = True
            return ike_rekey.start(self, now)
        for child in self.children:
            due = self.child_rekey_due(child)
            if due is not None and due <= now:
                return child_create.start(self, child, now)
        if self.new_child_at is not None and self.new_child_at <= now:
            self.new_child_at = None
            if child_create.missing_workers(self):
                return child_create.start(self, None, now)
        due = self.dpd_due()
        if due is not None and due <= now:
            dpd.start(self, now)

    def child_rekey_due(self, child: ChildSa) -> float | None:
        """When to rekey an installed Child SA: at its soft lifetime, except while our IKE rekey is pending.
        Then it waits until halfway to its hard lifetime, so that Child rekeys from both sides do not keep
        colliding with the IKE rekey (each refused with TEMPORARY_FAILURE, §2.25.2) until the IKE SA's
        hard lifetime ends everything; the Child SAs move to the new IKE SA and are rekeyed there."""
        if child.state is not ChildState.INSTALLED or child.rekey_at is None:
            return None
        if self.ike_rekey_pending and child.expire_at is not None:
            return max(child.rekey_at, (child.rekey_at + child.expire_at) / 2)
        return child.rekey_at

    def _due_times(self) -> list[float]:
        """When proceed() has something to do (besides retransmissions and the state deadline)."""
        if self.state is IkeState.REKEYED and self.delete_when_idle and not self.requests.busy:
            return [0.0]
        if self.state is not IkeState.ESTABLISHED:
            return []
        found = [c.expire_at for c in self.children if c.announced]
        found.append(self.ike_expire_at)
        if not self.requests.busy:
            if self.delete_when_idle or self.retiring() is not None:
                found.append(0.0)  # at once
            found += [self.child_rekey_due(c) for c in self.children]
            found += [self.ike_rekey_at, self.dpd_due(), self.new_child_at]
        if not self.reauth_requested:
            found.append(self.reauth_at)
        return [d for d in found if d is not None]

    # -- internals ----------------------------------------------------------------------------------------
    def _addressed_to_us(self, header: IkeHeader) -> bool:
        """The header's roles and SPIs fit this SA: the sender's initiator flag is the opposite of ours,
        the initiator SPI is this SA's, and so is the responder SPI once both are known (before that only
        the responder's answer to IKE_SA_INIT may carry a new one, or none with an error, §2.6)."""
        if header.is_initiator == self.initiator or header.spi_i != self.spi_i:
            return False
        if self.crypto is None or header.exchange == ExchangeType.IKE_SA_INIT:
            return True  # its own checks follow (a retransmitted request has no responder SPI)
        return header.spi_r == self.spi_r

    def _on_response(self, data: bytes, message: Message, remote: Address, local_port: int, now: float) -> None:
        header = message.header
        exchange = self.exchange
        if not self.requests.matches(header.message_id) or header.exchange != self.request_type or exchange is None:
            return self.drop(IkeDrop.UNEXPECTED_RESPONSE)
        if header.exchange != ExchangeType.IKE_SA_INIT:
            if isinstance(message.payloads[0] if message.payloads else None, SkfPayload):
                piece = self.open_fragment(data, message, response=True)
                if piece is None or piece[1] is None:
                    return
                opened: Message | None = piece[1]
            else:
                opened = self.open(data, message)
            if opened is None:
                return
            message = opened
            self.heard(now)
            if local_port == NAT_T_PORT == self.local_port:
                self.remote = remote  # RFC 7296 §2.23: follow the peer's NAT mapping (authenticated)
        held = self.requests.hold()
        self.requests.complete()
        try:
            exchange.on_response(self, data, message, now)
        except RevocationPending as exc:  # our retransmission brings the peer's cached answer again
            self.refused(exc)
            self.requests.resume(held, now)
            self.exchange = exchange
        except IkeError as exc:
            self.refused(exc)
            self.fail(str(exc), exc.notify)
        self.proceed(now)  # run what waited for the window (§2.3: one request at a time)

    def _on_request(self, data: bytes, message: Message, remote: Address, local_port: int, now: float) -> None:
        exchange = message.header.exchange
        if isinstance(message.payloads[0] if message.payloads else None, SkfPayload):
            return self._on_request_fragment(data, message, remote, local_port, now)
        kind = self.responses.classify(message.header.message_id, data)
        if kind == "duplicate":  # RFC 7296 §2.1: the same request again gets the cached response
            return self.resend_response()
        if exchange == ExchangeType.IKE_SA_INIT and self.state is not IkeState.IDLE:
            return self.drop(IkeDrop.UNEXPECTED_IKE_SA_INIT)
        if kind == "invalid":
            return self.drop(IkeDrop.INVALID_MESSAGE_ID)
        if exchange != ExchangeType.IKE_SA_INIT:
            opened = self.open(data, message)
            if opened is None:
                return
            self._handle_request(opened, data, remote, local_port, now)
            return
        self._dispatch_request(data, message, now)

    def _on_request_fragment(self, data: bytes, message: Message, remote: Address, local_port: int,
                             now: float) -> None:
        """RFC 7383 §2.6: fragments of the request we expect are collected; a fragment of the request we
        answered last is a retransmission, and (once it verifies) its fragment 1 gets our response again."""
        message_id = message.header.message_id
        if message_id == self.responses.last_id:
            piece = self.open_fragment(data, message, response=False)
            self.reassembly.pop(False, None)
            if piece is not None and piece[0] == 1:
                self.resend_response()
            return None
        if message_id != self.responses.expected:
            return self.drop(IkeDrop.INVALID_MESSAGE_ID)
        piece = self.open_fragment(data, message, response=False)
        if piece is None or piece[1] is None:
            return None
        self.responses.classify(message_id, data)
        return self._handle_request(piece[1], data, remote, local_port, now)

    def _handle_request(self, opened: Message, data: bytes, remote: Address, local_port: int, now: float) -> None:
        self.heard(now)
        # RFC 7296 §2.11: answer where the request came from, on the port it arrived at.
        self.remote, self.local_port = remote, local_port
        self._dispatch_request(data, opened, now)

    def _dispatch_request(self, data: bytes, message: Message, now: float) -> None:
        exchange = message.header.exchange
        handler = _create_child_sa_handler(message) if exchange == ExchangeType.CREATE_CHILD_SA \
            else _REQUEST_HANDLERS.get(exchange)
        if handler is None:
            return self.drop(IkeDrop.UNSUPPORTED_EXCHANGE)
        try:
            handler(self, data, message, now)
        except IkeError as exc:
            self.refused(exc)
            if exc.notify is not None and self.crypto is not None:
                self.send_response(message, [NotifyPayload(exc.notify, data=exc.notify_data)])
            if exc.fatal:
                self.fail(str(exc), exc.notify)

    def _state_expired(self) -> None:
        state = self.state
        if state is IkeState.REKEYED:
            return self.close("replaced by a rekey; the peer never deleted it")
        if state is IkeState.INIT_DONE:
            return self.fail("IKE_AUTH did not arrive in time (half-open SA expired)")
        self.fail(f"no progress in state {state.value} before its deadline")

    def _internal_error(self, exc: Exception) -> None:
        """A bug, not the peer's doing: this SA is failed (the gateway and other SAs carry on)."""
        self.drop(IkeDrop.INTERNAL)
        try:
            self.fail(f"internal error: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - failing failed too: forget the SA all the same
            self.state = IkeState.CLOSED


def _expired(child: ChildSa, now: float) -> bool:
    """Past its hard lifetime and still in the data plane."""
    return child.announced and child.expire_at is not None and child.expire_at <= now


def _create_child_sa_handler(message: Message) -> Handler:
    """CREATE_CHILD_SA carries an IKE proposal for an IKE SA rekey (§1.3.2), else a Child SA (§1.3.1)."""
    sa = message.get(SaPayload)
    if sa is not None and sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
        return ike_rekey.on_request
    return child_create.on_request
