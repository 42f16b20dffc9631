"""One IKE SA, sans I/O (after aioquic's QuicConnection): datagrams and `now` in, datagrams, events and
one timer out. The exchanges themselves live in ike_init.py, ike_auth.py, informational.py,
child_rekey.py, ike_rekey.py and dpd.py; lifetime.py owns the SA lifetimes and DPD schedule. This
module owns the transport rules shared by all of them: SPIs, message IDs, retransmission, the SK
envelope, the move from port 500 to 4500 (RFC 3948 / RFC 7296 §2.23) and the event queue.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence

from tunnel.errors import MalformedPacket
from tunnel.ike import child_rekey, ike_auth, ike_init, ike_rekey, informational, lifetime
from tunnel.ike.config import IkeConfig
from tunnel.ike.constants import IKE_PORT, NAT_T_PORT, NON_ESP_MARKER, ExchangeType, Flag, ProtocolId
from tunnel.ike.errors import IkeError, IntegrityError
from tunnel.ike.events import ChildSaDeleted, Event, IkeSaDeleted, IkeSaFailed
from tunnel.ike.message import (
    IkeHeader, Message, NotifyPayload, Payload, SaPayload, encode_message, encode_sk_message,
)
from tunnel.ike.message import open_sk_message
from tunnel.ike.window import RequestWindow, ResponseWindow

Address = tuple  # (host, port)
Datagram = tuple[bytes, Address, int]  # (UDP payload, remote address, local port to send from)
HALF_OPEN_TIMEOUT = 30.0  # a responder SA that never completes IKE_AUTH is forgotten after this


class State(enum.Enum):
    IDLE = "idle"
    INIT_SENT = "init-sent"  # initiator: waiting for the IKE_SA_INIT response
    INIT_DONE = "init-done"  # responder: keys made, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"
    ESTABLISHED = "established"
    DELETING = "deleting"
    REKEYED = "rekeyed"  # replaced by a new IKE SA (§2.18); waiting for the Delete of this one
    CLOSED = "closed"


class IkeSession:
    def __init__(
        self,
        config: IkeConfig,
        initiator: bool,
        remote: Address,
        random_bytes: Callable[[int], bytes],
        local_port: int = IKE_PORT,
    ) -> None:
        self.config = config
        self.initiator = initiator
        self.remote = remote
        self.local_port = local_port
        self.random = random_bytes
        self.state = State.IDLE
        self.spi_i = b""
        self.spi_r = bytes(8)
        self.requests = RequestWindow(config.backoff)
        self.responses = ResponseWindow()
        self.exchange = None  # per-exchange state of the request we have outstanding
        self.crypto = None  # set after IKE_SA_INIT: tunnel.ike.ike_init.IkeSaCrypto
        self.children: list = []  # tunnel.ike.ike_auth.ChildState; more than one only while rekeying
        self.half_open_deadline: float | None = None
        self.started_at: float | None = None  # our IKE_SA_INIT request sent or the peer's received
        self.ike_rekey_at: float | None = None  # soft lifetime of this IKE SA (lifetime.py)
        self.ike_expire_at: float | None = None  # hard lifetime
        self.new_child_at: float | None = None  # ask for a fresh Child SA then (lifetime.schedule_new_child)
        self.last_received: float | None = None  # last authenticated message (or ESP packet) from the peer
        self.dpd_rtt: float | None = None  # round-trip time of the last DPD check (§2.4)
        self.send_initial_contact = True  # N(INITIAL_CONTACT) in IKE_AUTH (§2.4); the dispatcher decides
        self.initial_contact_received = False  # the peer's IKE_AUTH carried it; read by the dispatcher
        self.spawned: list[IkeSession] = []  # new IKE SAs made by a rekey, for the dispatcher to index
        self.quiet = False  # closing emits no IkeSaDeleted (a rekeyed or redundant IKE SA)
        self.delete_when_idle = False  # delete(when_idle=True) waits for our outstanding request (lifetime.py)
        self.drops: dict[str, int] = {}
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()

    # -- public API ----------------------------------------------------------------------------------
    def initiate(self, now: float) -> None:
        if not self.initiator or self.state is not State.IDLE:
            raise RuntimeError("initiate() is for a fresh initiator session")
        self.spi_i = self.random(8)
        self.started_at = now
        ike_init.start(self, now)

    def receive_datagram(self, data: bytes, remote: Address, local_port: int, now: float) -> None:
        """One IKE message (without the non-ESP marker) that arrived from `remote` on `local_port`."""
        if self.state is State.CLOSED:
            return self.drop("closed")
        if self.started_at is None:
            self.started_at = now
        try:
            message = ike_init.parse(data)
        except MalformedPacket:
            return self.drop("malformed")
        header = message.header
        if header.is_response:
            self._on_response(data, message, remote, local_port, now)
        else:
            self._on_request(data, message, remote, local_port, now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [d for d in (self.requests.deadline, self.half_open_deadline) if d is not None]
        deadlines += lifetime.deadlines(self)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self.half_open_deadline is not None and now >= self.half_open_deadline:
            return self.fail("IKE_AUTH did not arrive in time (half-open SA expired)")
        try:
            packet = self.requests.on_timer(now)
        except TimeoutError as exc:
            dead = " (dead peer)" if self.ike_expire_at is not None else ""
            return self.fail(f"peer {self.remote[0]} does not answer{dead}: {exc}")
        if packet is not None:
            self._emit(packet)
        lifetime.on_timer(self, now)

    def rekey_child(self, now: float) -> None:
        """Rekey the Child SA now, or as soon as the outstanding request completes (e.g. when the data
        plane's byte, packet or sequence-number limits approach)."""
        for child in self.active_children:
            child.rekey_at = now
        lifetime.on_timer(self, now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA now, or as soon as the outstanding request completes (§1.3.2)."""
        if self.ike_rekey_at is not None:
            self.ike_rekey_at = now
            lifetime.on_timer(self, now)

    def note_esp_received(self, now: float) -> None:
        """An authenticated ESP packet of one of our Child SAs arrived: liveness for DPD (§2.4)."""
        if self.last_received is not None:
            self.last_received = max(self.last_received, now)

    @property
    def child(self):  # noqa: ANN201 - ike_auth.ChildState | None
        """The Child SA in use (the newest one not being replaced), or None."""
        active = self.active_children
        return active[-1] if active else None

    @property
    def active_children(self) -> list:
        return [c for c in self.children if c.state in ("installed", "rekeying")]

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def delete(self, now: float, when_idle: bool = False) -> None:
        """Tell the peer the IKE SA (and its Child SAs) is going away (RFC 7296 §1.4.1). With a request of
        ours outstanding, the Delete cannot go out yet (§2.3: one at a time): when_idle sends it once that
        exchange ends; otherwise the SA is closed here without telling the peer."""
        if self.state is State.ESTABLISHED and not self.requests.busy:
            informational.send_delete_ike(self, now)
        elif when_idle and self.state is State.ESTABLISHED:
            self.delete_when_idle = True
        else:
            self.close("deleted locally")

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    # -- used by the exchange modules -----------------------------------------------------------------
    def header(self, exchange: int, message_id: int, response: bool) -> IkeHeader:
        flags = (Flag.INITIATOR if self.initiator else 0) | (Flag.RESPONSE if response else 0)
        return IkeHeader(self.spi_i, self.spi_r, exchange, int(flags), message_id)

    def send_request(self, exchange: int, payloads: Sequence[Payload], now: float, encrypted: bool = True,
                     exchange_state: object = None) -> bytes:
        message_id = self.requests.next_id
        packet = self._encode(self.header(exchange, message_id, False), payloads, encrypted)
        self.requests.send(message_id, packet, now)
        self.exchange = exchange_state
        self._emit(packet)
        return packet

    def resend_request(self, payloads: Sequence[Payload], now: float) -> bytes:
        """IKE_SA_INIT again with changed payloads (COOKIE, INVALID_KE_PAYLOAD): same message ID 0."""
        packet = encode_message(self.header(ExchangeType.IKE_SA_INIT, 0, False), payloads)
        self.requests.resend_same(packet, now)
        self._emit(packet)
        return packet

    def send_response(self, request: Message, payloads: Sequence[Payload], encrypted: bool = True) -> bytes:
        header = self.header(request.header.exchange, request.header.message_id, True)
        packet = self._encode(header, payloads, encrypted)
        self.responses.answered(request.header.message_id, [packet])
        self._emit(packet)
        return packet

    def use_nat_t_port(self) -> None:
        """From now on IKE (and ESP) use UDP 4500 with the non-ESP marker (RFC 3948 §2.2, RFC 7296 §2.23)."""
        if self.local_port != NAT_T_PORT:
            self.local_port = NAT_T_PORT
            self.remote = (self.remote[0], NAT_T_PORT)

    def event(self, event: Event) -> None:
        self._events.append(event)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def fail(self, reason: str, notify: int | None = None) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.requests.complete()
            self.half_open_deadline = None
            self.drop_children()
            self.event(IkeSaFailed(self.config.tunnel, reason, notify))

    def close(self, reason: str) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.requests.complete()
            self.drop_children()
            if not self.quiet:
                self.event(IkeSaDeleted(self.config.tunnel, reason))

    def drop_children(self) -> None:
        """Forget every Child SA; the gateway hears ChildSaDeleted for those it was told about."""
        children, self.children = self.children, []
        for child in children:
            self.remove_child(child, keep=True)

    def add_child(self, child, now: float, announce: bool = True) -> None:  # noqa: ANN001 - ChildState
        lifetime.start_child(self, child, now)
        child.announced = announce
        self.children.append(child)

    def remove_child(self, child, keep: bool = False) -> None:  # noqa: ANN001 - ChildState
        if not keep and child in self.children:
            self.children.remove(child)
        if child.announced:
            child.announced = False
            self.event(ChildSaDeleted(self.config.tunnel, child.spi_in, child.spi_out))

    # -- internals ----------------------------------------------------------------------------------------
    def _encode(self, header: IkeHeader, payloads: Sequence[Payload], encrypted: bool) -> bytes:
        if encrypted:
            return encode_sk_message(header, payloads, self.crypto.sk_out.seal)
        return encode_message(header, payloads)

    def _emit(self, packet: bytes) -> None:
        data = NON_ESP_MARKER + packet if self.local_port == NAT_T_PORT else packet
        self._out.append((data, self.remote, self.local_port))

    def _open(self, data: bytes, message: Message) -> Message | None:
        if self.crypto is None:
            return message  # plaintext exchange (IKE_SA_INIT)
        try:
            return open_sk_message(data, message, self.crypto.sk_in.open)
        except IntegrityError:
            self.drop("integrity")  # RFC 7296 §2.21.2: never answer a message that fails its ICV
        except MalformedPacket:
            self.drop("malformed")
        return None

    def _on_response(self, data: bytes, message: Message, remote: Address, local_port: int, now: float) -> None:
        if not self.requests.matches(message.header.message_id):
            return self.drop("unexpected_response")
        if message.header.exchange != ExchangeType.IKE_SA_INIT or self.state is not State.INIT_SENT:
            opened = self._open(data, message)
            if opened is None:
                return
            message = opened
            self.last_received = now if self.last_received is not None else None
            if local_port == NAT_T_PORT == self.local_port:
                self.remote = remote  # RFC 7296 §2.23: follow the peer's NAT mapping (authenticated)
        self.requests.complete()
        handler = getattr(self.exchange, "on_response", None)  # the newer exchanges carry their own
        if handler is None:
            handler = {
                ExchangeType.IKE_SA_INIT: ike_init.on_response,
                ExchangeType.IKE_AUTH: ike_auth.on_response,
                ExchangeType.INFORMATIONAL: informational.on_response,
            }.get(message.header.exchange)
        if handler is None:
            return self.drop("unsupported_exchange")
        try:
            handler(self, data, message, now)
        except IkeError as exc:
            self.fail(str(exc), exc.notify)
        lifetime.on_timer(self, now)  # run what waited for the window (§2.3: one request at a time)

    def _on_request(self, data: bytes, message: Message, remote: Address, local_port: int, now: float) -> None:
        kind = self.responses.classify(message.header.message_id)
        if kind == "duplicate":  # RFC 7296 §2.1: retransmit the cached response
            for packet in self.responses.last_response:
                self._emit(packet)
            return
        if kind == "invalid":
            return self.drop("invalid_message_id")
        exchange = message.header.exchange
        if exchange != ExchangeType.IKE_SA_INIT:
            opened = self._open(data, message)
            if opened is None:
                return
            message = opened
            self.last_received = now if self.last_received is not None else None
            # RFC 7296 §2.11: answer where the request came from, on the port it arrived at.
            self.remote, self.local_port = remote, local_port
        handler = {
            ExchangeType.IKE_SA_INIT: ike_init.on_request,
            ExchangeType.IKE_AUTH: ike_auth.on_request,
            ExchangeType.INFORMATIONAL: informational.on_request,
            ExchangeType.CREATE_CHILD_SA: _create_child_sa_handler(message),
        }.get(exchange)
        if handler is None:
            return self.drop("unsupported_exchange")
        try:
            handler(self, data, message, now)
        except IkeError as exc:
            if exc.notify is not None and self.crypto is not None:
                self.send_response(message, [NotifyPayload(exc.notify, data=exc.notify_data)])
            if exc.fatal:
                self.fail(str(exc), exc.notify)


def _create_child_sa_handler(message: Message) -> Callable:
    """CREATE_CHILD_SA carries an IKE proposal for an IKE SA rekey (§1.3.2), else a Child SA (§1.3.1)."""
    sa = message.get(SaPayload)
    if sa is not None and sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
        return ike_rekey.on_request
    return child_rekey.on_request
