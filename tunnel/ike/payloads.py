"""IKEv2 payload bodies (RFC 7296 §3.3-§3.13, §3.14 kept opaque): frozen dataclasses and their wire codecs.

Pure: bytes in, dataclasses out and back. This module knows each payload's *body*, the bytes after the
4-byte generic payload header (§3.2); chaining, the critical bit, the IKE header and the SK framing live in
`tunnel.ike.message`, which re-exports the payload API.

Past the ~400-line guide on purpose: thirteen payload formats, each with its dataclass, decoder and encoder;
splitting further would separate a format's decoder from its encoder.

Every decoder gets exactly one payload body (already cut to its Payload Length) and raises
`MalformedPacket` for anything it cannot parse, never IndexError, struct.error or ValueError. Encoders raise
ValueError for values the wire cannot carry (a programming error, not a peer's).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.errors import MalformedPacket
from tunnel.ike.constants import (
    ATTR_KEY_LENGTH,
    AuthMethod,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NONCE_MIN, NONCE_MAX = 16, 256  # RFC 7296 §3.9
MAX_SELECTORS = 16  # per TS payload: far more than any site pair needs, few enough to bound narrowing
_ATTR_TV = 0x8000  # Attribute Format bit: 1 = TV (2-byte value), 0 = TLV (§3.3.5)
_LAST, _MORE_PROPOSALS, _MORE_TRANSFORMS = 0, 2, 3  # "Last Substruc" values (§3.3.1, §3.3.2)
_TS_ADDR_LEN: dict[int, int] = {TsType.TS_IPV4_ADDR_RANGE: 4, TsType.TS_IPV6_ADDR_RANGE: 16}  # §3.13.1
_DELETE_SPI_SIZE: dict[int, int] = {ProtocolId.IKE: 0, ProtocolId.AH: 4, ProtocolId.ESP: 4}  # §3.11

_U16 = struct.Struct(">H")
_TRANSFORM = struct.Struct(">BBHBBH")  # last, reserved, length, type, reserved, id
_ATTR = struct.Struct(">HH")  # AF|type, value (TV) or length (TLV)
_PROPOSAL = struct.Struct(">BBHBBBB")  # last, reserved, length, number, protocol, spi size, #transforms
_KE = struct.Struct(">HH")  # group, reserved
_NOTIFY = struct.Struct(">BBH")  # protocol, spi size, type
_DELETE = struct.Struct(">BBH")  # protocol, spi size, number of SPIs
_TS = struct.Struct(">BBHHH")  # type, ip protocol, selector length, start port, end port
_TS_HDR_LEN = _TS.size


def _enum(cls: type[enum.IntEnum], value: int) -> int:
    """The registry member for value when there is one (nicer repr, still == the int), else the int."""
    member = cls._value2member_map_.get(value)
    return member if isinstance(member, int) else value


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise MalformedPacket(f"{what}: {len(body)} bytes, need at least {n}")


# --------------------------------------------------------------------------------------------------
# Dataclasses (field names are an interface other modules are written against)


@dataclass(frozen=True, slots=True)
class Transform:
    """§3.3.2. Only the Key Length attribute (type 14, TV, §3.3.5) is kept; other attributes are skipped."""

    type: TransformType | int
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    """§3.3.1. spi is empty for the IKE_SA_INIT proposal, 8 bytes for an IKE rekey, 4 for ESP/AH."""

    number: int
    protocol: ProtocolId | int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SaPayload:
    """§3.3."""

    proposals: tuple[Proposal, ...]


@dataclass(frozen=True, slots=True)
class KePayload:
    """§3.4."""

    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NoncePayload:
    """§3.9: 16..256 bytes, enforced by the parser and the encoder."""

    data: bytes


@dataclass(frozen=True, slots=True)
class IdPayload:
    """§3.5. initiator=True is IDi (35), False is IDr (36)."""

    initiator: bool
    id_type: int
    data: bytes

    def body(self) -> bytes:
        """The payload body without the generic header: IDi'/IDr' in the AUTH computation (§2.15).
        The RESERVED octets are always sent as zero (§3.5), so a re-encoded body is the body on the wire
        for every conforming peer."""
        return bytes((self.id_type, 0, 0, 0)) + self.data


@dataclass(frozen=True, slots=True)
class AuthPayload:
    """§3.8."""

    method: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertPayload:
    """§3.6."""

    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertReqPayload:
    """§3.7."""

    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """§3.10. Types below 16384 are errors (§3.10.1)."""

    type: int
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class DeletePayload:
    """§3.11. The SPI size follows from the protocol: IKE has no SPIs (they are in the header), AH/ESP 4."""

    protocol: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """§3.13.1. start > end parses fine; whether a selector makes sense is decided elsewhere (§2.9)."""

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_address: bytes
    end_address: bytes

    @classmethod
    def from_network(
        cls, network: IpNetwork, ip_protocol: int = 0, ports: tuple[int, int] = (0, 65535)
    ) -> TrafficSelector:
        ts_type = TsType.TS_IPV4_ADDR_RANGE if network.version == 4 else TsType.TS_IPV6_ADDR_RANGE
        return cls(
            ts_type,
            ip_protocol,
            ports[0],
            ports[1],
            network.network_address.packed,
            network.broadcast_address.packed,
        )

    @property
    def start(self) -> IpAddress:
        return ipaddress.ip_address(self.start_address)

    @property
    def end(self) -> IpAddress:
        return ipaddress.ip_address(self.end_address)


@dataclass(frozen=True, slots=True)
class TsPayload:
    """§3.13. initiator=True is TSi (44), False is TSr (45)."""

    initiator: bool
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class VendorPayload:
    """§3.12."""

    data: bytes


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type this implementation does not parse, sent without the critical bit (§2.5, §3.2)."""

    type: int
    critical: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class SkPayload:
    """§3.14 Encrypted payload as received: the type of the first inner payload and IV|ciphertext|ICV."""

    first_inner: int
    body: bytes


