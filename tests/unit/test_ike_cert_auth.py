"""Certificate authentication between two IKE cores back to back (RFC 7296 §2.15, RFC 7427): success
with ECDSA and RSA gateway keys, and AUTHENTICATION_FAILED for an expired or foreign certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from policy.ts import ranges
from tests.unit.test_ike_session import BR, HQ, Wire, events, rng
from tunnel.config.pkifiles import create_ca, issue, load_certificate, load_private_key
from tunnel.ike.certs import CertVerifier, PeerIdentity
from tunnel.ike.config import CertAuth, IkeConfig
from tunnel.ike.constants import NotifyType
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import ChildSaEstablished, IkeSaFailed
from tunnel.ike.trust import Credential, key_hash
from tunnel.ike.window import Backoff

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
net = ipaddress.ip_network


def make_pki(directory: Path, key_type: str, name: str = "Site CA") -> dict[str, tuple]:
    ca_crt, ca_key = create_ca(directory, name, now=NOW)
    out = {}
    for site in ("hq", "br"):
        crt, key = issue(ca_crt, ca_key, directory / site, f"{site}.test", key_type=key_type, days=30, now=NOW)
        out[site] = (load_certificate(crt), load_private_key(key))
    out["ca"] = (load_certificate(ca_crt), None)
    return out


def cert_auth(own: tuple, ca) -> CertAuth:
    verifier = CertVerifier([ca])
    return CertAuth(
        (Credential(own[1], (own[0].public_bytes(serialization.Encoding.DER),), (key_hash(ca),)),),
        lambda chain, id_type, data, now: verifier.verify(chain, PeerIdentity(id_type, data), now),
        key_hash(ca),
    )


def dispatcher(name: str, local: str, remote: str, me: str, peer: str, auth: CertAuth, clock, addr: str, seed: int):
    config = IkeConfig(
        tunnel=name, local_id=(2, f"{me}.test".encode()), remote_id=(2, f"{peer}.test".encode()), auth=auth,
        local_ts=ranges([net(local)]), remote_ts=ranges([net(remote)]), backoff=Backoff(1.0, 2.0, 3), wall_clock=clock,
    )
    return IkeDispatcher([(config, addr)], rng(seed))


def run(hq_auth: CertAuth, br_auth: CertAuth, br_clock=lambda: NOW):
    hq = dispatcher("branch1", "10.1.0.0/24", "10.2.0.0/24", "hq", "br", hq_auth, lambda: NOW, BR, 1)
    br = dispatcher("hq", "10.2.0.0/24", "10.1.0.0/24", "br", "hq", br_auth, br_clock, HQ, 2)
    wire = Wire(hq, br)
    hq.initiate("branch1", 0.0)
    wire.pump()
    return events(hq), events(br)


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa-3072"])
def test_certificates_authenticate_both_ways(tmp_path: Path, key_type: str) -> None:
    pki = make_pki(tmp_path, key_type)
    ca = pki["ca"][0]
    e_hq, e_br = run(cert_auth(pki["hq"], ca), cert_auth(pki["br"], ca))
    assert any(isinstance(e, ChildSaEstablished) for e in e_hq)
    assert any(isinstance(e, ChildSaEstablished) for e in e_br)


def test_expired_certificate_is_authentication_failed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "ecdsa-p256")
    ca = pki["ca"][0]
    def later() -> dt.datetime:  # the gateway certificates were issued for 30 days
        return NOW + dt.timedelta(days=60)

    e_hq, e_br = run(cert_auth(pki["hq"], ca), cert_auth(pki["br"], ca), br_clock=later)
    failed = [e for e in e_br if isinstance(e, IkeSaFailed)]
    assert failed and failed[0].notify == NotifyType.AUTHENTICATION_FAILED and "expired" in failed[0].reason
    assert any(isinstance(e, IkeSaFailed) and "AUTHENTICATION_FAILED" in e.reason for e in e_hq)
    assert not any(isinstance(e, ChildSaEstablished) for e in e_hq + e_br)


def test_certificate_from_a_foreign_ca_is_refused(tmp_path: Path) -> None:
    ours, theirs = make_pki(tmp_path / "ours", "ecdsa-p256"), make_pki(tmp_path / "theirs", "ecdsa-p256", "Other CA")
    e_hq, e_br = run(cert_auth(theirs["hq"], theirs["ca"][0]), cert_auth(ours["br"], ours["ca"][0]))
    failed = [e for e in e_br if isinstance(e, IkeSaFailed)]
    assert failed and failed[0].notify == NotifyType.AUTHENTICATION_FAILED and "not trusted" in failed[0].reason
