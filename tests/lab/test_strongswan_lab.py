"""Real strongSwan (charon, kernel-libipsec in userspace) on both gateways of the two-sites lab.

IKEv2 with PSK (curve25519 and ecp256) and with ECDSA certificates: the tunnel carries hq-host ->
branch1-host pings, `sa_summary` reports the negotiated algorithms, the WAN capture holds nothing
but IKE and ESP-in-UDP between the gateway WAN addresses, and every ESP packet decrypts (GCM tag
verified) with scapy using the keys `esp_keys()` recovers from charon's key log.
"""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import ESP, IPSecIntegrityError
from scapy.utils import rdpcap

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.strongswan import StrongSwan, StrongSwanError, scapy_sas, strongswan_installed
from tests.lab.wan import analyse, sas_from_esp_log

HQ_WAN, BR_WAN = "198.18.1.2", "198.18.2.2"
WAN = {HQ_WAN, BR_WAN}


@pytest.fixture(autouse=True)
def _require_strongswan() -> None:
    reason = strongswan_installed()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"strongSwan lab tests cannot run in CI: {reason} (scripts/bootstrap installs it)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def lab():
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        yield lab


# --------------------------------------------------------------------------------------------------
# helpers


def _udp_payload(ip: IP) -> bytes:
    return bytes(ip[UDP].payload)


def _is_ike(ip: IP) -> bool:
    """IKE on 500, or on 4500 behind the 4-byte zero non-ESP marker (RFC 3948 §2.2)."""
    if UDP not in ip:
        return False
    if ip[UDP].dport == 500 or ip[UDP].sport == 500:
        return True
    return 4500 in (ip[UDP].sport, ip[UDP].dport) and _udp_payload(ip)[:4] == b"\0\0\0\0"


def run_tunnel(lab: Lab, workdir: Path, rekey: bool = False, **kw) -> dict:
    """strongSwan on hq and branch1, initiated from hq; pings (and optionally a rekey from branch1)
    inside a WAN capture on the router's link to hq. Returns what the assertions need."""
    hq = StrongSwan(lab, "hq", workdir / "hq", remote_site="branch1", **kw["hq"], **kw["common"])
    br = StrongSwan(lab, "branch1", workdir / "br", remote_site="hq", **kw["br"], **kw["common"])
    pcap = workdir / "wan.pcap"
    dst = lab.addr("branch1-host")
    pings = []
    with lab.capture("router", lab.site("hq").router_if, pcap) as cap:
        hq.start()
        br.start()
        hq.initiate()
        pings.append(ping(lab, "hq-host", dst, count=3, interval=0.05))
        summary = hq.sa_summary()
        if rekey:
            br.rekey("child")  # the responder of the IKE_SA initiates this CHILD_SA
            pings.append(ping(lab, "hq-host", dst, count=3, interval=0.05))
        summary_after = hq.sa_summary()
        hq.terminate()  # the DELETE exchange ends up in the capture too
    return {"hq": hq, "br": br, "pcap": pcap, "cap": cap, "pings": pings, "summary": summary,
            "summary_after": summary_after, "keys": hq.esp_keys(), "br_keys": br.esp_keys()}


