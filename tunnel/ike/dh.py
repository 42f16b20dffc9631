"""Ephemeral Diffie-Hellman for the KE payload (RFC 7296 §1.2, §2.14, §3.4).

Groups: 31 = Curve25519 (RFC 8031), 19/20 = 256/384-bit random ECP, P-256/P-384 (RFC 5903), 14/15 =
2048/3072-bit MODP (RFC 3526 §3, §4). Pure: the private key comes from the injected `random_bytes`, so
a test that feeds fixed bytes gets the same key pair, the same KE data and the same g^ir every time.

Wire forms (RFC 7296 §3.4 "Key Exchange Data"):
  31: the 32-byte u-coordinate (RFC 8031 §2); g^ir is the 32-byte X25519 output.
  19, 20: x || y, 32 (48) bytes each, no 0x04 prefix (RFC 5903 §7); g^ir is the x coordinate alone.
  14, 15: g^x mod p, big-endian, zero-padded on the left to 256 (384) bytes; g^ir likewise (§2.14).

Every peer value that is malformed for the negotiated group (wrong length, not on the curve, degenerate)
raises DegeneratePublicValue, whose notify is INVALID_SYNTAX. A KE payload for a *different* group is
not this module's business: the exchange compares the group number and answers INVALID_KE_PAYLOAD.

Note: groups 14 and 15 use Python's pow(), which is not constant-time. Prefer 31, 19 or 20 (RFC 8247 §2.4).
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

# RFC 3526 §4, 3072-bit MODP group (IANA group 15): 2^3072 - 2^3008 - 1 + 2^64 * { [2^2942 pi] + 1690314 }
MODP_3072_P = int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 "
    "29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD "
    "EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245 "
    "E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED "
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D "
    "C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F "
    "83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D "
    "670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B "
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 "
    "DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510 "
    "15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64 "
    "ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7 "
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B "
    "F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C "
    "BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31 "
    "43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF".replace(" ", ""),
    16,
)
MODP_3072_EXPONENT_BYTES = 64  # RFC 3526 §8: up to 210 bits of strength -> 420+ random bits

# FIPS 186-4 / SEC 1: order n of the P-256 and P-384 base points.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16)
_P256_DRAWS = 64  # rejection sampling: a draw is out of [1, n-1] with probability < 2**-32

_MODP = {DhGroup.MODP_2048: (MODP_2048_P, 256, MODP_2048_EXPONENT_BYTES),
         DhGroup.MODP_3072: (MODP_3072_P, 384, MODP_3072_EXPONENT_BYTES)}
_ECP = {DhGroup.ECP_256: (ec.SECP256R1(), 32, P256_ORDER), DhGroup.ECP_384: (ec.SECP384R1(), 48, P384_ORDER)}
_KE_LENGTH = {DhGroup.CURVE_25519: 32, DhGroup.ECP_256: 64, DhGroup.ECP_384: 96, DhGroup.MODP_2048: 256,
              DhGroup.MODP_3072: 384}


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
        if self.group in _ECP:
            return _ecp_shared(self.group, self._key, peer_public)  # type: ignore[arg-type]
        return _modp_shared(self.group, self._key, peer_public)  # type: ignore[arg-type]

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
    if group in _ECP:
        curve, size, order = _ECP[group]
        ec_key = ec.derive_private_key(_ec_scalar(random_bytes, size, order), curve)
        point = ec_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return DhPrivate(group, ec_key, point[1:])  # RFC 5903 §7: x || y without the 0x04 octet
    prime, length, exponent_bytes = _MODP[group]
    x = 0
    while x < 2:  # a 384-bit or longer draw is 0 or 1 with probability 2**-383; never use those
        x = int.from_bytes(_draw(random_bytes, exponent_bytes), "big")
    return DhPrivate(group, x, pow(MODP_2048_G, x, prime).to_bytes(length, "big"))


def _supported(group: int) -> DhGroup:
    if isinstance(group, bool) or group not in _KE_LENGTH:
        raise ValueError(f"unsupported Diffie-Hellman group {group!r}")
    return DhGroup(group)


def _draw(random_bytes: Callable[[int], bytes], n: int) -> bytes:
    data = bytes(random_bytes(n))
    if len(data) != n:
        raise ValueError(f"random_bytes({n}) returned {len(data)} bytes")
    return data


def _ec_scalar(random_bytes: Callable[[int], bytes], size: int, order: int) -> int:
    # Rejection sampling (FIPS 186-4 B.4.2): uniform in [1, n-1] and, for a draw that is already in
    # range, the draw itself, so a test can feed RFC 5903's private key and get RFC 5903's public key.
    for _ in range(_P256_DRAWS):
        d = int.from_bytes(_draw(random_bytes, size), "big")
        if 1 <= d < order:
            return d
    raise ValueError("random_bytes keeps returning ECDSA scalars outside [1, n-1]")


def _x25519_shared(key: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # OpenSSL refuses an all-zero result itself (low-order point)
        raise DegeneratePublicValue("X25519 shared secret is all zero (RFC 8031 §2.3)") from None
    if not any(shared):  # RFC 8031 §2.3: MUST check, whatever the backend does
        raise DegeneratePublicValue("X25519 shared secret is all zero (RFC 8031 §2.3)")
    return shared


def _ecp_shared(group: DhGroup, key: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
    curve, size, _ = _ECP[group]
    try:
        # RFC 5903 §7 / SP 800-56A 5.6.2.3: the point must be on the curve; OpenSSL checks it here.
        peer_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer)
        return key.exchange(ec.ECDH(), peer_key)  # the x coordinate (RFC 5903 §7)
    except ValueError:
        raise DegeneratePublicValue(f"ECP-{size * 8} public value is not a point on the curve") from None


def _modp_shared(group: DhGroup, x: int, peer: bytes) -> bytes:
    prime, length, _ = _MODP[group]
    y = int.from_bytes(peer, "big")
    # SP 800-56A 5.6.2.3.1 partial check: reject 0, 1, p-1 and anything >= p (RFC 7296 §5 / RFC 6989).
    if not 1 < y < prime - 1:
        raise DegeneratePublicValue("MODP public value outside 1 < y < p-1")
    shared = pow(y, x, prime)
    if shared <= 1:
        raise DegeneratePublicValue("MODP shared secret is degenerate")
    return shared.to_bytes(length, "big")
