"""The matching contract of policy/match.py by hand: symmetric SPD-style rules (RFC 4301 §4.4.1), first
match wins, defaults, fragments, mixed IP versions, and the flow cache. Every case is checked against
both the compiled matcher and linear_lookup."""

import ipaddress

import pytest

from policy.flow import flow_key
from policy.match import Matcher, compile_rules, linear_lookup
from policy.model import ALL_PORTS, ANY_PROTOCOL, ICMP, TCP, UDP, Action, PortMatch, PortRange, Rule
from policy.qos import QosClass
from policy.services import resolve

net = ipaddress.ip_network
ALLOW, DENY = Action.ALLOW, Action.DENY
HQ, BRANCH = net("10.1.0.0/16"), net("10.2.0.0/16")
HQ6, BRANCH6 = net("fd00:1::/48"), net("fd00:2::/48")


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def both(rules, default, *packet):
    """The compiled answer, after checking the reference agrees (and a repeat comes from the cache)."""
    matcher = compile_rules(rules, default)
    first = matcher.lookup(*packet)
    assert first == linear_lookup(rules, default, *packet), packet
    assert matcher.lookup(*packet) == first
    return first


SIP = Rule(ALLOW, (HQ,), (BRANCH,), (PortMatch(UDP, PortRange(5060, 5060)),), label="sip")


def test_forward_direction_checks_dport() -> None:
    assert both([SIP], DENY, 4, UDP, ip("10.1.0.5"), ip("10.2.0.9"), 40000, 5060) is ALLOW
    assert both([SIP], DENY, 4, UDP, ip("10.1.0.5"), ip("10.2.0.9"), 5060, 40000) is DENY  # sport 5060 is not it


def test_reverse_direction_checks_sport() -> None:
    assert both([SIP], DENY, 4, UDP, ip("10.2.0.9"), ip("10.1.0.5"), 5060, 40000) is ALLOW  # the reply
    assert both([SIP], DENY, 4, UDP, ip("10.2.0.9"), ip("10.1.0.5"), 40000, 5060) is DENY  # a new call inward


def test_addresses_and_protocol_must_match() -> None:
    assert both([SIP], DENY, 4, UDP, ip("10.3.0.1"), ip("10.2.0.9"), 1, 5060) is DENY
    assert both([SIP], DENY, 4, UDP, ip("10.1.0.5"), ip("10.1.0.6"), 1, 5060) is DENY  # both in src
    assert both([SIP], DENY, 4, TCP, ip("10.1.0.5"), ip("10.2.0.9"), 1, 5060) is DENY


def test_port_range_edges() -> None:
    rule = Rule(ALLOW, matches=(PortMatch(UDP, PortRange(10000, 20000)),))
    for port, expected in [(9999, DENY), (10000, ALLOW), (15000, ALLOW), (20000, ALLOW), (20001, DENY)]:
        assert both([rule], DENY, 4, UDP, 1, 2, 1, port) is expected, port
    assert both([rule], DENY, 4, UDP, 1, 2, 0, 0) is DENY
    top = Rule(ALLOW, matches=(PortMatch(UDP, PortRange(65535, 65535)),))
    assert both([top], DENY, 4, UDP, 1, 2, 1, 65535) is ALLOW
    assert both([top], DENY, 4, UDP, 1, 2, 1, 65534) is DENY


def test_first_match_wins() -> None:
    rules = [Rule(DENY, (net("10.1.0.66/32"),)), Rule(ALLOW, (HQ,), (BRANCH,))]
    assert both(rules, DENY, 4, TCP, ip("10.1.0.66"), ip("10.2.0.1"), 1, 2) is DENY
    assert both(rules, DENY, 4, TCP, ip("10.1.0.67"), ip("10.2.0.1"), 1, 2) is ALLOW
    assert both(rules[::-1], DENY, 4, TCP, ip("10.1.0.66"), ip("10.2.0.1"), 1, 2) is ALLOW


