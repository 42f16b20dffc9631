"""IKEv2 messages (RFC 7296 §3.1 header, §3.2 payload chain, §3.14 / RFC 5282 SK framing). Pure.

Parsing turns any input into a `Message` or raises `MalformedPacket` (its subclass `UnsupportedCritical`
for an unknown payload with the critical bit). Payload dataclasses live in `tunnel.ike.payloads` and are
re-exported here, so callers import everything from this module.

The SK payload is framed here but never decrypted here: `encode_sk_message` and `open_sk_message` take
`seal(aad, plaintext) -> iv|ciphertext|icv` and `unseal(aad, iv|ciphertext|icv) -> plaintext` callables,
so the AEAD (and its IV source) stays with the keys.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tunnel.errors import MalformedPacket
from tunnel.ike.constants import IKE_HEADER_LEN, IKE_VERSION, ExchangeType, Flag, NotifyType, PayloadType
from tunnel.ike.errors import IkeError
from tunnel.ike.payloads import (  # re-exported: callers import the whole message API from here
    DECODERS,
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SkfPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorPayload,
    encode_body,
)

_HEADER = struct.Struct(">8s8sBBBBII")  # SPIi, SPIr, next payload, version, exchange, flags, MID, length
_GENERIC = struct.Struct(">BBH")  # next payload, C|reserved, payload length (§3.2)
_CRITICAL = 0x80
GENERIC_HEADER_LEN = _GENERIC.size
SK_PAD_LENGTH_LEN = 1  # RFC 7296 §3.14: the Pad Length octet after the (possibly empty) padding

P = TypeVar("P")

__all__ = [
    "AuthPayload",
    "CertPayload",
    "CertReqPayload",
    "DECODERS",
    "DeletePayload",
    "IdPayload",
    "IkeHeader",
    "KePayload",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "SaPayload",
    "SkfPayload",
    "SkPayload",
    "TrafficSelector",
    "Transform",
    "TsPayload",
    "UnknownPayload",
    "UnsupportedCritical",
    "VendorPayload",
    "encode_body",
    "encode_message",
    "encode_payloads",
    "encode_sk_message",
    "open_sk_message",
    "parse_header",
    "parse_message",
    "parse_payloads",
]


class UnsupportedCritical(MalformedPacket, IkeError):
    """An unknown payload type with the critical bit set (§2.5, §3.2): the message is rejected and a
    response carries N(UNSUPPORTED_CRITICAL_PAYLOAD) whose data is the one-octet type (§3.10.1)."""

    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    fatal = False  # the message is rejected; the IKE SA (if any) survives

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}", bytes((payload_type,)))
        self.payload_type = payload_type


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """§3.1 without the fields the encoder derives (Next Payload, Version, Length)."""

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: int
    message_id: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        """The I flag: set by the original initiator of the IKE SA (§3.1), request or response."""
        return bool(self.flags & Flag.INITIATOR)


@dataclass(frozen=True, slots=True)
class Message:
    header: IkeHeader
    payloads: tuple[Payload, ...]

    def get(self, cls: type[P]) -> P | None:
        """The first payload of class cls, or None."""
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all(self, cls: type[P]) -> tuple[P, ...]:
        return tuple(p for p in self.payloads if isinstance(p, cls))

    def notify(self, notify_type: int) -> NotifyPayload | None:
        """The first Notify payload of that type, or None."""
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.type == notify_type:
                return p
        return None


# --------------------------------------------------------------------------------------------------
# Parsing


def parse_header(data: bytes) -> IkeHeader:
    """§3.1. data is the whole message: its Length field must equal len(data)."""
    header, _, _ = _parse_header(data)
    return header


def _parse_header(data: bytes) -> tuple[IkeHeader, int, int]:
    if len(data) < IKE_HEADER_LEN:
        raise MalformedPacket(f"IKE message of {len(data)} bytes is shorter than its header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != IKE_VERSION >> 4:  # the minor version is ignored (§3.1)
        raise MalformedPacket(f"IKE major version {version >> 4}, only 2 is spoken")
    if length != len(data):
        raise MalformedPacket(f"IKE header Length {length} but the datagram has {len(data)} bytes")
    exchange = ExchangeType._value2member_map_.get(exchange, exchange)
    return IkeHeader(spi_i, spi_r, exchange, flags, message_id), next_payload, length


def parse_message(data: bytes) -> Message:
    """The whole message. An SK payload is kept as SkPayload and must be the last payload (§3.14)."""
    data = bytes(data)
    header, first, _ = _parse_header(data)
    return Message(header, _parse_chain(first, data, IKE_HEADER_LEN, allow_sk=True))


def parse_payloads(first_type: int, data: bytes) -> tuple[Payload, ...]:
    """A bare payload chain, e.g. the decrypted content of SK without its padding."""
    return _parse_chain(first_type, bytes(data), 0, allow_sk=False)


def _parse_chain(ptype: int, data: bytes, pos: int, allow_sk: bool) -> tuple[Payload, ...]:
    payloads: list[Payload] = []
    end = len(data)
    while ptype != PayloadType.NONE:
        if end - pos < GENERIC_HEADER_LEN:
            raise MalformedPacket(f"payload {ptype} header truncated")
        next_type, flags, length = _GENERIC.unpack_from(data, pos)
        if length < GENERIC_HEADER_LEN or length > end - pos:
            raise MalformedPacket(f"payload {ptype} length {length} invalid ({end - pos} bytes left)")
        body = data[pos + GENERIC_HEADER_LEN : pos + length]
        pos += length
        if ptype == PayloadType.SK:
            if not allow_sk:
                raise MalformedPacket("SK payload inside an SK payload")
            if pos != end:  # §3.14: the Encrypted payload MUST be the last payload in the message
                raise MalformedPacket("SK payload is not the last payload")
            payloads.append(SkPayload(next_type, body))
            return tuple(payloads)
        if ptype == PayloadType.SKF:
            # RFC 7383 §2.5: the Encrypted Fragment payload is the only payload of its message.
            if not allow_sk or payloads or pos != end:
                raise MalformedPacket("SKF payload is not the only payload of its message")
            if len(body) < 4:
                raise MalformedPacket("SKF payload shorter than its Fragment Number and Total Fragments")
            number, total = struct.unpack_from("!HH", body)
            payloads.append(SkfPayload(next_type, number, total, body[4:]))
            return tuple(payloads)
        decoder = DECODERS.get(ptype)
        if decoder is not None:  # the critical bit of a known payload is ignored (§3.2)
            payloads.append(decoder(ptype, body))
        elif flags & _CRITICAL:
            raise UnsupportedCritical(ptype)
        else:
            payloads.append(UnknownPayload(ptype, False, body))
        ptype = next_type
    if pos != end:
        raise MalformedPacket(f"{end - pos} bytes after the last payload")
    return tuple(payloads)


# --------------------------------------------------------------------------------------------------
# Serialization


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chained payloads). An SkPayload may only come last."""
    encoded: list[tuple[int, int, bytes]] = []  # (type, flags octet, body)
    for i, p in enumerate(payloads):
        if isinstance(p, SkPayload):
            if i != len(payloads) - 1:
                raise ValueError("the SK payload must be the last payload (§3.14)")
            encoded.append((PayloadType.SK, 0, p.body))
        else:
            ptype, body = encode_body(p)
            encoded.append((ptype, _CRITICAL if isinstance(p, UnknownPayload) and p.critical else 0, body))
    out = []
    for i, (_, flags, body) in enumerate(encoded):
        if i + 1 < len(encoded):
            next_type = encoded[i + 1][0]
        else:
            next_type = payloads[-1].first_inner if isinstance(payloads[-1], SkPayload) else PayloadType.NONE
        out.append(_generic_header(next_type, flags, GENERIC_HEADER_LEN + len(body)))
        out.append(body)
    first = encoded[0][0] if encoded else PayloadType.NONE
    return first, b"".join(out)


