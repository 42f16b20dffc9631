"""Branches the hub cannot tell apart by address (several behind one NAT address, or a tunnel whose peer is
`any`): the IKE responder picks the tunnel by the authenticated IDi, with that tunnel's credentials
(RFC 7296 §2.15; strongSwan's peer-config lookup by identity). Cores back to back through a NAT that
maps each branch to its own port of one public address, with a hand-driven clock."""

from __future__ import annotations

from tunnel.ike.constants import DhGroup
from tunnel.ike.dispatcher import IkeDispatcher
from tunnel.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from tunnel.ike.message import parse_message
from tunnel.ike.proposal import IkeSuite

from .test_ike_session import config, events, rng

HUB, NAT = "198.18.1.2", "203.0.113.7"  # the branches' private WAN addresses are never seen by the hub
PSK1, PSK2 = b"branch-one-key" * 2, b"branch-two-key" * 2
X25519 = (IkeSuite(),)


class NatWire:
    """A hub and branches behind one NAT: each (branch, local port) gets its own public port of NAT."""

    def __init__(self, hub: IkeDispatcher, branches: dict[str, IkeDispatcher]) -> None:
        self.hub, self.branches, self.now = hub, branches, 0.0
        self.mapping: dict[tuple[str, int], int] = {}  # (branch, its port) -> public port
        self.log: list[tuple[str, bytes]] = []

    def public(self, branch: str, port: int) -> int:
        return self.mapping.setdefault((branch, port), 40000 + len(self.mapping))

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for name, side in self.branches.items():
                for data, remote, local_port in side.datagrams_to_send(self.now):
                    moved = True
                    self.log.append((name, data))
                    assert remote[0] == HUB
                    self.hub.receive_datagram(data, (NAT, self.public(name, local_port)), remote[1], self.now)
            for data, remote, local_port in self.hub.datagrams_to_send(self.now):
                moved = True
                self.log.append(("hub", data))
                assert remote[0] == NAT
                (name, port), = [k for k, v in self.mapping.items() if v == remote[1]]
                self.branches[name].receive_datagram(data, (HUB, local_port), port, self.now)
            if not moved:
                return


def hub(peer: str | None, hub_suites=X25519, psk2: bytes = PSK2) -> IkeDispatcher:
    """Two tunnels; peer: their configured address (NAT's), or None for `any`."""
    return IkeDispatcher([
        (config("branch1", "10.1.0.0/24", "10.2.0.0/24", b"hq.test", b"br1.test", psk=PSK1), peer),
        (config("branch2", "10.1.0.0/24", "10.3.0.0/24", b"hq.test", b"br2.test", psk=psk2, suites=hub_suites), peer),
    ], rng(1))


def branch(name: str, subnet: str, psk: bytes, local_id: bytes | None = None, suites=X25519) -> IkeDispatcher:
    own_id = local_id or f"br{name[-1]}.test".encode()
    return IkeDispatcher([(config("hq", subnet, "10.1.0.0/24", own_id, b"hq.test", psk=psk, suites=suites), HUB)],
                         rng(int(name[-1]) + 10))


def established(evts: list) -> dict[str, ChildSaEstablished]:
    return {e.tunnel: e for e in evts if isinstance(e, ChildSaEstablished)}


def connect(h: IkeDispatcher, branches: dict[str, IkeDispatcher], now: float = 0.0) -> NatWire:
    """Every branch initiates at `now`, through the NAT, until nothing moves."""
    wire = NatWire(h, branches)
    wire.now = now
    for side in branches.values():
        side.initiate("hq", now)
    wire.pump()
    return wire


def test_two_branches_behind_one_nat_address_each_reach_their_own_tunnel() -> None:
    for peer in (NAT, None):  # the hub lists NAT's address for both tunnels, or `any`
        b1, b2 = branch("b1", "10.2.0.0/24", PSK1), branch("b2", "10.3.0.0/24", PSK2)
        h = hub(peer)
        wire = connect(h, {"b1": b1, "b2": b2})
        got = established(events(h))
        assert set(got) == {"branch1", "branch2"}, peer
        # Each tunnel's ESP goes to its own NAT mapping, and carries that branch's selectors.
        assert got["branch1"].remote == (NAT, wire.public("b1", 4500))
        assert got["branch2"].remote == (NAT, wire.public("b2", 4500))
        assert [str(r) for r in got["branch1"].remote_ts] == ["10.2.0.0/24"]
        assert [str(r) for r in got["branch2"].remote_ts] == ["10.3.0.0/24"]
        assert set(established(events(b1))) == set(established(events(b2))) == {"hq"}
        # Both SAs are counted to their tunnels, nothing to nobody.
        assert h.drops.by_reason() == {} and len(h.sessions_for("branch1")) == len(h.sessions_for("branch2")) == 1


