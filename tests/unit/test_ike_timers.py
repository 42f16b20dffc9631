"""The dispatcher's timer heap at hub scale: 40 branches behind one NAT address against one hub, through
hours of hand-driven time with Child and IKE rekeys, DPD and ESP liveness. The heap's deadline is never
later than the earliest deadline of any SA (a late timer would miss a retransmission or a rekey), serving
it always makes progress (no wake-up that leaves the same deadline due), and every tunnel keeps working
with the rekeys it is owed."""

from __future__ import annotations

import random

from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import ChildSaEstablished, IkeSaFailed, IkeSaRekeyed

from .test_ike_identity import HUB, NatWire
from .test_ike_session import config, events, rng

BRANCHES = 40
TIMERS = {"child_rekey_time": 300.0, "ike_rekey_time": 900.0, "rekey_jitter": 0.3, "dpd_delay": 60.0}


def true_deadline(d: IkeDispatcher) -> float | None:
    found = [t for s in d.sessions.values() if (t := s.get_timer()) is not None]
    return min(found) if found else None


def test_the_timer_heap_serves_a_hub_of_branches_through_hours_of_rekeys() -> None:
    psks = [f"branch-{i:03d}-psk".encode() * 2 for i in range(BRANCHES)]
    hub = IkeDispatcher([(config(f"b{i}", "10.1.0.0/24", f"10.100.{i}.0/24", b"hq.test", f"b{i}.test".encode(),
                                 psk=psks[i], **TIMERS), None) for i in range(BRANCHES)], rng(7))
    branches = {f"b{i}": IkeDispatcher([(config("hq", f"10.100.{i}.0/24", "10.1.0.0/24", f"b{i}.test".encode(),
                                                b"hq.test", psk=psks[i], **TIMERS), HUB)], rng(100 + i))
                for i in range(BRANCHES)}
    wire = NatWire(hub, branches)
    for branch in branches.values():
        branch.initiate("hq", 0.0)
    wire.pump()
    assert len({e.tunnel for e in events(hub) if isinstance(e, ChildSaEstablished)}) == BRANCHES
    chance = random.Random(3)
    children, ike_rekeys, failures, wakeups = 0, 0, 0, 0
    end = 4 * 3600.0
    while wire.now < end:
        deadline = hub.get_timer()
        truth = true_deadline(hub)
        assert deadline is not None and truth is not None and deadline <= truth, (deadline, truth)
        # The next event: the hub's deadline, a branch's, or ESP showing a random branch alive.
        branch_deadlines = [t for b in branches.values() if (t := b.get_timer()) is not None]
        step = min([deadline, *branch_deadlines, wire.now + chance.uniform(1, 30)])
        wire.now = max(wire.now, step)
        if chance.random() < 0.5:
            hub.note_esp_received(f"b{chance.randrange(BRANCHES)}", wire.now)
        if deadline <= wire.now:
            wakeups += 1
        hub.handle_timer(wire.now)
        for branch in branches.values():
            branch.handle_timer(wire.now)
        wire.pump()
        after = hub.get_timer()
        assert after is None or after > wire.now or (true_deadline(hub) or 0) <= wire.now, "a wake-up made no progress"
        for k in range(BRANCHES):  # the per-tunnel index agrees with a walk over every SA
            walked = [s for s in hub.sessions.values() if s.config.tunnel == f"b{k}"]
            assert sorted(map(id, hub.sessions_for(f"b{k}"))) == sorted(map(id, walked))
        for event in events(hub):
            children += isinstance(event, ChildSaEstablished)
            ike_rekeys += isinstance(event, IkeSaRekeyed)
            failures += isinstance(event, IkeSaFailed)
        for branch in branches.values():
            events(branch)
    per_tunnel = end / TIMERS["child_rekey_time"]
    print(f"\n{BRANCHES} tunnels, {end / 3600:.0f} h: {children} Child SAs, {ike_rekeys} IKE rekeys, "
          f"{wakeups} hub timer wake-ups, {failures} failures")
    assert failures == 0
    assert children >= BRANCHES * per_tunnel * 0.9  # each tunnel's Child SA rekeyed about every 300 s or sooner
    assert ike_rekeys >= BRANCHES * (end / TIMERS["ike_rekey_time"]) * 0.9
    assert all(len(hub.sessions_for(f"b{i}")) == 1 for i in range(BRANCHES))
