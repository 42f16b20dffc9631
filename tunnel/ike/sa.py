"""One IKE SA's state, sans I/O: SPIs, message windows, the SK envelope, its Child SAs, the events it
reports, and an explicit state with one transition table and a deadline for every state that is not
established. The exchanges (tasks/) change it only through this object; the engine that routes messages
to them and decides which request goes next is session.py, which builds on this class.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

from tunnel.errors import MalformedPacket
from tunnel.ike import fragments, keys
from tunnel.ike.child import ChildSa, ChildState, IllegalTransition, new_spi
from tunnel.ike.config import IkeConfig
from tunnel.ike.constants import IKE_PORT, NAT_T_PORT, ExchangeType, Flag
from tunnel.ike.drops import IkeDrop, IkeDrops
from tunnel.ike.errors import IkeError, IntegrityError, InvalidSyntax
from tunnel.ike.events import ChildSaDeleted, Event, IkeSaDeleted, IkeSaFailed
from tunnel.ike.message import (
    IkeHeader,
    Message,
    Payload,
    SkfPayload,
    encode_message,
    encode_sk_message,
    open_sk_message,
)
from tunnel.ike.proposal import IkeSuite
from tunnel.ike.sk import SkCipher, unpad
from tunnel.ike.window import RequestWindow, ResponseWindow

Address = tuple[str, int]  # (host, port)
Datagram = tuple[bytes, Address, int]  # (IKE message, remote address, local port to send from)

HALF_OPEN_TIMEOUT = 30.0  # a responder SA that never completes IKE_AUTH is forgotten after this
MAX_INIT_RETRIES = 3  # COOKIE / INVALID_KE round trips of one IKE_SA_INIT before giving up
DEADLINE_GRACE = 1.0  # a state's deadline falls this long after its request's own retransmissions end
TEMPORARY_FAILURE_RETRY = 10.0  # §2.25: wait before retrying after TEMPORARY_FAILURE (plus up to 100 %)
MIN_RETRY = 0.5  # ... but never sooner than this, and sooner than 10 s when the hard lifetime is near
NEW_CHILD_DELAY = 1.0  # after the last Child SA expired, a new one is asked for within this (randomised)


class IkeState(enum.Enum):
    IDLE = "idle"  # a responder's SA before the IKE_SA_INIT request was answered
    INIT_SENT = "init-sent"  # initiator: waiting for the IKE_SA_INIT response
    INIT_DONE = "init-done"  # responder: keys made, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"  # initiator: waiting for the IKE_AUTH response
    ESTABLISHED = "established"
    DELETING = "deleting"  # our Delete for it is out (§1.4.1)
    REKEYED = "rekeyed"  # replaced by a new IKE SA (§2.18); waiting for a Delete to end
    CLOSED = "closed"


_S = IkeState
# Every state change an IKE SA may make (anything else raises IllegalTransition). IDLE -> ESTABLISHED is
# an IKE SA born of a rekey (§2.18): keyed from the old SA, never from IDLE by a message.
TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    _S.IDLE: frozenset({_S.INIT_SENT, _S.INIT_DONE, _S.ESTABLISHED, _S.CLOSED}),
    _S.INIT_SENT: frozenset({_S.AUTH_SENT, _S.CLOSED}),
    _S.INIT_DONE: frozenset({_S.ESTABLISHED, _S.CLOSED}),
    _S.AUTH_SENT: frozenset({_S.ESTABLISHED, _S.CLOSED}),
    _S.ESTABLISHED: frozenset({_S.DELETING, _S.REKEYED, _S.CLOSED}),
    _S.DELETING: frozenset({_S.CLOSED}),
    _S.REKEYED: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


def state_timeout(state: IkeState, request_span: float) -> float | None:
    """How long an IKE SA may stay in a state that is not established. request_span: how long one
    request is retransmitted before the peer counts as gone (Backoff.span), which normally ends the
    state first; the deadline is the backstop for everything else (a message that moved us but left no
    request out, a peer that never sends the Delete it owes)."""
    if state in (_S.IDLE, _S.INIT_DONE):
        return HALF_OPEN_TIMEOUT
    if state is _S.INIT_SENT:  # the first try and each COOKIE / INVALID_KE retry restart the request
        return (MAX_INIT_RETRIES + 1) * request_span + DEADLINE_GRACE
    if state in (_S.AUTH_SENT, _S.DELETING, _S.REKEYED):
        return request_span + DEADLINE_GRACE
    return None


class Task(enum.Enum):
    """The kind of request of ours that is outstanding (window size 1, §2.3)."""

    IKE_SA_INIT = "ike_sa_init"
    IKE_AUTH = "ike_auth"
    CREATE_CHILD = "create_child"  # CREATE_CHILD_SA for a Child SA: a new one or a rekey (§1.3.1, §1.3.3)
    IKE_REKEY = "ike_rekey"
    CHILD_DELETE = "child_delete"
    IKE_DELETE = "ike_delete"
    DPD = "dpd"


class Exchange:
    """What a task keeps about its outstanding request, and how it takes the response (each task
    module subclasses this for its own request)."""

    kind: Task

    def on_response(self, sa: IkeSa, data: bytes, message: Message, now: float) -> None:
        raise NotImplementedError

    def on_abandoned(self, sa: IkeSa) -> None:
        """The IKE SA goes while this request is out (the peer deleted it): nothing to do, by default."""


@dataclass
class IkeSaCrypto:
    """The SK envelope and what IKE_AUTH and Child SA keys derive from (§2.14, §2.15, §2.17)."""

    suite: IkeSuite
    keys: keys.IkeKeys = field(repr=False)
    sk_in: SkCipher = field(repr=False)
    sk_out: SkCipher = field(repr=False)
    ni: bytes = field(repr=False)
    nr: bytes = field(repr=False)
    init_request: bytes = field(repr=False)  # RealMessage1 for AUTH (§2.15)
    init_response: bytes = field(repr=False)  # RealMessage2


class IkeSa:
    def __init__(
        self,
        config: IkeConfig,
        initiator: bool,
        remote: Address,
        random_bytes: Callable[[int], bytes],
        local_port: int = IKE_PORT,
        drops: IkeDrops | None = None,
        now: float | None = None,
    ) -> None:
        """now: when a responder's SA is made for a peer's first message, which starts its IDLE deadline."""
        self.config = config
        self.initiator = initiator
        self.remote = remote
        self.local_port = local_port
        self.random = random_bytes
        self.state = IkeState.IDLE
        self.state_deadline = None if now is None else now + HALF_OPEN_TIMEOUT  # see enter()
        self.spi_i = b""
        self.spi_r = bytes(8)
        self.requests = RequestWindow(config.backoff)
        self.responses = ResponseWindow()
        self.exchange: Exchange | None = None  # our outstanding request (see outstanding())
        self.request_type: int | None = None  # its exchange type: the response must carry the same
        self.crypto: IkeSaCrypto | None = None  # after IKE_SA_INIT
        self.children: list[ChildSa] = []  # more than one while rekeying, or one per data-plane worker
        self.owed_deletes: list[ChildSa] = []  # gone (hard lifetime) but the peer is still to be told
        self.started_at: float | None = None  # our IKE_SA_INIT request sent or the peer's received
        self.ike_rekey_at: float | None = None  # soft lifetime of this IKE SA (lifetime.py)
        self.ike_expire_at: float | None = None  # hard lifetime
        self.reauth_at: float | None = None  # re-authentication due (config.reauth_time); kept across rekeys
        self.reauth_requested = False  # ReauthDue emitted; the owner's new IKE SA is on its way
        # Our IKE rekey is due and not done yet (a refusal or collision sends it back for a retry): our
        # Child rekeys wait meanwhile, unless their hard lifetime nears (session.py: child_rekey_due).
        self.ike_rekey_pending = False
        self.new_child_at: float | None = None  # ask for a fresh Child SA then (lifetime.schedule_new_child)
        self.last_received: float | None = None  # last authenticated message (or ESP packet) from the peer
        self.dpd_rtt: float | None = None  # round-trip time of the last DPD check (§2.4)
        self.send_initial_contact = True  # N(INITIAL_CONTACT) in IKE_AUTH (§2.4); the dispatcher decides
        self.initial_contact_received = False  # the peer's IKE_AUTH carried it; read by the dispatcher
        self.spawned: list[Self] = []  # new IKE SAs made by a rekey, for the dispatcher to index
        self.quiet = False  # closing emits no IkeSaDeleted (a rekeyed or redundant IKE SA)
        self.delete_when_idle = False  # send our Delete for this SA once the window is free
        self.drops = drops if drops is not None else IkeDrops()
        # A responder's SA for a peer several tunnels may be (branches behind one NAT address, tunnels
        # whose peer is `any`): IKE_SA_INIT uses the first whose proposals match, IKE_AUTH the one whose
        # remote_id is the peer's IDi (tasks/ike_auth.identify). Empty once the tunnel is known.
        self.candidates: tuple[IkeConfig, ...] = ()
        self.peer_authorities: frozenset[bytes] = frozenset()  # CA key hashes of the peer's CERTREQ (§3.7)
        self.peer_chain: tuple[bytes, ...] = ()  # the certificates the peer authenticated with (DER)
        # Both sides sent IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383 §2.3): large encrypted
        # messages go as SKF fragments, and fragments from the peer are accepted.
        self.fragmentation = False
        self.reassembly: dict[bool, fragments.Reassembly] = {}  # by "is a response": one message each way
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()

    # -- state -----------------------------------------------------------------------------------------
    def enter(self, state: IkeState, now: float) -> None:
        """The one way the state changes: checked against TRANSITIONS, and the new state's deadline set."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"IKE SA {self.spi_i.hex()}: {self.state.value} -> {state.value}")
        self.state = state
        timeout = state_timeout(state, self.config.backoff.span)
        self.state_deadline = None if timeout is None else now + timeout

    @property
    def local_spi(self) -> bytes:
        """Our SPI of this IKE SA, chosen at random by us: what the dispatcher finds it by (RFC 7296 §2.6
        leaves the lookup to the implementation; a peer chooses only its own SPI, never ours)."""
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state is IkeState.ESTABLISHED

    def outstanding(self) -> Task | None:
        """The kind of our request in flight, if any."""
        return self.exchange.kind if self.exchange is not None and self.requests.busy else None

    # -- messages --------------------------------------------------------------------------------------
    def header(self, exchange: int, message_id: int, response: bool) -> IkeHeader:
        flags = (Flag.INITIATOR if self.initiator else 0) | (Flag.RESPONSE if response else 0)
        return IkeHeader(self.spi_i, self.spi_r, exchange, int(flags), message_id)

    def send_request(self, exchange: int, payloads: Sequence[Payload], now: float, state: Exchange,
                     encrypted: bool = True) -> bytes:
        message_id = self.requests.next_id
        packets = self._encode(self.header(exchange, message_id, False), payloads, encrypted)
        self.requests.send(message_id, packets, now)
        self.exchange, self.request_type = state, exchange
        for packet in packets:
            self._emit(packet)
        return packets[0]

    def resend_request(self, payloads: Sequence[Payload], now: float) -> bytes:
        """IKE_SA_INIT again with changed payloads (COOKIE, INVALID_KE_PAYLOAD): same message ID 0."""
        packet = encode_message(self.header(ExchangeType.IKE_SA_INIT, 0, False), payloads)
        self.requests.resend_same(packet, now)
        self._emit(packet)
        return packet

    def send_response(self, request: Message, payloads: Sequence[Payload], encrypted: bool = True) -> bytes:
        header = self.header(request.header.exchange, request.header.message_id, True)
        packets = self._encode(header, payloads, encrypted)
        self.responses.answered(request.header.message_id, packets)
        for packet in packets:
            self._emit(packet)
        return packets[0]

    def resend_response(self) -> None:
        """RFC 7296 §2.1: a retransmitted request gets the cached response again."""
        for packet in self.responses.last_response:
            self._emit(packet)

    def open(self, data: bytes, message: Message) -> Message | None:
        """The message with its SK payload decrypted, or None (counted) when it does not verify. Only
        IKE_SA_INIT is plaintext; any other exchange before its keys exist is forged (NO_KEYS)."""
        if self.crypto is None:
            self.drop(IkeDrop.NO_KEYS)
            return None
        try:
            return open_sk_message(data, message, self.crypto.sk_in.open)
        except IntegrityError:
            self.drop(IkeDrop.INTEGRITY)  # RFC 7296 §2.21.2: never answer a message that fails its ICV
        except MalformedPacket:
            self.drop(IkeDrop.MALFORMED)
        return None

    def open_fragment(self, data: bytes, message: Message, response: bool) -> tuple[int, Message | None] | None:
        """An SKF fragment (RFC 7383 §2.6) of the message with its header's ID, opened on its own: None
        (counted) when it is refused; else (its Fragment Number, the whole message once every fragment
        is here, else None). The caller has checked the Message ID is one we are waiting for."""
        skf = message.payloads[0]
        assert isinstance(skf, SkfPayload)
        if not self.fragmentation:
            self.drop(IkeDrop.FRAGMENT_UNEXPECTED)  # not negotiated: the peer must not send SKF
            return None
        if self.crypto is None:
            self.drop(IkeDrop.NO_KEYS)
            return None
        try:
            fragments.check(skf)
            inner = unpad(self.crypto.sk_in.open(data[:len(data) - len(skf.body)], skf.body))
        except IntegrityError:
            self.drop(IkeDrop.INTEGRITY)
            return None
        except (MalformedPacket, InvalidSyntax):
            self.drop(IkeDrop.BAD_FRAGMENT)
            return None
        message_id = message.header.message_id
        current = self.reassembly.get(response)
        if current is not None and current.message_id == message_id and skf.total < current.total:
            self.drop(IkeDrop.BAD_FRAGMENT)  # §2.6: fewer fragments than before: a stale retransmission
            return None
        if current is None or current.message_id != message_id or skf.total > current.total:
            current = self.reassembly[response] = fragments.Reassembly(message_id, skf.total)  # §2.6: start anew
        try:
            complete = current.add(skf.number, skf.first_inner, inner)
        except MalformedPacket:
            self.drop(IkeDrop.BAD_FRAGMENT)
            del self.reassembly[response]
            return None
        if not complete:
            return skf.number, None
        del self.reassembly[response]
        return skf.number, current.message(message.header)

    def use_nat_t_port(self) -> None:
        """From now on IKE (and ESP) use UDP 4500 with the non-ESP marker (RFC 3948 §2.2, RFC 7296 §2.23)."""
        if self.local_port != NAT_T_PORT:
            self.local_port = NAT_T_PORT
            self.remote = (self.remote[0], NAT_T_PORT)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """IKE messages to send, as (message, remote, local port); on port 4500 the transport puts the
        non-ESP marker in front (RFC 3948 §2.2)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def event(self, event: Event) -> None:
        self._events.append(event)

    def drop(self, reason: IkeDrop) -> None:
        self.drops.add(reason)

    def refused(self, error: IkeError) -> IkeError:
        """Count an error a peer's value caused under its own reason, if it has one (see IkeError.drop)."""
        if error.drop is not None:
            self.drops.add(error.drop)
        return error

    # -- ending --------------------------------------------------------------------------------------
    def fail(self, reason: str, notify: int | None = None) -> None:
        if self.state is not IkeState.CLOSED:
            self._close()
            self.event(IkeSaFailed(self.config.tunnel, reason, notify))

    def close(self, reason: str) -> None:
        if self.state is not IkeState.CLOSED:
            self._close()
            if not self.quiet:
                self.event(IkeSaDeleted(self.config.tunnel, reason))

    def _close(self) -> None:
        self.enter(IkeState.CLOSED, now=0.0)  # CLOSED has no deadline: the time does not matter
        self.requests.complete()
        self.drop_children()

    def abandon_request(self) -> None:
        """The SA goes with our request still out: let its task react (ike_rekey moves the Child SAs)."""
        if self.exchange is not None and self.requests.busy:
            self.exchange.on_abandoned(self)

    # -- lifetimes (§2.8) and liveness (§2.4) ------------------------------------------------------------
    # Each Child SA and the IKE SA have a soft lifetime (rekey) and a hard one (delete). The soft time is
    # shortened by a random fraction of up to rekey_jitter, drawn from the injected random source, so two
    # peers with the same configuration do not start rekeying in the same instant (§2.8.1 collisions
    # still work, they are just rarer). When each falls due is decided in session.py.
    def fraction(self) -> float:
        """A uniform number in [0, 1) from the injected random source."""
        return int.from_bytes(self.random(4), "big") / 2**32

    def soft_time(self, seconds: float) -> float:
        """The rekey time shortened by the jitter: seconds * (1 - rekey_jitter * u), u uniform in [0, 1)."""
        return seconds * (1.0 - self.config.rekey_jitter * self.fraction())

    def retry_at(self, now: float, expire_at: float | None = None) -> float:
        """When to try a refused rekey again (§2.25: MUST NOT retry immediately), randomised. With a hard
        expiry ahead, at most a quarter of the time left, so several tries fit before the SA goes."""
        delay = TEMPORARY_FAILURE_RETRY
        if expire_at is not None:
            delay = max(MIN_RETRY, min(delay, (expire_at - now) / 4))
        return now + delay * (1.0 + self.fraction())

    def start_lifetime(self, now: float) -> None:
        if self.reauth_at is None and self.config.reauth_time:  # from the authentication, not from a rekey
            self.reauth_at = now + self.soft_time(self.config.reauth_time)
        self.ike_rekey_at = now + self.soft_time(self.config.ike_rekey_time)
        self.ike_expire_at = now + self.config.ike_lifetime  # type: ignore[operator]  # set in __post_init__
        self.last_received = now

    def start_child_lifetime(self, child: ChildSa, now: float) -> None:
        child.installed_at = now
        child.rekey_at = now + self.soft_time(self.config.child_rekey_time)
        child.expire_at = now + self.config.child_lifetime  # type: ignore[operator]  # set in __post_init__

    def schedule_new_child(self, now: float, retry: bool = False) -> None:
        """Ask for a fresh Child SA soon, randomised so both peers rarely ask at once: the last one went
        without a successor (§2.25, hard expiry under loss), or a worker has none. retry: after a
        TEMPORARY_FAILURE, never at once (§2.25)."""
        if retry:
            self.new_child_at = now + NEW_CHILD_DELAY * (1.0 + self.fraction())
        elif self.new_child_at is None:
            self.new_child_at = now + NEW_CHILD_DELAY * self.fraction()

    def dpd_due(self) -> float | None:
        """§2.4: probe when nothing was heard from the peer for dpd_delay."""
        if self.last_received is None or self.config.dpd_delay <= 0:
            return None
        return self.last_received + self.config.dpd_delay

    def heard(self, now: float) -> None:
        """An authenticated message or ESP packet from the peer: liveness for DPD (§2.4)."""
        if self.last_received is not None:
            self.last_received = max(self.last_received, now)

    # -- Child SAs -----------------------------------------------------------------------------------
    @property
    def active_children(self) -> list[ChildSa]:
        return [c for c in self.children if c.active]

    @property
    def child(self) -> ChildSa | None:
        """The Child SA in use (the newest one not being replaced), or None."""
        active = self.active_children
        return active[-1] if active else None

    def new_child_spi(self, worker: int = 0) -> int:
        return new_spi(self.random, self.config.workers, worker)

    def worker_of(self, spi_in: int) -> int:
        return spi_in % self.config.workers

    def add_child(self, child: ChildSa, announce: bool = True) -> None:
        child.announced = announce
        self.children.append(child)

    def remove_child(self, child: ChildSa) -> None:
        if child in self.children:
            self.children.remove(child)
        self.unannounce(child)

    def unannounce(self, child: ChildSa) -> None:
        """The data plane forgets the Child SA (ChildSaDeleted), whether or not IKE still tracks it."""
        if child.announced:
            child.announced = False
            self.event(ChildSaDeleted(self.config.tunnel, child.spi_in, child.spi_out))

    def retiring(self) -> ChildSa | None:
        """A Child SA ours to delete next, if any."""
        for child in self.children:
            if child.state is ChildState.RETIRING:
                return child
        return self.owed_deletes[0] if self.owed_deletes else None

    def drop_children(self) -> None:
        """Forget every Child SA; the gateway hears ChildSaDeleted for those it was told about."""
        self.owed_deletes = []
        children, self.children = self.children, []
        for child in children:
            self.unannounce(child)

    def spawn(self, initiator: bool, spi_i: bytes, spi_r: bytes, crypto: IkeSaCrypto, now: float) -> Self:
        """A new IKE SA keyed from this one (§2.18): same config and peer, fresh message IDs. It is of
        this object's own class (the session engine), stays quiet until it wins, and is indexed by the
        dispatcher through `spawned`."""
        new = type(self)(self.config, initiator, self.remote, self.random, self.local_port, self.drops)
        new.spi_i, new.spi_r, new.crypto = spi_i, spi_r, crypto
        new.enter(IkeState.ESTABLISHED, now)
        new.send_initial_contact = False
        new.quiet = True
        new.peer_authorities, new.peer_chain = self.peer_authorities, self.peer_chain  # same authentication
        new.fragmentation = self.fragmentation  # negotiated once per IKE SA and its rekeyed successors
        new.reauth_at, new.reauth_requested = self.reauth_at, self.reauth_requested  # a rekey is no re-auth
        self.spawned.append(new)
        return new

    # -- internals ----------------------------------------------------------------------------------------
    def _encode(self, header: IkeHeader, payloads: Sequence[Payload], encrypted: bool) -> list[bytes]:
        """The message, or its SKF fragments when both sides agreed to fragment and it would not fit
        one packet of the configured fragment size (RFC 7383 §2.5)."""
        if not encrypted:
            return [encode_message(header, payloads)]
        assert self.crypto is not None, "SK payloads need the keys of IKE_SA_INIT"
        packet = encode_sk_message(header, payloads, self.crypto.sk_out.seal)
        limit = fragments.max_message(self.config.fragment_size) if self.config.fragment_size else 0
        if not self.fragmentation or not limit or len(packet) <= limit:
            return [packet]
        return fragments.encode_fragments(header, payloads, self.crypto.sk_out.seal, limit)

    def _emit(self, packet: bytes) -> None:
        self._out.append((packet, self.remote, self.local_port))