def _generic_header(next_type: int, flags: int, length: int) -> bytes:
    if length > 0xFFFF:
        raise ValueError(f"payload of {length} bytes does not fit the 16-bit Payload Length (§3.2)")
    try:
        return _GENERIC.pack(next_type, flags, length)
    except struct.error as exc:
        raise ValueError(f"generic payload header: {exc}") from exc


def _encode_header(header: IkeHeader, next_type: int, length: int) -> bytes:
    if len(header.spi_i) != 8 or len(header.spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes each (§3.1)")
    try:
        return _HEADER.pack(
            header.spi_i, header.spi_r, next_type, IKE_VERSION, header.exchange, header.flags, header.message_id, length
        )
    except struct.error as exc:
        raise ValueError(f"IKE header: {exc}") from exc


def encode_header(header: IkeHeader, next_type: int, length: int) -> bytes:
    """The 28-octet IKE header (§3.1) for a message of `length` bytes whose first payload is next_type."""
    return _encode_header(header, next_type, length)


def encode_message(header: IkeHeader, payloads: Sequence[Payload]) -> bytes:
    """A plaintext message (IKE_SA_INIT, or an error answered before keys exist)."""
    first, body = encode_payloads(payloads)
    return _encode_header(header, first, IKE_HEADER_LEN + len(body)) + body


def encode_sk_message(
    header: IkeHeader,
    payloads: Sequence[Payload],
    seal: Callable[[bytes, bytes], bytes],
    iv_len: int = 8,
    icv_len: int = 16,
) -> bytes:
    """HDR, SK{payloads} (§3.14 with RFC 5282 AEAD). seal(aad, plaintext) returns iv|ciphertext|icv;
    aad is the IKE header plus the SK generic header (RFC 5282 §5.1). Padding: none, Pad Length 0, as
    strongSwan sends for AES-GCM (a block cipher mode would need padding to its block size)."""
    if any(isinstance(p, SkPayload) for p in payloads):
        raise ValueError("an SK payload cannot be nested")
    first, inner = encode_payloads(payloads)
    plaintext = inner + b"\x00"  # no padding, Pad Length = 0
    sk_len = GENERIC_HEADER_LEN + iv_len + len(plaintext) + icv_len
    aad = _encode_header(header, PayloadType.SK, IKE_HEADER_LEN + sk_len) + _generic_header(first, 0, sk_len)
    sealed = seal(aad, plaintext)
    if len(sealed) != iv_len + len(plaintext) + icv_len:
        raise ValueError(f"seal returned {len(sealed)} bytes, expected iv + plaintext + icv")
    return aad + sealed


def open_sk_message(data: bytes, message: Message, unseal: Callable[[bytes, bytes], bytes]) -> Message:
    """Decrypt the SK payload of `message` (parsed from `data`). unseal(aad, iv|ciphertext|icv) returns the
    plaintext or raises on an ICV failure (propagated unchanged). Returns the outer non-SK payloads
    followed by the inner ones."""
    data = bytes(data)
    sk = message.payloads[-1] if message.payloads else None
    if not isinstance(sk, SkPayload):
        raise MalformedPacket("message has no SK payload")
    offset = len(data) - len(sk.body)
    if offset < IKE_HEADER_LEN + GENERIC_HEADER_LEN or data[offset:] != sk.body:
        raise MalformedPacket("SK payload does not match the message bytes")
    plaintext = unseal(data[:offset], sk.body)
    if len(plaintext) < SK_PAD_LENGTH_LEN:
        raise MalformedPacket("SK plaintext has no Pad Length octet")
    pad_length = plaintext[-1]
    if pad_length > len(plaintext) - SK_PAD_LENGTH_LEN:
        raise MalformedPacket(f"SK Pad Length {pad_length} exceeds the {len(plaintext)}-byte plaintext")
    inner = parse_payloads(sk.first_inner, plaintext[: len(plaintext) - SK_PAD_LENGTH_LEN - pad_length])
    return Message(message.header, message.payloads[:-1] + inner)
