"""A company PKI against strongSwan 5.9 in the lab (RFC 7383 fragmentation, intermediates, CRLs):

1. RSA-3072 gateway certificates issued by an intermediate CA: IKE_AUTH is ~2.3 kB each way. The WAN's
   router passes packets of at most 1280 bytes and drops every IP fragment (nftables); a baseline ping
   of 2,000 bytes between the gateways shows it. IKE_AUTH crosses only as SKF fragments, in both directions, with
   either side initiating.
2. A stolen branch: its certificate is revoked into the intermediate's CRL (`sitelink pki revoke`).
   sitelink refuses it (counted cert_revoked); strongSwan, given a CRL that revokes sitelink's
   certificate, refuses sitelink; and a running tunnel whose peer gets revoked ends at `sitelink reload`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan, strongswan_installed
from tunnel.config.pkifiles import create_ca, create_intermediate, issue, revoke

SKF, IKE_AUTH = 53, 35


@pytest.fixture(autouse=True)
def _need_strongswan() -> None:
    missing = strongswan_installed()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{missing} (scripts/bootstrap installs it)", pytrace=False)
        pytest.skip(missing)


def company_pki(directory: Path, key_type: str) -> dict[str, Path]:
    root, root_key = create_ca(directory / "root", "Acme Root CA")
    sub, sub_key = create_intermediate(root, root_key, directory / "sub", "Acme Branch CA")
    files = {"root": root, "sub": sub, "sub_key": sub_key, "crl": directory / "sub" / "ca.crl"}
    for site in ("hq", "branch1"):
        files[site], files[f"{site}_key"] = issue(sub, sub_key, directory / site, identity(site), key_type=key_type)
    revoke(sub, sub_key, files["crl"], [])  # the intermediate's CRL, nothing revoked yet
    return files


def deployment(lab: Lab, tmp_path: Path, f: dict[str, Path], sitelink_initiates: bool) -> Deployment:
    pki = (f"{{ca: {f['root']}, intermediates: [{f['sub']}], certificate: {f['hq']}, "
           f"private_key: {f['hq_key']}, crl: {f['crl']}}}")
    return Deployment(lab, tmp_path / "sitelink", keying="cert", pki={"hq": pki},
                      initiators={("hq", "branch1")} if sitelink_initiates else set(),
                      ike_options={"dpd_delay": 2})


def strongswan(lab: Lab, tmp_path: Path, f: dict[str, Path], crls: list[Path] | None = None) -> StrongSwan:
    return StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq", local_id=identity("branch1"),
                      remote_id=identity("hq"), ike_proposal="aes256gcm16-prfsha256-curve25519",
                      esp_proposal="aes256gcm16", ike_port=500, auth="pubkey", ca=f["root"], cert=f["branch1"],
                      key=f["branch1_key"], intermediates=[f["sub"]], crls=crls or [f["crl"]], dpd_delay="2s")


def ike_messages(pcap: Path) -> list[tuple[int, int, int, bool]]:
    """(length, exchange, first payload, is a response) of every IKE message on the WAN capture."""
    from scapy.all import UDP, rdpcap  # noqa: PLC0415

    out = []
    for packet in rdpcap(str(pcap)):
        if UDP not in packet or 4500 not in (packet[UDP].sport, packet[UDP].dport) and \
                500 not in (packet[UDP].sport, packet[UDP].dport):
            continue
        data = bytes(packet[UDP].payload)
        if packet[UDP].dport == 4500 or packet[UDP].sport == 4500:
            if data[:4] != bytes(4):
                continue  # ESP
            data = data[4:]
        if len(data) >= 28:
            out.append((len(data), data[18], data[16], bool(data[19] & 0x20)))
    return out


@pytest.mark.parametrize("sitelink_initiates", [True, False], ids=["sitelink-initiates", "strongswan-initiates"])
def test_rsa_3072_chain_crosses_a_1280_byte_path_that_drops_fragments(tmp_path: Path,
                                                                         sitelink_initiates: bool) -> None:
    f = company_pki(tmp_path / "pki", "rsa-3072")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        lab.drop_wan_fragments(max_packet=1280)
        hq_wan, br_wan = lab.addr("hq-gw"), lab.addr("branch1-gw")
        big = lab.run("hq-gw", ["ping", "-c", "2", "-W", "1", "-s", "2000", br_wan], check=False, timeout=10)
        assert " 0 received" in big.stdout and lab.wan_fragments_dropped() >= 2  # the path is hostile
        dep = deployment(lab, tmp_path, f, sitelink_initiates)
        swan = strongswan(lab, tmp_path, f)
        pcap = tmp_path / "wan.pcap"
        with lab.capture("router", lab.site("hq").router_if, pcap):
            swan.start()
            dep.start("hq")
            if not sitelink_initiates:
                swan.initiate(timeout=20)
            dep.wait_established("hq", timeout=20)
            there = ping(lab, "hq-host", lab.addr("branch1-host"), count=5, interval=0.05, size=1000)
            back = ping(lab, "branch1-host", lab.addr("hq-host"), count=5, interval=0.05, size=1000)
            summary = swan.sa_summary()
        assert there.received == 5 and back.received == 5
        assert summary["ike_state"] == "ESTABLISHED" and summary["child_state"] == "INSTALLED"
        auth = [(length, first, response) for length, exchange, first, response in ike_messages(pcap)
                if exchange == IKE_AUTH]
        assert auth and all(first == SKF for _, first, _ in auth), auth  # only as fragments
        assert max(length for length, _, _ in auth) <= 1280 - 20 - 8 - 4
        for direction in (False, True):  # each way, more than one packet could carry
            assert sum(length for length, _, response in auth if response is direction) > 1280, auth
        assert "received fragment" in swan.log_text() or "reassembled" in swan.log_text()
        log = dep.gateways["hq"].log_text()
        assert "Child SA established" in log and hq_wan and br_wan
        print(f"\n{'sitelink' if sitelink_initiates else 'strongSwan'} initiates: IKE_AUTH as {len(auth)} SKF "
              f"fragments of at most {max(length for length, _, _ in auth)} bytes; "
              f"{lab.wan_fragments_dropped()} IP fragments dropped by the router (the baseline ping)")


def test_a_revoked_branch_is_refused_by_sitelink_and_a_reload_ends_its_sas(tmp_path: Path) -> None:
    f = company_pki(tmp_path / "pki", "ecdsa-p256")
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = deployment(lab, tmp_path, f, sitelink_initiates=True)
        swan = strongswan(lab, tmp_path, f)
        swan.start()
        dep.start("hq")
        dep.wait_established("hq")
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
        # The branch router is stolen: the intermediate revokes its certificate; HQ gets the new CRL.
        revoke(f["sub"], f["sub_key"], f["crl"], [f["branch1"]])
        cp = dep.sitelink("hq", "reload")
        assert cp.returncode == 0, cp.stderr
        deadline = time.monotonic() + 10
        while swan.sa_summary().get("ike_state") == "ESTABLISHED" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert swan.sa_summary().get("ike_state") != "ESTABLISHED"  # sitelink deleted it at the branch
        assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.1, timeout=0.5).received == 0
        # strongSwan tries again (dpd_action restart / its own initiation) and is refused, counted.
        with pytest.raises(Exception, match="initiate failed"):
            swan.initiate(timeout=8)
        log = dep.gateways["hq"].log_text()
        assert "no longer accepted" in log and re.search(r"was revoked .* by CN=Acme Branch CA", log), log[-3000:]
        status = dep.sitelink("hq", "status", "--json")
        assert '"cert_revoked"' in status.stdout, status.stdout[-2000:]


def test_strongswan_refuses_a_revoked_sitelink_gateway(tmp_path: Path) -> None:
    f = company_pki(tmp_path / "pki", "ecdsa-p256")
    revoked = tmp_path / "hq-revoked.crl"
    revoke(f["sub"], f["sub_key"], f["crl"], [f["hq"]])  # HQ's certificate revoked ...
    revoked.write_bytes(f["crl"].read_bytes())
    revoke(f["sub"], f["sub_key"], f["crl"], [])  # (sitelink itself holds the same, fresh CRL)
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = deployment(lab, tmp_path, f, sitelink_initiates=True)
        swan = strongswan(lab, tmp_path, f, crls=[revoked])  # ... in the CRL strongSwan holds
        swan.start()
        dep.start("hq")
        deadline = time.monotonic() + 10
        while "AUTHENTICATION_FAILED" not in dep.gateways["hq"].log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "AUTHENTICATION_FAILED" in dep.gateways["hq"].log_text()
        assert re.search(r"certificate was revoked|revoked", swan.log_text()), swan.log_tail()
        assert swan.sa_summary().get("ike_state") != "ESTABLISHED"
