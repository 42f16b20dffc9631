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

import re
import subprocess
import time
from pathlib import Path

import pytest

from netnslab import TOPOLOGIES, Lab, ping
from netnslab.sitelink import Deployment, identity
from netnslab.strongswan import StrongSwan
from tunnel.config.pkifiles import create_ca, create_intermediate, issue, revoke

SKF, IKE_AUTH = 53, 35


pytestmark = pytest.mark.usefixtures("strongswan_required")

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
                      key=f["branch1_key"], intermediates=[f["sub"]], crls=[f["crl"]] if crls is None else crls,
                      dpd_delay="2s")


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


@pytest.mark.parametrize("crl_from", ["file", "http"])
def test_strongswan_refuses_a_revoked_sitelink_gateway(tmp_path: Path, crl_from: str) -> None:
    """strongSwan holds a CRL that revokes sitelink's certificate: a local file (swanctl x509crl/), or the
    CRL it fetches from the distribution point in sitelink's certificate, served over HTTP from the WAN
    router's namespace."""
    f = company_pki(tmp_path / "pki", "ecdsa-p256")
    cdp = "http://198.18.2.1:8080/branch-ca.crl"  # the router's address on branch1's link
    if crl_from == "http":  # HQ's certificate names where its CA publishes the CRL
        from tunnel.config.pkifiles import load_certificate  # noqa: PLC0415

        f["hq"].unlink(), f["hq_key"].unlink()
        f["hq"], f["hq_key"] = issue(f["sub"], f["sub_key"], f["hq"].parent, identity("hq"), crl_url=cdp)
        assert load_certificate(f["hq"]).extensions.get_extension_for_class(x509_crl_dp()).value
    revoked = tmp_path / "published" / "branch-ca.crl"
    revoked.parent.mkdir()
    revoke(f["sub"], f["sub_key"], f["crl"], [f["hq"]])  # HQ's certificate revoked ...
    revoked.write_bytes(f["crl"].read_bytes())
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        if crl_from == "http":
            lab.popen("router", ["python3", "-m", "http.server", "8080", "--bind", "198.18.2.1", "--directory",
                                 str(revoked.parent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while ":8080" not in lab.run("router", ["ss", "-ltn"], timeout=5).stdout:
                assert time.monotonic() < deadline, "the CRL server did not start"
                time.sleep(0.05)
        dep = deployment(lab, tmp_path, f, sitelink_initiates=True)
        swan = strongswan(lab, tmp_path, f, crls=[revoked] if crl_from == "file" else [])  # ... or fetched
        swan.start()
        dep.start("hq")
        deadline = time.monotonic() + 15
        while "AUTHENTICATION_FAILED" not in dep.gateways["hq"].log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "AUTHENTICATION_FAILED" in dep.gateways["hq"].log_text()
        assert re.search(r"certificate was revoked", swan.log_text()), swan.log_tail()
        if crl_from == "http":
            assert re.search(r"fetching crl from '" + re.escape(cdp), swan.log_text()), swan.log_tail()
        assert swan.sa_summary().get("ike_state") != "ESTABLISHED"


def x509_crl_dp() -> type:
    from cryptography import x509  # noqa: PLC0415

    return x509.CRLDistributionPoints


# -- OCSP with a real responder (`openssl ocsp`) in the WAN router's namespace ------------------------------
OCSP_ADDR = "198.18.1.1"  # the router's address on hq's link
OCSP_URL = f"http://{OCSP_ADDR}:8888"


def ocsp_pki(directory: Path) -> dict[str, Path]:
    """One CA issuing both gateways' certificates with the responder in their AIA."""
    ca, ca_key = create_ca(directory / "ca", "Acme OCSP CA")
    files = {"ca": ca, "ca_key": ca_key}
    for site in ("hq", "branch1"):
        files[site], files[f"{site}_key"] = issue(ca, ca_key, directory / site, identity(site), ocsp_url=OCSP_URL)
    return files


def start_responder(lab: Lab, tmp_path: Path, f: dict[str, Path], revoked: set[str]) -> None:
    """`openssl ocsp` answering for the CA from an index.txt (openssl ca's database format)."""
    from tunnel.config.pkifiles import load_certificate  # noqa: PLC0415

    lines = []
    for site in ("hq", "branch1"):
        cert = load_certificate(f[site])
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        when = (cert.not_valid_before_utc.strftime("%y%m%d%H%M%SZ") if site in revoked else "")
        dn = "/" + cert.subject.rfc4514_string().replace(",", "/")
        lines.append("\t".join(["R" if site in revoked else "V", expiry, when, f"{cert.serial_number:X}",
                                "unknown", dn]))
    index = tmp_path / "index.txt"
    index.write_text("\n".join(lines) + "\n")
    log = (tmp_path / "ocsp.log").open("w")
    proc = lab.popen("router", ["openssl", "ocsp", "-index", str(index), "-port", "8888", "-rsigner",
                         str(f["ca"]), "-rkey", str(f["ca_key"]), "-CA", str(f["ca"]), "-ndays", "1"],
                     stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while ":8888" not in lab.run("router", ["ss", "-ltn"], timeout=5).stdout:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ocsp.log").read_text()
        time.sleep(0.05)


@pytest.mark.parametrize("scenario", ["good-aia", "revoked-url", "down-hard", "down-soft"])
def test_ocsp_against_openssl_ocsp(tmp_path: Path, scenario: str) -> None:
    f = ocsp_pki(tmp_path / "pki")
    ocsp = f"{{url: {OCSP_URL}, timeout: 2}}" if scenario == "revoked-url" else "{timeout: 2}"
    soft = ", revocation: soft" if scenario == "down-soft" else ""
    pki = f"{{ca: {f['ca']}, certificate: {f['hq']}, private_key: {f['hq_key']}, ocsp: {ocsp}{soft}}}"
    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        if not scenario.startswith("down"):
            start_responder(lab, tmp_path, f, revoked={"branch1"} if scenario == "revoked-url" else set())
        dep = Deployment(lab, tmp_path / "sitelink", keying="cert", pki={"hq": pki}, initiators={("hq", "branch1")})
        swan = StrongSwan(lab, "branch1", tmp_path / "swan", remote_site="hq", local_id=identity("branch1"),
                          remote_id=identity("hq"), ike_port=500, auth="pubkey", ca=f["ca"], cert=f["branch1"],
                          key=f["branch1_key"])
        swan.start()
        dep.start("hq")
        expect_up = scenario in ("good-aia", "down-soft")
        if expect_up:
            dep.wait_established("hq", timeout=20)
            assert ping(lab, "hq-host", lab.addr("branch1-host"), count=3, interval=0.05).received == 3
        else:
            deadline = time.monotonic() + 20
            while "IKE SA failed" not in dep.gateways["hq"].log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        log = dep.gateways["hq"].log_text()
        status = dep.sitelink("hq", "status", "--json").stdout
        answered = (tmp_path / "ocsp.log").read_text() if (tmp_path / "ocsp.log").exists() else ""
    assert f"asking OCSP responder {OCSP_URL}" in log  # from the AIA, or configured
    assert ("Child SA established" in log) is expect_up, log[-3000:]
    assert '"revocation_pending"' in status
    if not scenario.startswith("down"):
        assert "Received request" in answered  # the real responder was asked (and its answer verified)
    if scenario == "revoked-url":
        assert '"cert_revoked"' in status
        assert re.search(r"branch1\.lab\.test .*was revoked .*\(OCSP\)", log), log[-3000:]
    if scenario == "down-hard":
        assert "revocation status" in log and "unknown" in log and '"cert_status_unknown"' in status
    print(f"\nOCSP {scenario}: tunnel {'up' if expect_up else 'refused'}; "
          f"{answered.count('Received request')} requests to openssl ocsp")


# -- changing a PSK with traffic flowing ----------------------------------------------------------------
def test_psk_change_without_an_outage(tmp_path: Path) -> None:
    """Two sitelink gateways re-authenticating every 3 s (so every step of the change meets a full
    IKE_AUTH) change their PSK in the documented three reloads per side, one side after the other,
    while a 250 datagrams/s UDP stream runs each way: every re-authentication succeeds, none fails, and
    the streams lose at most what one rekey may (a datagram or two in flight when the old SA goes)."""
    import base64  # noqa: PLC0415
    import secrets  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from netnslab import iperf3  # noqa: PLC0415
    from netnslab.sitelink import write_secret  # noqa: PLC0415

    with Lab(TOPOLOGIES / "two-sites.yaml", mode="tunnel") as lab:
        dep = Deployment(lab, tmp_path / "sitelink", ike_options={"reauth_time": 3})
        new = write_secret(dep.workdir / "new.psk", base64.b64encode(secrets.token_bytes(32)) + b"\n")
        dep.start_all()
        results: dict = {}

        def stream(name: str, client: str, server: str, port: int) -> None:
            results[name] = iperf3(lab, client, server, lab.addr(server), seconds=30, udp=True, bitrate="2M",
                                   length=1000, port=port).raw["end"]["sum"]

        threads = [threading.Thread(target=stream, args=("hq->branch1", "hq-host", "branch1-host", 5201)),
                   threading.Thread(target=stream, args=("branch1->hq", "branch1-host", "hq-host", 5202))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        old = {site: dep.gateways[site].keys[peer].name for site, peer in (("hq", "branch1"), ("branch1", "hq"))}
        steps = [(site, f"psk_file: {old[site]}, accept_psk_file: {new.name}") for site in ("hq", "branch1")]
        steps += [(site, f"psk_file: {new.name}, accept_psk_file: {old[site]}") for site in ("hq", "branch1")]
        steps += [(site, f"psk_file: {new.name}") for site in ("hq", "branch1")]
        for site, keys in steps:
            config = dep.gateways[site].config
            config.write_text(re.sub(r"psk_file: [^,}]+(, accept_psk_file: [^,}]+)?", keys, config.read_text()))
            cp = dep.sitelink(site, "reload")
            assert cp.returncode == 0 and "policy updated" in cp.stdout, (cp.stdout, cp.stderr)
            time.sleep(3.5)  # at least one re-authentication with this step's keys
        for t in threads:
            t.join(60)
        logs = [dep.gateways[site].log_text() for site in ("hq", "branch1")]
    reauths = sum(log.count("re-authenticated;") for log in logs)  # each side re-authenticates on its own timer
    assert reauths >= len(steps), logs[0][-3000:]
    for log in logs:
        assert "re-authentication refused" not in log and "AUTHENTICATION_FAILED" not in log
        assert "does not verify (wrong PSK?)" not in log and "IKE SA failed" not in log
    for name, end in results.items():
        assert end["packets"] > 6000 and end["lost_packets"] <= 2, (name, end)
    print(f"\nPSK changed in {len(steps)} reloads with {reauths} re-authentications meanwhile; streams: "
          + ", ".join(f"{n} {e['packets']} datagrams, {e['lost_packets']} lost" for n, e in results.items()))
