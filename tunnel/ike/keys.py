"""IKEv2 key derivation (RFC 7296 §2.13-§2.18), PSK authentication (§2.15) and NAT detection (§2.23).

Pure functions over bytes. The PRFs are HMAC-SHA2-256/384/512 (RFC 4868 §2.1); HMAC-SHA1 (RFC 2104) is
kept for test vectors and old peers. HMAC takes a key of any length, so §2.14's special case for
fixed-key-size PRFs (AES-XCBC/CMAC) does not arise.

Byte strings are concatenated exactly as the RFC writes them: Ni and Nr are the nonce payload *bodies*
(no generic header), SPIi and SPIr the 8 raw bytes from the IKE header, g^ir as dh.py returns it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields

from tunnel.ike.constants import PrfId

_HASHES = {
    PrfId.HMAC_SHA1: hashlib.sha1,
    PrfId.HMAC_SHA2_256: hashlib.sha256,
    PrfId.HMAC_SHA2_384: hashlib.sha384,
    PrfId.HMAC_SHA2_512: hashlib.sha512,
}
PRF_PLUS_MAX_ITERATIONS = 255  # §2.13: the counter is one octet, 0x01 .. 0xff
KEY_PAD = b"Key Pad for IKEv2"  # §2.15, 17 ASCII characters, no terminator
IKE_SPI_LEN = 8


def _hash(prf_id: int) -> Callable[[], hashlib._Hash]:
    """The PRF's hash constructor."""
    try:
        return _HASHES[prf_id]  # type: ignore[index]  # a PrfId or a plain int from the wire
    except (KeyError, TypeError):
        raise ValueError(f"unsupported PRF transform {prf_id!r}") from None


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    """prf(K, S) of §2.13: HMAC with the PRF's hash, full-length output (RFC 4868 §2.1.2)."""
    return hmac.new(key, data, _hash(prf_id)).digest()


def prf_key_size(prf_id: int) -> int:
    """Preferred key size = output size (RFC 4868 §2.1.1); the length of SK_d, SK_pi and SK_pr (§2.14)."""
    return _hash(prf_id)().digest_size


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (§2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); the first `length` bytes of T1|T2|...

    ValueError when `length` would need more than 255 iterations.
    """
    hash_len = prf_key_size(prf_id)
    if length < 0 or length > PRF_PLUS_MAX_ITERATIONS * hash_len:
        raise ValueError(f"prf+ can give 0..{PRF_PLUS_MAX_ITERATIONS * hash_len} bytes, not {length}")
    digest = _hash(prf_id)
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(key, block + seed + bytes([counter]), digest).digest()
        out += block
        counter += 1
    return bytes(out[:length])


@dataclass(frozen=True, repr=False)
class IkeKeys:
    """The seven IKE SA keys of §2.14, in prf+ order. repr shows lengths only, never key bytes."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}=<{len(getattr(self, f.name))} bytes>" for f in fields(self))
        return f"IkeKeys({parts})"

    __str__ = __repr__


def skeyseed(prf_id: int, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (§2.14)."""
    return prf(prf_id, ni + nr, shared)


def rekey_skeyseed(prf_id: int, sk_d_old: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for an IKE SA rekey (§2.18)."""
    return prf(prf_id, sk_d_old, shared + ni + nr)


def derive_ike_keys(
    prf_id: int,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int = 36,
    integ_key_len: int = 0,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) (§2.14).

    `seed` is SKEYSEED. AEAD ciphers have no INTEG transform, so integ_key_len=0 and SK_ai/SK_ar are
    empty; for AES-GCM encr_key_len is the key plus the 4-byte salt (RFC 5282 §7.1: 36 for AES-256).
    For an IKE SA rekey pass the *new* SPIs and nonces (§2.18).
    """
    if len(spi_i) != IKE_SPI_LEN or len(spi_r) != IKE_SPI_LEN:
        raise ValueError("IKE SPIs are 8 bytes each (RFC 7296 §3.1)")
    if encr_key_len < 0 or integ_key_len < 0:
        raise ValueError("key lengths must not be negative")
    prf_len = prf_key_size(prf_id)
    sizes = (prf_len, integ_key_len, integ_key_len, encr_key_len, encr_key_len, prf_len, prf_len)
    material = prf_plus(prf_id, seed, ni + nr + spi_i + spi_r, sum(sizes))
    keys = []
    offset = 0
    for size in sizes:
        keys.append(material[offset:offset + size])
        offset += size
    return IkeKeys(*keys)


def child_keys(
    prf_id: int,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    shared: bytes | None = None,
    encr_key_len: int = 36,
) -> tuple[bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (§2.17), split for an AEAD CHILD SA.

    Returns (initiator->responder key, responder->initiator key): §2.17 takes the keys for traffic from
    the CHILD SA's initiator first. There are no integrity keys with AES-GCM (RFC 4106 §8.1: 32-byte key
    + 4-byte salt each). Ni/Nr are the nonces of the exchange that creates the SA (CREATE_CHILD_SA for a
    rekey); `shared` is the new g^ir when that exchange carried KE payloads (PFS).
    """
    if encr_key_len <= 0:
        raise ValueError("encr_key_len must be positive")
    seed = (shared or b"") + ni + nr
    keymat = prf_plus(prf_id, sk_d, seed, 2 * encr_key_len)
    return keymat[:encr_key_len], keymat[encr_key_len:]


def psk_auth(prf_id: int, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <InitiatorSignedOctets or ResponderSignedOctets>)
    (§2.15). Compare a received AUTH with hmac.compare_digest."""
    return prf(prf_id, prf(prf_id, psk, KEY_PAD), signed_octets)


def signed_octets(real_message: bytes, peer_nonce: bytes, prf_id: int, sk_p: bytes, id_body: bytes) -> bytes:
    """<SignedOctets> = RealMessage | Nonce | prf(SK_px, IDx') (§2.15).

    Initiator: RealMessage1 | NonceRData | prf(SK_pi, IDi'). Responder: RealMessage2 | NonceIData |
    prf(SK_pr, IDr'). RealMessage is the whole IKE_SA_INIT message as sent (IKE header included, no
    non-ESP marker); IDx' is the ID payload without its 4-byte generic header (ID Type, 3 reserved
    octets, identification data).
    """
    return real_message + peer_nonce + prf(prf_id, sk_p, id_body)


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: bytes, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) for NAT_DETECTION_*_IP notifies (§2.23): 20 bytes.

    `address` is the packed IPv4 (4) or IPv6 (16) address; SPIr is eight zero bytes in IKE_SA_INIT's
    request.
    """
    if len(spi_i) != IKE_SPI_LEN or len(spi_r) != IKE_SPI_LEN:
        raise ValueError("IKE SPIs are 8 bytes each (RFC 7296 §3.1)")
    if len(address) not in (4, 16):
        raise ValueError("address must be a packed IPv4 or IPv6 address")
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port must be in 0..65535")
    return hashlib.sha1(spi_i + spi_r + address + struct.pack(">H", port)).digest()
