"""The policy parts of a config (services:, firewall:, qos:, gateway.qos): parsed into rules, and every
mistake reported at its own line and column."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from policy.model import Action, PortMatch, PortRange
from policy.qos import QosClass
from tests.unit.test_config_loader import GOOD, make_keys, problems, write
from tunnel.app.assemble import make_schedulers, tunnel_policy
from tunnel.config.loader import load_config

TUNNEL_END = "    manual_keys: keys/b1.keys\n"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    make_keys(tmp_path, "b1", "b2")
    return tmp_path


def with_tunnel(extra: str, top: str = "") -> str:
    return top + GOOD.replace(TUNNEL_END, TUNNEL_END + extra)


def test_rules_services_and_queues_load(site: Path) -> None:
    text = with_tunnel(
        "    firewall:\n"
        "      default: deny\n"
        "      rules:\n"
        "        - {action: deny, to: [10.2.0.99/32]}\n"
        "        - {action: allow, services: [sip, rtp]}\n"
        "        - {action: allow, protocol: tcp, ports: [22, '8000-8080']}\n"
        "    qos: {classify: rules, outer_dscp: af41, rules: [{class: realtime-audio, services: [rtp]}]}\n",
        top="services:\n  rtp: [udp/16384-32767]\n",
    ).replace("  listen:\n", "  qos: {scheduler: priority, wan_rate_mbit: 95, queue_packets: {bulk: 64}}\n  listen:\n")
    config = load_config(write(site, text))
    tunnel = config.tunnels[0]
    rules = tunnel.firewall.rules
    assert tunnel.firewall.default is Action.DENY
    assert rules[0].dst == (ipaddress.ip_network("10.2.0.99/32"),) and rules[0].value is Action.DENY
    assert PortMatch(17, PortRange(16384, 32767)) in rules[1].matches  # the config's RTP range, not the built-in
    assert PortMatch(17, PortRange(5060, 5060)) in rules[1].matches
    assert rules[2].matches == (PortMatch(6, PortRange(22, 22)), PortMatch(6, PortRange(8000, 8080)))
    assert tunnel.qos.classify == "rules" and tunnel.qos.outer_dscp == 34
    assert tunnel.qos.rules[0].value is QosClass.REALTIME_AUDIO
    assert config.qos.wan_rate_mbit == 95 and dict(config.qos.queue_packets) == {QosClass.BULK: 64}

    policy = tunnel_policy(config, tunnel)
    ten = lambda a: int(ipaddress.ip_address(a))  # noqa: E731
    assert policy.firewall.lookup(4, 17, ten("10.1.0.5"), ten("10.2.0.7"), 40000, 5060) is Action.ALLOW
    assert policy.firewall.lookup(4, 17, ten("10.1.0.5"), ten("10.2.0.99"), 40000, 5060) is Action.DENY
    assert policy.firewall.lookup(4, 6, ten("10.1.0.5"), ten("10.2.0.7"), 40000, 443) is Action.DENY
    assert policy.mtu == 1438 and policy.outer_dscp == 34
    egress, ingress = make_schedulers(config)
    assert egress.shape_rate == 95_000_000 / 8 and ingress.shape_rate == 0
    assert egress.limits[QosClass.BULK] == 64


@pytest.mark.parametrize("extra,top,expected", [
    ("    firewall: {default: deny, rules: [{action: allow, services: [sipp]}]}\n", "",
     "C:12:66: tunnels[0].firewall.rules[0].services[0]: unknown service 'sipp'; did you mean sip?"),
    ("    firewall:\n      default: allow\n      rules:\n        - {action: allow, protocol: udp}\n"
     "        - {action: deny, protocol: udp, ports: 5060}\n", "",
     "C:16:11: tunnels[0].firewall.rules[1]: never matches: tunnels[0].firewall.rules[0] (allow) "),
    ("    firewall: {default: allow, rules: [{action: deny, protocol: icmp, ports: 7}]}\n", "",
     "C:12:78: tunnels[0].firewall.rules[0].ports: only tcp, udp, sctp and udplite have ports"),
    ("    firewall: {default: allow, rules: [{action: deny, ports: 7}]}\n", "",
     "C:12:62: tunnels[0].firewall.rules[0].ports: needs a protocol (tcp, udp, sctp or udplite)"),
    ("    firewall: {default: allow, rules: [{action: deny, protocol: tcp, ports: 70000}]}\n", "",
     "C:12:77: tunnels[0].firewall.rules[0].ports: '70000' is not a port range: need 0 <= N <= M <= 65535"),
    ("    firewall: {rules: []}\n", "", "C:12:15: tunnels[0].firewall.default: missing required key"),
    ("    qos: {classify: dscp, rules: [{class: bulk}]}\n", "",
     "C:12:34: tunnels[0].qos.rules: only used with classify: rules (classify: dscp trusts the DSCP the sender set)"),
    ("    qos: {classify: rules, rules: [{class: gold}]}\n", "",
     "C:12:44: tunnels[0].qos.rules[0].class: 'gold' is not one of realtime-audio, interactive-video, signalling, "
     "default, bulk"),
    ("    qos: {outer_dscp: af99}\n", "", "C:12:23: tunnels[0].qos.outer_dscp: bad DSCP 'af99'"),
    ("", "services:\n  rtp: [udp/1-2-3]\n", "C:2:9: services.rtp[0]: "),
    ("    firewall: {default: deny, rules: [{action: allow, from: [10.1.0.0/24], to: ['fd00:2::/64']}]}\n", "",
     "C:12:39: tunnels[0].firewall.rules[0]: never matches: its from and to subnets have no IP version in common"),
])
def test_policy_mistakes_reported_at_their_node(site: Path, extra: str, top: str, expected: str) -> None:
    found = problems(write(site, with_tunnel(extra, top)))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_shadowed_and_contradicted_rules_are_errors(site: Path) -> None:
    extra = ("    firewall:\n      default: deny\n      rules:\n"
             "        - {action: allow, from: [10.1.0.0/24], to: [10.2.0.0/24], services: [sip]}\n"
             "        - {action: allow, from: [10.1.0.0/25], to: [10.2.0.0/24], protocol: udp, ports: 5060}\n"
             "        - {action: deny, from: [10.1.0.0/24], to: [10.2.0.5/32], protocol: tcp, ports: 5061}\n"
             # Not covered: the reverse of rule 0 has any destination port, this one only 5061 (a reply
             # to a SIP client's port 5061 is not the same packet set): no false alarm.
             "        - {action: deny, from: [10.2.0.0/24], to: [10.1.0.0/24], protocol: tcp, ports: 5061}\n")
    found = problems(write(site, with_tunnel(extra)))
    assert [p.split(":")[:3] for p in found] == [["C", "16", "11"], ["C", "17", "11"]], found
    assert "rules[0]" in found[0] and "rules[0]" in found[1]  # the covering rule is named


def test_replay_window_must_outgrow_the_priority_queues(site: Path) -> None:
    text = with_tunnel("    replay_window: 2048\n")
    assert problems(write(site, text)) == [
        "C:12:20: tunnels[0].replay_window: replay window 2048 must be larger than the 3072 packets the priority "
        "queues can hold (gateway.qos.queue_packets): packets reordered between classes would be dropped as replays"]
    smaller = text.replace("  listen:\n", "  qos: {queue_packets: {default: 256, bulk: 256}}\n  listen:\n")
    assert load_config(write(site, smaller)).tunnels[0].replay_window == 2048  # 1536 queued at most
    fifo = text.replace("  listen:\n", "  qos: {scheduler: fifo}\n  listen:\n")
    assert load_config(write(site, fifo)).qos.scheduler == "fifo"
