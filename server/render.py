"""How results look in a terminal: a rich view, or the model itself as JSON.

Renderers are picked by result type; anything without one gets a generic key/value
view, so a new tool is usable from the CLI before anyone writes it a view. This module
is the dispatch (``render``, the console, the generic view); the screens live by result
family, and ``register_domain_renderers`` binds each to its result type:

  data_screen.py       preflight, inspection, mapping, merge, preprocess
  draft_screen.py      a draft, and the approval screen before signing it
  job_screen.py        a job's handle and status, the list of jobs
  promotion_screen.py  a promotion request and its result
  repin_screen.py      a hold-out re-pin request and its result (REPIN_RENDERERS)
  next_steps.py        next steps as `tunestep` commands (CLI_COMMANDS)
  screen_parts.py      status colours, problem lists, "... and N more"
  screen.py            lines at 80 columns: wrapping, whole words, safe text

A new screen: a ``render_*`` function in its family's module (a new module for a new
family), and its row in ``register_domain_renderers``.

At 80 columns nothing a person acts on may be cut: paths, file:line, error codes and
commands are printed as whole words on their own lines (the console soft-wraps, it never
ellipsizes), prose is wrapped at spaces, and the few tables fold instead of cutting.
Next steps are rendered from their structured form (``tools/core/next_step.py``) as the
``tunestep`` command a person types, never as the MCP call the assistant makes.

Every string that comes from the workspace (file and folder names, row excerpts in
findings, plan values, anything a tool echoes) goes through ``safe_text`` before it
reaches the terminal: the assistant writes those, and the operator must read what is
there, not what an escape sequence or a rich tag makes the screen show.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from tunestep.server import data_screen, job_screen, promotion_screen
from tunestep.server.draft_screen import render_draft, render_inspect_draft  # noqa: F401
from tunestep.server.screen import (  # noqa: F401  (safe_text, visible_text: the CLI's)
    View,
    safe_text,
    screen,
    token,
    visible_text,
    w,
)
from tunestep.server.screen_parts import SHOWN, _more

WHOLE_KEYS = {"fingerprint", "digest", "sha256", "kid", "code"}  # generic view: one word each

_RENDERERS: dict[type, Callable[[Console, Any, View], None]] = {}


def make_console(stderr: bool = False) -> Console:
    # soft_wrap: long lines are left for the terminal to wrap; rich never cuts them.
    return Console(file=_Trimmed(stderr), highlight=False, soft_wrap=True)


_TRAILING = re.compile(r"[ \t]+(?=\n)")


class _Trimmed:
    """stdout or stderr (looked up at each write, as rich does) without the spaces rich
    pads a line with up to the width: a pipe or a file gets each line as it ends."""

    def __init__(self, stderr: bool) -> None:
        self.stderr = stderr

    @property
    def stream(self):
        import sys

        return sys.stderr if self.stderr else sys.stdout

    def write(self, text: str) -> int:
        return self.stream.write(_TRAILING.sub("", text)) and len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def render(console: Console, result: BaseModel, as_json: bool, *,
           approving: bool = False, workspace: str | None = None,
           bound_to: str | None = None) -> None:
    """Print ``result``; ``approving``: the screen `tunestep approve` shows before signing,
    for a token bound to the workspace ``bound_to``."""
    if as_json:
        # print() not console.print(): JSON must reach a pipe byte-exact, unwrapped.
        print(result.model_dump_json(indent=2))
        return
    register_domain_renderers()
    view = View(approving=approving, workspace=workspace, bound_to=bound_to)
    console = screen(console)
    for kind in type(result).__mro__:
        if kind in _RENDERERS:
            _RENDERERS[kind](console, result, view)
            return
    render_generic(console, result, view)


# --- the generic view --------------------------------------------------------------------

def render_generic(console: Console, result: BaseModel, view: View) -> None:
    """Every field, lists item by item (never "5 item(s)"), floats rounded."""
    for key, value in result.model_dump(mode="json").items():
        _generic_value(console, key, value, 0)


def _generic_value(console: Console, key: str, value: Any, depth: int) -> None:
    pad = "  " * depth
    if isinstance(value, dict) and value:
        console.print(f"{pad}[bold]{w(key)}[/]")
        for k, v in value.items():
            _generic_value(console, str(k), v, depth + 1)
    elif isinstance(value, list) and value:
        console.print(f"{pad}[bold]{w(key)}[/]")
        for item in value[:SHOWN]:
            if isinstance(item, dict):
                console.print(f"{pad}  - " + ", ".join(f"{w(k)} {w(_scalar(v))}"
                                                      for k, v in item.items()))
            else:
                console.print(f"{pad}  - {w(_scalar(item))}")
        _more(console, len(value), SHOWN)
    elif isinstance(value, str) and (key.endswith("path") or key in WHOLE_KEYS):
        console.print(f"{pad}[bold]{w(key)}[/] {token(value)}")  # one word, never cut
    else:
        console.print(f"{pad}[bold]{w(key)}[/] {w(_scalar(value))}")


def _scalar(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        import json

        return json.dumps(value, ensure_ascii=False)
    return str(value)


def register_domain_renderers() -> None:
    """Bind the screens to their result types (imported lazily: heavy modules)."""
    from tunestep.server.repin_screen import REPIN_RENDERERS
    from tunestep.tools.data.mapping import MappingResult
    from tunestep.tools.data.merge import MergeResult
    from tunestep.tools.data.preflight import PreflightReport
    from tunestep.tools.data.preprocess import PreprocessResult
    from tunestep.tools.drafts.draft import JobDraft
    from tunestep.tools.inspector import InspectionReport
    from tunestep.tools.lineage.promotion import PromotionOutcome, PromotionRequest, PromotionResult
    from tunestep.tools.runs.job_control import JobList, JobStatus
    from tunestep.tools.runs.submit import JobHandle

    _RENDERERS.update({
        PreflightReport: data_screen.render_preflight,
        InspectionReport: data_screen.render_inspection,
        MappingResult: data_screen.render_mapping,
        MergeResult: data_screen.render_merge,
        PreprocessResult: data_screen.render_preprocess,
        JobDraft: render_draft,
        JobHandle: job_screen.render_handle,
        JobStatus: job_screen.render_job,
        JobList: job_screen.render_job_list,
        PromotionRequest: promotion_screen.render_promotion_request,
        PromotionResult: promotion_screen.render_promotion_result,
        PromotionOutcome: promotion_screen.render_promotion_outcome,
        **REPIN_RENDERERS,
    })