def test_earlier_reverse_match_beats_later_forward_match() -> None:
    rules = [Rule(DENY, (BRANCH,), (HQ,)), Rule(ALLOW, (HQ,), (BRANCH,))]
    assert both(rules, ALLOW, 4, UDP, ip("10.1.0.1"), ip("10.2.0.1"), 1, 2) is DENY


def test_default_when_nothing_matches_and_empty_rules() -> None:
    assert both([], QosClass.DEFAULT, 4, UDP, 1, 2, 3, 4) is QosClass.DEFAULT
    assert both([SIP], "nope", 6, UDP, 1, 2, 3, 4) == "nope"
    assert both([Rule(ALLOW)], DENY, 5, UDP, 1, 2, 3, 4) is DENY  # not IPv4/IPv6: no rule applies


def test_empty_addresses_are_any_of_both_versions() -> None:
    rule = Rule(ALLOW, matches=(PortMatch(TCP, PortRange(443, 443)),))
    assert both([rule], DENY, 4, TCP, ip("192.0.2.1"), ip("198.51.100.1"), 50000, 443) is ALLOW
    assert both([rule], DENY, 6, TCP, ip("2001:db8::1"), ip("2001:db8::2"), 50000, 443) is ALLOW


def test_other_version_networks_never_match() -> None:
    v4 = Rule(ALLOW, (net("0.0.0.0/0"),), (net("0.0.0.0/0"),))
    assert both([v4], DENY, 6, UDP, 5, 6, 1, 2) is DENY  # ::5 is numerically inside 0.0.0.0/0
    assert both([v4], DENY, 4, UDP, 5, 6, 1, 2) is ALLOW
    mixed = Rule(ALLOW, (HQ, HQ6), (BRANCH6,))
    assert both([mixed], DENY, 6, UDP, ip("fd00:1::1"), ip("fd00:2::1"), 1, 2) is ALLOW
    assert both([mixed], DENY, 4, UDP, ip("10.1.0.1"), ip("10.2.0.1"), 1, 2) is DENY
    v4_to_any = Rule(ALLOW, (HQ,), ())
    assert both([v4_to_any], DENY, 6, UDP, ip("fd00:1::1"), ip("fd00:2::1"), 1, 2) is DENY
    assert both([v4_to_any], DENY, 4, UDP, ip("8.8.8.8"), ip("10.1.2.3"), 1, 2) is ALLOW  # reverse


def test_nested_networks_across_rules() -> None:
    rules = [Rule(QosClass.BULK, (net("10.1.2.0/24"),)), Rule(QosClass.SIGNALLING, (net("10.1.0.0/16"),)),
             Rule(QosClass.REALTIME_AUDIO, (net("10.1.2.3/32"),))]
    assert both(rules, QosClass.DEFAULT, 4, UDP, ip("10.1.2.3"), 1, 1, 1) is QosClass.BULK
    assert both(rules, QosClass.DEFAULT, 4, UDP, ip("10.1.3.3"), 1, 1, 1) is QosClass.SIGNALLING
    assert both(rules[2:], QosClass.DEFAULT, 4, UDP, ip("10.1.2.3"), 1, 1, 1) is QosClass.REALTIME_AUDIO
    assert both(rules[1:], QosClass.DEFAULT, 4, UDP, ip("10.1.2.3"), 1, 1, 1) is QosClass.SIGNALLING


def test_ports_do_not_apply_to_icmp() -> None:
    rules = [Rule(ALLOW, (HQ,), (BRANCH,), resolve("icmp").matches)]
    assert both(rules, DENY, 4, ICMP, ip("10.1.0.1"), ip("10.2.0.1"), 0, 0) is ALLOW
    assert both(rules, DENY, 4, ICMP, ip("10.2.0.1"), ip("10.1.0.1"), 0, 0) is ALLOW
    assert both(rules, DENY, 4, UDP, ip("10.1.0.1"), ip("10.2.0.1"), 0, 0) is DENY


