"""IKE fragmentation (RFC 7383) between two IKE cores: RSA-3072 certificates with an intermediate make
IKE_AUTH ~2.3 kB each way; a path that drops anything above one 1280-byte packet (as routers that drop IP
fragments do) lets it through only as SKF fragments. And every way a fragment can be hostile ends as a
counted drop with nothing kept."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from tests.unit.test_ike_cert_auth import NOW, dispatcher
from tests.unit.test_ike_session import Wire
from tests.unit.test_pki_trust import auth, failure, make_company, up
from tunnel.ike.constants import ExchangeType, PayloadType
from tunnel.ike.fragments import MAX_FRAGMENTS, max_message
from tunnel.ike.message import parse_header

LIMIT = max_message(1280)  # the largest IKE message in a 1280-byte IP packet


@pytest.fixture(scope="module")
def rsa_company(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_company(tmp_path_factory.mktemp("pki"), key_type="rsa-3072")


def pair(files: dict[str, Path], hq_frag: bool = True, br_frag: bool = True):
    hq_auth = auth([files["root"]], files["hq"], files["hq_key"], intermediates=(files["sub"],))
    br_auth = auth([files["root"]], files["br"], files["br_key"], intermediates=(files["sub"],))
    d_hq = dispatcher("branch1", "10.1.0.0/24", "10.2.0.0/24", "hq", "br", hq_auth, lambda: NOW, "198.18.2.2", 1)
    d_br = dispatcher("hq", "10.2.0.0/24", "10.1.0.0/24", "br", "hq", br_auth, lambda: NOW, "198.18.1.2", 2)
    for d, on in ((d_hq, hq_frag), (d_br, br_frag)):
        for tunnel, (config, peer) in list(d._configs.items()):
            d._configs[tunnel] = (dataclasses.replace(config, fragment_size=1280 if on else 0), peer)
        d.set_configs(d._configs.values())
    wire = Wire(d_hq, d_br)
    return d_hq, d_br, wire


def narrow_path(sender: str, data: bytes) -> bool:
    return len(data) > LIMIT  # the router drops what would need IP fragments


def auth_messages(wire: Wire) -> list[bytes]:
    return [m for _, _, m in wire.log if parse_header(m).exchange == ExchangeType.IKE_AUTH]


def test_ike_auth_with_rsa_3072_and_an_intermediate_crosses_a_path_that_drops_ip_fragments(rsa_company) -> None:
    d_hq, d_br, wire = pair(rsa_company)
    wire.lose = narrow_path
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    assert up(d_hq) and up(d_br), (failure(d_hq), failure(d_br))
    sent = auth_messages(wire)
    assert all(len(m) <= LIMIT for m in sent)
    assert all(m[16] == PayloadType.SKF for m in sent)  # every IKE_AUTH message went as fragments
    requests = [m for m in sent if not parse_header(m).is_response]
    total = struct.unpack_from("!H", requests[0], 34)[0]  # IKE header 28, SKF header 4, Fragment Number 2
    assert len(requests) == total >= 2  # ~2.3 kB in ~1.2 kB pieces, each sent once


def test_without_fragmentation_the_same_path_loses_ike_auth(rsa_company) -> None:
    """The baseline that shows the path is narrow: one side does not offer fragmentation, so IKE_AUTH is
    one big datagram, which the path drops until the initiator gives up."""
    d_hq, d_br, wire = pair(rsa_company, br_frag=False)
    wire.lose = narrow_path
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    for _ in range(10):
        wire.advance(5.0)
    assert not up(d_hq) and failure(d_hq) is not None
    assert all(m[16] == PayloadType.SK for m in auth_messages(wire))
    # ... and on an ordinary path the same pair without fragmentation works (IP would fragment).
    d_hq, d_br, wire = pair(rsa_company, br_frag=False)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    assert up(d_hq) and up(d_br) and max(len(m) for m in auth_messages(wire)) > LIMIT


def test_a_lost_fragment_is_recovered_by_retransmission(rsa_company) -> None:
    d_hq, d_br, wire = pair(rsa_company)
    lost: list[int] = []

    def lose_second_fragment_once(sender: str, data: bytes) -> bool:
        if data[16] == PayloadType.SKF and struct.unpack_from("!H", data, 32)[0] == 2 and not lost:
            lost.append(len(data))
            return True
        return narrow_path(sender, data)

    wire.lose = lose_second_fragment_once
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    assert lost and not up(d_hq)
    wire.advance(1.5)  # the initiator's retransmission timer: all fragments again
    assert up(d_hq) and up(d_br)


def test_retransmitted_request_fragments_get_the_response_again_once(rsa_company) -> None:
    d_hq, d_br, wire = pair(rsa_company)
    responses: list[bytes] = []

    def lose_responses(sender: str, data: bytes) -> bool:
        if sender == "198.18.2.2" and parse_header(data).exchange == ExchangeType.IKE_AUTH:
            responses.append(data)
            return True
        return False

    wire.lose = lose_responses
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    first = len(responses)
    assert first >= 2 and up(d_br) and not up(d_hq)
    wire.lose = narrow_path
    wire.advance(1.5)  # hq sends all its fragments again; br answers once (on fragment 1), from cache
    assert up(d_hq)
    assert len([m for s, _, m in wire.log if s == "198.18.2.2" and parse_header(m).exchange == ExchangeType.IKE_AUTH
                ]) == 2 * first


def _established(rsa_company):
    d_hq, d_br, wire = pair(rsa_company)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    assert up(d_hq) and up(d_br)
    return d_hq, d_br, wire


def _skf(template: bytes, number: int, total: int, first: int = 0, body: bytes = bytes(40)) -> bytes:
    header = bytearray(template[:28])
    skf_len = 8 + len(body)
    header[16] = PayloadType.SKF
    header[24:28] = (28 + skf_len).to_bytes(4, "big")
    return bytes(header) + struct.pack("!BBHHH", first, 0, skf_len, number, total) + body


@pytest.mark.parametrize("number,total,first,reason", [
    (1, 3, 35, "integrity"),          # well formed, but not sealed with the SA's key: forged
    (0, 3, 35, "bad_fragment"),       # fragment numbers start at 1
    (4, 3, 0, "bad_fragment"),        # beyond the total
    (1, MAX_FRAGMENTS + 1, 35, "bad_fragment"),
    (2, 3, 35, "bad_fragment"),       # only fragment 1 names the first payload
])
def test_hostile_fragments_are_counted_drops_and_nothing_is_kept(rsa_company, number, total, first, reason) -> None:
    d_hq, d_br, wire = _established(rsa_company)
    session = d_br.sessions_for("hq")[0]
    template = next(m for s, _, m in wire.log if s == "198.18.1.2" and parse_header(m).exchange == ExchangeType.IKE_AUTH)
    request = bytearray(template)
    request[20:24] = (2).to_bytes(4, "big")  # the next request ID br expects
    before = dict(d_br.drops_for("hq").by_reason())
    d_br.receive_datagram(_skf(bytes(request), number, total, first), ("198.18.1.2", 4500), 4500, wire.now)
    after = d_br.drops_for("hq").by_reason()
    assert after.get(reason, 0) == before.get(reason, 0) + 1, after
    assert session.reassembly == {} and session.established


def test_fragments_are_refused_where_fragmentation_was_not_negotiated(rsa_company) -> None:
    d_hq, d_br, wire = pair(rsa_company, hq_frag=False)
    d_hq.initiate("branch1", 0.0)
    wire.pump()
    assert up(d_hq) and up(d_br)
    template = next(m for s, _, m in wire.log if s == "198.18.1.2" and parse_header(m).exchange == ExchangeType.IKE_AUTH)
    request = bytearray(template)
    request[20:24] = (2).to_bytes(4, "big")
    d_br.receive_datagram(_skf(bytes(request), 1, 2, 35), ("198.18.1.2", 4500), 4500, wire.now)
    assert d_br.drops_for("hq").by_reason().get("fragment_unexpected") == 1
