"""Traffic-selector narrowing (RFC 7296 §2.9) against a brute-force model on small address spaces."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.ts import TsRange, covered, narrow, ranges

net = ipaddress.ip_network


def test_narrowing_to_policy() -> None:
    proposed = ranges([net("10.0.0.0/8")])
    allowed = ranges([net("10.2.0.0/24"), net("192.168.0.0/16")])
    assert narrow(proposed, allowed) == ranges([net("10.2.0.0/24")])
    assert [str(r) for r in narrow(proposed, allowed)] == ["10.2.0.0/24"]


def test_disjoint_is_empty_and_versions_do_not_mix() -> None:
    assert narrow(ranges([net("10.1.0.0/24")]), ranges([net("10.2.0.0/24")])) == []
    assert narrow(ranges([net("fd00::/64")]), ranges([net("10.0.0.0/8")])) == []


def test_ports_and_protocols_intersect() -> None:
    sip = TsRange(4, 0, 2**32 - 1, 17, 5060, 5061)
    udp_any = TsRange(4, 0, 2**32 - 1, 17, 0, 65535)
    tcp = TsRange(4, 0, 2**32 - 1, 6)
    assert sip.intersect(udp_any) == sip
    assert sip.intersect(tcp) is None
    assert TsRange(4, 5, 10).intersect(TsRange(4, 0, 2**32 - 1, 17, 53, 53)) == TsRange(4, 5, 10, 17, 53, 53)


def test_covered() -> None:
    proposed = ranges([net("10.0.0.0/16")])
    assert covered(ranges([net("10.0.1.0/24")]), proposed)
    assert not covered(ranges([net("10.1.0.0/24")]), proposed)
    assert not covered([], proposed)


def test_range_to_networks() -> None:
    r = TsRange(4, int(ipaddress.ip_address("10.0.0.1")), int(ipaddress.ip_address("10.0.0.6")))
    assert [str(n) for n in r.networks()] == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]


small = st.tuples(st.integers(0, 63), st.integers(0, 63)).map(lambda t: TsRange(4, min(t), max(t)))


@settings(max_examples=200, deadline=None)
@given(st.lists(small, max_size=4), st.lists(small, max_size=4))
def test_narrow_matches_set_model(proposed: list[TsRange], allowed: list[TsRange]) -> None:
    def addresses(rs):
        return {a for r in rs for a in range(r.start, r.end + 1)}

    result = narrow(proposed, allowed)
    assert addresses(result) == addresses(proposed) & addresses(allowed)
    assert not result or covered(result, proposed)
