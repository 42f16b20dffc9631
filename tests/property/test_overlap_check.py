"""The fast pre-check of the remote-subnet overlap rule (config/validate.py) against the rule itself: it
may only say "nothing to report" when the full pairwise check reports nothing."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.config.validate import TunnelParts, _may_overlap, _remote_subnets_disjoint
from tunnel.config.yamlnodes import Doc, Problems

prefixes = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                     st.integers(0, 2**32 - 1), st.sampled_from([0, 8, 12, 16, 20, 24, 28, 32]))
tunnel_sets = st.lists(st.lists(prefixes, min_size=1, max_size=4, unique=True), min_size=1, max_size=6)


def _reports(tunnels: list[TunnelParts]) -> list:
    sink = Problems()
    doc = Doc("c.yaml", sink)
    for t in tunnels:
        for i, _ in enumerate(t.remote_subnets or ()):
            doc.where[f"{t.path}.remote_subnets[{i}]"] = (1, 1)
    _remote_subnets_disjoint(doc, tunnels)
    return sink.found


@settings(max_examples=400, deadline=None)
@given(tunnel_sets)
def test_no_overlap_claimed_where_the_full_check_finds_one(nets: list[list]) -> None:
    tunnels = [TunnelParts(f"tunnels[{k}]", f"t{k}", None, None, tuple(own), None, None) for k, own in enumerate(nets)]
    if not _may_overlap(tunnels):
        assert _reports(tunnels) == []
