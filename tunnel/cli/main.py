"""`sitelink` command line. Every error a user can cause ends as one clear line and an exit status:
0 success, 1 runtime failure, 2 bad usage or configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tunnel import __version__
from tunnel.errors import ConfigError, SitelinkError

log = logging.getLogger("sitelink")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sitelink", description="Userspace ESP site-to-site gateway.")
    parser.add_argument("--version", action="version", version=f"sitelink {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the gateway in the foreground (logs to stderr)")
    up.add_argument("config", type=Path, help="gateway configuration (YAML)")
    up.add_argument("--esp-key-log", type=Path, metavar="FILE",
                    help="DEBUGGING ONLY: append ESP keys in Wireshark's esp_sa format to FILE (mode 0600)")
    up.add_argument("--ike-key-log", type=Path, metavar="FILE",
                    help="DEBUGGING ONLY: append IKE SA keys in Wireshark's ikev2_decryption_table format to FILE")
    up.set_defaults(handler=_cmd_up)

    check = commands.add_parser("check", help="validate a configuration and its key files")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=_cmd_check)

    keys = commands.add_parser(
        "manual-keys",
        help="create a mirrored pair of manual ESP key files (testing and bring-up only)",
        description="Writes LOCAL (for this gateway) and PEER (copy it to the other gateway), mode 0600.",
    )
    keys.add_argument("local", type=Path)
    keys.add_argument("peer", type=Path)
    keys.set_defaults(handler=_cmd_manual_keys)
    status = commands.add_parser("status", help="show a running gateway's tunnels, SAs, traffic and drops")
    _control_target(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--brief", action="store_true", help="one line per tunnel (for gateways with many)")
    status.add_argument("--tunnel", metavar="PATTERN", help="only tunnels whose name matches, e.g. 'branch*'")
    status.add_argument("--state", choices=("up", "connecting", "down"), help="only tunnels in this state")
    status.set_defaults(handler=_cmd_status)
    for name, text in (("initiate", "set up a tunnel's IKE SA now"),
                       ("terminate", "delete a tunnel's IKE and Child SAs (traffic fails closed)"),
                       ("rekey", "rekey a tunnel's Child SA (or with --ike its IKE SA) now")):
        command = commands.add_parser(name, help=text)
        command.add_argument("tunnel", help="tunnel name from the configuration")
        _control_target(command)
        if name == "rekey":
            command.add_argument("--ike", action="store_true", help="rekey the IKE SA instead of the Child SA")
        command.set_defaults(handler=_cmd_control)
    role = commands.add_parser("role", help="make one of an HA pair active or standby (keepalived's notify "
                               "scripts run this), or show its role",
                               description="active: initiate every tunnel at once with INITIAL_CONTACT (the "
                               "peers drop their SAs with the gateway that went away); standby: forget every SA "
                               "and initiate nothing. Without an argument: print the role.")
    role.add_argument("role", nargs="?", choices=("active", "standby"))
    _control_target(role)
    role.set_defaults(handler=_cmd_role)
    reload = commands.add_parser("reload", help="make a running gateway re-read its configuration file "
                                 "(like SIGHUP; unchanged tunnels keep their SAs)")
    _control_target(reload)
    reload.set_defaults(handler=_cmd_reload)
    down = commands.add_parser("down", help="remove a stopped gateway's TUN device and routes: its tunnels' "
                               "traffic then leaves IN CLEAR by the host's other routes",
                               description="A stopped gateway keeps its TUN device and routes, so traffic "
                               "for its remote subnets is dropped, never sent in clear (fail closed). "
                               "`sitelink down` removes them on purpose and says where that traffic goes now.")
    down.add_argument("-c", "--config", type=Path, required=True, help="the gateway's configuration")
    down.set_defaults(handler=_cmd_down)
    from tunnel.cli.pki import add_commands

    add_commands(commands)
    return parser


def _control_target(command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--config", type=Path, help="the gateway's configuration (finds its control socket)")
    command.add_argument("--socket", type=Path, help="control socket path (default: the only one in /run/sitelink)")


def _socket_path(args: argparse.Namespace) -> Path:
    from tunnel.ops.control_socket import ControlError, default_path

    if args.socket is not None:
        return args.socket
    if args.config is not None:
        from tunnel.config.loader import load_config

        config = load_config(args.config)
        return config.control_socket or default_path(config.name)
    found = sorted(Path("/run/sitelink").glob("*.sock")) if Path("/run/sitelink").is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError("no gateway control socket in /run/sitelink; is a gateway running? (or give --socket)")
    raise ControlError("several gateways run here: give --config or --socket ("
                       + ", ".join(str(p) for p in found) + ")")


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from tunnel.ops.control_socket import request
    from tunnel.ops.status import render, render_brief, select

    full = request(_socket_path(args), {"command": "status"})["status"]
    snap = select(full, args.tunnel, args.state)
    if args.json:
        print(json.dumps(snap, indent=2))
    elif args.brief:
        print(render_brief(snap, len(full["tunnels"])))
    else:
        print(render(snap))
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    from tunnel.ops.control_socket import request

    message = {"command": args.command, "tunnel": args.tunnel}
    if args.command == "rekey":
        message["kind"] = "ike" if args.ike else "child"
    print(request(_socket_path(args), message)["message"])
    return 0


def _cmd_role(args: argparse.Namespace) -> int:
    from tunnel.ops.control_socket import request

    message: dict[str, str] = {"command": "role"}
    if args.role is not None:
        message["role"] = args.role
    print(request(_socket_path(args), message)["message"])
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    from tunnel.ops.control_socket import ControlError, request

    try:
        path = _socket_path(args)  # with --config this reads the new file, and finds its errors first
    except ConfigError:
        print("sitelink: the file has errors, so the gateway was not asked to reload; it keeps its running "
              "configuration", file=sys.stderr)
        raise
    try:
        print(request(path, {"command": "reload"})["message"])
    except ControlError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from tunnel.app.gateway import run
    from tunnel.config.loader import load_config

    config = load_config(args.config)
    _setup_logging(config.log_level, config.log_format)
    run(config, args.esp_key_log, args.ike_key_log)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from tunnel.app.gateway import take_down
    from tunnel.config.loader import load_config
    from tunnel.ops.control_socket import answers, default_path

    config = load_config(args.config)
    socket_path = config.control_socket or default_path(config.name)
    if answers(socket_path):
        print(f"sitelink: gateway {config.name} is running (it answers on {socket_path}); stop it first",
              file=sys.stderr)
        return 1
    lines = take_down(config)
    print(f"removed TUN device {config.tun.name} and the routes of gateway {config.name}; "
          "its tunnels' traffic is no longer held back:")
    for line in lines:
        print(f"  {line}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from tunnel.config.loader import load_config

    config = load_config(args.config)
    print(f"{args.config}: OK: gateway {config.name}, {len(config.tunnels)} tunnel(s): "
          + ", ".join(t.name for t in config.tunnels))
    return 0


def _cmd_manual_keys(args: argparse.Namespace) -> int:
    from tunnel.config.keyfile import write_manual_key_pair

    write_manual_key_pair(args.local, args.peer)
    print(f"wrote {args.local} (keep here) and {args.peer} (copy to the peer gateway), mode 0600")
    return 0


class JsonLines(logging.Formatter):
    """One JSON object per line (gateway.log_format: json), for log shippers that parse fields."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"sitelink: {len(exc.problems)} problem(s) in the configuration", file=sys.stderr)
        return exc.exit_status
    except SitelinkError as exc:
        print(f"sitelink: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
