"""The SK (Encrypted and Authenticated) payload body with AES-GCM, 16-octet ICV (RFC 5282, RFC 7296 §3.14).

    body = IV (8) | ciphertext | ICV (16)          RFC 5282 §3
    nonce = salt (4, the last octets of SK_e) | IV  RFC 5282 §4
    AAD = IKE header | SK generic payload header   RFC 5282 §5.1 (the 4-byte non-ESP marker is not in it)

One SkCipher per key and direction: SK_ei for what the original initiator sends, SK_er for what the
responder sends. The sender keeps its SkCipher for the life of the IKE SA, because the IV is a 64-bit
counter (RFC 5282 §3.1 allows one); a second sealer built from the same key would repeat IVs, which breaks
GCM completely.

seal/open work on the exact bytes they are given. The RFC 5282 §3 plaintext is the inner payloads
followed by Padding and a Pad Length octet; `pad` and `unpad` add and remove those (no padding, Pad
Length 0, as strongSwan sends), and `sealed_length` gives the SK payload body length the AAD's length
fields must announce before sealing.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnel.ike.errors import IntegrityError, InvalidSyntax

IV_LEN = 8  # RFC 5282 §3.1
ICV_LEN = 16  # ENCR_AES_GCM_16 (transform 20)
SALT_LEN = 4  # RFC 5282 §7.1 for GCM
OVERHEAD = IV_LEN + ICV_LEN
_AES_KEY_LENGTHS = {16: "AES-128-GCM-16", 24: "AES-192-GCM-16", 32: "AES-256-GCM-16"}
_IV_LIMIT = 2**64


class SkCipher:
    """Seals and opens SK payload bodies under one SK_e key (AES key followed by the 4-byte salt)."""

    __slots__ = ("_aead", "_salt", "_next_iv", "_name")

    def __init__(self, key: bytes, salt_len: int = SALT_LEN, first_iv: int = 0) -> None:
        """first_iv: where the IV counter starts (an SA taken over from the other gateway of an HA pair
        starts past every IV that one may have used)."""
        if salt_len != SALT_LEN:
            raise ValueError("AES-GCM in IKEv2 uses a 4-byte salt (RFC 5282 §7.1)")
        aes_len = len(key) - salt_len
        if aes_len not in _AES_KEY_LENGTHS:
            raise ValueError(f"SK_e must be 20, 28 or 36 bytes (AES key + 4-byte salt), not {len(key)}")
        key = bytes(key)
        self._aead = AESGCM(key[:aes_len])
        self._salt = key[aes_len:]
        self._next_iv = first_iv
        self._name = _AES_KEY_LENGTHS[aes_len]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """IV | ciphertext | ICV. The IV is the next value of a per-key 64-bit counter, never reused."""
        counter = self._next_iv
        if counter >= _IV_LIMIT:
            raise OverflowError("SK IV counter exhausted; rekey the IKE SA")
        self._next_iv = counter + 1
        iv = counter.to_bytes(IV_LEN, "big")
        return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    @property
    def next_iv(self) -> int:
        return self._next_iv

    def open(self, aad: bytes, body: bytes) -> bytes:
        """The plaintext of an SK payload body; IntegrityError if it is too short or its ICV is wrong."""
        if len(body) < OVERHEAD:
            raise IntegrityError(f"SK payload body of {len(body)} bytes is shorter than IV + ICV")
        body = bytes(body)
        try:
            return self._aead.decrypt(self._salt + body[:IV_LEN], body[IV_LEN:], aad)
        except InvalidTag:
            raise IntegrityError("SK payload ICV check failed") from None

    def __repr__(self) -> str:
        return f"SkCipher({self._name}, key=<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("SkCipher holds a key and cannot be pickled")


def sealed_length(payloads_len: int) -> int:
    """Length of the SK payload body that `seal(aad, pad(payloads))` returns for payloads of this length."""
    return IV_LEN + payloads_len + 1 + ICV_LEN


def pad(payloads: bytes) -> bytes:
    """Inner payloads | Pad Length 0 (RFC 5282 §3: AES-GCM needs no block padding)."""
    return payloads + b"\x00"


def unpad(plaintext: bytes) -> bytes:
    """The inner payloads of an opened SK body: drop Padding and Pad Length (RFC 7296 §3.14).

    The padding contents are ignored, as §3.14 asks. A Pad Length that runs past the start of the
    plaintext is a syntax error from an authenticated peer.
    """
    if not plaintext:
        raise InvalidSyntax("SK plaintext has no Pad Length octet")
    pad_len = plaintext[-1]
    if pad_len + 1 > len(plaintext):
        raise InvalidSyntax(f"SK Pad Length {pad_len} exceeds the {len(plaintext)}-byte plaintext")
    return bytes(plaintext[: len(plaintext) - 1 - pad_len])
