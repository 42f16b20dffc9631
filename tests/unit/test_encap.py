"""RFC 3948 §2 demultiplexing of the encapsulation port."""

import pytest

from tunnel.esp.encap import Kind, classify, frame_ike, ike_payload


@pytest.mark.parametrize(
    "datagram,kind",
    [
        (b"\xff", Kind.KEEPALIVE),
        (b"\x00", Kind.MALFORMED),
        (b"", Kind.MALFORMED),
        (b"\x00\x00\x00\x00" + bytes(28), Kind.IKE),
        (b"\x00\x00\x10\x01" + bytes(40), Kind.ESP),
        (b"\x00\x00\x10\x01", Kind.MALFORMED),
    ],
)
def test_classify(datagram: bytes, kind: Kind) -> None:
    assert classify(datagram) is kind


def test_ike_framing_round_trip() -> None:
    message = bytes(range(40))
    framed = frame_ike(message)
    assert classify(framed) is Kind.IKE
    assert ike_payload(framed) == message
