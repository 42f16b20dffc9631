"""Child SAs per data-plane worker (IkeConfig.workers, the idea of RFC 9611): extra Child SAs with the same
selectors, negotiated as plain CREATE_CHILD_SA, each owned by the worker its inbound SPI names
(spi % workers). Two IKE cores back to back on the Wire harness, hand-driven clock."""

from __future__ import annotations

import pytest

from tests.unit.test_ike_lifecycle import exchanges, only
from tests.unit.test_ike_session import events, pair
from tunnel.ike.constants import ExchangeType
from tunnel.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaDeleted, IkeSaFailed

QUIET = {"dpd_delay": 0.0, "ike_rekey_time": 1e6}


def up(hq_kw, br_kw, seed=1, settle=3.0):
    hq, br, wire = pair({**QUIET, **hq_kw}, {**QUIET, **br_kw}, seed)
    hq.initiate("branch1", wire.now)
    wire.pump()
    for _ in range(int(settle * 2)):
        wire.advance(0.5)
    return hq, br, wire


def children(d):
    return only(d).active_children


def paired(hq, br) -> list[tuple[int, int]]:
    """(hq inbound SPI, branch inbound SPI) per Child SA; both sides must hold the same ones."""
    a = sorted((c.spi_in, c.spi_out) for c in children(hq))
    b = sorted((c.spi_out, c.spi_in) for c in children(br))
    assert a == b, (a, b)
    return a


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("hq_workers,br_workers", [(2, 2), (4, 1), (1, 3), (3, 2)])
def test_every_worker_gets_a_child_sa_of_its_own(hq_workers: int, br_workers: int, seed: int) -> None:
    hq, br, wire = up({"workers": hq_workers}, {"workers": br_workers}, seed)
    sas = paired(hq, br)
    assert {spi_in % hq_workers for spi_in, _ in sas} == set(range(hq_workers))
    assert {spi_out % br_workers for _, spi_out in sas} == set(range(br_workers))
    assert len(sas) <= hq_workers + br_workers - 1  # no more than the two sides asked for
    e = events(hq) + events(br)
    assert not any(isinstance(x, (ChildSaFailed, IkeSaFailed, IkeSaDeleted)) for x in e), e
    for x in e:
        if isinstance(x, ChildSaEstablished):
            workers = hq_workers if x.tunnel == "branch1" else br_workers
            assert x.worker == x.spi_in % workers


def test_rekeys_keep_each_child_sa_with_its_worker() -> None:
    kw = {"workers": 3, "child_rekey_time": 10.0, "child_lifetime": 15.0}
    hq, br, wire = up(kw, {**kw, "workers": 2})
    for _ in range(60):
        wire.advance(1.0)
    e_hq, e_br = events(hq), events(br)
    rekeys = [x for x in e_hq if isinstance(x, ChildSaEstablished) and x.replaces_out is None]
    assert len([x for x in e_hq if isinstance(x, ChildSaEstablished)]) >= 3 * 5
    assert not any(isinstance(x, (ChildSaFailed, IkeSaFailed, IkeSaDeleted)) for x in e_hq + e_br)
    sas = paired(hq, br)
    assert {spi_in % 3 for spi_in, _ in sas} == {0, 1, 2} and len(sas) == 3
    assert {spi_out % 2 for _, spi_out in sas} == {0, 1}
    assert rekeys  # some rekeys were ours (we switch outbound at once), others the peer's


def test_peer_cap_on_child_sas_is_reported_not_retried_forever() -> None:
    hq, br, wire = up({"workers": 4}, {"workers": 1, "max_children": 2})
    for _ in range(60):
        wire.advance(1.0)
    e = events(hq)
    failed = [x for x in e if isinstance(x, ChildSaFailed)]
    assert len(failed) == 1 and "workers [2, 3] have none" in failed[0].reason, failed
    assert len(paired(hq, br)) == 2
    creates = [x for x in exchanges(wire) if x[1] == ExchangeType.CREATE_CHILD_SA and not x[2]]
    assert len(creates) == 2


@pytest.mark.parametrize("lost", range(6))
def test_extra_child_sas_survive_a_lost_message(lost: int) -> None:
    hq, br, wire = pair({**QUIET, "workers": 2}, {**QUIET, "workers": 2})
    hq.initiate("branch1", wire.now)
    wire.pump()
    start = len(wire.log)
    wire.lose = lambda sender, data: len(wire.log) == start + lost + 1
    for _ in range(20):
        wire.advance(1.0)
    sas = paired(hq, br)
    assert {s % 2 for s, _ in sas} == {0, 1} and {s % 2 for _, s in sas} == {0, 1}
    assert not any(isinstance(x, (ChildSaFailed, IkeSaFailed)) for x in events(hq) + events(br))


def test_a_worker_whose_child_sa_expired_gets_a_new_one() -> None:
    kw = {"workers": 2, "child_rekey_time": 100.0, "child_lifetime": 105.0, "rekey_jitter": 0.0}
    hq, br, wire = up(kw, {**kw, "child_rekey_time": 1e5, "child_lifetime": 2e5})
    one = next(c for c in children(hq) if c.spi_in % 2 == 1)
    one.rekey_at = None  # this worker's SA will not be rekeyed: it hard-expires
    for _ in range(120):
        wire.advance(1.0)
    sas = paired(hq, br)
    assert {s % 2 for s, _ in sas} == {0, 1}
    assert one.spi_in not in [s for s, _ in sas]