@dataclass(frozen=True)
class SkfPayload:
    """RFC 7383 §2.5 Encrypted Fragment payload as received: the first inner payload's type (fragment 1
    only, else 0), Fragment Number, Total Fragments, and IV|ciphertext|ICV."""

    first_inner: int
    number: int
    total: int
    body: bytes


Payload = (SaPayload | KePayload | NoncePayload | IdPayload | AuthPayload | CertPayload | CertReqPayload
           | NotifyPayload | DeletePayload | TsPayload | VendorPayload | UnknownPayload | SkPayload | SkfPayload)


# --------------------------------------------------------------------------------------------------
# Decoders: one payload body each (after the generic header)


def _decode_attributes(data: bytes) -> int | None:
    """§3.3.5: TV attributes are 4 bytes, TLV are 4 + length. Only Key Length (TV) is kept."""
    key_length = None
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _ATTR.size:
            raise MalformedPacket("transform attribute truncated")
        af_type, value = _ATTR.unpack_from(data, pos)
        pos += _ATTR.size
        attr_type = af_type & ~_ATTR_TV
        if af_type & _ATTR_TV:
            if attr_type == ATTR_KEY_LENGTH:
                if key_length is not None:
                    raise MalformedPacket("transform has two Key Length attributes")
                key_length = value
        else:
            if attr_type == ATTR_KEY_LENGTH:
                raise MalformedPacket("Key Length attribute must use the TV format")
            if value > end - pos:
                raise MalformedPacket("TLV transform attribute overruns its transform")
            pos += value
    return key_length


def _decode_transforms(data: bytes, count: int) -> tuple[Transform, ...]:
    transforms = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _TRANSFORM.size:
            raise MalformedPacket("transform truncated")
        last, _, length, ttype, _, tid = _TRANSFORM.unpack_from(data, pos)
        if length < _TRANSFORM.size or length > end - pos:
            raise MalformedPacket(f"transform length {length} invalid")
        is_last = pos + length == end
        if last != (_LAST if is_last else _MORE_TRANSFORMS):
            raise MalformedPacket(f"transform Last Substruc {last} disagrees with the proposal length")
        key_length = _decode_attributes(data[pos + _TRANSFORM.size : pos + length])
        transforms.append(Transform(_enum(TransformType, ttype), tid, key_length))
        pos += length
    if len(transforms) != count:
        raise MalformedPacket(f"proposal announces {count} transforms, carries {len(transforms)}")
    return tuple(transforms)


def _decode_sa(ptype: int, body: bytes) -> SaPayload:
    proposals = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < _PROPOSAL.size:
            raise MalformedPacket("proposal truncated")
        last, _, length, number, protocol, spi_size, count = _PROPOSAL.unpack_from(body, pos)
        if length < _PROPOSAL.size + spi_size or length > end - pos:
            raise MalformedPacket(f"proposal length {length} invalid")
        is_last = pos + length == end
        if last != (_LAST if is_last else _MORE_PROPOSALS):
            raise MalformedPacket(f"proposal Last Substruc {last} disagrees with the SA length")
        spi_end = pos + _PROPOSAL.size + spi_size
        spi = body[pos + _PROPOSAL.size : spi_end]
        transforms = _decode_transforms(body[spi_end : pos + length], count)
        proposals.append(Proposal(number, _enum(ProtocolId, protocol), spi, transforms))
        pos += length
    return SaPayload(tuple(proposals))


