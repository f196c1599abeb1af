"""The `tunestep` command: the same domain functions as the MCP tools, for people.

Exit codes: 0 success (for `check`: ready), 1 a problem the user can fix (the message
names its code, file and line), 2 usage errors. No traceback reaches the user; an
unexpected failure prints one line and asks for a bug report.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from tunestep.tools.errors import TunestepError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, Console], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _workspace(args: argparse.Namespace):
    from tunestep.tools.workspace import open_workspace

    return open_workspace(args.workspace)


def _show(args: argparse.Namespace, console: Console, result) -> None:
    from tunestep.server.render import render

    render(console, result, args.json)


@command("serve")
def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.app import ServerConfig, build_server

    # stdout is the protocol channel in stdio mode: logs go to stderr only.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    keys = list(args.operator_key or [])
    env_keys = os.environ.get("TUNESTEP_OPERATOR_KEYS", "")
    keys += [Path(p) for p in env_keys.split(os.pathsep) if p]
    workspace = args.workspace or os.environ.get("TUNESTEP_WORKSPACE")
    server = build_server(ServerConfig(workspace=workspace, operator_keys=keys))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
            raise TunestepError("bind_refused", f"binding to {args.host} exposes the server "
                                "beyond this machine; pass --allow-remote to mean it")
        server.run("streamable-http", host=args.host, port=args.port)
    return EXIT_OK


@command("check")
def cmd_check(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.preflight import check_batch

    report = check_batch(_workspace(args), args.batch)
    _show(args, console, report)
    return EXIT_OK if report.ready else EXIT_PROBLEM


@command("demo")
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.demo import run_demo

    return run_demo(args, console)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", "-w", help="workspace root (default: "
                        "$TUNESTEP_WORKSPACE or the current folder)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    parser = argparse.ArgumentParser(
        prog="tunestep", description="Prepare incremental fine-tuning steps; the operator "
        "alone approves a job.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the MCP server")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding to an address other than loopback")
    p.add_argument("--operator-key", action="append", type=Path, metavar="PUBKEY",
                   help="trusted operator public key (repeatable); also "
                   "$TUNESTEP_OPERATOR_KEYS")

    p = sub.add_parser("check", parents=[common], help="preflight the next batch")
    p.add_argument("batch", nargs="?", help="batch folder name (default: next untrained)")
    p = sub.add_parser("demo", help="run the whole path on a sample workspace and tiny model")
    p.add_argument("--path", default=".demo", help="folder for the demo workspace and store")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False, highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    try:
        return _COMMANDS[args.command](args, console)
    except TunestepError as exc:
        err.print(f"[bold red]error[/] {exc}", markup=True, highlight=False)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # the last line of defence: no traceback at the user
        logging.getLogger("tunestep").debug("unexpected failure", exc_info=True)
        err.print(f"[bold red]internal error[/] {type(exc).__name__}: {exc} "
                  "(set TUNESTEP_DEBUG=1 for the traceback; please report it)")
        if os.environ.get("TUNESTEP_DEBUG"):
            raise
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
