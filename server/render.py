"""How results look in a terminal: a rich view, or the model itself as JSON.

Renderers are picked by result type; anything without one gets a generic key/value
table, so a new tool is usable from the CLI before anyone writes it a view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from tunestep.tools.preflight import PreflightReport

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}

_RENDERERS: dict[type, Callable[[Console, Any], None]] = {}


def renderer(kind: type) -> Callable:
    def register(fn: Callable[[Console, Any], None]) -> Callable[[Console, Any], None]:
        _RENDERERS[kind] = fn
        return fn

    return register


def render(console: Console, result: BaseModel, as_json: bool) -> None:
    if as_json:
        # print() not console.print(): JSON must reach a pipe byte-exact, unwrapped.
        print(result.model_dump_json(indent=2))
        return
    for kind in type(result).__mro__:
        if kind in _RENDERERS:
            _RENDERERS[kind](console, result)
            return
    render_generic(console, result)


def render_generic(console: Console, result: BaseModel) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in result.model_dump(mode="json").items():
        if isinstance(value, list | dict):
            value = f"{len(value)} item(s)" if value else "-"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


def problems_table(problems: list) -> Table:
    table = Table("severity", "code", "message", "path", title="Problems", title_justify="left")
    for p in problems:
        table.add_row(f"[{SEVERITY_STYLE[p.severity]}]{p.severity}[/]", p.code, p.message,
                      p.path or "")
    return table


@renderer(PreflightReport)
def render_preflight(console: Console, report: PreflightReport) -> None:
    verdict = "[bold green]READY[/]" if report.ready else "[bold red]NOT READY[/]"
    console.print(f"{verdict}  batch [bold]{report.batch or '-'}[/] (step {report.step or '-'})")
    files = Table("file", "rows", "sha256", title="Batch files", title_justify="left")
    for f in report.files:
        files.add_row(f.path, "?" if f.rows is None else str(f.rows), f.sha256[:16])
    console.print(files)
    v = report.validation
    state = "missing" if not v.present else ("CHANGED" if v.changed else
                                             "pinned now" if v.newly_pinned else "unchanged")
    console.print(f"hold-out  {v.path}: {state}" + (f", {v.rows} rows" if v.rows else ""))
    c = report.checkpoint
    where = f" -> {c.target}" if c.is_link else ""
    console.print(f"checkpoint {c.link}{where}: "
                  + (f"latest {c.latest} ({c.kind})" if c.latest else "none"))
    console.print("HF token  " + (f"available ({report.hf_token_source})"
                                  if report.hf_token_available else "not found"))
    if report.problems:
        console.print(problems_table(report.problems))
    for action in report.next_actions:
        console.print(f"next: {action}")
