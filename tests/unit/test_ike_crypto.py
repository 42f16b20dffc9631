"""IKEv2 crypto cores: dh (RFC 7748, RFC 5903, RFC 3526, RFC 8031), keys (RFC 4868, RFC 7296 §2.13-2.23)
and sk (RFC 5282). Published test vectors first, then independent recomputations with hmac/hashlib and
cryptography's AESGCM."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnel.ike import dh, keys, sk
from tunnel.ike.constants import DhGroup, PrfId
from tunnel.ike.errors import DegeneratePublicValue, IntegrityError, InvalidSyntax


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def fixed(value: bytes):
    """random_bytes that hands out exactly `value` once: the key pair is the vector's."""
    calls = []

    def random_bytes(n: int) -> bytes:
        assert n == len(value) and not calls
        calls.append(n)
        return value

    return random_bytes


def counter_random(seed: int):
    """Deterministic, distinct bytes for reproducible random key pairs."""
    stream = (hashlib.sha512(f"{seed}:{i}".encode()).digest() for i in itertools.count())
    buffer = bytearray()

    def random_bytes(n: int) -> bytes:
        while len(buffer) < n:
            buffer.extend(next(stream))
        out = bytes(buffer[:n])
        del buffer[:n]
        return out

    return random_bytes


# ---------------------------------------------------------------------------------------------------------
# dh: group 31, RFC 7748 / RFC 8031

