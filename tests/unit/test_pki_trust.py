"""Company PKI between two IKE cores back to back: intermediates sent and accepted, several trusted CAs
(rollover), the peer's CERTREQ choosing our certificate, and CRLs (revoked, stale, forged; hard and soft
fail), with the files written by `sitelink pki` itself and read as the gateway reads them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest

from tests.unit.test_ike_cert_auth import NOW, dispatcher
from tests.unit.test_ike_session import Wire, events
from tunnel.app.credentials import cert_auth
from tunnel.config.model import Endpoint, GatewayConfig, Pki, PkiCredential, Revocation, TunDevice
from tunnel.config.pkifiles import create_ca, create_intermediate, issue, load_certificate, revoke
from tunnel.ike.config import CertAuth
from tunnel.ike.constants import CertEncoding, ExchangeType, NotifyType
from tunnel.ike.events import ChildSaEstablished, IkeSaFailed
from tunnel.ike.message import parse_header
from tunnel.ike.trust import key_hash


def gateway(pki: Pki) -> GatewayConfig:
    return GatewayConfig(Path("/nonexistent.yaml"), "gw", Endpoint(ipaddress.ip_address("198.18.1.2"), 4500),
                         TunDevice(), pki=pki)


def auth(ca: list[Path], crt: Path, key: Path, **kw) -> CertAuth:
    return cert_auth(gateway(Pki(tuple(ca), crt, key, **kw)))


def run(hq: CertAuth, br: CertAuth, clock=lambda: NOW):
    d_hq = dispatcher("branch1", "10.1.0.0/24", "10.2.0.0/24", "hq", "br", hq, clock, "198.18.2.2", 1)
    d_br = dispatcher("hq", "10.2.0.0/24", "10.1.0.0/24", "br", "hq", br, clock, "198.18.1.2", 2)
    wire = Wire(d_hq, d_br)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    return d_hq, d_br, wire


def _events(d) -> list:
    """Every event the dispatcher emitted so far (kept on it: reading them consumes them)."""
    seen = d.__dict__.setdefault("_test_events", [])
    seen.extend(events(d))
    return seen


def up(d) -> bool:
    return any(isinstance(e, ChildSaEstablished) for e in _events(d))


def failure(d) -> IkeSaFailed | None:
    return next((e for e in _events(d) if isinstance(e, IkeSaFailed)), None)


def make_company(tmp_path: Path, now: dt.datetime | None = NOW, key_type: str = "ecdsa-p256") -> dict[str, Path]:
    """Root CA -> intermediate "Branch CA" -> hq.test and br.test (as `sitelink pki` makes them)."""
    root, root_key = create_ca(tmp_path / "root", "Acme Root CA", now=now)
    sub, sub_key = create_intermediate(root, root_key, tmp_path / "sub", "Acme Branch CA", now=now)
    files = {"root": root, "root_key": root_key, "sub": sub, "sub_key": sub_key}
    for site in ("hq", "br"):
        files[site], files[f"{site}_key"] = issue(sub, sub_key, tmp_path / site, f"{site}.test", key_type=key_type,
                                                  days=30, now=now)
    return files


@pytest.fixture
def company(tmp_path: Path) -> dict[str, Path]:
    return make_company(tmp_path)


def test_intermediates_are_sent_and_a_chain_to_the_root_authenticates(company: dict[str, Path]) -> None:
    f = company
    hq = auth([f["root"]], f["hq"], f["hq_key"], intermediates=(f["sub"],))
    br = auth([f["root"]], f["br"], f["br_key"], intermediates=(f["sub"],))
    assert [len(c.chain) for c in hq.credentials] == [2]  # leaf + Branch CA, not the root
    d_hq, d_br, wire = run(hq, br)
    assert up(d_hq) and up(d_br)
    certs = [m for s, _, m in wire.log if parse_header(m).exchange == ExchangeType.IKE_AUTH]
    both = sum(len(c) for c in hq.credentials[0].chain)
    assert len(certs) == 2 and all(len(m) > both for m in certs)  # two certificates each way


def test_without_the_intermediate_the_peer_cannot_build_a_path(company: dict[str, Path]) -> None:
    f = company
    hq = auth([f["root"]], f["hq"], f["hq_key"])  # Branch CA not configured: only the leaf is sent
    br = auth([f["root"]], f["br"], f["br_key"], intermediates=(f["sub"],))
    d_hq, d_br, _ = run(hq, br)
    refused = failure(d_br)
    assert refused is not None and refused.notify == NotifyType.AUTHENTICATION_FAILED
    assert "issuer not trusted" in refused.reason and not up(d_hq)


def test_ca_rollover_old_and_new_trusted_and_certreq_picks_the_certificate(tmp_path: Path) -> None:
    old, old_key = create_ca(tmp_path / "old", "Acme CA 2024", now=NOW)
    new, new_key = create_ca(tmp_path / "new", "Acme CA 2026", now=NOW)
    hq_old = issue(old, old_key, tmp_path / "hq-old", "hq.test", now=NOW)
    hq_new = issue(new, new_key, tmp_path / "hq-new", "hq.test", now=NOW)
    br_new = issue(new, new_key, tmp_path / "br-new", "br.test", now=NOW)
    # HQ in the change window: trusts both CAs, holds both certificates (old one first).
    hq = auth([old, new], *hq_old, alternates=(PkiCredential(*hq_new),))
    assert hq.ca_key_hashes == key_hash(load_certificate(old)) + key_hash(load_certificate(new))
    # A branch already moved: trusts only the new CA, so its CERTREQ names only it.
    br = auth([new], *br_new)
    d_hq, d_br, wire = run(hq, br)
    assert up(d_hq) and up(d_br), (failure(d_hq), failure(d_br))
    # ... and a branch still on the old CA keeps working with the same HQ.
    br_old = issue(old, old_key, tmp_path / "br-old", "br.test", now=NOW)
    d_hq, d_br, _ = run(hq, auth([old], *br_old))
    assert up(d_hq) and up(d_br)
    # Without CERTREQ choice HQ would send its first (old) certificate, which the moved branch refuses:
    hq_old_only = auth([old, new], *hq_old)
    d_hq, d_br, _ = run(hq_old_only, br)
    assert not up(d_br) and "not trusted" in failure(d_br).reason


def test_certreq_names_every_trusted_ca(company: dict[str, Path], tmp_path: Path) -> None:
    other, _ = create_ca(tmp_path / "other", "Other CA", now=NOW)
    f = company
    hq = auth([f["root"]], f["hq"], f["hq_key"], intermediates=(f["sub"],))
    br = auth([f["root"], other], f["br"], f["br_key"], intermediates=(f["sub"],))
    _, _, wire = run(hq, br)  # the responder's CERTREQ rides in the clear IKE_SA_INIT response
    from tunnel.ike.message import CertReqPayload, parse_message  # noqa: PLC0415

    init_response = next(m for s, _, m in wire.log if parse_header(m).exchange == ExchangeType.IKE_SA_INIT
                         and parse_header(m).is_response)
    reqs = list(parse_message(init_response).all(CertReqPayload))
    assert len(reqs) == 1 and reqs[0].encoding == CertEncoding.X509_SIGNATURE
    assert reqs[0].data == key_hash(load_certificate(f["root"])) + key_hash(load_certificate(other))


def _revoked_setup(company: dict[str, Path], tmp_path: Path, **kw) -> tuple[CertAuth, CertAuth]:
    f = company
    br = auth([f["root"]], f["br"], f["br_key"], intermediates=(f["sub"],))
    hq = auth([f["root"]], f["hq"], f["hq_key"], intermediates=(f["sub"],), crl=(f["sub"].parent / "ca.crl",), **kw)
    return hq, br


def test_a_revoked_branch_is_refused_and_counted(company: dict[str, Path], tmp_path: Path) -> None:
    f = company
    revoke(f["sub"], f["sub_key"], f["sub"].parent / "ca.crl", [], now=NOW)  # an empty CRL: br accepted
    d_hq, d_br, _ = run(*_revoked_setup(company, tmp_path))
    assert up(d_hq) and up(d_br)
    revoke(f["sub"], f["sub_key"], f["sub"].parent / "ca.crl", [f["br"]], now=NOW)
    d_hq, d_br, _ = run(*_revoked_setup(company, tmp_path))
    refused = failure(d_hq)  # HQ initiated: it refuses the responder's (branch's) certificate
    assert refused is not None and "revoked" in refused.reason and "br.test" in refused.reason
    assert d_hq.drops_for("branch1").by_reason() == {"cert_revoked": 1}
    assert not up(d_hq)


@pytest.mark.parametrize("mode,accepted", [(Revocation.HARD, False), (Revocation.SOFT, True)])
def test_a_stale_crl_is_unknown_status(company: dict[str, Path], tmp_path: Path, mode: Revocation,
                                       accepted: bool) -> None:
    f = company
    revoke(f["sub"], f["sub_key"], f["sub"].parent / "ca.crl", [], days=7, now=NOW)
    hq, br = _revoked_setup(company, tmp_path, revocation=mode)
    later = NOW + dt.timedelta(days=8)  # the certificates still valid (30 days), the CRL's nextUpdate past
    d_hq, d_br, _ = run(hq, br, clock=lambda: later)
    assert up(d_hq) is accepted
    if not accepted:
        assert "out of date" in failure(d_hq).reason
        assert d_hq.drops_for("branch1").by_reason() == {"cert_status_unknown": 1}


def test_a_crl_not_signed_by_the_issuer_revokes_nothing(company: dict[str, Path], tmp_path: Path) -> None:
    """A CRL in the issuer's name but signed by another key (forged, or the wrong file) cannot revoke the
    branch; with hard fail it does not vouch for it either."""
    f = company
    rogue, rogue_key = create_ca(tmp_path / "rogue", "Acme Branch CA", now=NOW)  # same name, other key
    revoke(rogue, rogue_key, f["sub"].parent / "ca.crl", [], now=NOW)
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    from tunnel.config.pkifiles import load_private_key  # noqa: PLC0415

    serial = load_certificate(f["br"]).serial_number
    forged = (x509.CertificateRevocationListBuilder().issuer_name(load_certificate(f["sub"]).subject)
              .last_update(NOW - dt.timedelta(hours=1)).next_update(NOW + dt.timedelta(days=1))
              .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                       .revocation_date(NOW).build())
              .sign(load_private_key(rogue_key), hashes.SHA256()))
    (f["sub"].parent / "ca.crl").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    for mode, accepted in ((Revocation.SOFT, True), (Revocation.HARD, False)):
        d_hq, _, _ = run(*_revoked_setup(company, tmp_path, revocation=mode))
        assert up(d_hq) is accepted
        if not accepted:
            assert "verifies" in failure(d_hq).reason and "revoked" not in failure(d_hq).reason


# -- a reload that brings a CRL ends the revoked peer's SAs (tunnel/app/keying.py) ----------------------

GATEWAY = """\
gateway:
  name: {me}
  listen:
    address: {addr}
  pki:
    ca: {root}
    intermediates: [{sub}]
    certificate: {crt}
    private_key: {key}
{crl}tunnels:
  - name: {peer}
    peer:
      address: {peer_addr}
    local_subnets: [{net}.0/24]
    remote_subnets: [{peer_net}.0/24]
    ike:
      auth: cert
      local_id: {me}.test
      remote_id: {peer}.test
      start: {start}
