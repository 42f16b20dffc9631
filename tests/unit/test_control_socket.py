"""The control socket's command handling and the status rendering, on a manually keyed gateway (no I/O),
and one clear error when the socket cannot be made."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.unit.test_config_loader import GOOD, make_keys, write
from tunnel.app.assemble import install_manual_keys
from tunnel.app.gateway import Gateway
from tunnel.config.loader import load_config
from tunnel.errors import DriverError
from tunnel.ops.control_socket import ControlServer, request
from tunnel.ops.status import render, render_brief, select


def manual_gateway(tmp_path: Path) -> Gateway:
    make_keys(tmp_path, "b1", "b2")
    gateway = Gateway(load_config(write(tmp_path, GOOD)))
    for tunnel in gateway.config.tunnels:
        install_manual_keys(gateway.forwarder, tunnel)
    return gateway


def test_commands_answer_or_refuse_in_one_line(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)
    server = ControlServer(gateway.readout, gateway, tmp_path / "c.sock")
    status = server.handle({"command": "status"})
    assert status["ok"] and status["status"]["tunnels"][0]["name"] == "branch1"
    assert status["status"]["tunnels"][0]["state"] == "up" and status["status"]["tunnels"][0]["keying"] == "manual"
    text = render(status["status"])
    assert "tunnel branch1: UP, peer 198.18.2.2:4500, manual keying" in text and "Child SA" in text
    for bad, expected in (({"command": "reboot"}, "unknown command 'reboot'"),
                          ({"command": "initiate", "tunnel": "branch1"}, "no IKE tunnel 'branch1'"),
                          ({}, "unknown command None")):
        answer = server.handle(bad)
        assert not answer["ok"] and expected in answer["error"], answer


def test_role_on_a_gateway_that_is_not_in_a_pair(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)
    server = ControlServer(gateway.readout, gateway, tmp_path / "c.sock")
    assert server.handle({"command": "role"}) == {"ok": True, "message": "not one of an HA pair"}
    for bad, expected in (({"command": "role", "role": "active"}, "not one of an HA pair (no gateway.ha"),
                          ({"command": "role", "role": "master"}, "role must be one of active, standby"),
                          ({"command": "role", "role": ["active"]}, "role must be one of")):
        answer = server.handle(bad)
        assert not answer["ok"] and expected in answer["error"], answer
    assert server.handle({"command": "status"})["status"]["ha_role"] is None


def test_brief_status_and_filters_for_many_tunnels(tmp_path: Path) -> None:
    """`sitelink status --brief --tunnel 'b*' --state down`: a count by state, then one line per tunnel."""
    gateway = manual_gateway(tmp_path)
    snap = ControlServer(gateway.readout, gateway, tmp_path / "c.sock").handle({"command": "status"})["status"]
    assert [t["name"] for t in snap["tunnels"]] == ["branch1"]
    snap["tunnels"].append({**snap["tunnels"][0], "name": "branch2", "state": "down"})  # a second, SA gone
    text = render_brief(snap)
    lines = text.splitlines()
    assert lines[0] == "gateway hq, listening on udp 198.18.1.2:4500: 2 tunnels, 1 up, 0 connecting, 1 down"
    assert lines[1].split() == ["TUNNEL", "STATE", "PEER", "HANDSHAKE", "SENT", "RECEIVED", "DROPS"]
    assert lines[2].split()[:3] == ["branch1", "up", "198.18.2.2:4500"] and len(lines) == 4
    down = select(snap, state="down")
    assert [t["name"] for t in down["tunnels"]] == ["branch2"]
    assert render_brief(down, 2).startswith("gateway hq, listening on udp 198.18.1.2:4500: 1 of 2 tunnels, 0 up")
    assert [t["name"] for t in select(snap, "*1")["tunnels"]] == ["branch1"]
    assert select(snap, "hq*")["tunnels"] == [] and render_brief(select(snap, "hq*"), 2).count("\n") == 0


def test_socket_round_trip_and_garbage(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)
    server = ControlServer(gateway.readout, gateway, tmp_path / "run" / "c.sock")

    async def main() -> None:
        await server.start()
        assert (tmp_path / "run" / "c.sock").stat().st_mode & 0o077 == 0
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, request, tmp_path / "run" / "c.sock", {"command": "status"})
        assert answer["status"]["gateway"] == "hq"
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "run" / "c.sock"))
        writer.write(b"\xff\xfe not json\n")
        assert json.loads(await reader.readline()) == {"ok": False, "error": "not a JSON request"}
        writer.close()
        await server.close()
        assert not (tmp_path / "run" / "c.sock").exists()

    asyncio.run(main())


def test_unusable_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    gateway = manual_gateway(tmp_path)
    server = ControlServer(gateway.readout, gateway, tmp_path / "file" / "c.sock")  # parent is a file
    with pytest.raises(DriverError, match="cannot open the control socket .* \\(set gateway.control_socket\\)"):
        asyncio.run(server.start())


def test_reload_over_the_socket_answers_with_the_problems(tmp_path: Path) -> None:
    """A refused reload comes back as its problems (file:line:col) and exit status 2 at the client; the
    running configuration stays. (A reload that applies needs netlink: tests/lab/test_reload.py.)"""
    gateway = manual_gateway(tmp_path)
    from tunnel.app.keying import Keying
    from tunnel.ops.control_socket import ControlError

    gateway.keying = Keying(gateway.config, gateway.forwarder, lambda n: bytes(n))
    server = ControlServer(gateway.readout, gateway, tmp_path / "c.sock")
    path = gateway.config.path
    path.write_text(path.read_text().replace("10.2.0.0/24", "10.2.0.0/40"))
    running = gateway.config

    async def main() -> None:
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            with pytest.raises(ControlError) as error:
                await loop.run_in_executor(None, request, tmp_path / "c.sock", {"command": "reload"})
            assert error.value.exit_status == 2 and "the running one stays" in str(error.value)
            assert len(error.value.problems) == 1 and error.value.problems[0].startswith(f"{path}:")
            assert "'10.2.0.0/40' is not a subnet" in error.value.problems[0]
        finally:
            await server.close()

    asyncio.run(main())
    assert gateway.config is running


def test_a_command_that_fails_unexpectedly_is_answered(tmp_path: Path) -> None:
    gateway = manual_gateway(tmp_path)

    async def broken() -> str:
        raise RuntimeError("netlink went away")

    gateway.reload = broken  # type: ignore[method-assign]
    server = ControlServer(gateway.readout, gateway, tmp_path / "c.sock")

    async def main() -> None:
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
            writer.write(b'{"command": "reload"}\n')
            assert json.loads(await reader.readline()) == {"ok": False, "error": "reload failed: netlink went away"}
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())
