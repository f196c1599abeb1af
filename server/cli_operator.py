"""The operator's own setup commands: serve (the MCP server for one workspace), operator
init (the key pair) and demo (the whole path on a sample workspace).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from tunestep.server.cli_common import EXIT_OK, _fingerprints, _show, _trusted_key_paths
from tunestep.server.cli_prompts import _passphrase
from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.app import ServerConfig, build_server

    # stdout is the protocol channel in stdio mode: logs go to stderr only.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from tunestep.tools.core.workspace import find_workspace

    keys = _trusted_key_paths(args)
    # A missing or wrong workspace fails now too, not at every tool call.
    workspace = find_workspace(args.workspace).root
    # The keys are read (and checked against the fingerprints) now, once: a wrong path
    # fails at start, and a key file changed later is never trusted.
    server = build_server(ServerConfig(workspace=workspace, operator_keys=keys,
                                       operator_key_fingerprints=_fingerprints(args)))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
            raise TunestepError("bind_refused", f"binding to {args.host} exposes the server "
                                "beyond this machine; pass --allow-remote to mean it")
        server.run("streamable-http", host=args.host, port=args.port)
    return EXIT_OK


def cmd_operator(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.drafts.operator import check_new_passphrase, remember_default
    from tunestep.tools.signing.operator_keys import create_operator_key

    passphrase = _passphrase(confirm=True, new=True)
    check_new_passphrase(passphrase)
    info = create_operator_key(args.name, passphrase, args.config_dir)
    is_default = remember_default(info.name, info.private_key_path.parent)
    _show(args, console, info)
    if not args.json:
        from tunestep.server.render import screen

        out = screen(console)
        out.print("")
        out.print("Give the server the public key, e.g. in the MCP client config:")
        out.command(f"tunestep serve --operator-key {_quote(info.public_key_path)} "
                    f"--operator-key-fingerprint {info.fingerprint}")
        if is_default:
            out.print(f"`tunestep approve DRAFT_ID` signs with this key ({info.name}) "
                      "unless you pass --name.")
        else:
            out.print("Sign with it:")
            out.command(f"tunestep approve DRAFT_ID --name {info.name}")
    return EXIT_OK


def _quote(value) -> str:
    import shlex

    return shlex.quote(str(value))


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.demo import run_demo

    return run_demo(args, console)