def test_empty_matches_and_any_protocol_match_every_protocol() -> None:
    for matches in [(), (PortMatch(ANY_PROTOCOL),), (PortMatch(UDP, PortRange(1, 1)), PortMatch(ANY_PROTOCOL))]:
        rules = [Rule(ALLOW, (HQ,), (BRANCH,), matches)]
        for protocol in (ICMP, TCP, UDP, 47, 132):
            assert both(rules, DENY, 4, protocol, ip("10.1.0.1"), ip("10.2.0.1"), 7, 9) is ALLOW


def test_non_first_fragments_satisfy_port_conditions() -> None:
    rule = Rule(ALLOW, (HQ,), (BRANCH,), (PortMatch(UDP, PortRange(5004, 5004)),))
    assert both([rule], DENY, 4, UDP, ip("10.1.0.1"), ip("10.2.0.1"), 0, 0, True) is ALLOW
    assert both([rule], DENY, 4, UDP, ip("10.2.0.1"), ip("10.1.0.1"), 0, 0, True) is ALLOW
    assert both([rule], DENY, 4, UDP, ip("10.1.0.1"), ip("10.2.0.1"), 0, 0, False) is DENY
    assert both([rule], DENY, 4, TCP, ip("10.1.0.1"), ip("10.2.0.1"), 0, 0, True) is DENY  # protocol still counts
    assert both([rule], DENY, 4, UDP, ip("10.1.0.1"), ip("10.3.0.1"), 0, 0, True) is DENY  # and addresses


def test_several_alternatives_of_one_protocol() -> None:
    rule = Rule(ALLOW, matches=resolve("sip").matches + resolve("rtp").matches)
    assert both([rule], DENY, 4, UDP, 1, 2, 1, 5060) is ALLOW
    assert both([rule], DENY, 4, UDP, 1, 2, 1, 12000) is ALLOW
    assert both([rule], DENY, 4, UDP, 1, 2, 1, 5061) is DENY
    assert both([rule], DENY, 4, TCP, 1, 2, 1, 5061) is ALLOW


def test_lookup_flow_takes_a_flow_key() -> None:
    packet = bytes.fromhex("4500001c0000400040110000") + bytes([10, 1, 0, 5, 10, 2, 0, 9]) + \
        (40000).to_bytes(2, "big") + (5060).to_bytes(2, "big") + bytes(4)
    matcher = compile_rules([SIP], DENY)
    assert matcher.lookup_flow(flow_key(packet)) is ALLOW


def test_flow_cache_is_bounded() -> None:
    matcher = compile_rules([SIP], DENY, cache_size=4)
    for port in range(100):
        expected = ALLOW if port == 5060 else DENY
        assert matcher.lookup(4, UDP, ip("10.1.0.5"), ip("10.2.0.9"), 1, port) is expected
        assert len(matcher._cache) <= 4
    with pytest.raises(ValueError):
        compile_rules([SIP], DENY, cache_size=0)


def test_rules_that_cannot_change_the_answer_compile_to_a_constant() -> None:
    matcher = compile_rules([Rule(DENY, (HQ,))], DENY)
    assert matcher.lookup(4, UDP, ip("10.1.0.1"), 0, 0, 0) is DENY
    assert isinstance(matcher, Matcher) and len(matcher) == 1
    assert compile_rules([], ALLOW).lookup(6, 0, 0, 0, 0, 0, True) is ALLOW


def test_model_validation() -> None:
    with pytest.raises(ValueError):
        PortRange(10, 9)
    with pytest.raises(ValueError):
        PortRange(0, 65536)
    with pytest.raises(ValueError):
        PortMatch(ANY_PROTOCOL, PortRange(1, 2))
    with pytest.raises(ValueError):
        PortMatch(ICMP, PortRange(1, 2))
    with pytest.raises(ValueError):
        PortMatch(256)
    with pytest.raises(ValueError):
        Rule(ALLOW, ("10.0.0.0/8",))
    assert PortRange.ALL == ALL_PORTS == PortRange(0, 65535)
    assert Rule(ALLOW, [HQ], [BRANCH]).src == (HQ,)  # lists become tuples
    assert ALL_PORTS.covers(PortRange(5, 6)) and not PortRange(5, 6).covers(ALL_PORTS)
