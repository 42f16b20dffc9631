"""DH groups 15 (MODP-3072) and 20 (ECP-384), and RSASSA-PSS with SHA-384/512: the additions the
strongSwan interop matrix (tests/lab/test_interop_matrix.py) runs, checked here without a peer."""

from __future__ import annotations

import math
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tunnel.config.proposals import parse_ike_proposal
from tunnel.ike import dh
from tunnel.ike.certs import _BY_NAME, verify_auth
from tunnel.ike.constants import AuthMethod, DhGroup
from tunnel.ike.errors import AuthenticationFailed, DegeneratePublicValue


def test_modp_3072_is_rfc_3526_group_15() -> None:
    """p = 2^3072 - 2^3008 - 1 + 2^64 * ([2^2942 pi] + 1690314): the structure and pi's leading bits."""
    p = dh.MODP_3072_P
    assert p.bit_length() == 3072 and p % 2**64 == 2**64 - 1 and p >> 3008 == 2**64 - 1
    k = (p - 2**3072 + 2**3008 + 1) // 2**64 - 1690314
    assert k >> (2942 - 50) == int(math.pi * 2**50)
    assert pow(2, (p - 1) // 2, p) == 1  # 2 generates the prime-order subgroup of a safe prime


@pytest.mark.parametrize("group,length", [(DhGroup.MODP_3072, 384), (DhGroup.ECP_384, 96)])
def test_new_groups_agree_and_refuse_degenerate_values(group: DhGroup, length: int) -> None:
    a, b = dh.generate(group, os.urandom), dh.generate(group, os.urandom)
    assert len(a.public) == length == dh.key_exchange_length(group)
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    for bad in (bytes(length), b"\xff" * length, a.public[:-1]):
        with pytest.raises(DegeneratePublicValue):
            a.shared_secret(bad)


def test_proposal_names() -> None:
    assert parse_ike_proposal("aes256gcm16-prfsha384-ecp384").dh == DhGroup.ECP_384
    assert parse_ike_proposal("aes256gcm16-prfsha512-modp3072").dh == DhGroup.MODP_3072


@pytest.mark.parametrize("name,hash_type", [("RSASSA-PSS-SHA384", hashes.SHA384), ("RSASSA-PSS-SHA512", hashes.SHA512)])
def test_rsa_pss_with_longer_hashes_verifies(name: str, hash_type: type) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    identifier = _BY_NAME[name].algorithm_identifier
    signature = key.sign(b"octets", padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=hash_type.digest_size),
                         hash_type())
    data = bytes([len(identifier)]) + identifier + signature
    verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"octets")
    with pytest.raises(AuthenticationFailed):
        verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"other octets")
