"""Random and mutated bytes fed to the IKEv2 parsers (RFC 7296 §3) end only as a parsed message,
MalformedPacket (or its subclass UnsupportedCritical), or the ICV error the unseal callable raises.
Nothing else escapes: no IndexError, struct.error, ValueError, UnicodeError, ..."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_ike_message import INIT_BYTES, ToyAead, headers, payload_lists
from tunnel.errors import MalformedPacket
from tunnel.ike.constants import PayloadType
from tunnel.ike.errors import IntegrityError
from tunnel.ike.message import (
    DECODERS,
    IkeHeader,
    Message,
    SkPayload,
    encode_body,
    encode_message,
    encode_payloads,
    encode_sk_message,
    open_sk_message,
    parse_message,
    parse_payloads,
)

IV, ICV = 8, 16
PAYLOAD_TYPES = st.sampled_from([0, *range(33, 49), 53]) | st.integers(0, 255)


def null_seal(aad: bytes, plaintext: bytes) -> bytes:
    """A cipher that hides nothing, so mutations reach the padding check and the inner parser."""
    return bytes(IV) + plaintext + bytes(ICV)


def null_unseal(aad: bytes, body: bytes) -> bytes:
    if len(body) < IV + ICV:
        raise IntegrityError("SK payload shorter than IV + ICV")
    return body[IV : len(body) - ICV]


def parse_or_malformed(data: bytes) -> Message | None:
    try:
        message = parse_message(data)
    except MalformedPacket:
        return None
    # Reserved bits, the minor version and the critical bit of known payloads are ignored, so the bytes
    # need not come back; the meaning must.
    assert parse_message(encode_message(message.header, message.payloads)) == message
    return message


def open_or_expected(data: bytes, unseal) -> None:
    message = parse_or_malformed(data)
    if message is None or not message.payloads or not isinstance(message.payloads[-1], SkPayload):
        return
    try:
        opened = open_sk_message(data, message, unseal)
    except (MalformedPacket, IntegrityError):
        return
    assert opened.header == message.header


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]), st.integers(0, 2000), st.integers(0, 255)),
    max_size=5,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]], fix_length: bool) -> bytes:
    buf = bytearray(data)
    for op, pos, value in ops:
        pos = pos % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << (value % 8)
        elif op == "set" and pos < len(buf):
            buf[pos] = value
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = bytes([value]) * (value % 9)
        elif op == "delete":
            del buf[pos : pos + 1 + value % 8]
    if fix_length and len(buf) >= 28:  # keep the header Length honest so the payload chain is exercised
        struct.pack_into(">I", buf, 24, len(buf))
    return bytes(buf)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_into_parse_message(data: bytes) -> None:
    parse_or_malformed(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_behind_a_valid_header(tail: bytes) -> None:
    """Past the header Length check: random payload chains, any first payload type."""
    for first in (PayloadType.SA, PayloadType.NOTIFY, PayloadType.TSi, PayloadType.SK, tail[:1] and tail[0]):
        data = bytearray(INIT_BYTES[:28] + tail)
        data[16] = first or 0
        struct.pack_into(">I", data, 24, len(data))
        open_or_expected(bytes(data), null_unseal)


@settings(max_examples=1000, deadline=None)
@given(PAYLOAD_TYPES, st.binary(max_size=300))
def test_random_bytes_into_parse_payloads(first: int, data: bytes) -> None:
    try:
        parse_payloads(first, data)
    except MalformedPacket:
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, payload_lists, mutations, st.booleans())
def test_mutated_plaintext_messages(header: IkeHeader, ps: tuple, ops: list, fix_length: bool) -> None:
    data = mutate(encode_message(header, ps), ops, fix_length)
    parse_or_malformed(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_lists, mutations)
def test_mutated_payload_chains(ps: tuple, ops: list) -> None:
    first, raw = encode_payloads(ps)
    try:
        parse_payloads(first, mutate(raw, ops, fix_length=False))
    except MalformedPacket:
        pass


def chain(parts: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """Payload bodies behind honest generic headers, so each decoder sees the hostile body itself."""
    out = b""
    for i, (_, body) in enumerate(parts):
        next_type = parts[i + 1][0] if i + 1 < len(parts) else 0
        out += struct.pack(">BBH", next_type, 0, 4 + len(body)) + body
    return (parts[0][0] if parts else 0), out


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(DECODERS)), st.binary(max_size=80)), max_size=5))
def test_random_bodies_behind_honest_headers(parts: list[tuple[int, bytes]]) -> None:
    try:
        parse_payloads(*chain(parts))
    except MalformedPacket:
        pass


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_lists, st.lists(mutations, max_size=8))
def test_mutated_bodies_behind_honest_headers(ps: tuple, body_ops: list) -> None:
    """Valid bodies (SA with proposals and transforms, TS, Delete, ...) with mutations inside them."""
    parts = [encode_body(p) for p in ps]
    parts = [(t, mutate(body, ops, fix_length=False)) for (t, body), ops in zip(parts, body_ops + [[]] * len(parts))]
    try:
        parse_payloads(*chain(parts))
    except MalformedPacket:
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, payload_lists, mutations, st.booleans())
def test_mutated_sk_messages_null_cipher(header: IkeHeader, ps: tuple, ops: list, fix_length: bool) -> None:
    """Mutations land in the plaintext: padding and inner payloads are parsed from hostile bytes."""
    data = mutate(encode_sk_message(header, ps, null_seal), ops, fix_length)
    open_or_expected(data, null_unseal)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, payload_lists, mutations, st.booleans())
def test_mutated_sk_messages_aes_gcm(header: IkeHeader, ps: tuple, ops: list, fix_length: bool) -> None:
    aead = ToyAead()
    data = mutate(encode_sk_message(header, ps, aead.seal), ops, fix_length)
    open_or_expected(data, aead.unseal)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_random_sk_plaintext(first_inner: int, plaintext: bytes) -> None:
    """Any decrypted plaintext: the padding check and the inner chain only raise MalformedPacket."""
    sk_len = 4 + IV + len(plaintext) + ICV
    data = INIT_BYTES[:16] + struct.pack(">BBBBII", PayloadType.SK, 0x20, 37, 0x08, 1, 28 + sk_len)
    data += struct.pack(">BBH", first_inner, 0, sk_len) + null_seal(b"", plaintext)
    message = parse_message(data)
    try:
        open_sk_message(data, message, null_unseal)
    except MalformedPacket:
        pass
