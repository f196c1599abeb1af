"""The small parts several result screens share: a status in its colour, a list of
problems, and the "... and N more" line after the first SHOWN items of a long list.

The underscored names are the screen modules' own helpers, not an API of the package.
"""

from __future__ import annotations

from rich.console import Console

from tunestep.server.screen import prose, token, w

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
SHOWN = 20  # list items shown before "... and N more" (--json has every one)


def _more(console: Console, total: int, shown: int, where: str = "--json") -> None:
    if total > shown:
        console.print(f"    ... and {total - shown} more ({where} lists every one)")


def problems(console: Console, items: list) -> None:
    if not items:
        return
    console.print("[bold]problems[/]")
    for p in items:
        where = f"  {token(p.path)}" if p.path else ""
        console.print(f"  [{SEVERITY_STYLE[p.severity]}]{p.severity}[/] {w(p.code)}{where}")
        prose(console, p.message, indent=4)


def _status_style(status: str) -> str:
    return {"READY": "bold green", "NEEDS_MAPPING": "bold yellow", "INVALID": "bold red",
            "succeeded": "bold green", "running": "cyan", "failed": "bold red",
            "cancelled": "yellow", "lost": "bold red"}.get(status, "bold")