def check_wan(lab: Lab, r: dict, child_sas: int) -> None:
    """Only IKE and ESP-in-UDP between the WAN addresses; every ESP packet decrypts to our pings."""
    assert r["cap"].kernel_drops == 0
    frames = rdpcap(str(r["pcap"]))
    ike, esp, foreign = [], [], []
    for f in frames:
        if IP not in f:
            # ARP between hq-gw and the router is link housekeeping; IPv6 is left to analyse(),
            # which allows only ND/MLD on the WAN link itself
            continue
        ip = f[IP]
        if {ip.src, ip.dst} != WAN or UDP not in ip:
            foreign.append(f.summary())
        elif _is_ike(ip):
            ike.append(f)
        elif ip[UDP].sport == 4500 and ip[UDP].dport == 4500:
            esp.append(f)
        else:
            foreign.append(f.summary())
    assert foreign == [], f"unexpected packets on the WAN: {foreign}"
    assert len(ike) >= 4  # IKE_SA_INIT + IKE_AUTH (+ rekey, delete)
    assert all(f[UDP].sport == 4500 and f[UDP].dport == 4500 for f in ike), "IKE must run 4500 -> 4500"

    # Both gateways must agree on every key; the two logs are read independently.
    hq_keys = {k["spi"]: (k["src"], k["dst"], k["key"]) for k in r["keys"]}
    br_keys = {k["spi"]: (k["src"], k["dst"], k["key"]) for k in r["br_keys"]}
    assert hq_keys == br_keys
    assert len(hq_keys) == 2 * child_sas
    assert all(len(k["key"]) == 36 for k in r["keys"])

    sas = scapy_sas(r["keys"])
    # the Wireshark esp_sa export reads back through the shared reader to the same SAs
    esp_sa = r["hq"].write_esp_sa(r["pcap"].with_name("esp_sa"))
    assert {spi: bytes(sa.crypt_key) for spi, sa in sas_from_esp_log(esp_sa).items()} == \
        {spi: bytes(sa.crypt_key) for spi, sa in sas.items()}
    report = analyse(r["pcap"], sas, WAN)
    assert report.cleartext == []
    assert report.unknown_spi == []
    assert report.ike == len(ike)
    # No assert on report.nonzero_checksums: charon's libipsec sends ESP through an ordinary UDP socket,
    # so the kernel fills in the UDP checksum (RFC 3948 §2.1 only says SHOULD be zero; a receiver MUST
    # accept it). A sitelink peer therefore has to accept non-zero checksums.
    sent = sum(p.sent for p in r["pings"])
    assert report.esp == 2 * sent  # each echo request and reply crossed once, sealed
    assert len(report.decrypted) == report.esp  # scapy verified every GCM tag (it raises otherwise)
    host_hq, host_br = lab.addr("hq-host"), lab.addr("branch1-host")
    assert all(isinstance(p, IP) and ICMP in p and {p.src, p.dst} == {host_hq, host_br}
               for p in report.decrypted)
    requests = [p for p in report.decrypted if p[ICMP].type == 8 and p.src == host_hq]
    assert len(requests) == sent
    assert len(esp) == report.esp
    assert len({int.from_bytes(_udp_payload(f[IP])[:4], "big") for f in esp}) == 2 * child_sas  # all used, both ways

    # The oracle can fail: the same packet with one flipped ciphertext bit is rejected.
    raw = bytearray(bytes(esp[0][IP]))
    raw[len(raw) - 20] ^= 0x01  # inside the ciphertext, before the 16-byte ICV
    packet = IP(bytes(raw))
    with pytest.raises(IPSecIntegrityError):
        sas[packet[ESP].spi].decrypt(packet)


def psk_kw(ike_proposal: str) -> dict:
    psk = secrets.token_urlsafe(24)
    return {"hq": {"local_id": "@hq.ss-lab.test", "remote_id": "@branch1.ss-lab.test"},
            "br": {"local_id": "@branch1.ss-lab.test", "remote_id": "@hq.ss-lab.test"},
            "common": {"auth": "psk", "psk": psk, "ike_proposal": ike_proposal}}


# --------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("group, name", [("curve25519", "CURVE_25519"), ("ecp256", "ECP_256")])
def test_psk_tunnel(lab: Lab, tmp_path: Path, group: str, name: str) -> None:
    r = run_tunnel(lab, tmp_path, rekey=True, **psk_kw(f"aes256gcm16-prfsha256-{group}"))
    assert [(p.sent, p.received) for p in r["pings"]] == [(3, 3), (3, 3)]
    s = r["summary"]
    assert s["ike_state"] == "ESTABLISHED" and s["child_state"] == "INSTALLED"
    assert s["ike_algorithms"] == f"AES_GCM_16-256/PRF_HMAC_SHA2_256/{name}"
    assert s["esp_algorithms"] == "AES_GCM_16-256"
    assert s["child_mode"] == "TUNNEL-in-UDP"
    assert (s["local_addr"], s["local_port"], s["remote_addr"], s["remote_port"]) == (HQ_WAN, 4500, BR_WAN, 4500)
    assert s["packets_out"] == 3 and s["packets_in"] == 3
    assert {s["spi_in"], s["spi_out"]} <= {k["spi"] for k in r["keys"]}
    after = r["summary_after"]
    assert after["child_uniqueid"] != s["child_uniqueid"] and after["packets_out"] == 3
    check_wan(lab, r, child_sas=2)


