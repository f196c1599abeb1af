"""How results look in a terminal: a rich view, or the model itself as JSON.

Renderers are picked by result type; anything without one gets a generic key/value
table, so a new tool is usable from the CLI before anyone writes it a view.

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
from rich.markup import escape
from rich.table import Table

from tunestep.tools.preflight import PreflightReport

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}

_RENDERERS: dict[type, Callable[[Console, Any], None]] = {}

# What a terminal would act on instead of showing: C0 controls (ESC starts ANSI
# sequences, CR and BS overwrite, a newline fakes a line), DEL, C1 controls (CSI is one
# character there), and the bidirectional overrides/isolates and marks that reorder
# what follows (the "Trojan Source" characters), plus zero-width characters and the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                     "\u2060-\u2069\ufeff]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: Any) -> str:
    """``value`` as text that shows exactly what it is, in a terminal and to rich.

    Control, bidi and zero-width characters are shown visibly as escapes (``\\x1b``,
    ``\\u202e``, a newline as ``\\x0a``), and rich markup is made inert (``[conceal]``
    prints as written). The one function every screen uses for workspace strings.
    """
    return escape(_UNSAFE.sub(_visible, "" if value is None else str(value)))


def renderer(kind: type) -> Callable:
    def register(fn: Callable[[Console, Any], None]) -> Callable[[Console, Any], None]:
        _RENDERERS[kind] = fn
        return fn

    return register


def render(console: Console, result: BaseModel, as_json: bool, *,
           approving: bool = False) -> None:
    """Print ``result``; ``approving``: the screen `tunestep approve` shows before signing."""
    if as_json:
        # print() not console.print(): JSON must reach a pipe byte-exact, unwrapped.
        print(result.model_dump_json(indent=2))
        return
    register_domain_renderers()
    for kind in type(result).__mro__:
        if kind in _RENDERERS:
            if approving and _RENDERERS[kind] is render_draft:
                render_draft(console, result, approving=True)
            else:
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
        table.add_row(safe_text(key), "-" if value is None else safe_text(value))
    console.print(table)


def problems_table(problems: list) -> Table:
    table = Table("severity", "code", "message", "path", title="Problems", title_justify="left")
    for p in problems:
        table.add_row(f"[{SEVERITY_STYLE[p.severity]}]{p.severity}[/]", safe_text(p.code),
                      safe_text(p.message), safe_text(p.path or ""))
    return table


@renderer(PreflightReport)
def render_preflight(console: Console, report: PreflightReport) -> None:
    verdict = "[bold green]READY[/]" if report.ready else "[bold red]NOT READY[/]"
    console.print(f"{verdict}  batch [bold]{safe_text(report.batch or '-')}[/] "
                  f"(step {report.step or '-'})")
    files = Table("file", "rows", "sha256", title="Batch files", title_justify="left")
    for f in report.files:
        files.add_row(safe_text(f.path), "?" if f.rows is None else str(f.rows),
                      safe_text(f.sha256[:16]))
    console.print(files)
    v = report.validation
    state = "missing" if not v.present else ("CHANGED" if v.changed else
                                             "pinned now" if v.newly_pinned else "unchanged")
    console.print(f"hold-out  {safe_text(v.path)}: {state}"
                  + (f", {v.rows} rows" if v.rows else ""))
    c = report.checkpoint
    where = f" -> {safe_text(c.target)}" if c.is_link else ""
    console.print(f"checkpoint {safe_text(c.link)}{where}: "
                  + (f"latest {safe_text(c.latest)} ({safe_text(c.kind)})" if c.latest
                     else "none"))
    console.print("HF token  " + (f"available ({safe_text(report.hf_token_source)})"
                                  if report.hf_token_available else "not found"))
    if report.problems:
        console.print(problems_table(report.problems))
    for action in report.next_actions:
        console.print(f"next: {safe_text(action)}")


def _status_style(status: str) -> str:
    return {"READY": "bold green", "NEEDS_MAPPING": "bold yellow", "INVALID": "bold red",
            "succeeded": "bold green", "running": "cyan", "failed": "bold red",
            "cancelled": "yellow", "lost": "bold red"}.get(status, "bold")


def render_inspection(console: Console, report) -> None:
    console.print(f"[{_status_style(report.status)}]{safe_text(report.summary)}[/]"
                  + ("  [dim](cached)[/]" if report.cached else ""))
    files = Table("file", "format", "rows", "status", title="Files", title_justify="left")
    for f in report.files:
        files.add_row(safe_text(f.path), safe_text(f.format), str(f.rows),
                      safe_text(f.status))
    console.print(files)
    if report.errors:
        table = Table("severity", "where", "code", "message", title=f"Findings "
                      f"({report.error_count} errors, {report.warning_count} warnings)",
                      title_justify="left")
        for e in report.errors:
            table.add_row(f"[{SEVERITY_STYLE.get(e.severity, '')}]{safe_text(e.severity)}[/]",
                          safe_text(f"{e.file}:{e.line or '-'}"), safe_text(e.code),
                          safe_text(e.message))
        console.print(table)
    for action in report.next_actions:
        console.print(f"next: {safe_text(action)}")


def render_draft(console: Console, draft, approving: bool = False) -> None:
    if draft.kind == "inspect":
        return render_inspect_draft(console, draft, approving)
    cfg, est = draft.job_config, draft.estimate
    hp = cfg["hyperparameters"]
    console.print(f"[bold]{safe_text(draft.draft_id)}[/]  step {draft.step} "
                  f"({safe_text(draft.batch)}), {safe_text(cfg['mode'])} fine-tune on "
                  f"[bold]{safe_text(draft.backend)}[/]")
    console.print(f"digest   {safe_text(draft.digest)}")
    console.print(f"model    {safe_text(cfg['base_model'])}"
                  + (f"\nresume   {safe_text(cfg['resume_from'])}" if cfg["resume_from"]
                     else ""))
    console.print(f"train    lr {hp['learning_rate']:g}, {hp['num_train_epochs']:g} epochs, "
                  f"batch {safe_text(hp['per_device_train_batch_size'])}x"
                  f"{safe_text(hp['gradient_accumulation_steps'])}, max_length "
                  f"{safe_text(hp['max_length'])}")
    _draft_files(console, draft)
    console.print(f"estimate {est.total_tokens} tokens, ~{est.minutes:g} min, "
                  f"[bold]${est.usd:.2f}[/] on {safe_text(est.flavor)}"
                  + (f" ({est.processes} GPUs, one process each)"
                     if getattr(est, "processes", 1) > 1 else "")
                  + f"; suggested timeout {safe_text(est.suggested_timeout)}")
    _draft_warnings_and_approval(console, draft, approving)


def _draft_files(console: Console, draft) -> None:
    files = Table("role", "file", "rows", "sha256", title="Files", title_justify="left")
    for f in draft.files:
        files.add_row(safe_text(f.role), safe_text(f.path),
                      "" if f.rows is None else str(f.rows), safe_text(f.sha256[:16]))
    console.print(files)


def _draft_warnings_and_approval(console: Console, draft, approving: bool) -> None:
    for warning in draft.warnings:
        console.print(f"[yellow]warning[/] {safe_text(warning)}")
    if not approving:  # on the approval screen the operator is running this already
        console.print(f"approve  {safe_text(draft.approve_command)}")


def render_inspect_draft(console: Console, draft, approving: bool = False) -> None:
    est, sub = draft.estimate, draft.submission
    console.print(f"[bold]{safe_text(draft.draft_id)}[/]  remote inspection of "
                  f"{safe_text(draft.job_config['path'])} (step {draft.step}) on "
                  f"[bold]{safe_text(draft.backend)}[/]")
    console.print(f"digest   {safe_text(draft.digest)}")
    _draft_files(console, draft)
    console.print(f"estimate {est.rows} rows, ~{est.minutes:g} min, [bold]${est.usd:.4f}[/] "
                  f"on {safe_text(est.flavor)} (at most ${est.max_usd:.4f}); timeout "
                  f"{sub.timeout_seconds} s")
    _draft_warnings_and_approval(console, draft, approving)


def render_job(console: Console, status) -> None:
    console.print(f"{safe_text(status.job_id)}  [{_status_style(status.status)}]"
                  f"{safe_text(status.status)}[/]  ({safe_text(status.backend)}, draft "
                  f"{safe_text(status.draft_id)})")
    if status.url:
        console.print(f"url      {safe_text(status.url)}")
    if status.log_path:
        console.print(f"log      {safe_text(status.log_path)}")
    result = status.result or {}
    if "model_path" in result:
        console.print(f"model    {safe_text(result['model_path'])}")
    if "final_eval_loss" in result:
        console.print(f"eval     loss {safe_text(result.get('eval_loss_before'))} -> "
                      f"{safe_text(result['final_eval_loss'])}")


def render_job_list(console: Console, jobs) -> None:
    table = Table("job", "status", "backend", "draft", title="Jobs", title_justify="left")
    for j in jobs.jobs:
        table.add_row(safe_text(j.job_id), f"[{_status_style(j.status)}]{safe_text(j.status)}[/]",
                      safe_text(j.backend), safe_text(j.draft_id))
    console.print(table)


def register_domain_renderers() -> None:
    """Bind the views above to their result types (imported lazily: heavy modules)."""
    from tunestep.tools.draft import JobDraft
    from tunestep.tools.inspector import InspectionReport
    from tunestep.tools.job_control import JobList, JobStatus

    _RENDERERS.update({InspectionReport: render_inspection, JobDraft: render_draft,
                       JobStatus: render_job, JobList: render_job_list})
