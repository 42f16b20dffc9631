"""Rules that never match (policy/check.py): shadowed and contradicted rules, reverse-direction cover,
cases that are NOT covered, and a property test that every report is true: each packet the reported
rule matches, the earlier rule matches too (checked with the reference matcher, policy.match)."""

import ipaddress

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policy.check import Conflict, find_conflicts, find_unmatchable
from policy.match import rule_matches
from policy.model import ANY_PROTOCOL, ICMP, PORT_PROTOCOLS, TCP, UDP, Action, PortMatch, PortRange, Rule
from policy.qos import QosClass
from policy.services import resolve

net = ipaddress.ip_network
ALLOW, DENY = Action.ALLOW, Action.DENY
HQ, BRANCH = net("10.1.0.0/16"), net("10.2.0.0/16")


def udp(start: int, end: int | None = None) -> PortMatch:
    return PortMatch(UDP, PortRange(start, start if end is None else end))


def test_shadowed_by_broader_rule_with_same_value() -> None:
    rules = [Rule(ALLOW, (HQ,), (BRANCH,)), Rule(ALLOW, (net("10.1.2.0/24"),), (net("10.2.0.0/24"),), (udp(5060),))]
    assert find_conflicts(rules) == [Conflict(1, 0, "shadowed")]
    assert Conflict(1, 0, "shadowed").message(rules) == \
        "never matches: rules[0] (allow) already covers every packet it matches"


def test_contradicted_uses_labels_and_values() -> None:
    rules = [Rule(QosClass.BULK, (HQ,), label="hq.yaml:12"),
             Rule(QosClass.REALTIME_AUDIO, (net("10.1.0.7/32"),), matches=resolve("rtp").matches, label="hq.yaml:15")]
    [conflict] = find_conflicts(rules)
    assert conflict == Conflict(1, 0, "contradicted")
    assert conflict.message(rules) == ("never matches: hq.yaml:12 (bulk) already covers every packet it matches, "
                                       "so its realtime-audio never applies")


def test_reverse_direction_cover_needs_all_ports() -> None:
    forward = Rule(ALLOW, (HQ,), (BRANCH,), (PortMatch(UDP),))
    backward = Rule(DENY, (net("10.2.0.0/24"),), (net("10.1.0.0/24"),), (udp(5060),))
    assert find_conflicts([forward, backward]) == [Conflict(1, 0, "contradicted")]
    # With a port range the replies are tested on the source port: 10.2.x -> 10.1.x dport 5060 with a
    # random source port is not a reply of the SIP rule, so nothing is covered.
    sip_only = Rule(ALLOW, (HQ,), (BRANCH,), (udp(5060),))
    assert find_conflicts([sip_only, backward]) == []
    assert not rule_matches(sip_only, 4, UDP, int(ipaddress.ip_address("10.2.0.1")),
                            int(ipaddress.ip_address("10.1.0.1")), 40000, 5060)


def test_reverse_cover_for_portless_protocols() -> None:
    icmp = resolve("icmp").matches
    rules = [Rule(ALLOW, (HQ,), (BRANCH,), icmp), Rule(DENY, (BRANCH,), (HQ,), icmp)]
    assert find_conflicts(rules) == [Conflict(1, 0, "contradicted")]


def test_not_covered_cases() -> None:
    base = Rule(ALLOW, (HQ,), (BRANCH,), (udp(5000, 6000),))
    cases = [
        Rule(DENY, (net("10.0.0.0/8"),), (BRANCH,), (udp(5060),)),  # wider src
        Rule(DENY, (HQ,), (BRANCH,), (udp(4999, 5001),)),  # ports stick out
        Rule(DENY, (HQ,), (BRANCH,), (udp(5060), PortMatch(TCP, PortRange(5060, 5060)))),  # tcp not covered
        Rule(DENY, (HQ,), (BRANCH,)),  # any protocol
        Rule(DENY, (HQ,), (), (udp(5060),)),  # any dst
        Rule(DENY, (HQ, net("fd00::/8")), (BRANCH, net("fd00::/8")), (udp(5060),)),  # IPv6 part not covered
        Rule(DENY, (net("10.1.0.0/24"),), (net("10.1.1.0/24"),), (udp(5060),)),  # src/dst both in HQ
    ]
    for case in cases:
        assert find_conflicts([base, case]) == [], case


def test_empty_tuple_is_covered_only_by_both_whole_address_families() -> None:
    anywhere = Rule(DENY, (), (), (udp(53),))
    assert find_conflicts([Rule(ALLOW, (net("0.0.0.0/0"),), (net("0.0.0.0/0"),)), anywhere]) == []
    both = (net("0.0.0.0/0"), net("::/0"))
    assert find_conflicts([Rule(ALLOW, both, both), anywhere]) == [Conflict(1, 0, "contradicted")]
    rules = [Rule(ALLOW), Rule(DENY, (HQ,), (net("fd00::/8"), BRANCH))]
    assert find_conflicts(rules) == [Conflict(1, 0, "contradicted")]


def test_small_networks_do_not_stand_for_a_whole_family_and_gaps_stay_gaps() -> None:
    low = (net("0.0.0.0/0"), net("::/96"))  # ::/96 holds exactly the integers an IPv4 address can be
    assert find_conflicts([Rule(ALLOW, low, low), Rule(DENY)]) == []
    gappy = Rule(ALLOW, (net("10.0.0.1/32"), net("10.0.0.3/32")), (), (udp(1), udp(3)))
    assert find_conflicts([gappy, Rule(DENY, (net("10.0.0.2/32"),), (), (udp(3),))]) == []
    assert find_conflicts([gappy, Rule(DENY, (net("10.0.0.3/32"),), (), (udp(2),))]) == []
    assert find_conflicts([gappy, Rule(DENY, (net("10.0.0.3/32"),), (), (udp(3),))]) == [Conflict(1, 0, "contradicted")]