def _decode_ke(ptype: int, body: bytes) -> KePayload:
    _need(body, _KE.size, "KE payload")
    group, _ = _KE.unpack_from(body)
    return KePayload(group, body[_KE.size :])


def _decode_nonce(ptype: int, body: bytes) -> NoncePayload:
    if not NONCE_MIN <= len(body) <= NONCE_MAX:
        raise MalformedPacket(f"nonce of {len(body)} bytes, must be {NONCE_MIN}..{NONCE_MAX} (§3.9)")
    return NoncePayload(body)


def _decode_id(ptype: int, body: bytes) -> IdPayload:
    _need(body, 4, "ID payload")
    return IdPayload(ptype == PayloadType.IDi, _enum(IdType, body[0]), body[4:])


def _decode_auth(ptype: int, body: bytes) -> AuthPayload:
    _need(body, 4, "AUTH payload")
    return AuthPayload(_enum(AuthMethod, body[0]), body[4:])


def _decode_cert(ptype: int, body: bytes) -> CertPayload | CertReqPayload:
    _need(body, 1, "CERT/CERTREQ payload")
    cls = CertPayload if ptype == PayloadType.CERT else CertReqPayload
    return cls(body[0], body[1:])


def _decode_notify(ptype: int, body: bytes) -> NotifyPayload:
    _need(body, _NOTIFY.size, "Notify payload")
    protocol, spi_size, ntype = _NOTIFY.unpack_from(body)
    spi_end = _NOTIFY.size + spi_size
    _need(body, spi_end, "Notify payload SPI")
    return NotifyPayload(
        _enum(NotifyType, ntype), _enum(ProtocolId, protocol), body[_NOTIFY.size : spi_end], body[spi_end:]
    )


def _decode_delete(ptype: int, body: bytes) -> DeletePayload:
    _need(body, _DELETE.size, "Delete payload")
    protocol, spi_size, count = _DELETE.unpack_from(body)
    if _DELETE_SPI_SIZE.get(protocol) != spi_size:
        raise MalformedPacket(f"Delete payload: SPI size {spi_size} wrong for protocol {protocol} (§3.11)")
    if protocol == ProtocolId.IKE and count != 0:
        raise MalformedPacket("Delete payload for the IKE SA must carry no SPIs (§3.11)")
    if len(body) != _DELETE.size + count * spi_size:
        raise MalformedPacket(f"Delete payload: {count} SPIs do not fill {len(body)} bytes")
    spis = tuple(body[i : i + spi_size] for i in range(_DELETE.size, len(body), spi_size)) if spi_size else ()
    return DeletePayload(_enum(ProtocolId, protocol), spis)


class TooManySelectors(MalformedPacket):
    """A TS payload announcing more than MAX_SELECTORS traffic selectors (a counted drop of its own)."""


def _decode_ts(ptype: int, body: bytes) -> TsPayload:
    _need(body, 4, "TS payload")
    count = body[0]
    if count > MAX_SELECTORS:
        raise TooManySelectors(f"TS payload with {count} selectors (at most {MAX_SELECTORS})")
    selectors = []
    pos, end = 4, len(body)
    while pos < end:
        if end - pos < _TS_HDR_LEN:
            raise MalformedPacket("traffic selector truncated")
        ts_type, proto, length, start_port, end_port = _TS.unpack_from(body, pos)
        addr_len = _TS_ADDR_LEN.get(ts_type)
        if addr_len is None:
            raise MalformedPacket(f"traffic selector type {ts_type} not supported")
        if length != _TS_HDR_LEN + 2 * addr_len or length > end - pos:
            raise MalformedPacket(f"traffic selector length {length} invalid for type {ts_type}")
        a = pos + _TS_HDR_LEN
        start, end_address = body[a : a + addr_len], body[a + addr_len : pos + length]
        selectors.append(TrafficSelector(_enum(TsType, ts_type), proto, start_port, end_port, start, end_address))
        pos += length
    if len(selectors) != count:
        raise MalformedPacket(f"TS payload announces {count} selectors, carries {len(selectors)}")
    return TsPayload(ptype == PayloadType.TSi, tuple(selectors))


def _decode_vendor(ptype: int, body: bytes) -> VendorPayload:
    return VendorPayload(body)


DECODERS: dict[int, Callable[[int, bytes], Payload]] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _decode_id,
    PayloadType.IDr: _decode_id,
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_cert,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR: _decode_vendor,
    PayloadType.TSi: _decode_ts,
    PayloadType.TSr: _decode_ts,
}
"""Payload types parsed into dataclasses. SK (46) is handled by the message layer; anything else is unknown."""


# --------------------------------------------------------------------------------------------------
# Encoders: (payload type, body) for one payload