RFC7748_5_2 = [  # (scalar, input u-coordinate, output u-coordinate)
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",  # bit 255 set: must be masked
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]
RFC7748_6_1 = {
    "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_5_2)
def test_x25519_rfc7748_section_5_2(scalar, u, out):
    key = dh.generate(DhGroup.CURVE_25519, fixed(h(scalar)))
    assert key.shared_secret(h(u)) == h(out)


def test_x25519_rfc7748_section_6_1():
    v = {name: h(value) for name, value in RFC7748_6_1.items()}
    alice = dh.generate(31, fixed(v["alice_private"]))
    bob = dh.generate(31, fixed(v["bob_private"]))
    assert alice.public == v["alice_public"]  # RFC 8031 §2: the KE data is the 32-byte u-coordinate
    assert bob.public == v["bob_public"]
    assert alice.shared_secret(bob.public) == v["shared"]
    assert bob.shared_secret(alice.public) == v["shared"]


@pytest.mark.parametrize("low_order_u", [
    bytes(32),                                  # u = 0
    (1).to_bytes(32, "little"),                 # u = 1
    h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order-8 point
])
def test_x25519_all_zero_shared_secret_rejected_rfc8031_section_2_3(low_order_u):
    key = dh.generate(31, fixed(h(RFC7748_6_1["alice_private"])))
    with pytest.raises(DegeneratePublicValue):
        key.shared_secret(low_order_u)


# ---------------------------------------------------------------------------------------------------------
# dh: group 19, RFC 5903 §8.1

RFC5903_8_1 = {
    "i": "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
    "gix": "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
    "giy": "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
    "r": "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
    "grx": "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
    "gry": "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
    "girx": "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
}


def test_ecp256_rfc5903_section_8_1():
    v = {name: h(value) for name, value in RFC5903_8_1.items()}
    initiator = dh.generate(DhGroup.ECP_256, fixed(v["i"]))
    responder = dh.generate(DhGroup.ECP_256, fixed(v["r"]))
    assert initiator.public == v["gix"] + v["giy"]  # RFC 5903 §7: x || y, 64 bytes, no 0x04
    assert responder.public == v["grx"] + v["gry"]
    assert initiator.shared_secret(responder.public) == v["girx"]  # §7: the x coordinate only
    assert responder.shared_secret(initiator.public) == v["girx"]


def test_ecp256_off_curve_point_rejected():
    key = dh.generate(19, fixed(h(RFC5903_8_1["i"])))
    good = h(RFC5903_8_1["grx"] + RFC5903_8_1["gry"])
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    for bad in (off_curve, bytes(64), b"\xff" * 64):
        with pytest.raises(DegeneratePublicValue):
            key.shared_secret(bad)


def test_ecp256_scalar_out_of_range_is_redrawn():
    draws = iter([b"\xff" * 32, bytes(32), h(RFC5903_8_1["i"])])  # >= n, 0, then a good scalar
    key = dh.generate(19, lambda n: next(draws))
    assert key.public == h(RFC5903_8_1["gix"] + RFC5903_8_1["giy"])


# ---------------------------------------------------------------------------------------------------------
# dh: group 14, RFC 3526 §3

RFC3526_2048_HEX = """
      FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
      29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
      EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
      E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
      EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
      C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
      83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
      670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
      E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
      DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
      15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
"""


def test_modp2048_prime_is_rfc3526_section_3():
    assert dh.MODP_2048_P == int.from_bytes(h(RFC3526_2048_HEX), "big")
    assert dh.MODP_2048_P.bit_length() == 2048
    assert dh.MODP_2048_G == 2


def test_modp2048_round_trip_and_padding():
    a = dh.generate(DhGroup.MODP_2048, counter_random(1))
    b = dh.generate(DhGroup.MODP_2048, counter_random(2))
    assert len(a.public) == len(b.public) == 256
    secret = a.shared_secret(b.public)
    assert secret == b.shared_secret(a.public)
    assert len(secret) == 256
    # Independent check with the exponents the key pairs were drawn from.
    xa = int.from_bytes(counter_random(1)(dh.MODP_2048_EXPONENT_BYTES), "big")
    assert a.public == pow(2, xa, dh.MODP_2048_P).to_bytes(256, "big")
    assert secret == pow(int.from_bytes(b.public, "big"), xa, dh.MODP_2048_P).to_bytes(256, "big")


def test_modp2048_small_public_value_is_left_padded():
    # x = 8 gives g^x = 256: the KE data is 254 zero bytes then 0x01 0x00 (RFC 7296 §3.4).
    key = dh.generate(14, fixed((8).to_bytes(dh.MODP_2048_EXPONENT_BYTES, "big")))
    assert key.public == bytes(254) + b"\x01\x00"


@pytest.mark.parametrize("y", [0, 1, dh.MODP_2048_P - 1, dh.MODP_2048_P, dh.MODP_2048_P + 1, 2**2048 - 1])
def test_modp2048_degenerate_public_values_rejected(y):
    key = dh.generate(14, counter_random(3))
    with pytest.raises(DegeneratePublicValue):
        key.shared_secret(y.to_bytes(256, "big"))


# ---------------------------------------------------------------------------------------------------------
# dh: API

def test_key_exchange_lengths():
    assert dh.key_exchange_length(31) == 32
    assert dh.key_exchange_length(19) == 64
    assert dh.key_exchange_length(14) == 256
    assert dh.key_exchange_length(15) == 384 and dh.key_exchange_length(20) == 96
    for bad in (1, 2, 5, 16, 21, 32, 0):
        with pytest.raises(ValueError):
            dh.key_exchange_length(bad)
        with pytest.raises(ValueError):
            dh.generate(bad, os.urandom)


@pytest.mark.parametrize("group", [31, 19, 14])
def test_wrong_length_public_value_rejected(group):
    key = dh.generate(group, counter_random(4))
    n = dh.key_exchange_length(group)
    for size in (0, n - 1, n + 1, n + 32):
        with pytest.raises(DegeneratePublicValue):
            key.shared_secret(bytes([1]) * size)


@pytest.mark.parametrize("group", [31, 19, 14])
def test_generate_is_deterministic_and_agrees(group):
    a1 = dh.generate(group, counter_random(10))
    a2 = dh.generate(group, counter_random(10))
    b = dh.generate(group, counter_random(11))
    assert a1.public == a2.public != b.public
    assert a1.group == group
    assert a1.shared_secret(b.public) == b.shared_secret(a1.public)
    assert len(a1.public) == dh.key_exchange_length(group)


def test_dh_private_never_shows_its_key():
    key = dh.generate(31, fixed(h(RFC7748_6_1["alice_private"])))
    for text in (repr(key), str(key)):
        assert RFC7748_6_1["alice_private"] not in text
        assert "redacted" in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


# ---------------------------------------------------------------------------------------------------------
# keys: PRF, RFC 4868 §2.7.1 (Test Cases PRF-1 and PRF-2)

RFC4868_PRF = [
    (PrfId.HMAC_SHA2_256, b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (PrfId.HMAC_SHA2_256, b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (PrfId.HMAC_SHA2_384, b"\x0b" * 20, b"Hi There",
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
     "faea9ea9076ede7f4af152e8b2fa9cb6"),
    (PrfId.HMAC_SHA2_384, b"Jefe", b"what do ya want for nothing?",
     "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
     "8e2240ca5e69e2c78b3239ecfab21649"),
    (PrfId.HMAC_SHA2_512, b"\x0b" * 20, b"Hi There",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (PrfId.HMAC_SHA2_512, b"Jefe", b"what do ya want for nothing?",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
]


@pytest.mark.parametrize(("prf_id", "key", "data", "expected"), RFC4868_PRF)
def test_prf_rfc4868_section_2_7_1(prf_id, key, data, expected):
    assert keys.prf(prf_id, key, data) == h(expected)


def test_prf_key_sizes():
    assert keys.prf_key_size(PrfId.HMAC_SHA2_256) == 32
    assert keys.prf_key_size(PrfId.HMAC_SHA2_384) == 48
    assert keys.prf_key_size(PrfId.HMAC_SHA2_512) == 64
    assert keys.prf_key_size(PrfId.HMAC_SHA1) == 20
    for bad in (0, 1, 3, 4, 8):
        with pytest.raises(ValueError):
            keys.prf_key_size(bad)
        with pytest.raises(ValueError):
            keys.prf(bad, b"k", b"d")


# ---------------------------------------------------------------------------------------------------------
# keys: prf+ (RFC 7296 §2.13)

def naive_prf_plus(digest, key: bytes, seed: bytes, length: int) -> bytes:
    """T1 = prf(K, S | 0x01); Tn = prf(K, Tn-1 | S | n), written out independently of keys.py."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), digest).digest()
        out += t
        n += 1
    return out[:length]


def test_prf_plus_structure_rfc7296_section_2_13():
    key, seed = b"K" * 32, b"S" * 40
    t1 = hmac.new(key, seed + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", hashlib.sha256).digest()
    t3 = hmac.new(key, t2 + seed + b"\x03", hashlib.sha256).digest()
    assert keys.prf_plus(PrfId.HMAC_SHA2_256, key, seed, 96) == t1 + t2 + t3
    assert keys.prf_plus(PrfId.HMAC_SHA2_256, key, seed, 33) == t1 + t2[:1]
    assert keys.prf_plus(PrfId.HMAC_SHA2_256, key, seed, 0) == b""


@pytest.mark.parametrize(("prf_id", "digest"), [
    (PrfId.HMAC_SHA1, hashlib.sha1), (PrfId.HMAC_SHA2_256, hashlib.sha256),
    (PrfId.HMAC_SHA2_384, hashlib.sha384), (PrfId.HMAC_SHA2_512, hashlib.sha512),
])
def test_prf_plus_limit_255_iterations(prf_id, digest):
    hash_len = digest().digest_size
    longest = keys.prf_plus(prf_id, b"k", b"s", 255 * hash_len)
    assert longest == naive_prf_plus(digest, b"k", b"s", 255 * hash_len)
    with pytest.raises(ValueError):
        keys.prf_plus(prf_id, b"k", b"s", 255 * hash_len + 1)
    with pytest.raises(ValueError):
        keys.prf_plus(prf_id, b"k", b"s", -1)


# ---------------------------------------------------------------------------------------------------------
# keys: a published IKEv2 KDF known answer. NIST CAVS (SP 800-135 §7.1) IKEv2 vector, PRF-HMAC-SHA1,
# 132-byte DKM; values as recorded in the source comment of libreswan's IKEv2 CAVS test driver.

CAVS_SHA1 = {
    "gir": "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "gir_new": "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "ni": "32b50d5f4a3763f3", "nr": "9206a04b26564cb1",
    "spi_i": "34c9e7c188868785", "spi_r": "3ff77d760d2b2199",
    "skeyseed": "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "dkm": "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9"
           "92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
           "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4",
    "dkm_child": "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e092d1"
                 "f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d88"
                 "3ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4",
    "dkm_child_dh": "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14c4"
                    "00a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ff"
                    "b7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c",
    "skeyseed_rekey": "63e81194946ebd05df7df5ebf5d8750056bf1f1d",
}


def test_ikev2_kdf_cavs_known_answer():
    v = {name: h(value) for name, value in CAVS_SHA1.items()}
    sha1 = PrfId.HMAC_SHA1
    seed = keys.skeyseed(sha1, v["ni"], v["nr"], v["gir"])
    assert seed == v["skeyseed"]
    stream = v["ni"] + v["nr"] + v["spi_i"] + v["spi_r"]
    assert keys.prf_plus(sha1, seed, stream, 132) == v["dkm"]
    sk_d = v["dkm"][:20]  # SK_d is the first prf-output-sized slice (§2.14)
    # Child SA KEYMAT without and with PFS (§2.17): split in halves it is the two directions' keys.
    assert b"".join(keys.child_keys(sha1, sk_d, v["ni"], v["nr"], encr_key_len=66)) == v["dkm_child"]
    assert b"".join(keys.child_keys(sha1, sk_d, v["ni"], v["nr"], v["gir_new"], encr_key_len=66)) == \
        v["dkm_child_dh"]
    assert keys.rekey_skeyseed(sha1, sk_d, v["gir_new"], v["ni"], v["nr"]) == v["skeyseed_rekey"]
    # derive_ike_keys over the same stream cuts the same DKM.
    ike = keys.derive_ike_keys(sha1, seed, v["ni"], v["nr"], v["spi_i"], v["spi_r"],
                               encr_key_len=16, integ_key_len=20)
    assert ike.sk_d + ike.sk_ai + ike.sk_ar + ike.sk_ei + ike.sk_er + ike.sk_pi + ike.sk_pr == v["dkm"][:132]


# ---------------------------------------------------------------------------------------------------------
# keys: SKEYSEED and the seven keys for the lab suite (AES-GCM-16-256, PRF-HMAC-SHA2-256), recomputed here

NI = bytes(range(32))
NR = bytes(range(100, 132))
SPI_I = h("0123456789abcdef")
SPI_R = h("fedcba9876543210")
GIR = bytes(range(200, 232))


def test_derive_ike_keys_slices_rfc7296_section_2_14():
    seed = keys.skeyseed(PrfId.HMAC_SHA2_256, NI, NR, GIR)
    assert seed == hmac.new(NI + NR, GIR, hashlib.sha256).digest()
    ike = keys.derive_ike_keys(PrfId.HMAC_SHA2_256, seed, NI, NR, SPI_I, SPI_R)
    stream = naive_prf_plus(hashlib.sha256, seed, NI + NR + SPI_I + SPI_R, 32 + 0 + 0 + 36 + 36 + 32 + 32)
    assert ike.sk_d == stream[0:32]
    assert ike.sk_ai == b"" and ike.sk_ar == b""
    assert ike.sk_ei == stream[32:68]
    assert ike.sk_er == stream[68:104]
    assert ike.sk_pi == stream[104:136]
    assert ike.sk_pr == stream[136:168]
    assert [len(k) for k in (ike.sk_d, ike.sk_ei, ike.sk_er, ike.sk_pi, ike.sk_pr)] == [32, 36, 36, 32, 32]


def test_derive_ike_keys_with_integrity_and_other_prfs():
    ike = keys.derive_ike_keys(PrfId.HMAC_SHA2_512, b"seed", NI, NR, SPI_I, SPI_R, encr_key_len=32,
                               integ_key_len=64)
    stream = naive_prf_plus(hashlib.sha512, b"seed", NI + NR + SPI_I + SPI_R, 64 * 5 + 32 * 2)
    assert ike.sk_d == stream[:64]
    assert ike.sk_ai == stream[64:128] and ike.sk_ar == stream[128:192]
    assert ike.sk_ei == stream[192:224] and ike.sk_er == stream[224:256]
    assert ike.sk_pi == stream[256:320] and ike.sk_pr == stream[320:384]
    with pytest.raises(ValueError):
        keys.derive_ike_keys(PrfId.HMAC_SHA2_256, b"seed", NI, NR, SPI_I[:4], SPI_R)


def test_rekey_skeyseed_rfc7296_section_2_18():
    sk_d_old = b"\x42" * 32
    expected = hmac.new(sk_d_old, GIR + NI + NR, hashlib.sha256).digest()
    assert keys.rekey_skeyseed(PrfId.HMAC_SHA2_256, sk_d_old, GIR, NI, NR) == expected


def test_child_keys_rfc7296_section_2_17():
    sk_d = b"\x17" * 32
    i_to_r, r_to_i = keys.child_keys(PrfId.HMAC_SHA2_256, sk_d, NI, NR)
    keymat = naive_prf_plus(hashlib.sha256, sk_d, NI + NR, 72)
    assert (i_to_r, r_to_i) == (keymat[:36], keymat[36:])
    pfs = keys.child_keys(PrfId.HMAC_SHA2_256, sk_d, NI, NR, shared=GIR)
    keymat = naive_prf_plus(hashlib.sha256, sk_d, GIR + NI + NR, 72)
    assert pfs == (keymat[:36], keymat[36:])


def test_ike_keys_repr_hides_keys():
    ike = keys.derive_ike_keys(PrfId.HMAC_SHA2_256, b"seed", NI, NR, SPI_I, SPI_R)
    for text in (repr(ike), str(ike)):
        for value in (ike.sk_d, ike.sk_ei, ike.sk_er, ike.sk_pi, ike.sk_pr):
            assert value.hex() not in text
            assert repr(value) not in text
        assert "sk_ei=<36 bytes>" in text


# ---------------------------------------------------------------------------------------------------------
# keys: PSK AUTH (§2.15) and NAT detection (§2.23)

def test_psk_auth_rfc7296_section_2_15():
    psk = b"correct horse battery staple"
    message1 = b"\x00" * 28 + b"IKE_SA_INIT request bytes"
    id_body = b"\x02\x00\x00\x00" + b"gwa.ss-lab.test"  # ID_FQDN, 3 reserved octets, data
    sk_pi = b"\x33" * 32
    octets = keys.signed_octets(message1, NR, PrfId.HMAC_SHA2_256, sk_pi, id_body)
    assert octets == message1 + NR + hmac.new(sk_pi, id_body, hashlib.sha256).digest()
    pad_key = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha256).digest()
    expected = hmac.new(pad_key, octets, hashlib.sha256).digest()
    assert keys.psk_auth(PrfId.HMAC_SHA2_256, psk, octets) == expected
    assert len(expected) == 32  # AUTH data length on the wire for PRF_HMAC_SHA2_256


def test_nat_detection_hash_rfc7296_section_2_23():
    ip = bytes([192, 0, 2, 1])
    expected = hashlib.sha1(SPI_I + bytes(8) + ip + b"\x11\x94").digest()  # port 4500
    assert keys.nat_detection_hash(SPI_I, bytes(8), ip, 4500) == expected
    assert len(expected) == 20
    v6 = bytes(15) + b"\x01"
    assert keys.nat_detection_hash(SPI_I, SPI_R, v6, 500) == hashlib.sha1(SPI_I + SPI_R + v6 + b"\x01\xf4").digest()
    with pytest.raises(ValueError):
        keys.nat_detection_hash(SPI_I, SPI_R, ip, 70000)
    with pytest.raises(ValueError):
        keys.nat_detection_hash(SPI_I, SPI_R, b"\x01\x02\x03", 500)


# ---------------------------------------------------------------------------------------------------------
# sk: RFC 5282 AES-GCM SK payload

SK_KEY = bytes(range(36))  # 32-byte AES-256 key, then the 4-byte salt 20 21 22 23
AAD = b"\xaa" * 28 + b"\x2e\x00\x00\x35"  # IKE header + SK generic header


def test_sk_round_trip_and_nonce_layout_rfc5282_section_4():
    sealer, opener = sk.SkCipher(SK_KEY), sk.SkCipher(SK_KEY)
    plaintext = sk.pad(b"inner payloads")
    body = sealer.seal(AAD, plaintext)
    assert len(body) == sk.sealed_length(len(b"inner payloads")) == 8 + len(plaintext) + 16
    assert opener.open(AAD, body) == plaintext
    assert sk.unpad(opener.open(AAD, body)) == b"inner payloads"
    # Independent decryption: nonce = salt (last 4 bytes of SK_e) || explicit IV (first 8 bytes of body).
    iv, ct = body[:8], body[8:]
    assert AESGCM(SK_KEY[:32]).decrypt(SK_KEY[32:] + iv, ct, AAD) == plaintext


def test_sk_iv_is_a_counter_unique_per_key():
    sealer = sk.SkCipher(SK_KEY)
    ivs = [sealer.seal(AAD, b"x")[:8] for _ in range(1000)]
    assert len(set(ivs)) == 1000
    assert [int.from_bytes(iv, "big") for iv in ivs] == list(range(1000))


def test_sk_open_does_not_advance_the_iv():
    cipher = sk.SkCipher(SK_KEY)
    first = cipher.seal(AAD, b"a")
    cipher.open(AAD, first)
    assert cipher.seal(AAD, b"b")[:8] == (1).to_bytes(8, "big")


def test_sk_tampering_is_an_integrity_error():
    cipher = sk.SkCipher(SK_KEY)
    body = cipher.seal(AAD, b"payloads\x00")
    for i in (0, 7, 8, len(body) - 17, len(body) - 1):
        tampered = bytearray(body)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            cipher.open(AAD, bytes(tampered))
    with pytest.raises(IntegrityError):
        cipher.open(AAD[:-1] + b"\x36", body)
    with pytest.raises(IntegrityError):
        cipher.open(AAD, body[:-1])
    with pytest.raises(IntegrityError):
        sk.SkCipher(bytes(36)).open(AAD, body)  # wrong key (SK_er vs SK_ei)


@pytest.mark.parametrize("length", [0, 1, 8, 23])
def test_sk_short_body_is_an_integrity_error(length):
    with pytest.raises(IntegrityError):
        sk.SkCipher(SK_KEY).open(AAD, bytes(length))


def test_sk_empty_plaintext_is_24_bytes():
    body = sk.SkCipher(SK_KEY).seal(AAD, b"")
    assert len(body) == 24
    assert sk.SkCipher(SK_KEY).open(AAD, body) == b""


@pytest.mark.parametrize("key_len", [20, 28, 36])
def test_sk_aes_key_sizes(key_len):
    key = bytes(range(key_len))
    body = sk.SkCipher(key).seal(AAD, b"data")
    assert AESGCM(key[:-4]).decrypt(key[-4:] + body[:8], body[8:], AAD) == b"data"


@pytest.mark.parametrize("key_len", [0, 16, 32, 35, 37, 40])
def test_sk_bad_key_lengths(key_len):
    with pytest.raises(ValueError):
        sk.SkCipher(bytes(key_len))


def test_sk_unpad():
    assert sk.unpad(b"payload" + b"\x00") == b"payload"
    assert sk.unpad(b"payload" + b"\xee\xee\x02") == b"payload"  # padding contents ignored (§3.14)
    for bad in (b"", b"\x05", b"ab\x03"):
        with pytest.raises(InvalidSyntax):
            sk.unpad(bad)


def test_sk_cipher_never_shows_its_key():
    cipher = sk.SkCipher(SK_KEY)
    for text in (repr(cipher), str(cipher)):
        assert SK_KEY.hex() not in text
        assert SK_KEY[:32].hex() not in text
        assert SK_KEY[32:].hex() not in text
        assert "redacted" in text
    with pytest.raises(TypeError):
        pickle.dumps(cipher)