def _cert_material(tmp: Path) -> dict[str, Path]:
    """A CA and two ECDSA P-256 gateway certificates with subjectAltName DNS ids."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    tmp.mkdir(parents=True, exist_ok=True)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ss-lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("ss-lab CA")).issuer_name(name("ss-lab CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # one key as SEC1 ("EC PRIVATE KEY" -> swanctl/ecdsa/), one as PKCS#8 (-> swanctl/pkcs8/)
    formats = {"hq": serialization.PrivateFormat.TraditionalOpenSSL,
               "branch1": serialization.PrivateFormat.PKCS8}
    for site, fmt in formats.items():
        key = ec.generate_private_key(ec.SECP256R1())
        dns = f"{site}.ss-lab.test"
        cert = (x509.CertificateBuilder().subject_name(name(dns)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[f"{site}-cert"] = tmp / f"{site}-cert.pem"
        out[f"{site}-key"] = tmp / f"{site}-key.pem"
        out[f"{site}-cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{site}-key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                                         serialization.NoEncryption()))
    return out


def test_certificate_tunnel(lab: Lab, tmp_path: Path) -> None:
    pki = _cert_material(tmp_path / "pki")
    kw = {"hq": {"local_id": "hq.ss-lab.test", "remote_id": "branch1.ss-lab.test",
                 "cert": pki["hq-cert"], "key": pki["hq-key"]},
          "br": {"local_id": "branch1.ss-lab.test", "remote_id": "hq.ss-lab.test",
                 "cert": pki["branch1-cert"], "key": pki["branch1-key"]},
          "common": {"auth": "pubkey", "ca": pki["ca"]}}
    r = run_tunnel(lab, tmp_path, **kw)
    assert [(p.sent, p.received) for p in r["pings"]] == [(3, 3)]
    s = r["summary"]
    assert s["ike_state"] == "ESTABLISHED" and s["child_state"] == "INSTALLED"
    assert s["ike_algorithms"] == "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519"
    assert s["esp_algorithms"] == "AES_GCM_16-256"
    assert (s["local_id"], s["remote_id"]) == ("hq.ss-lab.test", "branch1.ss-lab.test")
    assert (r["hq"].peer.swanctl_dir / "ecdsa" / "gateway.pem").exists()
    assert (r["br"].peer.swanctl_dir / "pkcs8" / "gateway.pem").exists()
    log = r["hq"].log_text()
    assert "authentication of 'branch1.ss-lab.test' with ECDSA" in log, log[-3000:]
    check_wan(lab, r, child_sas=1)


def test_wrong_psk_fails_with_log_tail(lab: Lab, tmp_path: Path) -> None:
    kw = psk_kw("aes256gcm16-prfsha256-curve25519")
    hq = StrongSwan(lab, "hq", tmp_path / "hq", **kw["hq"], **kw["common"])
    other = dict(kw["common"], psk="not-the-same-secret")
    br = StrongSwan(lab, "branch1", tmp_path / "br", **kw["br"], **other)
    hq.start()
    br.start()
    with pytest.raises(StrongSwanError) as exc:
        hq.initiate(timeout=5)
    assert "tail of" in str(exc.value) and "AUTHENTICATION_FAILED" in str(exc.value)
    assert ping(lab, "hq-host", lab.addr("branch1-host"), count=1, timeout=0.3).received == 0  # fails closed


def test_ike_rekey_and_stop(lab: Lab, tmp_path: Path) -> None:
    kw = psk_kw("aes256gcm16-prfsha256-curve25519")
    hq = StrongSwan(lab, "hq", tmp_path / "hq", **kw["hq"], **kw["common"])
    br = StrongSwan(lab, "branch1", tmp_path / "br", **kw["br"], **kw["common"])
    hq.start()
    br.start()
    hq.initiate()
    before = br.sa_summary()
    br.rekey("ike")  # from the IKE responder side
    after = br.sa_summary()
    assert after["ike_uniqueid"] != before["ike_uniqueid"] and after["ike_state"] == "ESTABLISHED"
    assert after["child_uniqueid"] == before["child_uniqueid"]  # the CHILD_SA moved to the new IKE_SA
    assert ping(lab, "hq-host", lab.addr("branch1-host"), count=2, interval=0.05).received == 2
    assert hq.stop() == 0  # SIGTERM: charon deletes its SAs and exits cleanly
    assert not hq.running()
    with pytest.raises(StrongSwanError, match="not running"):
        hq.initiate()
