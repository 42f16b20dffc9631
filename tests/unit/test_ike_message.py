"""IKEv2 message parsing and serialization: RFC 7296 §3.1 (header), §3.2 (generic payload header and
critical bit), §3.3-§3.13 (payload layouts), §3.14 with RFC 5282 (SK framing). Byte strings are built by
hand from the RFC diagrams; the IKE_SA_INIT is the one strongSwan sends in the lab (ikev2-interop.md)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.errors import MalformedPacket
from tunnel.ike.constants import (
    AuthMethod,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)
from tunnel.ike.errors import IntegrityError
from tunnel.ike.message import (
    DECODERS,
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    IdPayload,
    IkeHeader,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    UnsupportedCritical,
    VendorPayload,
    encode_message,
    encode_payloads,
    encode_sk_message,
    open_sk_message,
    parse_header,
    parse_message,
    parse_payloads,
)

h = bytes.fromhex
SPI_I = h("1122334455667788")
SPI_R = bytes(8)
KE_DATA = bytes(range(32))
NI = bytes(range(100, 132))
NATD_S = bytes(range(20))
NATD_D = bytes(range(20, 40))

# --------------------------------------------------------------------------------------------------
# The lab's IKE_SA_INIT request (strongSwan, aes256gcm16-prfsha256-curve25519), field by field.

SA_BYTES = (
    h("22 00 0028")  # generic: next KE(34), C=0, length 40 (§3.2)
    + h("00 00 0024 01 01 00 03")  # proposal: last, rsv, length 36, #1, IKE, SPI size 0, 3 transforms (§3.3.1)
    + h("03 00 000c 01 00 0014 800e 0100")  # ENCR(1) 20 AES-GCM-16, Key Length TV 256 (§3.3.2, §3.3.5)
    + h("03 00 0008 02 00 0005")  # PRF(2) 5 HMAC-SHA2-256
    + h("00 00 0008 04 00 001f")  # last transform: DH(4) 31
)
KE_BYTES = h("28 00 0028 001f 0000") + KE_DATA  # next Nonce(40), length 40, group 31, reserved (§3.4)
NONCE_BYTES = h("29 00 0024") + NI  # next Notify(41), length 36 (§3.9)
NATD_S_BYTES = h("29 00 001c 00 00 4004") + NATD_S  # protocol 0, SPI size 0, type 16388 (§3.10)
NATD_D_BYTES = h("00 00 001c 00 00 4005") + NATD_D  # last payload: next 0
INIT_PAYLOAD_BYTES = SA_BYTES + KE_BYTES + NONCE_BYTES + NATD_S_BYTES + NATD_D_BYTES
INIT_HEADER_BYTES = SPI_I + SPI_R + h("21 20 22 08 00000000 000000c8")  # next SA, v2.0, IKE_SA_INIT, I, MID 0, 200
INIT_BYTES = INIT_HEADER_BYTES + INIT_PAYLOAD_BYTES

INIT_HEADER = IkeHeader(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, 0x08, 0)
INIT_PAYLOADS = (
    SaPayload(
        (
            Proposal(
                1,
                ProtocolId.IKE,
                b"",
                (
                    Transform(TransformType.ENCR, 20, 256),
                    Transform(TransformType.PRF, 5),
                    Transform(TransformType.DH, 31),
                ),
            ),
        )
    ),
    KePayload(31, KE_DATA),
    NoncePayload(NI),
    NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=NATD_S),
    NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=NATD_D),
)
INIT = Message(INIT_HEADER, INIT_PAYLOADS)


def with_length(message: bytes) -> bytes:
    """The message with its IKE header Length fixed up to its real size."""
    return message[:24] + struct.pack(">I", len(message)) + message[28:]


def test_ike_sa_init_exact_bytes() -> None:
    assert len(INIT_BYTES) == 200
    assert encode_message(INIT_HEADER, INIT_PAYLOADS) == INIT_BYTES
    assert parse_message(INIT_BYTES) == INIT


def test_ike_sa_init_parsed_fields() -> None:
    msg = parse_message(INIT_BYTES)
    assert msg.header.exchange is ExchangeType.IKE_SA_INIT
    assert msg.header.is_initiator and not msg.header.is_response
    sa = msg.get(SaPayload)
    assert sa is not None and sa.proposals[0].transforms[0].key_length == 256
    assert sa.proposals[0].transforms[0].type is TransformType.ENCR
    assert msg.get(KePayload) == KePayload(31, KE_DATA)
    assert msg.get(AuthPayload) is None
    assert msg.all(NotifyPayload) == INIT_PAYLOADS[3:]
    assert msg.notify(NotifyType.NAT_DETECTION_DESTINATION_IP).data == NATD_D
    assert msg.notify(NotifyType.COOKIE) is None


def test_header_fields_and_flags() -> None:
    hdr = parse_header(INIT_BYTES)
    assert hdr == INIT_HEADER
    resp = IkeHeader(SPI_I, h("99" * 8), ExchangeType.IKE_AUTH, 0x20, 1)
    assert resp.is_response and not resp.is_initiator
    raw = encode_message(resp, [])
    assert raw == SPI_I + h("99" * 8) + h("00 20 23 20 00000001 0000001c")
    assert parse_message(raw) == Message(resp, ())


def test_header_minor_version_ignored_major_checked() -> None:
    minor = INIT_BYTES[:17] + b"\x21" + INIT_BYTES[18:]
    assert parse_message(minor) == INIT  # §3.1: the minor version is ignored
    for version in (0x10, 0x30, 0x00):
        with pytest.raises(MalformedPacket, match="major version"):
            parse_header(INIT_BYTES[:17] + bytes([version]) + INIT_BYTES[18:])


def test_header_length_must_match() -> None:
    with pytest.raises(MalformedPacket):
        parse_header(INIT_BYTES[:27])
    with pytest.raises(MalformedPacket, match="Length"):
        parse_header(INIT_BYTES + b"\x00")
    lying = INIT_BYTES[:24] + struct.pack(">I", 199) + INIT_BYTES[28:]
    with pytest.raises(MalformedPacket, match="Length"):
        parse_message(lying)


def test_truncation_at_every_offset() -> None:
    for i in range(len(INIT_BYTES)):
        with pytest.raises(MalformedPacket):
            parse_message(INIT_BYTES[:i])
    # With the header Length patched to match, the payload chain itself must notice.
    for i in range(28, len(INIT_BYTES)):
        with pytest.raises(MalformedPacket):
            parse_message(with_length(INIT_BYTES[:i]))
    for i in range(len(INIT_PAYLOAD_BYTES)):
        with pytest.raises(MalformedPacket):
            parse_payloads(PayloadType.SA, INIT_PAYLOAD_BYTES[:i])


# Offsets of the 16-bit length fields inside INIT_PAYLOAD_BYTES: SA, proposal, first transform, KE, Nonce,
# NATD_S, NATD_D.
LENGTH_FIELDS = (2, 6, 10, 42, 82, 118, 146)


@pytest.mark.parametrize("offset", LENGTH_FIELDS)
@pytest.mark.parametrize("delta", (1, -1, 4, -4, 0x1000))
def test_payload_length_lying(offset: int, delta: int) -> None:
    bad = bytearray(INIT_PAYLOAD_BYTES)
    value = struct.unpack_from(">H", bad, offset)[0]
    struct.pack_into(">H", bad, offset, (value + delta) & 0xFFFF)
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.SA, bytes(bad))


def test_lengths_below_minimum() -> None:
    with pytest.raises(MalformedPacket, match="length"):
        parse_payloads(PayloadType.VENDOR, h("00 00 0003"))  # shorter than the generic header
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.VENDOR, h("00 00 0000"))


def test_trailing_bytes_after_last_payload() -> None:
    with pytest.raises(MalformedPacket, match="after the last payload"):
        parse_payloads(PayloadType.VENDOR, h("00 00 0005 aa ff"))
    with pytest.raises(MalformedPacket, match="after the last payload"):
        parse_message(with_length(INIT_BYTES + b"\x00"))
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.NONE, b"\x00")


# --------------------------------------------------------------------------------------------------
# One payload at a time (§3.3-§3.13)


def one(ptype: int, raw: bytes, payload: object) -> None:
    """raw is one payload with its generic header (next payload 0); check both directions."""
    assert parse_payloads(ptype, raw) == (payload,)
    assert encode_payloads([payload]) == (ptype, raw)


def test_id_payloads() -> None:
    fqdn = b"gwa.ss-lab.test"
    p = IdPayload(True, IdType.ID_FQDN, fqdn)
    one(PayloadType.IDi, h("00 00 0017 02 000000") + fqdn, p)
    one(PayloadType.IDr, h("00 00 000c 01 000000 0a470101"), IdPayload(False, IdType.ID_IPV4_ADDR, h("0a470101")))
    assert p.body() == h("02 000000") + fqdn  # IDi' of §2.15
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.IDi, h("00 00 0007 02 0000"))


def test_auth_payload() -> None:
    mac = bytes(range(32))
    one(PayloadType.AUTH, h("00 00 0028 02 000000") + mac, AuthPayload(AuthMethod.SHARED_KEY_MIC, mac))
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.AUTH, h("00 00 0006 02 00"))


def test_cert_and_certreq_payloads() -> None:
    one(PayloadType.CERT, h("00 00 0008 04 308201"), CertPayload(4, h("308201")))
    one(PayloadType.CERTREQ, h("00 00 0005 04"), CertReqPayload(4, b""))
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.CERTREQ, h("00 00 0004"))


def test_nonce_bounds() -> None:
    one(PayloadType.NONCE, h("00 00 0014") + bytes(16), NoncePayload(bytes(16)))
    one(PayloadType.NONCE, h("00 00 0104") + bytes(256), NoncePayload(bytes(256)))
    for n in (0, 15, 257):
        with pytest.raises(MalformedPacket, match="nonce"):
            parse_payloads(PayloadType.NONCE, struct.pack(">BBH", 0, 0, 4 + n) + bytes(n))
    with pytest.raises(ValueError):
        encode_payloads([NoncePayload(bytes(15))])


def test_notify_payloads() -> None:
    invalid_ke = NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, data=h("001f"))  # the group we want (§1.2)
    one(PayloadType.NOTIFY, h("00 00 000a 00 00 0011 001f"), invalid_ke)
    one(
        PayloadType.NOTIFY,
        h("00 00 000c 03 04 4009 c0ffee01"),
        NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, h("c0ffee01")),
    )
    one(PayloadType.NOTIFY, h("00 00 0008 00 00 beef"), NotifyPayload(0xBEEF))  # unknown type kept as int
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.NOTIFY, h("00 00 000a 03 04 4009 c0ff"))  # SPI overruns
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.NOTIFY, h("00 00 0007 03 04 40"))


def test_delete_payloads() -> None:
    one(PayloadType.DELETE, h("00 00 0008 01 00 0000"), DeletePayload(ProtocolId.IKE, ()))
    one(
        PayloadType.DELETE,
        h("00 00 0010 03 04 0002 00001001 00001002"),
        DeletePayload(ProtocolId.ESP, (h("00001001"), h("00001002"))),
    )
    for bad in (
        h("00 00 000c 03 04 0002 00001001"),  # announces 2, carries 1
        h("00 00 000c 03 08 0001 00001001"),  # ESP with SPI size 8
        h("00 00 0008 01 00 0001"),  # IKE with an SPI count
        h("00 00 000c 01 04 0001 00001001"),  # IKE with SPI size 4
        h("00 00 000c 07 04 0001 00001001"),  # unknown protocol
        h("00 00 0007 03 04 00"),
    ):
        with pytest.raises(MalformedPacket):
            parse_payloads(PayloadType.DELETE, bad)
    with pytest.raises(ValueError):
        encode_payloads([DeletePayload(ProtocolId.ESP, (b"\x01\x02",))])
    with pytest.raises(ValueError):
        encode_payloads([DeletePayload(ProtocolId.IKE, (bytes(4),))])


def test_ts_payloads() -> None:
    lan = TrafficSelector.from_network(ipaddress.ip_network("10.71.1.0/24"))
    assert lan == TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, h("0a470100"), h("0a4701ff"))
    assert (lan.start, lan.end) == (ipaddress.ip_address("10.71.1.0"), ipaddress.ip_address("10.71.1.255"))
    v6 = TrafficSelector.from_network(ipaddress.ip_network("2001:db8::/64"), 17, (5060, 5061))
    assert v6.ts_type == TsType.TS_IPV6_ADDR_RANGE and v6.end == ipaddress.ip_address("2001:db8::ffff:ffff:ffff:ffff")
    one(
        PayloadType.TSi,
        h("00 00 0018 01 000000 07 00 0010 0000 ffff 0a470100 0a4701ff"),
        TsPayload(True, (lan,)),
    )
    v6_raw = h("08 11 0028 13c4 13c5") + v6.start_address + v6.end_address
    v4_raw = h("07 00 0010 0000 ffff 0a470100 0a4701ff")
    one(PayloadType.TSr, h("00 00 0040 02 000000") + v6_raw + v4_raw, TsPayload(False, (v6, lan)))
    # start > end parses (a semantic check, elsewhere)
    backwards = h("00 00 0018 01 000000 07 06 0010 ffff 0000 0a4701ff 0a470100")
    assert parse_payloads(PayloadType.TSi, backwards)[0].selectors[0].start_port == 0xFFFF
    for bad in (
        h("00 00 0018 02 000000 07 00 0010 0000 ffff 0a470100 0a4701ff"),  # count 2, one selector
        h("00 00 0018 01 000000 09 00 0010 0000 ffff 0a470100 0a4701ff"),  # unknown TS type
        h("00 00 0018 01 000000 07 00 0014 0000 ffff 0a470100 0a4701ff"),  # wrong selector length
        h("00 00 0018 01 000000 08 00 0010 0000 ffff 0a470100 0a4701ff"),  # IPv6 type, IPv4 length
        h("00 00 0010 01 000000 07 00 0010 0000 ffff"),  # addresses missing
        h("00 00 0007 01 0000"),
    ):
        with pytest.raises(MalformedPacket):
            parse_payloads(PayloadType.TSi, bad)
    with pytest.raises(ValueError):
        encode_payloads([TsPayload(True, (TrafficSelector(7, 0, 0, 0, bytes(16), bytes(16)),))])


def test_ke_and_vendor_payloads() -> None:
    one(PayloadType.KE, h("00 00 000a 0013 0000 abcd"), KePayload(19, h("abcd")))
    one(PayloadType.VENDOR, h("00 00 0007 882fe5"), VendorPayload(h("882fe5")))
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.KE, h("00 00 0007 0013 00"))


def test_sa_with_spi_and_several_proposals() -> None:
    esp = Proposal(1, ProtocolId.ESP, h("c0ffee01"), ESP_TRANSFORMS)
    ike = Proposal(2, ProtocolId.IKE, h("0102030405060708"), ())
    raw = (
        h("00 00 0034")
        + h("02 00 0020 01 03 04 02 c0ffee01")
        + h("03 00 000c 01 00 0014 800e 0100")
        + h("00 00 0008 05 00 0000")
        + h("00 00 0010 02 01 08 00 0102030405060708")
    )
    one(PayloadType.SA, raw, SaPayload((esp, ike)))


def test_transform_attributes_other_than_key_length_are_skipped() -> None:
    raw = (
        h("00 00 0023")  # SA: 4 + 31
        + h("00 00 001f 01 01 00 01")  # proposal: 8 + 23, one transform
        + h("00 00 0017 01 00 0014")  # transform: 8 + 4 + 7 + 4
        + h("8001 0007")  # unknown TV attribute
        + h("0002 0003 aabbcc")  # unknown TLV attribute with 3 bytes of value
        + h("800e 0080")  # Key Length 128
    )
    assert parse_payloads(PayloadType.SA, raw) == (
        SaPayload((Proposal(1, ProtocolId.IKE, b"", (Transform(TransformType.ENCR, 20, 128),)),)),
    )


@pytest.mark.parametrize(
    "transform",
    [
        h("00 00 000c 01 00 0014 000e 0000"),  # Key Length as TLV
        h("00 00 0010 01 00 0014 800e 0100 800e 0080"),  # two Key Lengths
        h("00 00 000e 01 00 0014 0002 0004 aabb"),  # TLV overruns its transform
        h("00 00 000a 01 00 0014 800e"),  # attribute truncated
        h("03 00 000c 01 00 0014 800e 0100"),  # says "more transforms", but it is the last
        h("00 00 0007 01 00 0014 800e 0100"),  # transform length below 8
    ],
)
def test_bad_transforms(transform: bytes) -> None:
    proposal = struct.pack(">BBHBBBB", 0, 0, 8 + len(transform), 1, 1, 0, 1) + transform
    raw = struct.pack(">BBH", 0, 0, 4 + len(proposal)) + proposal
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.SA, raw)


@pytest.mark.parametrize(
    "proposal",
    [
        h("00 00 0010 01 01 00 02 00 00 0008 02 00 0005"),  # announces 2 transforms, carries 1
        h("02 00 0010 01 01 00 01 00 00 0008 02 00 0005"),  # "more proposals" on the last one
        h("00 00 0010 01 01 09 01 00 00 0008 02 00 0005"),  # SPI larger than the proposal
        h("00 00 0011 01 01 00 01 00 00 0008 02 00 0005"),  # proposal length overruns
        h("00 00 0010 01 01 00"),  # truncated header
    ],
)
def test_bad_proposals(proposal: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_payloads(PayloadType.SA, struct.pack(">BBH", 0, 0, 4 + len(proposal)) + proposal)


# --------------------------------------------------------------------------------------------------
# Unknown payloads and the critical bit (§2.5, §3.2)


def test_unknown_payload_without_critical_bit_is_kept() -> None:
    raw = h("2b 00 0006 aabb") + h("00 00 0005 cc")  # CP(47) -> Vendor
    assert parse_payloads(PayloadType.CP, raw) == (UnknownPayload(47, False, h("aabb")), VendorPayload(h("cc")))
    assert encode_payloads([UnknownPayload(47, False, h("aabb")), VendorPayload(h("cc"))]) == (47, raw)


def test_unknown_critical_payload_is_rejected_with_its_type() -> None:
    raw = h("2b 80 0006 aabb") + h("00 00 0005 cc")
    with pytest.raises(UnsupportedCritical) as info:
        parse_payloads(200, raw)
    assert info.value.payload_type == 200
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.notify_data == bytes([200])  # §3.10.1: one-octet payload type
    assert isinstance(info.value, MalformedPacket)
    with pytest.raises(UnsupportedCritical):
        parse_message(with_length(INIT_HEADER_BYTES[:16] + b"\xc8" + INIT_HEADER_BYTES[17:] + raw))


def test_critical_bit_on_known_payload_is_ignored() -> None:
    assert parse_payloads(PayloadType.VENDOR, h("00 80 0005 cc")) == (VendorPayload(h("cc")),)
    # the reserved bits are ignored too
    assert parse_payloads(PayloadType.VENDOR, h("00 7f 0005 cc")) == (VendorPayload(h("cc")),)


def test_unknown_payload_cannot_impersonate_a_known_type() -> None:
    for t in (0, PayloadType.SA, PayloadType.SK, 256):
        with pytest.raises(ValueError):
            encode_payloads([UnknownPayload(t, False, b"")])


def test_critical_unknown_payload_encodes_with_c_bit() -> None:
    assert encode_payloads([UnknownPayload(200, True, b"x")]) == (200, h("00 80 0005 78"))


# --------------------------------------------------------------------------------------------------
# SK payload (§3.14, RFC 5282 AEAD)


class ToyAead:
    """AES-256-GCM like the SK payload of transform 20: 4-byte salt, 8-byte explicit IV, 16-byte ICV."""

    def __init__(self, key: bytes = bytes(range(36))) -> None:
        self.aead = AESGCM(key[:32])
        self.salt = key[32:]
        self.counter = 0
        self.seen_aad: list[bytes] = []

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        self.counter += 1
        self.seen_aad.append(aad)
        iv = self.counter.to_bytes(8, "big")
        return iv + self.aead.encrypt(self.salt + iv, plaintext, aad)

    def unseal(self, aad: bytes, body: bytes) -> bytes:
        if len(body) < 8 + 16:
            raise IntegrityError("SK payload shorter than IV + ICV")
        try:
            return self.aead.decrypt(self.salt + body[:8], body[8:], aad)
        except InvalidTag as exc:
            raise IntegrityError("SK ICV mismatch") from exc


ESP_TRANSFORMS = (Transform(TransformType.ENCR, 20, 256), Transform(TransformType.ESN, 0))
AUTH_HEADER = IkeHeader(SPI_I, h("99" * 8), ExchangeType.IKE_AUTH, 0x08, 1)
AUTH_PAYLOADS = (
    IdPayload(True, IdType.ID_FQDN, b"gwa.ss-lab.test"),
    NotifyPayload(NotifyType.INITIAL_CONTACT),
    AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(32)),
    SaPayload((Proposal(1, ProtocolId.ESP, h("c0ffee01"), ESP_TRANSFORMS),)),
    TsPayload(True, (TrafficSelector.from_network(ipaddress.ip_network("10.71.1.0/24")),)),
    TsPayload(False, (TrafficSelector.from_network(ipaddress.ip_network("10.71.2.0/24")),)),
)


def test_sk_layout_and_round_trip() -> None:
    aead = ToyAead()
    raw = encode_sk_message(AUTH_HEADER, AUTH_PAYLOADS, aead.seal)
    first, inner = encode_payloads(AUTH_PAYLOADS)
    assert len(raw) == 28 + 4 + 8 + len(inner) + 1 + 16
    assert raw[16] == PayloadType.SK and struct.unpack_from(">I", raw, 24)[0] == len(raw)
    assert raw[28:32] == struct.pack(">BBH", first, 0, len(raw) - 28)  # SK generic header
    assert aead.seen_aad == [raw[:32]]  # AAD = IKE header + SK generic header (RFC 5282 §5.1)
    # An independent decryption sees inner payloads followed by Pad Length 0.
    plain = AESGCM(bytes(range(32))).decrypt(bytes(range(32, 36)) + raw[32:40], raw[40:], raw[:32])
    assert plain == inner + b"\x00"
    outer = parse_message(raw)
    assert outer.payloads == (SkPayload(first, raw[32:]),)
    assert open_sk_message(raw, outer, aead.unseal) == Message(AUTH_HEADER, AUTH_PAYLOADS)


def test_empty_sk_is_a_dpd() -> None:
    aead = ToyAead()
    hdr = IkeHeader(SPI_I, h("99" * 8), ExchangeType.INFORMATIONAL, 0x20, 7)
    raw = encode_sk_message(hdr, [], aead.seal)
    assert len(raw) == 28 + 4 + 8 + 1 + 16 and raw[28] == 0
    assert open_sk_message(raw, parse_message(raw), aead.unseal) == Message(hdr, ())


def test_sk_icv_failure_propagates() -> None:
    aead = ToyAead()
    raw = bytearray(encode_sk_message(AUTH_HEADER, AUTH_PAYLOADS, aead.seal))
    for pos in (19, 29, 45, len(raw) - 1):  # header flags, SK reserved bits, ciphertext, ICV
        bad = bytearray(raw)
        bad[pos] ^= 1
        with pytest.raises(IntegrityError):
            open_sk_message(bytes(bad), parse_message(bytes(bad)), aead.unseal)


def sk_with_plaintext(aead: ToyAead, first_inner: int, plaintext: bytes) -> bytes:
    """SK framing built by hand (independent of encode_sk_message), any plaintext/padding."""
    sk_len = 4 + 8 + len(plaintext) + 16
    hdr = SPI_I + h("99" * 8) + struct.pack(">BBBBII", 46, 0x20, 37, 0x08, 2, 28 + sk_len)
    aad = hdr + struct.pack(">BBH", first_inner, 0, sk_len)
    return aad + aead.seal(aad, plaintext)


def test_sk_padding_is_stripped() -> None:
    aead = ToyAead()
    raw = sk_with_plaintext(aead, PayloadType.VENDOR, h("00 00 0005 cc") + h("01 02 03") + b"\x03")
    assert open_sk_message(raw, parse_message(raw), aead.unseal).payloads == (VendorPayload(h("cc")),)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",  # no Pad Length octet
        h("00 00 0005 cc 05"),  # Pad Length 5 > 4 bytes before it
        h("ff"),  # Pad Length 255 with nothing before it
        h("00 00 0005 cc 01"),  # padding eats into the payload -> truncated payload
    ],
)
def test_sk_bad_padding(plaintext: bytes) -> None:
    aead = ToyAead()
    raw = sk_with_plaintext(aead, PayloadType.VENDOR, plaintext)
    with pytest.raises(MalformedPacket):
        open_sk_message(raw, parse_message(raw), aead.unseal)


def test_sk_must_be_last_and_not_nested() -> None:
    header = INIT_HEADER_BYTES[:16] + b"\x2e" + INIT_HEADER_BYTES[17:]  # first payload SK
    raw = with_length(header + h("2b 00 0008 00000000") + h("00 00 0005 cc"))
    with pytest.raises(MalformedPacket, match="last"):
        parse_message(raw)
    with pytest.raises(MalformedPacket, match="inside"):
        parse_payloads(PayloadType.SK, h("00 00 0008 00000000"))
    with pytest.raises(MalformedPacket, match="no SK"):
        open_sk_message(INIT_BYTES, INIT, ToyAead().unseal)
    with pytest.raises(ValueError):
        encode_payloads([SkPayload(0, b""), VendorPayload(b"")])
    with pytest.raises(ValueError):
        encode_sk_message(AUTH_HEADER, [SkPayload(0, b"")], ToyAead().seal)


def test_sk_after_plaintext_payloads_authenticates_them() -> None:
    """RFC 5282 §5.1: the AAD runs from the IKE header to the end of the SK generic header."""
    aead = ToyAead()
    prefix = h("2e 00 0005 cc")  # a Vendor payload before SK
    plaintext = h("00 00 0005 dd 00")
    sk_len = 4 + 8 + len(plaintext) + 16
    hdr = SPI_I + h("99" * 8) + struct.pack(">BBBBII", 43, 0x20, 37, 0x08, 2, 28 + len(prefix) + sk_len)
    aad = hdr + prefix + struct.pack(">BBH", 43, 0, sk_len)
    raw = aad + aead.seal(aad, plaintext)
    msg = parse_message(raw)
    assert isinstance(msg.payloads[-1], SkPayload)
    assert open_sk_message(raw, msg, aead.unseal).payloads == (VendorPayload(h("cc")), VendorPayload(h("dd")))
    # and encode_message reproduces the outer message from its parse
    assert encode_message(msg.header, msg.payloads) == raw


def test_seal_must_return_iv_plaintext_icv() -> None:
    with pytest.raises(ValueError):
        encode_sk_message(AUTH_HEADER, [], lambda aad, pt: pt)


def test_encoder_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        encode_message(IkeHeader(b"short", SPI_R, 34, 0, 0), [])
    with pytest.raises(ValueError):
        encode_message(IkeHeader(SPI_I, SPI_R, 34, 0, 2**32), [])
    with pytest.raises(ValueError):
        encode_payloads([KePayload(70000, b"")])
    with pytest.raises(ValueError):
        encode_payloads([VendorPayload(bytes(65532))])
    with pytest.raises(ValueError):
        encode_payloads([object()])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------
# Hypothesis strategies for every dataclass, and the round trip parse(encode(x)) == x

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
blob = st.binary(max_size=48)
spi4 = st.binary(min_size=4, max_size=4)

transforms = st.builds(Transform, st.sampled_from(list(TransformType)) | u8, u16, st.none() | u16)
proposal_spis = st.binary(max_size=16)
proposals = st.builds(
    Proposal, u8, st.sampled_from(list(ProtocolId)) | u8, proposal_spis, st.lists(transforms, max_size=5).map(tuple)
)
addr4 = st.binary(min_size=4, max_size=4)
addr16 = st.binary(min_size=16, max_size=16)
selectors = st.one_of(
    st.builds(TrafficSelector, st.just(TsType.TS_IPV4_ADDR_RANGE), u8, u16, u16, addr4, addr4),
    st.builds(TrafficSelector, st.just(TsType.TS_IPV6_ADDR_RANGE), u8, u16, u16, addr16, addr16),
)
deletes = st.one_of(
    st.just(DeletePayload(ProtocolId.IKE, ())),
    st.builds(DeletePayload, st.sampled_from([ProtocolId.AH, ProtocolId.ESP]), st.lists(spi4, max_size=5).map(tuple)),
)
UNKNOWN_TYPES = [t for t in range(1, 256) if t not in DECODERS and t not in (PayloadType.SK, PayloadType.SKF)]

payloads = st.one_of(
    st.builds(SaPayload, st.lists(proposals, max_size=3).map(tuple)),
    st.builds(KePayload, u16, blob),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(IdPayload, st.booleans(), u8, blob),
    st.builds(AuthPayload, u8, blob),
    st.builds(CertPayload, u8, blob),
    st.builds(CertReqPayload, u8, blob),
    st.builds(NotifyPayload, u16, u8, st.binary(max_size=16), blob),
    deletes,
    st.builds(TsPayload, st.booleans(), st.lists(selectors, max_size=4).map(tuple)),
    st.builds(VendorPayload, blob),
    st.builds(UnknownPayload, st.sampled_from(UNKNOWN_TYPES), st.just(False), blob),
)
headers = st.builds(IkeHeader, st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8), u8, u8, u32)
payload_lists = st.lists(payloads, max_size=8).map(tuple)
sk_payloads = st.builds(SkPayload, u8, st.binary(max_size=64))


@settings(max_examples=300, deadline=None)
@given(payload_lists)
def test_payload_chain_round_trip(ps: tuple) -> None:
    first, raw = encode_payloads(ps)
    assert parse_payloads(first, raw) == ps
    assert encode_payloads(parse_payloads(first, raw)) == (first, raw)


@settings(max_examples=200, deadline=None)
@given(headers, payload_lists, st.none() | sk_payloads)
def test_message_round_trip(header: IkeHeader, ps: tuple, sk: SkPayload | None) -> None:
    ps = ps + ((sk,) if sk is not None else ())
    raw = encode_message(header, ps)
    assert parse_message(raw) == Message(header, ps)
    assert parse_header(raw) == header


@settings(max_examples=100, deadline=None)
@given(headers, payload_lists)
def test_sk_message_round_trip(header: IkeHeader, ps: tuple) -> None:
    aead = ToyAead()
    raw = encode_sk_message(header, ps, aead.seal)
    assert open_sk_message(raw, parse_message(raw), aead.unseal) == Message(header, ps)
