"""The data commands: check (preflight), inspect, map, merge, preprocess."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tunestep.server.cli_common import EXIT_OK, EXIT_PROBLEM, _progress, _show, _workspace
from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.preflight import check_batch

    report = check_batch(_workspace(args), args.batch)
    _show(args, console, report)
    return EXIT_OK if report.ready else EXIT_PROBLEM


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.inspector import run_inspector

    report = run_inspector(_workspace(args), args.path, tokens=args.tokens,
                           max_errors=args.max_errors, progress=_progress(console, args))
    _show(args, console, report)
    return EXIT_OK if report.status == "READY" else EXIT_PROBLEM


def cmd_map(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
    from tunestep.tools.inspector.spec import parse_mapping_spec

    ws = _workspace(args)
    if args.spec:
        try:
            data = Path(args.spec).expanduser().read_bytes()
        except OSError as exc:
            raise TunestepError("mapping_spec_invalid", f"cannot read the spec file: "
                                f"{exc.strerror or exc}", path=args.spec) from None
        spec = parse_mapping_spec(data, args.spec)
    else:
        suggestion = suggest_mapping(ws, args.source)
        if suggestion.mapping is None:
            raise TunestepError("mapping_none", suggestion.reason, path=args.source)
        spec = suggestion.mapping
    _show(args, console, apply_mapping(ws, args.source, spec, progress=_progress(console, args)))
    return EXIT_OK


def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.merge import merge_datasets

    _show(args, console, merge_datasets(_workspace(args), args.batch, args.strategy, args.dedup,
                                        progress=_progress(console, args)))
    return EXIT_OK


def cmd_preprocess(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.preprocess import preprocess

    _show(args, console, preprocess(_workspace(args), args.batch, args.max_length,
                                    progress=_progress(console, args)))
    return EXIT_OK
