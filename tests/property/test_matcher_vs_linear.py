"""The compiled matcher against the naive linear scan (policy.match.linear_lookup, the written contract):
random rule lists over a small address and port space, so that rules nest, overlap and match often;
random packets of both IP versions, fragments included; looked up twice and with tiny flow caches, so
that cache hits and cache clearing are exercised too."""

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.match import compile_rules, linear_lookup
from policy.model import ANY_PROTOCOL, ICMP, ICMPV6, PORT_PROTOCOLS, TCP, UDP, PortMatch, PortRange, Rule

BASE = {4: int(ipaddress.ip_address("10.0.0.0")), 6: int(ipaddress.ip_address("fd00::"))}
BITS = {4: 32, 6: 128}
PORTS = [0, 1, 2, 3, 5060, 65534, 65535]
PROTOCOLS = [ANY_PROTOCOL, ICMP, TCP, UDP, ICMPV6, 132]
VALUES = ["a", "b", "c"]
DEFAULT = "d"


@st.composite
def networks(draw):
    version = draw(st.sampled_from([4, 6]))
    if draw(st.integers(0, 9)) == 0:  # now and then a wide one: everything of that version
        return ipaddress.ip_network(("0.0.0.0", 0) if version == 4 else ("::", 0))
    plen = BITS[version] - draw(st.integers(0, 4))
    address = BASE[version] + draw(st.integers(0, 15))
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((address, plen), strict=False)


@st.composite
def port_matches(draw):
    protocol = draw(st.sampled_from(PROTOCOLS))
    if protocol not in PORT_PROTOCOLS:
        return PortMatch(protocol)
    a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    return PortMatch(protocol, PortRange(min(a, b), max(a, b)))


rules_strategy = st.lists(
    st.builds(Rule, st.sampled_from(VALUES), st.lists(networks(), max_size=3).map(tuple),
              st.lists(networks(), max_size=3).map(tuple), st.lists(port_matches(), max_size=3).map(tuple)),
    max_size=8,
)


@st.composite
def packets(draw):
    version = draw(st.sampled_from([4, 6]))
    src = BASE[version] + draw(st.integers(0, 20))
    dst = BASE[version] + draw(st.integers(0, 20))
    protocol = draw(st.sampled_from([ICMP, TCP, UDP, ICMPV6, 132, 136, 47, 0]))
    fragment = draw(st.integers(0, 5)) == 0
    if protocol in PORT_PROTOCOLS and not fragment:
        sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    else:
        sport = dport = 0
    return version, protocol, src, dst, sport, dport, fragment


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_strategy, st.lists(packets(), min_size=5, max_size=25), st.sampled_from([1, 2, 3, 65536]))
def test_compiled_equals_linear(rules, probes, cache_size) -> None:
    matcher = compile_rules(rules, DEFAULT, cache_size=cache_size)
    for round_ in range(2):  # the second round answers from the cache where it still holds the key
        for probe in probes:
            expected = linear_lookup(rules, DEFAULT, *probe)
            assert matcher.lookup(*probe) == expected, (round_, probe)
            assert len(matcher._cache) <= cache_size


@settings(max_examples=300, deadline=None)
@given(rules_strategy, st.lists(packets(), min_size=1, max_size=10))
def test_ports_ignored_for_fragments_and_portless_protocols(rules, probes) -> None:
    """Whatever ports a caller passes, they must not matter where the contract says ports do not apply."""
    matcher = compile_rules(rules, DEFAULT)
    for version, protocol, src, dst, _, _, fragment in probes:
        if protocol in PORT_PROTOCOLS and not fragment:
            continue
        answers = {matcher.lookup(version, protocol, src, dst, sp, dp, fragment)
                   for sp, dp in [(0, 0), (5060, 1), (65535, 3)]}
        assert answers == {linear_lookup(rules, DEFAULT, version, protocol, src, dst, 0, 0, fragment)}


def edge_probes(rules):
    """Packets on every edge the rules draw: first and last address of each network (and one past),
    each port range's ends and their neighbours, both directions, every protocol the rules name."""
    addresses = {4: {BASE[4]}, 6: {BASE[6]}}
    ports = {0, 65535}
    protocols = {ICMP, TCP, UDP, 47}
    for rule in rules:
        for n in rule.src + rule.dst:
            first, last = int(n.network_address), int(n.broadcast_address)
            addresses[n.version] |= {first, last, max(first - 1, 0), min(last + 1, 2 ** BITS[n.version] - 1)}
        for m in rule.matches:
            protocols.add(m.protocol)
            ports |= {m.ports.start, m.ports.end, max(m.ports.start - 1, 0), min(m.ports.end + 1, 65535)}
    ports = sorted(ports)[:12]
    for version in (4, 6):
        pool = sorted(addresses[version])[:6]
        for protocol in sorted(protocols):
            for src in pool:
                for dst in pool:
                    yield version, protocol, src, dst, 0, 0, True
                    for port in ports:
                        yield version, protocol, src, dst, 1, port, False
                        yield version, protocol, src, dst, port, 1, False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.builds(Rule, st.sampled_from(VALUES), st.lists(networks(), max_size=2).map(tuple),
              st.lists(networks(), max_size=2).map(tuple), st.lists(port_matches(), max_size=2).map(tuple)),
    min_size=1, max_size=4))
def test_compiled_equals_linear_on_every_edge(rules) -> None:
    matcher = compile_rules(rules, DEFAULT, cache_size=7)
    for probe in edge_probes(rules):
        assert matcher.lookup(*probe) == linear_lookup(rules, DEFAULT, *probe), probe
