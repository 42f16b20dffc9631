"""The config vocabulary: named services (policy/services.py, ports per conferencing.md and the RFCs cited
there), QoS class labels and DSCP names (policy/qos.py; RFC 2474, 2597, 3246, 4594, 5865, 8622, 8837)."""

import pytest

from policy.model import ICMP, ICMPV6, PORT_PROTOCOLS, TCP, UDP, PortMatch, PortRange, Service
from policy.qos import (
    DSCP_CLASS,
    REALTIME_CLASSES,
    QosClass,
    class_of_dscp,
    dscp_from_label,
    dscp_of_class,
)
from policy.services import SERVICES, UnknownService, resolve


def ports(name: str) -> set[tuple[int, int, int]]:
    return {(m.protocol, m.ports.start, m.ports.end) for m in resolve(name).matches}


def test_every_entry_is_valid() -> None:
    assert {name for name, _ in EXPECTED} == set(SERVICES)
    for name, service in SERVICES.items():
        assert isinstance(service, Service) and service.name == name
        assert service.matches and len(set(service.matches)) == len(service.matches), name
        for m in service.matches:
            assert isinstance(m, PortMatch) and 1 <= m.protocol <= 255, name  # no any-protocol service
            if m.protocol not in PORT_PROTOCOLS:
                assert m.ports == PortRange.ALL
            else:
                assert m.ports != PortRange.ALL, name


EXPECTED = [
    ("sip", {(UDP, 5060, 5060), (TCP, 5060, 5060), (TCP, 5061, 5061)}),
    ("sip-tls", {(TCP, 5061, 5061)}),
    ("rtp", {(UDP, 10000, 20000)}),
    ("h323", {(UDP, 1718, 1719), (TCP, 1720, 1720)}),
    ("stun", {(UDP, 3478, 3478), (TCP, 3478, 3478)}),
    ("turn", {(UDP, 3478, 3478), (TCP, 3478, 3478), (TCP, 5349, 5349)}),
    ("turn-relay", {(UDP, 49152, 65535)}),
    ("webrtc", {(UDP, 3478, 3478), (TCP, 3478, 3478), (TCP, 5349, 5349)}),
    ("teams-audio", {(UDP, 50000, 50019)}),
    ("teams-video", {(UDP, 50020, 50039)}),
    ("teams-sharing", {(UDP, 50040, 50059)}),
    ("teams", {(UDP, 50000, 50059)}),
    ("trueconf", {(TCP, 4307, 4307), (TCP, 4310, 4310)}),
    ("https", {(TCP, 443, 443)}),
    ("quic", {(UDP, 443, 443)}),
    ("dns", {(UDP, 53, 53), (TCP, 53, 53)}),
    ("ssh", {(TCP, 22, 22)}),
    ("icmp", {(ICMP, 0, 65535)}),
    ("icmpv6", {(ICMPV6, 0, 65535)}),
    ("ike", {(UDP, 500, 500), (UDP, 4500, 4500)}),
]


@pytest.mark.parametrize("name, expected", EXPECTED)
def test_ports_per_the_references(name: str, expected: set) -> None:
    assert ports(name) == expected


def test_teams_is_exactly_its_three_parts() -> None:
    parts = [resolve(f"teams-{k}").matches[0].ports for k in ("audio", "video", "sharing")]
    assert [(p.start, p.end) for p in parts] == [(50000, 50019), (50020, 50039), (50040, 50059)]
    assert resolve("teams").matches[0].ports == PortRange(parts[0].start, parts[-1].end)


def test_overrides_win_and_may_add_names() -> None:
    pbx_rtp = Service("rtp", (PortMatch(UDP, PortRange(16384, 32767)),))
    assert resolve("rtp", {"rtp": pbx_rtp}) is pbx_rtp
    assert resolve("rtp") is SERVICES["rtp"]
    lab = Service("lab-video", (PortMatch(UDP, PortRange(5004, 5005)),))
    assert resolve("lab-video", {"lab-video": lab}) is lab


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(UnknownService) as err:
        resolve("sipp")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "unknown service 'sipp'; did you mean sip?"
    with pytest.raises(KeyError, match="did you mean teams-video"):
        resolve("teams_video")
    with pytest.raises(KeyError, match="lab-video"):
        resolve("lab_video", {"lab-video": Service("lab-video", (PortMatch(UDP, PortRange(1, 2)),))})
    with pytest.raises(UnknownService, match="known: .*https"):
        resolve("zzzzzz")


def test_services_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        SERVICES["sip"] = SERVICES["ssh"]  # type: ignore[index]


def test_service_validation() -> None:
    with pytest.raises(ValueError):
        Service("empty", ())
    with pytest.raises(ValueError):
        Service("", (PortMatch(UDP),))


# --- QoS classes and DSCP -------------------------------------------------------------------------------

def test_priority_order_and_labels() -> None:
    assert sorted(QosClass) == [QosClass.REALTIME_AUDIO, QosClass.INTERACTIVE_VIDEO, QosClass.SIGNALLING,
                                QosClass.DEFAULT, QosClass.BULK]
    assert [c.label for c in QosClass] == ["realtime-audio", "interactive-video", "signalling", "default", "bulk"]
    for c in QosClass:
        assert QosClass.from_label(c.label) is c
    with pytest.raises(ValueError, match="valid: realtime-audio, interactive-video"):
        QosClass.from_label("voice")
    assert REALTIME_CLASSES == {QosClass.REALTIME_AUDIO, QosClass.INTERACTIVE_VIDEO}


@pytest.mark.parametrize("dscp, cls", [
    (46, QosClass.REALTIME_AUDIO), (44, QosClass.REALTIME_AUDIO),
    (34, QosClass.INTERACTIVE_VIDEO), (36, QosClass.INTERACTIVE_VIDEO), (38, QosClass.INTERACTIVE_VIDEO),
    (32, QosClass.INTERACTIVE_VIDEO), (40, QosClass.SIGNALLING), (24, QosClass.SIGNALLING),
    (8, QosClass.BULK), (1, QosClass.BULK), (0, QosClass.DEFAULT), (18, QosClass.DEFAULT),
    (48, QosClass.DEFAULT), (63, QosClass.DEFAULT),
])
def test_class_of_dscp(dscp: int, cls: QosClass) -> None:
    assert class_of_dscp(dscp) is cls is DSCP_CLASS[dscp]


def test_dscp_table_shape_and_round_trip() -> None:
    assert len(DSCP_CLASS) == 64
    for c in QosClass:
        assert class_of_dscp(dscp_of_class(c)) is c
    assert [dscp_of_class(c) for c in QosClass] == [46, 34, 40, 0, 8]
    for bad in (-1, 64):
        with pytest.raises(ValueError):
            class_of_dscp(bad)


@pytest.mark.parametrize("text, dscp", [
    ("ef", 46), ("EF", 46), ("af11", 10), ("af12", 12), ("af13", 14), ("af21", 18), ("af31", 26), ("af41", 34),
    ("af42", 36), ("af43", 38), ("cs0", 0), ("cs1", 8), ("cs3", 24), ("cs5", 40), ("cs7", 56), ("le", 1),
    ("default", 0), ("be", 0), ("voice-admit", 44), ("0", 0), ("46", 46), ("63", 63), (" af41 ", 34),
])
def test_dscp_from_label(text: str, dscp: int) -> None:
    assert dscp_from_label(text) == dscp


@pytest.mark.parametrize("text", ["64", "-1", "af44", "af51", "cs8", "", "4.5", "0x2e", "expedited", "٣"])
def test_dscp_from_label_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad DSCP"):
        dscp_from_label(text)