def test_an_ipv4_only_rule_is_covered_by_ipv4_only_cover() -> None:
    # src is IPv4 only, so the empty dst is only ever an IPv4 address for this rule, and the IPv6
    # network in the second one's dst can never pair with its IPv4-only src.
    rules = [Rule(ALLOW, (HQ,), (net("0.0.0.0/0"),)), Rule(DENY, (net("10.1.1.0/24"),), ()),
             Rule(DENY, (HQ,), (BRANCH, net("fd00::/8")))]
    assert find_conflicts(rules) == [Conflict(1, 0, "contradicted"), Conflict(2, 0, "contradicted")]


def test_union_of_networks_and_port_ranges_inside_one_rule() -> None:
    halves = Rule(ALLOW, (net("10.1.0.0/17"), net("10.1.128.0/17")), (BRANCH,), (udp(1, 100), udp(101, 200)))
    assert find_conflicts([halves, Rule(DENY, (HQ,), (BRANCH,), (udp(50, 150),))]) == [Conflict(1, 0, "contradicted")]


def test_first_covering_rule_is_named_and_any_protocol_covers_all() -> None:
    rules = [Rule(DENY, (net("192.0.2.0/24"),)), Rule(ALLOW, (HQ,), matches=(PortMatch(ANY_PROTOCOL),)),
             Rule(DENY), Rule(ALLOW, (net("10.1.1.1/32"),), matches=(PortMatch(ICMP), udp(7)))]
    assert find_conflicts(rules) == [Conflict(3, 1, "shadowed")]


def test_unmatchable_rules_are_reported_separately() -> None:
    never = Rule(ALLOW, (HQ,), (net("fd00::/8"),))
    assert find_unmatchable([Rule(DENY), never]) == [1]
    assert find_conflicts([Rule(DENY), never]) == []


# --- Property: no false positives ----------------------------------------------------------------------

BASE = {4: int(ipaddress.ip_address("10.0.0.0")), 6: int(ipaddress.ip_address("fd00::"))}
BITS = {4: 32, 6: 128}
PORTS = [0, 1, 2, 3, 4, 65534, 65535]


@st.composite
def networks(draw):
    version = draw(st.sampled_from([4, 4, 6]))
    if draw(st.integers(0, 7)) == 0:
        return net("0.0.0.0/0" if version == 4 else "::/0")
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((BASE[version] + draw(st.integers(0, 7)), BITS[version] - draw(st.integers(0, 3))), strict=False)


@st.composite
def port_matches(draw):
    protocol = draw(st.sampled_from([ANY_PROTOCOL, ICMP, TCP, UDP, UDP]))
    if protocol not in PORT_PROTOCOLS:
        return PortMatch(protocol)
    a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    return PortMatch(protocol, PortRange(min(a, b), max(a, b)))


rule_lists = st.lists(
    st.builds(Rule, st.sampled_from([ALLOW, DENY]), st.lists(networks(), max_size=2).map(tuple),
              st.lists(networks(), max_size=2).map(tuple), st.lists(port_matches(), max_size=2).map(tuple)),
    min_size=2, max_size=6,
)


def probes(rule: Rule):
    """Packets around every edge of the rule: network ends and their neighbours, port range ends and
    their neighbours, both directions, fragments, and protocols other than the rule's."""
    for version in (4, 6):
        pool = {BASE[version], BASE[version] + 8, (1 << BITS[version]) - 1}
        for n in rule.src + rule.dst:
            if n.version == version:
                first, last = int(n.network_address), int(n.broadcast_address)
                pool |= {first, last, max(first - 1, 0), min(last + 1, (1 << BITS[version]) - 1)}
        ports = {0, 5, 65535} | {p for m in rule.matches for p in (m.ports.start, m.ports.end,
                                 max(m.ports.start - 1, 0), min(m.ports.end + 1, 65535))}
        for protocol in {ICMP, TCP, UDP, 47} | {m.protocol for m in rule.matches}:
            for src in pool:
                for dst in pool:
                    yield version, protocol, src, dst, 0, 0, True
                    for port in ports:
                        yield version, protocol, src, dst, 7, port, False
                        yield version, protocol, src, dst, port, 7, False


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_lists)
def test_every_reported_rule_is_truly_covered(rules) -> None:
    conflicts = find_conflicts(rules)
    event(f"conflicts reported: {min(len(conflicts), 2)}")
    for c in conflicts:
        assert c.earlier < c.index
        assert c.kind == ("shadowed" if rules[c.earlier].value == rules[c.index].value else "contradicted")
        later, earlier = rules[c.index], rules[c.earlier]
        matched = 0
        for packet in probes(later):
            if rule_matches(later, *packet):
                matched += 1
                assert rule_matches(earlier, *packet), (c, packet)
        assert matched, "a reported rule must match something"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.builds(Rule, st.sampled_from([ALLOW, DENY]), st.lists(networks(), max_size=2).map(tuple),
                 st.lists(networks(), max_size=2).map(tuple), st.lists(port_matches(), max_size=2).map(tuple)))
def test_a_rule_covers_itself_and_its_mirror_image(rule) -> None:
    """Sanity of the cover test's completeness: a copy is always caught, and so is a copy with src and
    dst swapped when the ports don't stand in the way."""
    if not rule.versions():
        return
    assert find_conflicts([rule, rule]) == [Conflict(1, 0, "shadowed")]
    mirror = Rule(rule.value, rule.dst, rule.src, rule.matches)
    if all(m.ports == PortRange.ALL for m in rule.matches):
        assert find_conflicts([rule, mirror]) == [Conflict(1, 0, "shadowed")]
