"""Ephemeral Diffie-Hellman for the KE payload (RFC 7296 §1.2, §2.14, §3.4).

Groups: 31 = Curve25519 (RFC 8031), 19 = 256-bit random ECP / P-256 (RFC 5903), 14 = 2048-bit MODP
(RFC 3526 §3). Pure: the private key comes from the injected `random_bytes`, so a test that feeds fixed
bytes gets the same key pair, the same KE data and the same g^ir every time.

Wire forms (RFC 7296 §3.4 "Key Exchange Data"):
  31: the 32-byte u-coordinate (RFC 8031 §2); g^ir is the 32-byte X25519 output.
  19: x || y, 32 bytes each, no 0x04 prefix (RFC 5903 §7); g^ir is the x coordinate alone (§7, §9).
  14: g^x mod p, big-endian, zero-padded on the left to 256 bytes; g^ir likewise (RFC 7296 §2.14).

Every peer value that is malformed for the negotiated group (wrong length, not on the curve, degenerate)
raises DegeneratePublicValue, whose notify is INVALID_SYNTAX. A KE payload for a *different* group is
not this module's business: the exchange compares the group number and answers INVALID_KE_PAYLOAD.

Note: group 14 uses Python's pow(), which is not constant-time. Prefer 31 or 19 (RFC 8247 §2.4).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tunnel.ike.constants import DhGroup
from tunnel.ike.errors import DegeneratePublicValue

# RFC 3526 §3, 2048-bit MODP group (IANA group 14): 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }
MODP_2048_P = int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1"
    "29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD"
    "EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245"
    "E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D"
    "C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F"
    "83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D"
    "670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9"
    "DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510"
    "15728E5A 8AACAA68 FFFFFFFF FFFFFFFF".replace(" ", ""),
    16,
)
MODP_2048_G = 2
# RFC 3526 §1/§8: the exponent needs twice the group's strength in random bits; §8 estimates up to 160
# bits for group 14, so 320+ bits. 384 bits keeps a margin and stays cheap.
MODP_2048_EXPONENT_BYTES = 48

# FIPS 186-4 / SEC 1: order n of the P-256 base point.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_DRAWS = 64  # rejection sampling: a 32-byte draw is out of [1, n-1] with probability < 2**-32

_KE_LENGTH = {DhGroup.CURVE_25519: 32, DhGroup.ECP_256: 64, DhGroup.MODP_2048: 256}


def key_exchange_length(group: int) -> int:
    """Length of the KE payload's Key Exchange Data for `group` (RFC 7296 §3.4)."""
    return _KE_LENGTH[_supported(group)]


class DhPrivate:
    """One ephemeral key pair. `public` is the KE payload data; the private half never leaves."""

    __slots__ = ("group", "public", "_key")

    def __init__(self, group: DhGroup, key: object, public: bytes) -> None:
        # Built by generate(); `key` is an X25519PrivateKey, an EllipticCurvePrivateKey or a MODP exponent.
        self.group = group
        self.public = public
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir in the form RFC 7296 §2.14 feeds to SKEYSEED; DegeneratePublicValue on a bad peer value."""
        peer_public = bytes(peer_public)
        expected = _KE_LENGTH[self.group]
        if len(peer_public) != expected:
            raise DegeneratePublicValue(
                f"group {int(self.group)} key exchange data is {len(peer_public)} bytes, expected {expected}")
        if self.group == DhGroup.CURVE_25519:
            return _x25519_shared(self._key, peer_public)  # type: ignore[arg-type]
        if self.group == DhGroup.ECP_256:
            return _p256_shared(self._key, peer_public)  # type: ignore[arg-type]
        return _modp_shared(self._key, peer_public)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"DhPrivate(group={int(self.group)}, public=<{len(self.public)} bytes>, private=<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("DhPrivate holds a private key and cannot be pickled")


def generate(group: int, random_bytes: Callable[[int], bytes]) -> DhPrivate:
    """A fresh key pair for `group`, its private key drawn only from `random_bytes`."""
    group = _supported(group)
    if group == DhGroup.CURVE_25519:
        # RFC 7748 §5: any 32 bytes are a scalar; X25519 clamps them itself.
        key = x25519.X25519PrivateKey.from_private_bytes(_draw(random_bytes, 32))
        return DhPrivate(group, key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    if group == DhGroup.ECP_256:
        ec_key = ec.derive_private_key(_p256_scalar(random_bytes), ec.SECP256R1())
        point = ec_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return DhPrivate(group, ec_key, point[1:])  # RFC 5903 §7: x || y without the 0x04 octet
    x = 0
    while x < 2:  # a 384-bit draw is 0 or 1 with probability 2**-383; never use those
        x = int.from_bytes(_draw(random_bytes, MODP_2048_EXPONENT_BYTES), "big")
    return DhPrivate(group, x, pow(MODP_2048_G, x, MODP_2048_P).to_bytes(256, "big"))


def _supported(group: int) -> DhGroup:
    if isinstance(group, bool) or group not in _KE_LENGTH:
        raise ValueError(f"unsupported Diffie-Hellman group {group!r}")
    return DhGroup(group)


def _draw(random_bytes: Callable[[int], bytes], n: int) -> bytes:
    data = bytes(random_bytes(n))
    if len(data) != n:
        raise ValueError(f"random_bytes({n}) returned {len(data)} bytes")
    return data


def _p256_scalar(random_bytes: Callable[[int], bytes]) -> int:
    # Rejection sampling (FIPS 186-4 B.4.2): uniform in [1, n-1] and, for a 32-byte draw that is already
    # in range, the draw itself, so a test can feed RFC 5903's private key and get RFC 5903's public key.
    for _ in range(_P256_DRAWS):
        d = int.from_bytes(_draw(random_bytes, 32), "big")
        if 1 <= d < P256_ORDER:
            return d
    raise ValueError("random_bytes keeps returning P-256 scalars outside [1, n-1]")


def _x25519_shared(key: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # OpenSSL refuses an all-zero result itself (low-order point)
        raise DegeneratePublicValue("X25519 shared secret is all zero (RFC 8031 §2.3)") from None
    if not any(shared):  # RFC 8031 §2.3: MUST check, whatever the backend does
        raise DegeneratePublicValue("X25519 shared secret is all zero (RFC 8031 §2.3)")
    return shared


def _p256_shared(key: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
    try:
        # RFC 5903 §7 / SP 800-56A 5.6.2.3: the point must be on the curve; OpenSSL checks it here.
        peer_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
        return key.exchange(ec.ECDH(), peer_key)  # the x coordinate, 32 bytes (RFC 5903 §7)
    except ValueError:
        raise DegeneratePublicValue("ECP-256 public value is not a point on the curve") from None


def _modp_shared(x: int, peer: bytes) -> bytes:
    y = int.from_bytes(peer, "big")
    # SP 800-56A 5.6.2.3.1 partial check: reject 0, 1, p-1 and anything >= p (RFC 7296 §5 / RFC 6989).
    if not 1 < y < MODP_2048_P - 1:
        raise DegeneratePublicValue("MODP public value outside 1 < y < p-1")
    shared = pow(y, x, MODP_2048_P)
    if shared <= 1:
        raise DegeneratePublicValue("MODP shared secret is degenerate")
    return shared.to_bytes(256, "big")
