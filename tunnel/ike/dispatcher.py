"""All IKE SAs of one gateway behind one datagram interface: demultiplexing by our own SPI, responder
SAs for new peers (made only for an IKE_SA_INIT request that parsed and was answered; a peer several
tunnels may be is told apart by its IKE identity at IKE_AUTH), DoS cookies when
half-open SAs pile up (RFC 7296 §2.6) and a bounded half-open table, IKE SAs born of a rekey (§2.18),
INITIAL_CONTACT (§2.4), and counted drops."""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

from tunnel.errors import MalformedPacket
from tunnel.ike.config import IkeConfig
from tunnel.ike.constants import IKE_PORT, ExchangeType, NotifyType
from tunnel.ike.cookie import CookieJar
from tunnel.ike.drops import IkeDrop, IkeDrops
from tunnel.ike.events import Event, IkeSaEstablished
from tunnel.ike.message import IkeHeader, NoncePayload, NotifyPayload, encode_message, parse_header, parse_message
from tunnel.ike.sa import Address, Datagram, IkeState
from tunnel.ike.session import IkeSession

DEFAULT_COOKIE_THRESHOLD = 20
MAX_HALF_OPEN = 2048  # responder IKE SAs waiting for IKE_AUTH; past it, the oldest is dropped
COOKIE_ROTATION = 120.0  # seconds between cookie secrets; a cookie is good for one to two of them (§2.6)