"""


def _site(tmp_path: Path, f: dict[str, Path], me: str, peer: str, crl: Path | None) -> Path:
    addr = {"hq": "198.18.1.2", "br": "198.18.2.2"}
    net = {"hq": "10.1.0", "br": "10.2.0"}
    path = tmp_path / f"{me}.yaml"
    path.write_text(GATEWAY.format(me=me, peer=peer, addr=addr[me], peer_addr=addr[peer], net=net[me],
                                   peer_net=net[peer], root=f["root"], sub=f["sub"], crt=f[me], key=f[f"{me}_key"],
                                   crl=f"    crl: {crl}\n" if crl else "",
                                   start="initiate" if me == "hq" else "respond"))
    return path


def test_a_reload_with_a_crl_revoking_the_peer_deletes_its_sas(tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    from tunnel.app.assemble import build_forwarder  # noqa: PLC0415
    from tunnel.app.keying import Keying  # noqa: PLC0415
    from tunnel.app.reload import plan_reload  # noqa: PLC0415
    from tunnel.config.loader import load_config  # noqa: PLC0415

    f = make_company(tmp_path / "pki", now=None)  # the gateway judges certificates by the real clock
    crl = f["sub"].parent / "ca.crl"
    revoke(f["sub"], f["sub_key"], crl, [])
    hq_path = _site(tmp_path, f, "hq", "br", crl)
    hq_config = load_config(hq_path)
    sites = {"198.18.1.2": Keying(hq_config, build_forwarder(hq_config), os.urandom)}
    br_config = load_config(_site(tmp_path, f, "br", "hq", None))
    sites["198.18.2.2"] = Keying(br_config, build_forwarder(br_config), os.urandom)
    hq, br = sites["198.18.1.2"], sites["198.18.2.2"]

    def pump(now: float) -> None:
        for _ in range(20):
            moved = False
            for addr, keying in sites.items():
                keying.process_events(now)
                for data, remote, port in keying.dispatcher.datagrams_to_send(now):
                    moved = True
                    sites[remote[0]].dispatcher.receive_datagram(data, (addr, port), remote[1], now)
            if not moved:
                return

    hq.start(10.0)
    pump(10.0)
    assert [s.state.name for s in hq.dispatcher.sessions_for("br")] == ["ESTABLISHED"]
    assert len(br.dispatcher.sessions_for("hq")) == 1

    # An unrelated reload keeps the SA (the CRL is re-read, br is not on it).
    hq.reconfigure(load_config(hq_path), plan_reload(hq_config, load_config(hq_path)), 20.0)
    pump(20.0)
    assert [s.state.name for s in hq.dispatcher.sessions_for("br")] == ["ESTABLISHED"]

    revoke(f["sub"], f["sub_key"], crl, [f["br"]])  # the branch router was stolen
    new = load_config(hq_path)
    plan = plan_reload(hq_config, new)
    assert [t.name for t in plan.kept] == ["br"]  # the YAML did not change: only the CRL file did
    hq.reconfigure(new, plan, 30.0)
    pump(30.0)
    assert not [s for s in hq.dispatcher.sessions_for("br") if s.state.name == "ESTABLISHED"]
    assert not br.dispatcher.sessions_for("hq")  # the branch was told (Delete), not left to DPD
    assert hq.dispatcher.drops_for("br").by_reason().get("cert_revoked", 0) >= 1
    hq.handle_timer(60.0)  # the tunnel tries again ... and is refused again, counted
    pump(60.0)
    assert not [s for s in hq.dispatcher.sessions_for("br") if s.state.name == "ESTABLISHED"]
    assert hq.dispatcher.drops_for("br").by_reason()["cert_revoked"] >= 2


def test_a_private_key_that_is_not_the_certificates_is_a_config_error(company: dict[str, Path]) -> None:
    from tunnel.config.pkifiles import CertificateFileError  # noqa: PLC0415

    f = company
    with pytest.raises(CertificateFileError, match="does not belong to the certificate"):
        auth([f["root"]], f["hq"], f["br_key"])  # hq's certificate, br's key