def test_a_branch_claiming_another_branchs_identity_is_refused() -> None:
    """branch1's key with branch2's identity: the AUTH is checked with branch2's PSK and fails."""
    h = hub(None)
    thief = branch("b1", "10.3.0.0/24", PSK1, local_id=b"br2.test")
    connect(h, {"b1": thief})
    hub_events = events(h)
    assert not established(hub_events) and not any(isinstance(e, IkeSaEstablished) for e in hub_events)
    assert any(isinstance(e, IkeSaFailed) and "AUTHENTICATION_FAILED" in e.reason for e in events(thief))
    assert not h.sessions and not h.sessions_for("branch2")


def test_an_unknown_identity_is_refused_and_counted_to_nobody() -> None:
    h = hub(None)
    stranger = branch("b3", "10.9.0.0/24", PSK1, local_id=b"nobody.test")
    wire = connect(h, {"b3": stranger})
    failed = [e for e in events(h) if isinstance(e, IkeSaFailed)]
    # The failure belongs to no tunnel (keying ignores it): the peer never said who it was.
    assert failed and all(e.tunnel == "" for e in failed) and "nobody.test" in failed[0].reason
    answers = [parse_message(d) for who, d in wire.log if who == "hub"]
    assert answers[-1].header.exchange == 35  # IKE_AUTH, encrypted: the refusal is inside
    assert not h.sessions
    assert all(not drops.by_reason() for drops in h.tunnel_drops.values())


def test_the_proposal_chosen_before_the_identity_must_suit_its_tunnel() -> None:
    """IKE_SA_INIT takes the first candidate whose proposals match (branch1's: X25519); branch2 allows
    only ECP-256, so a branch2 that offers X25519 first is refused at IKE_AUTH (no downgrade past its
    tunnel's policy), while one that offers only ECP-256 gets branch2's proposal from the start."""
    ecp = (IkeSuite(dh=DhGroup.ECP_256),)
    h = hub(None, hub_suites=ecp)
    lax = branch("b2", "10.3.0.0/24", PSK2, suites=(IkeSuite(), *ecp))
    connect(h, {"b2": lax})
    assert not established(events(h))
    assert any(isinstance(e, IkeSaFailed) and "AUTHENTICATION_FAILED" in e.reason for e in events(lax))
    strict = branch("b2", "10.3.0.0/24", PSK2, suites=ecp)
    connect(h, {"b2": strict})
    assert set(established(events(h))) == {"branch2"}
    suites = [e.suite for e in events(strict) if isinstance(e, IkeSaEstablished)]
    assert len(suites) == 1 and suites[0].endswith("ECP_256")


def test_initial_contact_from_a_new_address_replaces_the_old_sa_of_that_tunnel_only() -> None:
    """branch1 restarts behind a new NAT mapping: its INITIAL_CONTACT closes branch1's old IKE SA, not
    branch2's, although both came from the same address."""
    b1, b2 = branch("b1", "10.2.0.0/24", PSK1), branch("b2", "10.3.0.0/24", PSK2)
    h = hub(NAT)
    wire = connect(h, {"b1": b1, "b2": b2})
    old1, old2 = h.sessions_for("branch1")[0], h.sessions_for("branch2")[0]
    events(h)
    restarted = branch("b1", "10.2.0.0/24", PSK1)
    restarted._random = rng(99)  # a new instance: new SPIs, its first IKE SA carries INITIAL_CONTACT
    wire.branches["b1"] = restarted
    wire.mapping = {k: v + 100 for k, v in wire.mapping.items()}  # the NAT forgot: new public ports
    wire.now = 60.0
    restarted.initiate("hq", wire.now)
    wire.pump()
    assert set(established(events(h))) == {"branch1"}
    assert h.sessions_for("branch1") != [old1] and old1 not in h.sessions.values()
    assert h.sessions_for("branch2") == [old2] and old2.established
