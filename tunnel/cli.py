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
    from tunnel.pki_cli import add_commands

    add_commands(commands)
    return parser


def _cmd_up(args: argparse.Namespace) -> int:
    from tunnel.config.loader import load_config
    from tunnel.gateway import run

    config = load_config(args.config)
    _setup_logging(config.log_level)
    run(config, args.esp_key_log)
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
