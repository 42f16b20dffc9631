"""tunnels[].call_quality in the YAML: on by default over the media services' UDP ports (the config's own
service definitions win), off with `false`, every problem at its node."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config_loader import GOOD, make_keys, problems, write
from tunnel.app.assemble import call_settings
from tunnel.config.loader import load_config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    make_keys(tmp_path, "b1")
    return tmp_path


def test_on_by_default_over_rtp_teams_and_stun(site: Path) -> None:
    (tunnel,) = load_config(write(site, GOOD)).tunnels
    calls = tunnel.call_quality
    assert calls.enabled and calls.services == ("rtp", "teams", "webrtc") and calls.max_streams == 64
    assert calls.ports == ((3478, 3478), (10000, 20000), (50000, 50059))
    settings = call_settings(tunnel)
    assert settings is not None and settings.ports[10000] == settings.ports[3478] == 1 and settings.ports[5060] == 0


def test_the_configs_own_rtp_range_is_used(site: Path) -> None:
    text = GOOD + "services:\n  rtp: [udp/16384-32767]\n"
    (tunnel,) = load_config(write(site, text)).tunnels
    assert tunnel.call_quality.ports == ((3478, 3478), (16384, 32767), (50000, 50059))


@pytest.mark.parametrize("value", ["false", "{enabled: false}"])
def test_turned_off(site: Path, value: str) -> None:
    (tunnel,) = load_config(write(site, GOOD + f"    call_quality: {value}\n")).tunnels
    assert not tunnel.call_quality.enabled and call_settings(tunnel) is None


def test_named_services_and_cap(site: Path) -> None:
    text = GOOD + "    call_quality:\n      services: [teams-audio, turn-relay]\n      max_streams: 500\n"
    (tunnel,) = load_config(write(site, text)).tunnels
    assert tunnel.call_quality.ports == ((49152, 65535),) and tunnel.call_quality.max_streams == 500


@pytest.mark.parametrize("value,expected", [
    ("{services: [rtpp]}", "C:12:31: tunnels[0].call_quality.services[0]: unknown service 'rtpp'; did you mean rtp?"),
    ("{services: [sip-tls]}", "C:12:31: tunnels[0].call_quality.services[0]: service 'sip-tls' has no UDP ports: "
                              "media is RTP over UDP"),
    ("{max_streams: 0}", "C:12:33: tunnels[0].call_quality.max_streams: '0' is out of range 1..4096"),
    ("{enable: true}", "C:12:20: tunnels[0].call_quality.enable: unknown key; did you mean 'enabled'?"),
    ("maybe", "C:12:19: tunnels[0].call_quality: expected true, false or a mapping, got a string"),
])
def test_problems_at_their_node(site: Path, value: str, expected: str) -> None:
    found = problems(write(site, GOOD + f"    call_quality: {value}\n"))
    assert len(found) == 1 and found[0].startswith(expected), found
