"""SA lifetimes and the liveness schedule of one IKE SA (RFC 7296 §2.8, §2.4), driven by the session's
own timer.

Each Child SA and the IKE SA have a soft lifetime (rekey) and a hard one (delete). The soft time is
shortened by a random fraction of up to `rekey_jitter`, drawn from the injected random source, so two
peers with the same configuration do not start rekeying in the same instant (§2.8.1 collisions still
work, they are just rarer). Requests go out one at a time (§2.3, window size 1): a soft action that
falls due while a request is outstanding waits until the response arrives; hard expiries never wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunnel.ike.ike_auth import ChildState
    from tunnel.ike.session import IkeSession

TEMPORARY_FAILURE_RETRY = 10.0  # §2.25: wait before retrying after TEMPORARY_FAILURE (plus up to 100 %)
MIN_RETRY = 0.5  # ... but never sooner than this, and sooner than 10 s when the hard lifetime is near
NEW_CHILD_DELAY = 1.0  # after the last Child SA expired, a new one is asked for within this (randomised)


def fraction(session: IkeSession) -> float:
    """A uniform number in [0, 1) from the injected random source."""
    return int.from_bytes(session.random(4), "big") / 2**32


def soft_time(session: IkeSession, seconds: float) -> float:
    """The rekey time shortened by the jitter: seconds * (1 - rekey_jitter * u), u uniform in [0, 1)."""
    return seconds * (1.0 - session.config.rekey_jitter * fraction(session))


def retry_at(session: IkeSession, now: float, expire_at: float | None = None) -> float:
    """When to try a refused rekey again (§2.25: MUST NOT retry immediately), randomised. With a hard
    expiry ahead, at most a quarter of the time left, so several tries fit before the SA goes."""
    delay = TEMPORARY_FAILURE_RETRY
    if expire_at is not None:
        delay = max(MIN_RETRY, min(delay, (expire_at - now) / 4))
    return now + delay * (1.0 + fraction(session))


def start_child(session: IkeSession, child: ChildState, now: float) -> None:
    config = session.config
    child.installed_at = now
    child.rekey_at = now + soft_time(session, config.child_rekey_time)
    child.expire_at = now + config.child_lifetime


def start_ike(session: IkeSession, now: float) -> None:
    config = session.config
    session.ike_rekey_at = now + soft_time(session, config.ike_rekey_time)
    session.ike_expire_at = now + config.ike_lifetime
    session.last_received = now


def dpd_due(session: IkeSession) -> float | None:
    """§2.4: probe when nothing was heard from the peer for dpd_delay."""
    if session.last_received is None or session.config.dpd_delay <= 0:
        return None
    return session.last_received + session.config.dpd_delay


def deadlines(session: IkeSession) -> list[float]:
    from tunnel.ike.session import State

    if session.state is not State.ESTABLISHED:
        return []
    found = [c.expire_at for c in session.children]
    found.append(session.ike_expire_at)
    if not session.requests.busy:
        if session.delete_when_idle:
            found.append(0.0)  # at once
        found += [c.rekey_at for c in session.children if c.state == "installed"]
        found += [session.ike_rekey_at, dpd_due(session), session.new_child_at]
    return [d for d in found if d is not None]


def on_timer(session: IkeSession, now: float) -> None:
    """Hard expiries first, then at most one new request: a Delete that waited, IKE rekey, Child rekey or
    DPD, in that order."""
    from tunnel.ike import child_rekey, dpd, ike_rekey
    from tunnel.ike.session import State

    if session.state is not State.ESTABLISHED:
        return
    for child in [c for c in session.children if c.expire_at is not None and c.expire_at <= now]:
        child_rekey.expire(session, child, now)
    if session.ike_expire_at is not None and session.ike_expire_at <= now:
        session.quiet = False
        return session.delete(now)
    if session.requests.busy:
        return
    if session.delete_when_idle:
        session.delete_when_idle = False
        return session.delete(now)
    if session.ike_rekey_at is not None and session.ike_rekey_at <= now:
        return ike_rekey.start(session, now)
    for child in session.children:
        if child.state == "installed" and child.rekey_at is not None and child.rekey_at <= now:
            return child_rekey.start(session, child, now)
    if session.new_child_at is not None and session.new_child_at <= now:
        session.new_child_at = None
        if child_rekey.missing_workers(session):
            return child_rekey.start(session, None, now)
    due = dpd_due(session)
    if due is not None and due <= now:
        dpd.start(session, now)


def schedule_new_child(session: IkeSession, now: float) -> None:
    """The last Child SA went without a successor while the IKE SA stands (§2.25 and hard expiry under
    loss): ask for a fresh one soon, randomised so both peers rarely ask at once."""
    if session.new_child_at is None:
        session.new_child_at = now + NEW_CHILD_DELAY * fraction(session)
