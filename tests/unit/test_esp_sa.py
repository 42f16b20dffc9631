"""ESP framing with AES-256-GCM: RFC 4303 §2 layout, RFC 4106 nonce/IV/AAD, padding, drops."""

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnel.esp.drops import DropReason
from tunnel.esp.sa import EspDrop, InboundSa, OutboundSa, SaExhausted

KEY = bytes(range(36))
SPI = 0x0000_1001


def pair(window: int = 8192) -> tuple[OutboundSa, InboundSa]:
    return OutboundSa(SPI, KEY), InboundSa(SPI, KEY, window)


def test_layout_matches_rfc4303_and_rfc4106() -> None:
    out = OutboundSa(SPI, KEY)
    inner = b"\x45" + bytes(20)  # 21 bytes -> 1 byte of padding to reach 4-byte alignment
    esp = out.seal(inner, 4)
    spi, seq, iv = struct.unpack(">IIQ", esp[:16])
    assert (spi, seq) == (SPI, 1)  # the first packet carries sequence number 1 (RFC 4303 §3.3.3)
    # Decrypt independently: nonce = salt || explicit IV, AAD = SPI || seq (RFC 4106 §3, §5).
    plain = AESGCM(KEY[:32]).decrypt(KEY[32:] + esp[8:16], esp[16:], esp[:8])
    assert plain == inner + b"\x01" + b"\x01" + b"\x04"  # pad 1, pad length 1, next header 4
    assert len(esp) == 8 + 8 + len(plain) + 16
    assert (len(plain)) % 4 == 0


@pytest.mark.parametrize("size", [20, 21, 22, 23, 1438])
def test_padding_aligns_to_four(size: int) -> None:
    out, inb = pair()
    esp = out.seal(b"\x45" + bytes(size - 1), 4)
    assert (len(esp) - 16 - 16) % 4 == 0
    assert inb.open(esp) == (4, b"\x45" + bytes(size - 1))


def test_ivs_are_unique_and_sequence_increments() -> None:
    out = OutboundSa(SPI, KEY)
    headers = [out.seal(b"\x45" + bytes(19), 4)[:16] for _ in range(100)]
    assert [struct.unpack(">I", h[4:8])[0] for h in headers] == list(range(1, 101))
    assert len({h[8:16] for h in headers}) == 100


def test_round_trip_ipv6_next_header() -> None:
    out, inb = pair()
    inner = b"\x60" + bytes(59)
    assert inb.open(out.seal(inner, 41)) == (41, inner)


def test_replay_is_dropped() -> None:
    out, inb = pair()
    esp = out.seal(b"\x45" + bytes(19), 4)
    inb.open(esp)
    with pytest.raises(EspDrop) as info:
        inb.open(esp)
    assert info.value.reason is DropReason.REPLAY


@pytest.mark.parametrize("offset", [0, 4, 9, 20, -1])
def test_any_flipped_bit_fails_authentication_or_spi(offset: int) -> None:
    out, inb = pair()
    esp = bytearray(out.seal(b"\x45" + bytes(40), 4))
    esp[offset] ^= 0x01
    with pytest.raises(EspDrop) as info:
        inb.open(bytes(esp))
    assert info.value.reason is DropReason.AUTH_FAILED


def test_forgery_does_not_move_the_window() -> None:
    out, inb = pair()
    good = out.seal(b"\x45" + bytes(19), 4)
    forged = bytearray(good)
    forged[-1] ^= 1
    with pytest.raises(EspDrop):
        inb.open(bytes(forged))
    assert inb.window.highest == 0
    assert inb.open(good)[0] == 4


def test_wrong_key_fails_authentication() -> None:
    esp = OutboundSa(SPI, KEY).seal(b"\x45" + bytes(19), 4)
    with pytest.raises(EspDrop) as info:
        InboundSa(SPI, bytes(36)).open(esp)
    assert info.value.reason is DropReason.AUTH_FAILED


def test_short_packet_is_malformed() -> None:
    with pytest.raises(EspDrop) as info:
        InboundSa(SPI, KEY).open(b"\x00\x00\x10\x01" + bytes(20))
    assert info.value.reason is DropReason.MALFORMED


def test_bad_padding_content_is_malformed() -> None:
    # A correctly authenticated packet whose padding bytes are not 1, 2, 3...
    header = struct.pack(">IIQ", SPI, 1, 1)
    plain = b"\x45" + bytes(19) + b"\x09\x09" + b"\x02\x04"
    esp = header + AESGCM(KEY[:32]).encrypt(KEY[32:] + header[8:], plain, header[:8])
    with pytest.raises(EspDrop) as info:
        InboundSa(SPI, KEY).open(esp)
    assert info.value.reason is DropReason.MALFORMED


def test_sequence_numbers_never_wrap() -> None:
    out = OutboundSa(SPI, KEY, seq_limit=3)
    for _ in range(3):
        out.seal(b"\x45" + bytes(19), 4)
    assert out.exhausted
    with pytest.raises(SaExhausted, match="new SA"):
        out.seal(b"\x45" + bytes(19), 4)
    assert out.seq == 3


def test_default_limit_is_32_bits() -> None:
    out = OutboundSa(SPI, KEY)
    out.seq = 2**32 - 2
    out.seal(b"\x45" + bytes(19), 4)
    with pytest.raises(SaExhausted):
        out.seal(b"\x45" + bytes(19), 4)


@pytest.mark.parametrize("spi,key", [(255, KEY), (2**32, KEY), (SPI, bytes(32))])
def test_bad_parameters(spi: int, key: bytes) -> None:
    with pytest.raises(ValueError):
        OutboundSa(spi, key)


def test_repr_does_not_leak_key() -> None:
    out = OutboundSa(SPI, KEY)
    assert KEY.hex() not in repr(out) and KEY[32:].hex() not in repr(out)
