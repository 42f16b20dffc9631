"""The control socket: a root-only unix socket on which `sitelink status|initiate|terminate|rekey|reload|role`
talk to a running gateway, one JSON line each way. It runs on the gateway's event loop, so commands see
and change the same state the data path and IKE use, between their callbacks. It knows the gateway only
as a Readout (for status) and as the Commands below."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from tunnel.errors import ConfigError, DriverError, ReloadRefused, SitelinkError
from tunnel.ops.readout import Readout
from tunnel.ops.status import snapshot

log = logging.getLogger("sitelink.control")
MAX_REQUEST = 4096
COMMANDS = ("status", "initiate", "terminate", "rekey", "reload", "role")
ROLES = ("active", "standby")


class ControlError(SitelinkError):
    """The control socket could not be reached or refused the command (problems: a refused reload's
    configuration errors, one `file:line:col: path: message` each)."""

    def __init__(self, message: str, problems: list[str] | None = None, exit_status: int = 1) -> None:
        super().__init__(message)
        self.problems = list(problems or [])
        self.exit_status = exit_status


class Commands(Protocol):
    """What an operator may ask of a running gateway (the gateway implements it)."""

    def ike_tunnels(self) -> list[str]: ...
    def initiate(self, tunnel: str) -> str: ...
    def terminate(self, tunnel: str) -> str: ...
    def rekey(self, tunnel: str, kind: str) -> str: ...
    def set_role(self, role: str) -> str:
        """active | standby (one of an HA pair); ValueError when the gateway is not in a pair."""
    async def reload(self) -> str:
        """Re-read the configuration; ConfigError or ReloadRefused (nothing changed), or ReloadFailed."""


def default_path(gateway_name: str) -> Path:
    return Path("/run/sitelink") / f"{gateway_name}.sock"


class ControlServer:
    def __init__(self, readout: Readout, commands: Commands, path: Path) -> None:
        self.readout, self.commands = readout, commands
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.exists():
                if answers(self.path):
                    raise DriverError(f"another gateway answers on the control socket {self.path}")
                self.path.unlink()  # left by a gateway that died
            old = os.umask(0o077)  # root-only from the first instant, not after a chmod
            try:
                self._server = await asyncio.start_unix_server(self._client, str(self.path), limit=MAX_REQUEST)
            finally:
                os.umask(old)
        except OSError as exc:
            raise DriverError(f"cannot open the control socket {self.path}: {exc.strerror or exc} "
                              "(set gateway.control_socket)") from None
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                answer = {"ok": False, "error": "not a JSON request"}
            else:
                if not isinstance(request, dict):
                    request = {}
                try:
                    answer = await self.reload() if request.get("command") == "reload" else self.handle(request)
                except Exception as exc:  # noqa: BLE001 - the command failed; the client hears why
                    log.exception("control command %r failed", request.get("command"))
                    answer = {"ok": False, "error": f"{request.get('command')} failed: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a client that says nothing, too much, or goes away gets nothing
        finally:
            writer.close()

    async def reload(self) -> dict[str, Any]:
        try:
            return {"ok": True, "message": f"reloaded: {await self.commands.reload()}"}
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            error = f"{len(exc.problems)} problem(s) in the configuration; the running one stays"
            log.error("reload refused: %s", error)
            return {"ok": False, "error": error, "problems": exc.problems, "config_error": True}
        except ReloadRefused as exc:
            log.error("reload refused: %s", exc)
            return {"ok": False, "error": str(exc), "config_error": True}
        except SitelinkError as exc:  # ReloadFailed, or a DriverError while undoing routes
            log.error("reload: %s", exc)
            return {"ok": False, "error": str(exc)}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command, tunnel = request.get("command"), request.get("tunnel")
        if command not in COMMANDS:
            return {"ok": False, "error": f"unknown command {command!r}; one of {', '.join(COMMANDS)}"}
        if command == "status":
            return {"ok": True, "status": snapshot(self.readout, time.monotonic())}
        if command == "role":
            role = request.get("role")
            if role is None:
                return {"ok": True, "message": self.readout.ha_role or "not one of an HA pair"}
            if role not in ROLES:
                return {"ok": False, "error": f"role must be one of {', '.join(ROLES)}"}
            try:
                return {"ok": True, "message": self.commands.set_role(role)}
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
        known = self.commands.ike_tunnels()
        if not isinstance(tunnel, str) or tunnel not in known:
            names = ", ".join(sorted(known)) or "none"
            return {"ok": False, "error": f"no IKE tunnel {tunnel!r}; IKE tunnels: {names}"}
        if command == "initiate":
            message = self.commands.initiate(tunnel)
        elif command == "terminate":
            message = self.commands.terminate(tunnel)
        else:
            kind = request.get("kind", "child")
            if kind not in ("child", "ike"):
                return {"ok": False, "error": "rekey kind must be child or ike"}
            message = self.commands.rekey(tunnel, kind)
        return {"ok": True, "message": message}


def answers(path: Path) -> bool:
    """Whether a gateway listens on this control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def request(path: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One command to a running gateway; ControlError when it cannot be asked or says no."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except PermissionError:
            raise ControlError(f"{path}: permission denied (the control socket is root-only)") from None
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket; is the gateway running?") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: no answer from the gateway") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "refused"), answer.get("problems"),
                           2 if answer.get("config_error") else 1)
    return answer
