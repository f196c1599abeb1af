"""What every `tunestep` command shares: the exit codes, the call's workspace (with the
keys the ledger's line is read with), printing a result, a progress line, and the operator
keys and fingerprints the command line and the environment name.

The names keep their leading underscore: they are the command modules' (cli_*.py) own
helpers, not an API of the package.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, "Console"], int]


def _workspace(args: argparse.Namespace):
    from tunestep.tools.core.workspace import find_workspace

    # The command's one context: the workspace, the keys every read of the ledger's line
    # checks signed promotion records with, the plan and hash memo.
    ws = find_workspace(args.workspace)
    args.hint_workspace = _hint_workspace(ws.root)
    return ws.for_call(_reader_keys(args, ws.root))


def _hint_workspace(root: Path) -> str | None:
    """The --workspace a printed command needs: none when it would find this one anyway."""
    from tunestep.tools.core.workspace import WORKSPACE_ENV

    implicit = os.environ.get(WORKSPACE_ENV) or os.getcwd()
    try:
        if Path(implicit).expanduser().resolve() == root:
            return None
    except OSError:
        pass
    return str(root)


def _show(args: argparse.Namespace, console: Console, result) -> None:
    from tunestep.server.render import render

    render(console, result, args.json, workspace=getattr(args, "hint_workspace", None))


def _trusted_key_paths(args: argparse.Namespace) -> list:
    from tunestep.tools.signing.trusted_keys import is_inline_pem, trusted_key_paths_from_env

    keys = [p if is_inline_pem(p) else Path(p).expanduser().resolve()
            for p in (args.operator_key or [])]
    return keys + trusted_key_paths_from_env(os.environ.get("TUNESTEP_OPERATOR_KEYS", ""))


def _reader_keys(args: argparse.Namespace, root: Path) -> dict:
    """The keys every read of the ledger's line checks signed promotion records with (as
    `tunestep promote` trusts keys): --operator-key, $TUNESTEP_OPERATOR_KEYS, else the
    public halves in the operator's key folder; none from inside the workspace."""
    from tunestep.tools.lineage.promotion_records import reader_keys

    sources = _trusted_key_paths(args if hasattr(args, "operator_key")
                                 else argparse.Namespace(operator_key=None))
    return reader_keys(sources, getattr(args, "config_dir", None), root)


def _fingerprints(args: argparse.Namespace) -> list[str]:
    env = os.environ.get("TUNESTEP_OPERATOR_KEY_FINGERPRINTS", "")
    return list(getattr(args, "operator_key_fingerprint", None) or []) + [
        f for f in env.replace(",", " ").split() if f]


def _progress(console: Console, args: argparse.Namespace):
    """A progress callback printing to stderr (never into --json output)."""
    from tunestep.server.render import make_console

    err = make_console(stderr=True)

    def report(done: int, total: int | None, message: str) -> None:
        if not args.json and err.is_terminal:
            from tunestep.server.render import safe_text  # messages name workspace files

            err.print(f"  {safe_text(message)} ({done}{f'/{total}' if total else ''})")

    return report