def _encode_transform(t: Transform, last: bool) -> bytes:
    attrs = b"" if t.key_length is None else _ATTR.pack(_ATTR_TV | ATTR_KEY_LENGTH, t.key_length)
    length = _TRANSFORM.size + len(attrs)
    return _TRANSFORM.pack(_LAST if last else _MORE_TRANSFORMS, 0, length, t.type, 0, t.id) + attrs


def _encode_sa(p: SaPayload) -> bytes:
    out = []
    for i, prop in enumerate(p.proposals):
        n = len(prop.transforms)
        transforms = b"".join(_encode_transform(t, j == n - 1) for j, t in enumerate(prop.transforms))
        length = _PROPOSAL.size + len(prop.spi) + len(transforms)
        last = _LAST if i == len(p.proposals) - 1 else _MORE_PROPOSALS
        out.append(_PROPOSAL.pack(last, 0, length, prop.number, prop.protocol, len(prop.spi), n))
        out.append(prop.spi)
        out.append(transforms)
    return b"".join(out)


def _encode_delete(p: DeletePayload) -> bytes:
    spi_size = _DELETE_SPI_SIZE.get(p.protocol)
    if spi_size is None:
        raise ValueError(f"Delete payload: unknown protocol {p.protocol}")
    if p.protocol == ProtocolId.IKE and p.spis:
        raise ValueError("Delete payload for the IKE SA carries no SPIs")
    if any(len(spi) != spi_size for spi in p.spis):
        raise ValueError(f"Delete payload: protocol {p.protocol} needs {spi_size}-byte SPIs")
    return _DELETE.pack(p.protocol, spi_size, len(p.spis)) + b"".join(p.spis)


def _encode_ts(p: TsPayload) -> bytes:
    out = [bytes((len(p.selectors), 0, 0, 0))]
    for ts in p.selectors:
        addr_len = _TS_ADDR_LEN.get(ts.ts_type)
        if addr_len is None or len(ts.start_address) != addr_len or len(ts.end_address) != addr_len:
            raise ValueError(f"traffic selector type {ts.ts_type} with address lengths that do not fit it")
        length = _TS_HDR_LEN + 2 * addr_len
        out.append(_TS.pack(ts.ts_type, ts.ip_protocol, length, ts.start_port, ts.end_port))
        out.append(ts.start_address)
        out.append(ts.end_address)
    return b"".join(out)


def _encode_nonce(p: NoncePayload) -> bytes:
    if not NONCE_MIN <= len(p.data) <= NONCE_MAX:
        raise ValueError(f"nonce of {len(p.data)} bytes, must be {NONCE_MIN}..{NONCE_MAX} (§3.9)")
    return p.data


def encode_body(p: Payload) -> tuple[int, bytes]:
    """(payload type, body) of one payload other than SK. Raises ValueError for unencodable values."""
    try:
        return _encode_body(p)
    except struct.error as exc:  # a field out of range for its wire width
        raise ValueError(f"{type(p).__name__}: {exc}") from exc


def _encode_body(p: Payload) -> tuple[int, bytes]:
    if isinstance(p, SaPayload):
        return PayloadType.SA, _encode_sa(p)
    if isinstance(p, KePayload):
        return PayloadType.KE, _KE.pack(p.group, 0) + p.data
    if isinstance(p, NoncePayload):
        return PayloadType.NONCE, _encode_nonce(p)
    if isinstance(p, IdPayload):
        return (PayloadType.IDi if p.initiator else PayloadType.IDr), p.body()
    if isinstance(p, AuthPayload):
        return PayloadType.AUTH, bytes((p.method, 0, 0, 0)) + p.data
    if isinstance(p, CertPayload):
        return PayloadType.CERT, bytes((p.encoding,)) + p.data
    if isinstance(p, CertReqPayload):
        return PayloadType.CERTREQ, bytes((p.encoding,)) + p.data
    if isinstance(p, NotifyPayload):
        return PayloadType.NOTIFY, _NOTIFY.pack(p.protocol, len(p.spi), p.type) + p.spi + p.data
    if isinstance(p, DeletePayload):
        return PayloadType.DELETE, _encode_delete(p)
    if isinstance(p, TsPayload):
        return (PayloadType.TSi if p.initiator else PayloadType.TSr), _encode_ts(p)
    if isinstance(p, VendorPayload):
        return PayloadType.VENDOR, p.data
    if isinstance(p, UnknownPayload):
        if p.type in DECODERS or p.type in (PayloadType.NONE, PayloadType.SK) or not 0 < p.type < 256:
            raise ValueError(f"UnknownPayload cannot carry payload type {p.type}")
        return p.type, p.data
    raise ValueError(f"not an encodable payload: {p!r}")
