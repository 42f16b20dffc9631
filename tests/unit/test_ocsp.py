"""OCSP (RFC 6960): responses signed by the issuer or a delegated responder accepted, forged, stale or
foreign ones not; the cache asks once and answers after; and two IKE cores where the responder's and
the initiator's checks wait for the OCSP answer (the message is handled again on retransmission), with
hard and soft fail when no answer comes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.unit.test_ike_cert_auth import NOW, dispatcher
from tests.unit.test_ike_session import Wire
from tests.unit.test_pki_trust import auth, failure, make_company, up
from tunnel.config.model import Ocsp
from tunnel.config.pkifiles import issue, load_certificate, load_private_key
from tunnel.ike.errors import RevocationPending
from tunnel.ike.events import RevocationQuery
from tunnel.ike.ocsp import OcspCache, aia_ocsp_url

URL = "http://198.18.1.1:8888"


def response(cert, issuer, signer_key, status=ocsp.OCSPCertStatus.GOOD, this=NOW, next_=NOW + dt.timedelta(hours=1),
             responder_cert=None) -> bytes:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer, algorithm=hashes.SHA1(), cert_status=status, this_update=this, next_update=next_,
        revocation_time=NOW - dt.timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None)
    signer = responder_cert or issuer
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
    if responder_cert is not None:
        builder = builder.certificates([responder_cert])
    return builder.sign(signer_key, hashes.SHA256()).public_bytes(Encoding.DER)


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    f = make_company(tmp_path)
    return {"f": f, "sub": load_certificate(f["sub"]), "sub_key": load_private_key(f["sub_key"]),
            "br": load_certificate(f["br"])}


def ask(cache: OcspCache, cert, issuer) -> RevocationPending:
    with pytest.raises(RevocationPending) as caught:
        cache.status(cert, issuer, NOW)
    return caught.value


def test_the_cache_asks_once_then_answers_from_what_the_responder_said(pki: dict) -> None:
    cache = OcspCache(URL)
    first = ask(cache, pki["br"], pki["sub"])
    ((key, url, request),) = first.queries
    assert url == URL and request and ocsp.load_der_ocsp_request(request).serial_number == pki["br"].serial_number
    assert ask(cache, pki["br"], pki["sub"]).queries[0][2] == b""  # asked already: no second query
    assert cache.answer(key, response(pki["br"], pki["sub"], pki["sub_key"]), NOW)
    assert cache.status(pki["br"], pki["sub"], NOW).status == "good"
    assert not cache.answer(key, b"late duplicate", NOW)  # nobody asked any more


@pytest.mark.parametrize("case,expected", [
    ("revoked", "revoked"), ("stale", "unknown"), ("forged", "unknown"), ("other-cert", "unknown"),
    ("garbage", "unknown"), ("none", "unknown"), ("delegated", "good"), ("delegated-without-eku", "unknown"),
])
def test_what_a_response_is_worth(pki: dict, case: str, expected: str) -> None:
    cache = OcspCache(URL)
    pending = ask(cache, pki["br"], pki["sub"])
    sub, key, br = pki["sub"], pki["sub_key"], pki["br"]
    stranger = ec.generate_private_key(ec.SECP256R1())
    der: bytes | None
    if case == "revoked":
        der = response(br, sub, key, ocsp.OCSPCertStatus.REVOKED)
    elif case == "stale":
        der = response(br, sub, key, this=NOW - dt.timedelta(days=2), next_=NOW - dt.timedelta(days=1))
    elif case == "forged":  # in the issuer's name, signed by another key
        fake = (x509.CertificateBuilder().subject_name(sub.subject).issuer_name(sub.subject)
                .public_key(stranger.public_key()).serial_number(9).not_valid_before(NOW - dt.timedelta(days=1))
                .not_valid_after(NOW + dt.timedelta(days=1)).sign(stranger, hashes.SHA256()))
        der = response(br, sub, stranger, responder_cert=fake)
    elif case == "other-cert":
        der = response(load_certificate(pki["f"]["hq"]), sub, key)
    elif case == "garbage":
        der = b"\x30\x03\x0a\x01\x00"
    elif case == "none":
        der = None
    else:
        responder_key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocsp")]))
                   .issuer_name(sub.subject).public_key(responder_key.public_key()).serial_number(7)
                   .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1)))
        if case == "delegated":
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        responder = builder.sign(key, hashes.SHA256())
        der = response(br, sub, responder_key, responder_cert=responder)
    cache.answer(pending.queries[0][0], der, NOW, "connection refused" if der is None else "")
    entry = cache.status(br, sub, NOW)
    assert entry.status == expected, entry


def test_the_responder_comes_from_the_aia_unless_configured(tmp_path: Path, pki: dict) -> None:
    f = pki["f"]
    crt, _ = issue(f["sub"], f["sub_key"], tmp_path / "aia", "branch9.test", ocsp_url="http://ocsp.acme.test/")
    cert = load_certificate(crt)
    assert aia_ocsp_url(cert) == "http://ocsp.acme.test/"
    assert ask(OcspCache(), cert, pki["sub"]).queries[0][1] == "http://ocsp.acme.test/"
    assert ask(OcspCache(URL), cert, pki["sub"]).queries[0][1] == URL
    assert OcspCache().status(pki["br"], pki["sub"], NOW) is None  # no AIA, no URL: OCSP cannot say


# -- two IKE cores ---------------------------------------------------------------------------------------
def _pair(f: dict, hq_ocsp: bool, br_ocsp: bool, soft: bool = False):
    from tunnel.config.model import Revocation  # noqa: PLC0415

    kw = {"revocation": Revocation.SOFT} if soft else {}
    hq = auth([f["root"]], f["hq"], f["hq_key"], intermediates=(f["sub"],), **({"ocsp": Ocsp(URL)} if hq_ocsp else {}),
              **kw)
    br = auth([f["root"]], f["br"], f["br_key"], intermediates=(f["sub"],), **({"ocsp": Ocsp(URL)} if br_ocsp else {}),
              **kw)
    d_hq = dispatcher("branch1", "10.1.0.0/24", "10.2.0.0/24", "hq", "br", hq, lambda: NOW, "198.18.2.2", 1)
    d_br = dispatcher("hq", "10.2.0.0/24", "10.1.0.0/24", "br", "hq", br, lambda: NOW, "198.18.1.2", 2)
    return d_hq, d_br, Wire(d_hq, d_br), hq, br


def _queries(d) -> list[RevocationQuery]:
    from tests.unit.test_pki_trust import _events  # noqa: PLC0415

    return [e for e in _events(d) if isinstance(e, RevocationQuery)]


def serve(cache: OcspCache, queries: list[RevocationQuery], keys: dict, revoked: set[int] = frozenset(),
          answer: bool = True) -> None:
    """The responder: answer each query, signed by the issuer of the certificate it asks about."""
    for query in queries:
        cert, issuer, _ = cache._asked[query.key]
        status = ocsp.OCSPCertStatus.REVOKED if cert.serial_number in revoked else ocsp.OCSPCertStatus.GOOD
        cache.answer(query.key, response(cert, issuer, keys[issuer.subject], status) if answer else None, NOW,
                     "" if answer else "connection refused")


def _keys(f: dict) -> dict:
    return {load_certificate(f[name]).subject: load_private_key(f[f"{name}_key"]) for name in ("root", "sub")}


@pytest.mark.parametrize("checker", ["responder", "initiator"])
def test_ike_auth_waits_for_the_ocsp_answer(pki: dict, checker: str) -> None:
    """hq initiates. As responder br checks hq's path (IKE_AUTH request held back until hq retransmits);
    as initiator hq checks br's (the response held back; hq retransmits, br answers from its cache).
    Both certificates on the path (the gateway's and the intermediate's) are asked about at once."""
    f = pki["f"]
    d_hq, d_br, wire, hq_auth, br_auth = _pair(f, hq_ocsp=checker == "initiator", br_ocsp=checker == "responder")
    waiting, cache = (d_br, br_auth.ocsp) if checker == "responder" else (d_hq, hq_auth.ocsp)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    queries = _queries(waiting)
    assert len(queries) == 2  # the gateway's certificate and the intermediate's, in one go
    assert not up(waiting) and failure(d_hq) is None and failure(d_br) is None
    assert waiting.drops_for("hq" if checker == "responder" else "branch1").by_reason() == {"revocation_pending": 1}
    serve(cache, queries, _keys(f))
    wire.advance(1.5)  # hq's retransmission
    assert up(d_hq) and up(d_br)


@pytest.mark.parametrize("soft", [False, True])
def test_no_ocsp_answer_is_refused_hard_and_accepted_soft(pki: dict, soft: bool) -> None:
    d_hq, d_br, wire, _, br_auth = _pair(pki["f"], hq_ocsp=False, br_ocsp=True, soft=soft)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    serve(br_auth.ocsp, _queries(d_br), _keys(pki["f"]), answer=False)
    wire.advance(1.5)
    assert up(d_br) is soft
    if not soft:
        assert "connection refused" in failure(d_br).reason and "unknown" in failure(d_br).reason


def test_a_revoked_answer_is_refused_and_counted(pki: dict) -> None:
    d_hq, d_br, wire, _, br_auth = _pair(pki["f"], hq_ocsp=False, br_ocsp=True)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    serve(br_auth.ocsp, _queries(d_br), _keys(pki["f"]), revoked={load_certificate(pki["f"]["hq"]).serial_number})
    wire.advance(1.5)
    assert not up(d_br) and "revoked" in failure(d_br).reason
    assert d_br.drops_for("hq").by_reason().get("cert_revoked") == 1


def test_the_http_driver_posts_and_bounds_what_it_reads() -> None:
    import http.server  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from tunnel.drivers import ocsp_http  # noqa: PLC0415

    seen: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.headers["Content-Type"], body))
            answer = b"x" * (ocsp_http.MAX_RESPONSE + 1) if self.path == "/big" else b"DER:" + body
            self.send_response(200 if self.path != "/missing" else 404)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert ocsp_http.post(base + "/", b"request", 5.0) == (b"DER:request", "")
        assert seen == [("application/ocsp-request", b"request")]
        assert ocsp_http.post(base + "/missing", b"r", 5.0) == (None, "HTTP 404")
        body, problem = ocsp_http.post(base + "/big", b"r", 5.0)
        assert body is None and "longer than" in problem
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    body, problem = ocsp_http.post(f"http://127.0.0.1:{port}/", b"r", 5.0)
    assert body is None and "refused" in problem.lower()
