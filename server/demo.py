"""`tunestep demo`: the real path on a sample workspace and a tiny local model.

Everything the operator and the assistant would do, in order, printed as it goes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tunestep.server.render import render
from tunestep.tools.preflight import check_batch
from tunestep.tools.sample_workspace import build_sample_workspace
from tunestep.tools.workspace import open_workspace


def run_demo(args: argparse.Namespace, console: Console) -> int:
    root = Path(args.path).resolve() / "workspace"
    console.rule("[bold]tunestep demo")
    console.print(f"building a sample workspace at {root}")
    build_sample_workspace(root)
    ws = open_workspace(root)
    console.rule("1. check_batch")
    report = check_batch(ws)
    render(console, report, as_json=False)
    return 0 if report.ready else 1