class IkeDispatcher:
    def __init__(
        self,
        configs: Iterable[tuple[IkeConfig, str | None]],
        random_bytes: Callable[[int], bytes],
        cookie_threshold: int = DEFAULT_COOKIE_THRESHOLD,
    ) -> None:
        """configs: (IkeConfig, peer address) per tunnel, the address None for a peer that may come from
        anywhere (`any`, or a DNS name). A new IKE SA from an address is for the tunnels with that
        address and those from anywhere; when that is more than one, its IDi says which (RFC 7296 §2.15,
        as strongSwan picks a peer config by identity)."""
        self.set_configs(configs)
        self._random = random_bytes
        self._cookies = CookieJar(random_bytes)
        self.cookie_threshold = cookie_threshold
        self.sessions: dict[bytes, IkeSession] = {}  # by our SPI (IkeSa.local_spi)
        # Responder SAs between our IKE_SA_INIT answer and IKE_AUTH, oldest first, by (peer host, the
        # initiator's SPI): how a retransmitted IKE_SA_INIT (responder SPI zero) finds its answer.
        self._half_open: dict[tuple[str, bytes], IkeSession] = {}
        self._half_open_key: dict[bytes, tuple[str, bytes]] = {}  # our SPI -> its key above
        self._cookie_rotate_at: float | None = None
        self.drops = IkeDrops()  # messages no tunnel can be blamed for (unknown SPI or peer, cookies)
        self.tunnel_drops: dict[str, IkeDrops] = {}  # each tunnel's, shared by its IKE SAs
        self._contacted: set[str] = set()  # tunnels that had an IKE SA since start: no more INITIAL_CONTACT
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()
        # IKE SAs of tunnels a reload removed or replaced: their Delete is out (and retransmitted until
        # answered), but the gateway hears nothing more of them and sessions_for() no longer lists them.
        self._retired: set[bytes] = set()
        # Every IKE SA's next deadline in a heap, so a thousand tunnels cost a timer look-up O(log n), not
        # a walk over every SA after each message. Lazy: _collect pushes an SA's deadline whenever it may
        # have come earlier; an entry whose SA has an earlier one queued, or has closed, is skipped; an SA
        # whose deadline moved later wakes early once and is queued again (handle_timer).
        # Each tunnel's IKE SAs by our SPI (sessions_for without a walk over every SA); an SA is indexed
        # under its tunnel once it has one (a candidate SA names its tunnel at IKE_AUTH).
        self._by_tunnel: dict[str, dict[bytes, IkeSession]] = {}
        self._tunnel_of: dict[bytes, str] = {}
        self._timers: list[tuple[float, int, IkeSession]] = []
        self._queued: dict[int, float] = {}  # id(session) -> the deadline its live heap entry has
        self._timer_order = itertools.count()

    def set_configs(self, configs: Iterable[tuple[IkeConfig, str | None]]) -> None:
        """The tunnels new IKE SAs are made for (a reload); IKE SAs that exist keep the config they have."""
        self._configs = {config.tunnel: (config, peer) for config, peer in configs}
        self._by_peer: dict[str, list[IkeConfig]] = {}
        self._anywhere: list[IkeConfig] = []
        for config, peer in self._configs.values():
            if peer is None:
                self._anywhere.append(config)
            else:
                self._by_peer.setdefault(peer, []).append(config)

    def configs(self) -> list[tuple[IkeConfig, str | None]]:
        """The tunnels' configurations new IKE SAs are made with (and their peer addresses)."""
        return list(self._configs.values())

    def candidates(self, host: str) -> list[IkeConfig]:
        """The tunnels a new IKE SA from this address may be for: those with this peer address first."""
        return self._by_peer.get(host, []) + self._anywhere

    # -- commands -------------------------------------------------------------------------------------
    def initiate(self, tunnel: str, now: float, port: int = IKE_PORT, address: str | None = None,
                 initial_contact: bool | None = None) -> IkeSession:
        """address: where the peer is now (a DNS name just resolved); by default its configured address.
        initial_contact: False for a re-authentication, whose old IKE SA the peer must keep meanwhile;
        by default only the tunnel's first IKE SA since we started carries it."""
        config, peer = self._configs[tunnel]
        peer = address or peer
        if peer is None:
            raise ValueError(f"tunnel {tunnel}: no address to initiate to")
        session = IkeSession(config, True, (peer, port), self._random, local_port=port,
                             drops=self.drops_for(tunnel))
        session.send_initial_contact = tunnel not in self._contacted if initial_contact is None else initial_contact
        session.initiate(now)
        if session.spi_i in self.sessions:  # 2**-64; never merged with another SA
            session.fail("our random IKE SPI is in use (try again)")
            session.drop(IkeDrop.SPI_COLLISION)
        else:
            self.sessions[session.spi_i] = session
        self._collect(session, now)
        return session

    def drops_for(self, tunnel: str) -> IkeDrops:
        """The tunnel's IKE drop counters (kept across its IKE SAs and across reloads)."""
        return self.tunnel_drops.setdefault(tunnel, IkeDrops())

    def delete_all(self, now: float) -> None:
        for session in list(self.sessions.values()):
            session.delete(now)
            self._collect(session, now)

    def forget_all(self, reason: str, now: float) -> None:
        """Close every IKE SA without a word to the peer (the gateway became the standby of a pair: the
        other one holds the address and the peers now), and let the next IKE SA of each tunnel carry
        INITIAL_CONTACT again, as after a restart (§2.4)."""
        self._contacted.clear()
        for session in list(self.sessions.values()):
            session.close(reason)
            self._collect(session, now)
        self._out.clear()  # close() sends nothing; nothing queued before it may leave either

    def adopt(self, session: IkeSession, now: float) -> bool:
        """An established IKE SA taken over from the other gateway of an HA pair (handover.restore): found
        by its SPI from now on, its timers queued; it counts as the tunnel's contact (no INITIAL_CONTACT
        follows). False if its SPI is in use here (then it is not adopted)."""
        if session.local_spi in self.sessions:
            return False
        self.sessions[session.local_spi] = session
        self._contacted.add(session.config.tunnel)
        self._collect(session, now)
        return True

    def forget_contacts(self) -> None:
        """The next IKE SA of each tunnel carries INITIAL_CONTACT (a standby taking over: the peers still
        hold SAs with the gateway that died, under the same identity)."""
        self._contacted.clear()

    def delete_sessions(self, sessions: Iterable[IkeSession], now: float) -> None:
        """Delete these IKE SAs at the peer (after an exchange of theirs in progress, if any)."""
        for session in sessions:
            session.delete(now, when_idle=True)
            self._collect(session, now)

    def reschedule(self, sessions: Iterable[IkeSession], now: float) -> None:
        """These IKE SAs' deadlines were changed from outside (a re-authentication to retry): queue them."""
        for session in sessions:
            self._collect(session, now)

    def delete_tunnel(self, tunnel: str, now: float) -> None:
        for session in self.sessions_for(tunnel):
            session.delete(now)
            self._collect(session, now)

    def retire_tunnel(self, tunnel: str, now: float) -> None:
        """Delete the tunnel's IKE SAs at the peer (after an exchange of ours in progress, if any) and
        stop reporting on them: a reload removed or replaced the tunnel. A replacement's first IKE SA
        carries INITIAL_CONTACT again, so the peer also drops what it may still hold of the old ones."""
        self._contacted.discard(tunnel)
        for session in self.sessions_for(tunnel):
            self._retired.add(session.local_spi)
            session.delete(now, when_idle=True)
            self._collect(session, now)

    def sessions_for(self, tunnel: str) -> list[IkeSession]:
        # list(): one step under the GIL, so the metrics thread may call this while the loop adds sessions
        return [s for s in list(self._by_tunnel.get(tunnel, {}).values()) if s.local_spi not in self._retired]

    def _index(self, session: IkeSession) -> None:
        """Keep _by_tunnel in step with `sessions` and with the SA's tunnel (which may have just been named)."""
        spi = session.local_spi
        name = session.config.tunnel if self.sessions.get(spi) is session else None
        old = self._tunnel_of.get(spi)
        owned = self._by_tunnel.get(old, {}) if old is not None else {}
        if old is not None and owned.get(spi) is not session:
            return  # the entry under this SPI is another SA's (this one lost an SPI collision): not ours
        if old == name:
            return
        if old is not None:
            del owned[spi]
            if not owned:
                del self._by_tunnel[old]
            del self._tunnel_of[spi]
        if name is not None:
            self._by_tunnel.setdefault(name, {})[spi] = session
            self._tunnel_of[spi] = name

    def find(self, spi_i: bytes, spi_r: bytes) -> IkeSession | None:
        """The IKE SA with these SPIs, if any: indexed by our SPI, which is one of the two."""
        for spi in (spi_i, spi_r):
            session = self.sessions.get(spi)
            if session is not None and session.spi_i == spi_i and session.spi_r == spi_r:
                return session
        return None

    def rekey_child(self, tunnel: str, now: float) -> None:
        """Rekey the tunnel's Child SA soon (the gateway's byte/packet/sequence-number limits approach)."""
        for session in self._owners(tunnel):
            session.rekey_child(now)
            self._collect(session, now)

    def rekey_ike(self, tunnel: str, now: float) -> None:
        for session in self._owners(tunnel):
            session.rekey_ike(now)
            self._collect(session, now)

    def note_esp_received(self, tunnel: str, now: float) -> None:
        """Inbound ESP for the tunnel authenticated: liveness for dead-peer detection (RFC 7296 §2.4). It
        only moves the DPD deadline later, so the timer heap needs no new entry (the old one wakes the
        SA early once, and it queues its real deadline then)."""
        for session in self._owners(tunnel):
            session.note_esp_received(now)

    def _owners(self, tunnel: str) -> list[IkeSession]:
        """The tunnel's established IKE SAs that hold Child SAs."""
        return [s for s in self.sessions_for(tunnel) if s.established and s.children]

    def rotate_cookie_secret(self) -> None:
        self._cookies.rotate()

    # -- sans-I/O interface ---------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, remote: Address, local_port: int, now: float) -> None:
        try:
            header = parse_header(data)
        except MalformedPacket:
            return self._drop(IkeDrop.MALFORMED)
        self._rotate_cookies(now)
        if header.is_initiator and header.spi_r == bytes(8):  # an IKE_SA_INIT request (or garbage)
            return self._init_request(data, header, remote, local_port, now)
        session = self.sessions.get(header.spi_r if header.is_initiator else header.spi_i)
        if session is None:
            return self._drop(IkeDrop.UNKNOWN_SPI)
        session.receive_datagram(data, remote, local_port, now)
        self._collect(session, now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers and self._queued.get(id(timers[0][2])) != timers[0][0]:
            heapq.heappop(timers)  # superseded by an earlier entry of its SA, or already served
        found = [t for t in (timers[0][0] if timers else None, self._cookie_rotate_at) if t is not None]
        return min(found) if found else None

    def handle_timer(self, now: float) -> None:
        self._rotate_cookies(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, session = heapq.heappop(timers)
            if self._queued.get(id(session)) != deadline:
                continue
            del self._queued[id(session)]
            timer = session.get_timer()
            if timer is not None and timer <= now:
                session.handle_timer(now)
            self._collect(session, now)  # queues its next deadline

    def _schedule(self, session: IkeSession) -> None:
        """Queue the SA's next deadline unless an entry at or before it is queued already."""
        deadline = session.get_timer()
        if deadline is None or self.sessions.get(session.local_spi) is not session:
            return
        queued = self._queued.get(id(session))
        if queued is not None and queued <= deadline:
            return
        self._queued[id(session)] = deadline
        heapq.heappush(self._timers, (deadline, next(self._timer_order), session))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def half_open(self) -> int:
        """Responder IKE SAs not authenticated yet: all the state an unauthenticated peer can make us keep."""
        return len(self._half_open)

    # -- internals ----------------------------------------------------------------------------------------
    def _init_request(self, data: bytes, header: IkeHeader, remote: Address, local_port: int, now: float) -> None:
        """An IKE_SA_INIT request: a retransmission gets the answer we gave (§2.1); a new one from a
        configured peer gets a responder SA, which is kept only if the request parsed and was answered
        (cookies first when half-open SAs pile up, §2.6)."""
        if header.exchange != ExchangeType.IKE_SA_INIT or header.message_id != 0:
            return self._drop(IkeDrop.UNKNOWN_SPI)
        mine = self.sessions.get(header.spi_i)
        if mine is not None and mine.initiator:  # our own request reflected back at us
            return self._drop(IkeDrop.UNEXPECTED_IKE_SA_INIT)
        known = self._half_open.get((remote[0], header.spi_i))
        if known is not None:
            known.receive_datagram(data, remote, local_port, now)  # the same request: the cached answer
            return self._collect(known, now)
        candidates = self.candidates(remote[0])
        if not candidates:
            return self._drop(IkeDrop.UNKNOWN_PEER)
        if self.half_open >= self.cookie_threshold and not self._cookie_ok(data, header, remote, local_port):
            return None
        # One candidate: the tunnel is known (its IDi must be its remote_id). Several: the SA belongs to no
        # tunnel (its name "", its refusals nobody's) until IKE_AUTH names one (and _collect gives the SA
        # that tunnel's counters).
        config = candidates[0] if len(candidates) == 1 else replace(candidates[0], tunnel="")
        drops = self.drops_for(config.tunnel) if len(candidates) == 1 else self.drops
        session = IkeSession(config, False, remote, self._random, local_port=local_port, drops=drops, now=now)
        if len(candidates) > 1:
            session.candidates = tuple(candidates)
        session.spi_i = header.spi_i
        session.receive_datagram(data, remote, local_port, now)
        if session.state is IkeState.INIT_DONE:
            if session.spi_r in self.sessions:  # 2**-64; never merged with another SA
                session.fail("our random IKE SPI is in use (the initiator tries again)")
                session.drop(IkeDrop.SPI_COLLISION)
            else:
                self._keep_half_open(session, remote[0], now)
        self._collect(session, now)  # its answer goes out either way (a refusal keeps no state)

    def _keep_half_open(self, session: IkeSession, host: str, now: float) -> None:
        while len(self._half_open) >= MAX_HALF_OPEN:  # the oldest goes first
            oldest = next(iter(self._half_open.values()))
            oldest.drop(IkeDrop.HALF_OPEN_EVICTED)
            oldest.fail("half-open IKE SA evicted: too many waiting for IKE_AUTH")
            self._collect(oldest, now)
        self._half_open[(host, session.spi_i)] = session
        self._half_open_key[session.spi_r] = (host, session.spi_i)
        self.sessions[session.spi_r] = session

    def _rotate_cookies(self, now: float) -> None:
        """A new cookie secret every COOKIE_ROTATION seconds (§2.6: the previous one stays valid)."""
        if self._cookie_rotate_at is None:
            self._cookie_rotate_at = now + COOKIE_ROTATION
        elif now >= self._cookie_rotate_at:
            self._cookies.rotate()
            self._cookie_rotate_at = now + COOKIE_ROTATION

    def _cookie_ok(self, data: bytes, header: IkeHeader, remote: Address, local_port: int) -> bool:
        """RFC 7296 §2.6: without a valid cookie, answer with one and keep no state."""
        try:
            message = parse_message(data)
        except MalformedPacket:
            self._drop(IkeDrop.MALFORMED)
            return False
        nonce = message.get(NoncePayload)
        if nonce is None:
            self._drop(IkeDrop.MALFORMED)
            return False
        address = ipaddress.ip_address(remote[0]).packed
        offered = message.notify(NotifyType.COOKIE)
        if offered is not None and self._cookies.check(offered.data, nonce.data, address, header.spi_i):
            return True
        self._drop(IkeDrop.COOKIE_REQUIRED if offered is None else IkeDrop.BAD_COOKIE)
        cookie = self._cookies.make(nonce.data, address, header.spi_i)
        reply = encode_message(
            IkeHeader(header.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0x20, 0),
            [NotifyPayload(NotifyType.COOKIE, data=cookie)],
        )
        self._out.append((reply, remote, local_port))
        return False

    def _collect(self, session: IkeSession, now: float) -> None:
        if session.drops is self.drops and session.config.tunnel and not session.candidates:
            session.drops = self.drops_for(session.config.tunnel)  # identified at IKE_AUTH
        if session.initial_contact_received:
            session.initial_contact_received = False
            self._initial_contact(session, now)
        self._out.extend(session.datagrams_to_send(0.0))
        retired = session.local_spi in self._retired
        while (event := session.next_event()) is not None:
            if isinstance(event, IkeSaEstablished):
                self._contacted.add(event.tunnel)
            if not retired:
                self._events.append(event)
        if session.state is not IkeState.INIT_DONE and session.local_spi in self._half_open_key:
            self._half_open.pop(self._half_open_key.pop(session.local_spi), None)
        if session.state is IkeState.CLOSED:
            if self.sessions.get(session.local_spi) is session:
                del self.sessions[session.local_spi]
                self._index(session)
            self._retired.discard(session.local_spi)
            self._queued.pop(id(session), None)
        else:
            self._index(session)
            self._schedule(session)
        spawned, session.spawned = session.spawned, []
        for new in spawned:  # §2.18: the new IKE SA is found by our SPI of it
            if new.local_spi in self.sessions:  # 2**-64; never merged with another SA
                new.drop(IkeDrop.SPI_COLLISION)
                new.fail("our random IKE SPI is in use")
                continue
            self.sessions[new.local_spi] = new
            if retired:  # an IKE rekey that finished after its tunnel was removed: delete the new SA too
                self._retired.add(new.local_spi)
                new.delete_when_idle = True
            new.proceed(now)  # a redundant new SA of a rekey collision deletes itself at once (§2.8.2)
            self._collect(new, now)

    def _initial_contact(self, session: IkeSession, now: float) -> None:
        """RFC 7296 §2.4: the peer has no other IKE SA with us any more, so ours are stale: close them.
        Except when both gateways started at the same instant: each initiated its first IKE SA with
        INITIAL_CONTACT, and applying it both ways would make each side close the SA the other keeps.
        Both sides then keep the same one, the SA whose initiator SPI is lower (both know both SPIs by
        now); the other one's initiator deletes it with a Delete, as with rekey collisions (§2.8.1)."""
        for other in self.sessions_for(session.config.tunnel):
            if other is session:
                continue
            if _same_start(other, session):
                if other.spi_i > session.spi_i:  # ours loses: delete it at the peer (once it can be sent)
                    other.delete_when_idle = True
                    other.proceed(now)
                    self._collect(other, now)
                continue  # ours wins: the peer deletes its SA, `session`
            other.close(f"peer {session.remote[0]} restarted (INITIAL_CONTACT)")
            self._collect(other, now)

    def _drop(self, reason: IkeDrop) -> None:
        self.drops.add(reason)


SAME_START = 5.0  # seconds: our first IKE SA and the peer's INITIAL_CONTACT SA began this close together


def _same_start(ours: IkeSession, theirs: IkeSession) -> bool:
    """Our first IKE SA since we started (it carries INITIAL_CONTACT too), begun within SAME_START of the
    peer's: a simultaneous start, not a peer that restarted while we had a working SA."""
    return (ours.initiator and ours.send_initial_contact and ours.state is not IkeState.CLOSED
            and ours.started_at is not None and theirs.started_at is not None
            and abs(ours.started_at - theirs.started_at) <= SAME_START)
