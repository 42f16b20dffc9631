"""PrefixTable changed in place (add, remove: a hub's tunnels come and go one by one) answers every
lookup as a table built afresh from the same networks does, and refuses a duplicate without changing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.prefixes import PrefixTable

networks = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                     st.integers(0, 2**32 - 1), st.sampled_from([0, 8, 16, 20, 24, 32]))
steps = st.lists(st.tuples(st.booleans(), st.lists(networks, min_size=1, max_size=3, unique=True)), max_size=25)
probes = st.lists(st.integers(0, 2**32 - 1), min_size=20, max_size=20)


@settings(max_examples=300, deadline=None)
@given(steps, probes)
def test_in_place_changes_match_a_fresh_table(changes: list, addresses: list[int]) -> None:
    table: PrefixTable[int] = PrefixTable()
    current: dict = {}
    for number, (adding, nets) in enumerate(changes):
        if adding:
            if any(n in current for n in nets):
                with pytest.raises(ValueError):
                    table.add((n, number) for n in nets)
                continue
            table.add((n, number) for n in nets)
            current.update({n: number for n in nets})
        else:
            table.remove(nets)
            for n in nets:
                current.pop(n, None)
        fresh = PrefixTable(current.items())
        for address in addresses + [int(n.network_address) for n in current]:
            assert table.lookup(4, address) == fresh.lookup(4, address)
