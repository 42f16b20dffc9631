"""One direction of an ESP SA with AES-GCM (128-, 192- or 256-bit keys): RFC 4303 framing, RFC 4106 cipher.

Pure: bytes in, bytes out. One AESGCM object per SA (its key schedule is the expensive part); the
per-packet work is two slices, one concatenation and the AEAD call.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnel.errors import SitelinkError
from tunnel.esp.drops import DropReason
from tunnel.esp.overhead import ESP_HEADER, ESP_TRAILER, GCM_ICV, GCM_IV
from tunnel.esp.replay import DEFAULT_WINDOW, ReplayWindow

KEY_MATERIAL_LEN = 36  # RFC 4106 §8.1: 32-byte AES-256 key followed by a 4-byte salt
SALT_LEN = 4
KEY_MATERIAL_LENGTHS = (20, 28, KEY_MATERIAL_LEN)  # AES-128, -192 and -256 keys, each with its salt
SEQ_MAX = 2**32 - 1  # 32-bit sequence numbers without ESN (RFC 4303 §2.2)
NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59  # dummy packet (RFC 4303 §2.6)

_HEADER_AND_IV = struct.Struct(">IIQ")  # SPI, sequence number, explicit IV
_DATA_OFFSET = ESP_HEADER + GCM_IV
MIN_ESP_LEN = _DATA_OFFSET + ESP_TRAILER + GCM_ICV
# Padding bytes 1, 2, 3, ... (RFC 4303 §2.4); index by pad length.
_PAD = bytes(range(1, 256))


class EspDrop(Exception):
    """Raised by InboundSa.open; the forwarder counts it under its reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.label)
        self.reason = reason


class SaExhausted(SitelinkError):
    """The outbound SA has used its last sequence number; RFC 4303 §3.3.3 forbids wrapping."""


def _check_key(spi: int, key: bytes) -> None:
    if not 256 <= spi <= 0xFFFFFFFF:
        raise ValueError("SPI must be in 256..0xFFFFFFFF (RFC 4303 §2.1)")
    if len(key) not in KEY_MATERIAL_LENGTHS:
        raise ValueError(f"AES-GCM key material must be {', '.join(map(str, KEY_MATERIAL_LENGTHS))} bytes "
                         "(a 128-, 192- or 256-bit key and a 4-byte salt)")


class OutboundSa:
    __slots__ = ("spi", "seq", "seq_limit", "_aead", "_salt", "_suffixes")

    def __init__(self, spi: int, key: bytes, seq_limit: int = SEQ_MAX) -> None:
        _check_key(spi, key)
        if not 1 <= seq_limit <= SEQ_MAX:
            raise ValueError("seq_limit must be in 1..2**32-1")
        self.spi = spi
        self.seq = 0  # last sequence number used; the first packet carries 1
        self.seq_limit = seq_limit
        self._aead = AESGCM(key[:-SALT_LEN])
        self._salt = key[-SALT_LEN:]
        # Padding + pad length + next header, by (payload length mod 4, next header).
        self._suffixes = {
            (mod, nh): _PAD[: (2 - mod) % 4] + bytes(((2 - mod) % 4, nh))
            for mod in range(4)
            for nh in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE)
        }

    @property
    def exhausted(self) -> bool:
        return self.seq >= self.seq_limit

    def seal(self, payload: bytes, next_header: int) -> bytes:
        """Encrypt one inner packet into an ESP packet (without the UDP header)."""
        seq = self.seq + 1
        if seq > self.seq_limit:
            raise SaExhausted(f"ESP SA {self.spi:#010x} has used all sequence numbers; a new SA is needed")
        self.seq = seq
        # The explicit IV only has to be unique per key (RFC 4106 §3.1); the 64-bit counter is.
        header = _HEADER_AND_IV.pack(self.spi, seq, seq)
        plaintext = payload + self._suffixes[(len(payload) & 3, next_header)]
        return header + self._aead.encrypt(self._salt + header[8:], plaintext, header[:8])


class InboundSa:
    __slots__ = ("spi", "window", "_aead", "_salt")

    def __init__(self, spi: int, key: bytes, replay_window: int = DEFAULT_WINDOW) -> None:
        _check_key(spi, key)
        self.spi = spi
        self.window = ReplayWindow(replay_window)
        self._aead = AESGCM(key[:-SALT_LEN])
        self._salt = key[-SALT_LEN:]

    def open(self, packet: bytes) -> tuple[int, bytes]:
        """Verify and decrypt one ESP packet; returns (next header, inner packet) or raises EspDrop."""
        if len(packet) < MIN_ESP_LEN:
            raise EspDrop(DropReason.MALFORMED)
        seq = int.from_bytes(packet[4:8], "big")
        window = self.window
        if not window.check(seq):
            raise EspDrop(DropReason.REPLAY)
        try:
            plaintext = self._aead.decrypt(self._salt + packet[ESP_HEADER:_DATA_OFFSET], packet[_DATA_OFFSET:],
                                           packet[:ESP_HEADER])
        except InvalidTag:
            raise EspDrop(DropReason.AUTH_FAILED) from None
        window.update(seq)  # only now: a forgery must not move the window (RFC 4303 §3.4.3)
        pad_len = plaintext[-2]
        end = len(plaintext) - ESP_TRAILER - pad_len
        if end < 0 or plaintext[end : end + pad_len] != _PAD[:pad_len]:
            raise EspDrop(DropReason.MALFORMED)
        return plaintext[-1], plaintext[:end]
