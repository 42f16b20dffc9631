"""An established IKE SA and its Child SAs as plain data, and back: what the standby of an HA pair needs
to carry on with the same SAs when it takes over (gateway.ha.sync, README "High availability"), as
strongSwan's ha plugin does. The peer sees no new IKE SA: same SPIs, same keys, the message IDs it
expects.

What the active gateway may have used after its last snapshot is skipped on takeover: SK IVs (GCM must
never see one twice under a key) jump by SK_IV_JUMP here, ESP sequence numbers by the caller's jump.
Times travel as seconds from `now` (two machines' monotonic clocks have nothing in common).
Pure: plain values in and out, no I/O; the app layer encodes and encrypts them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policy.ts import TsRange
from tunnel.ike.child import ChildSa, ChildState
from tunnel.ike.config import IkeConfig
from tunnel.ike.drops import IkeDrops
from tunnel.ike.keys import IkeKeys
from tunnel.ike.proposal import EspSuite, IkeSuite
from tunnel.ike.sa import IkeSa, IkeSaCrypto, IkeState
from tunnel.ike.session import IkeSession
from tunnel.ike.sk import SkCipher

SK_IV_JUMP = 1 << 20  # SK payloads the old active may have sealed since its last snapshot (a few a second)
KEY_FIELDS = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
Snapshot = dict[str, Any]


class BadSnapshot(ValueError):
    """A snapshot that does not describe an IKE SA (from a peer of ours, authenticated: still checked)."""


def _in(t: float | None, now: float) -> float | None:
    return None if t is None else max(0.0, t - now)


MAX_SECONDS = 366 * 24 * 3600.0  # no lifetime or age in a snapshot is longer


def _at(seconds: Any, now: float) -> float | None:
    return None if seconds is None else now + _seconds(seconds)


def _seconds(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= MAX_SECONDS:
        raise BadSnapshot(f"{value!r} is not a number of seconds within 0..{MAX_SECONDS:.0f}")
    return float(value)


def _ts(ranges: tuple[TsRange, ...]) -> list[list[int]]:
    return [[r.version, r.start, r.end, r.protocol, r.start_port, r.end_port] for r in ranges]


def snapshot(sa: IkeSa, now: float, child_keys: Callable[[int], tuple[bytes, bytes] | None]) -> Snapshot | None:
    """The SA as plain values (bytes as hex), or None unless it is established. child_keys(spi_in): the
    Child SA's (inbound, outbound) keys, which only the data plane's owner holds."""
    crypto = sa.crypto
    if not sa.established or crypto is None:
        return None
    children = []
    for child in sa.children:
        keys = child_keys(child.spi_in)
        if not child.active or keys is None:
            continue
        children.append({"in": child.spi_in, "out": child.spi_out,
                         "suite": [child.suite.encr, child.suite.key_bits, child.suite.esn, child.suite.dh],
                         "lts": _ts(child.local_ts), "rts": _ts(child.remote_ts),
                         "rekey_in": _in(child.rekey_at, now), "expire_in": _in(child.expire_at, now),
                         "age": None if child.installed_at is None else max(0.0, now - child.installed_at),
                         "key_in": keys[0].hex(), "key_out": keys[1].hex()})
    return {"initiator": sa.initiator, "remote": [sa.remote[0], sa.remote[1]], "local_port": sa.local_port,
            "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
            "suite": [crypto.suite.encr, crypto.suite.key_bits, crypto.suite.prf, crypto.suite.dh],
            "keys": [getattr(crypto.keys, name).hex() for name in KEY_FIELDS],
            "next_id": sa.requests.next_id, "expected": sa.responses.expected, "iv": crypto.sk_out.next_iv,
            "rekey_in": _in(sa.ike_rekey_at, now), "expire_in": _in(sa.ike_expire_at, now),
            "reauth_in": _in(sa.reauth_at, now), "fragmentation": sa.fragmentation, "children": children}


def _bounded(value: Any, limit: int) -> int:
    """An integer field of a snapshot within 0..limit-1 (message IDs, SPIs, IV counters)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
        raise BadSnapshot(f"{value!r} is not an integer within 0..{limit - 1}")
    return value


def restore(config: IkeConfig, snap: Snapshot, random_bytes: Callable[[int], bytes], now: float,
            drops: IkeDrops | None = None) -> tuple[IkeSession, list[tuple[ChildSa, bytes, bytes]]]:
    """An established IkeSession from a snapshot, with its Child SAs (and their keys, for the data
    plane). BadSnapshot when a value is missing or of the wrong kind."""
    try:
        session = IkeSession(config, bool(snap["initiator"]), (str(snap["remote"][0]), int(snap["remote"][1])),
                             random_bytes, local_port=int(snap["local_port"]), drops=drops)
        session.spi_i, session.spi_r = bytes.fromhex(snap["spi_i"]), bytes.fromhex(snap["spi_r"])
        if len(session.spi_i) != 8 or len(session.spi_r) != 8:
            raise BadSnapshot("IKE SPIs are 8 bytes")
        suite = IkeSuite(*map(int, snap["suite"]))
        keys = IkeKeys(*(bytes.fromhex(k) for k in snap["keys"]))
        ei, er = keys.sk_ei, keys.sk_er
        first_iv = int(snap["iv"]) + SK_IV_JUMP
        sk_in = SkCipher(er if session.initiator else ei)
        sk_out = SkCipher(ei if session.initiator else er, first_iv=first_iv)
        session.crypto = IkeSaCrypto(suite, keys, sk_in, sk_out, b"", b"", b"", b"")
        session.requests.next_id = _bounded(snap["next_id"], 2**32)
        session.responses.expected = _bounded(snap["expected"], 2**32)
        _bounded(snap["iv"], 2**62)
        session.fragmentation = bool(snap["fragmentation"])
        session.send_initial_contact = False
        session.enter(IkeState.ESTABLISHED, now)
        session.ike_rekey_at, session.ike_expire_at = _at(snap["rekey_in"], now), _at(snap["expire_in"], now)
        session.reauth_at = _at(snap["reauth_in"], now)
        session.last_received = now
        children = []
        for c in snap["children"]:
            e = c["suite"]
            esp = EspSuite(int(e[0]), int(e[1]), int(e[2]), None if e[3] is None else int(e[3]))
            child = ChildSa(_bounded(c["in"], 2**32), _bounded(c["out"], 2**32), esp,
                            tuple(TsRange(*map(int, r)) for r in c["lts"]),
                            tuple(TsRange(*map(int, r)) for r in c["rts"]),
                            rekey_at=_at(c["rekey_in"], now), expire_at=_at(c["expire_in"], now),
                            installed_at=None if c["age"] is None else now - _seconds(c["age"]),
                            state=ChildState.INSTALLED, announced=True)
            key_in, key_out = bytes.fromhex(c["key_in"]), bytes.fromhex(c["key_out"])
            if {len(key_in), len(key_out)} != {child.suite.key_bits // 8 + 4}:  # AES key + salt (RFC 4106)
                raise BadSnapshot("a Child SA key of the wrong length")
            children.append((child, key_in, key_out))
        session.children = [child for child, _, _ in children]
    except BadSnapshot:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadSnapshot(f"not an IKE SA snapshot: {exc!r}") from None
    return session, children
