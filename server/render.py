"""How results look in a terminal: a rich view, or the model itself as JSON.

Renderers are picked by result type; anything without one gets a generic key/value
view, so a new tool is usable from the CLI before anyone writes it a view.

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
import shlex
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from tunestep.server.draft_screen import render_draft, render_inspect_draft  # noqa: F401
from tunestep.server.screen import (  # noqa: F401  (safe_text, visible_text: the CLI's)
    Screen,
    View,
    duration,
    prose,
    safe_text,
    screen,
    token,
    visible_text,
    w,
)
from tunestep.tools.data.preflight import PreflightReport

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
WHOLE_KEYS = {"fingerprint", "digest", "sha256", "kid", "code"}  # generic view: one word each
SHOWN = 20  # list items shown before "... and N more" (--json has every one)


_RENDERERS: dict[type, Callable[[Console, Any, View], None]] = {}


def renderer(kind: type) -> Callable:
    def register(fn: Callable[[Console, Any, View], None]) -> Callable:
        _RENDERERS[kind] = fn
        return fn

    return register


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


# --- building blocks ---------------------------------------------------------------------

def _more(console: Console, total: int, shown: int, where: str = "--json") -> None:
    if total > shown:
        console.print(f"    ... and {total - shown} more ({where} lists every one)")


def cli_command(action, view: View) -> str | None:
    """The `tunestep` command for a structured next step, or None when it has no tool."""
    if action.tool is None or action.tool not in CLI_COMMANDS:
        return None
    name, positional = CLI_COMMANDS[action.tool]
    words = ["tunestep", *name.split()]
    args = dict(action.args)
    for key in positional:
        if args.get(key) is not None:
            words.append(shlex.quote(str(args.pop(key))))
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value not in (False, None):
            words += [flag, shlex.quote(str(value))]
    if action.from_result.get("mapping") == "suggested_mapping":
        words.append("--suggested")
    if "approval_token" in action.from_result:  # the token a person pastes: read from stdin
        words += ["--token", "-"]
    if view.workspace:
        words += ["--workspace", shlex.quote(view.workspace)]
    return " ".join(words)


# MCP tool -> (CLI command, its positional arguments in order)
CLI_COMMANDS = {
    "check_batch": ("check", ["batch"]),
    "run_inspector": ("inspect", ["path"]),
    "apply_mapping": ("map", ["source"]),
    "merge_datasets": ("merge", ["batch"]),
    "preprocess": ("preprocess", ["batch"]),
    "draft_job": ("draft", ["batch"]),
    "submit_job": ("submit", ["draft_id", "approval_token"]),
    "job_status": ("status", ["job_id"]),
    "job_logs": ("logs", ["job_id"]),
    "cancel_job": ("cancel", ["job_id"]),
    "list_jobs": ("status", []),
    "promote_version": ("promote", ["version"]),
    "repin_holdout": ("repin", []),
    "sync_model": ("sync", []),
}


def next_steps(console: Console | Screen, result: Any, view: View) -> None:
    """Each next step as a command to type (with its note), else its words."""
    console = screen(console)
    steps = getattr(result, "next_steps", None) or []
    if not steps:  # a result from before next_steps existed: its words as they are
        for text in getattr(result, "next_actions", None) or []:
            console.print(f"next: {w(text)}")
        return
    for step in steps:
        command = cli_command(step, view)
        if command is None:
            prose(console, "next: " + " ".join(p for p in (step.lead, step.note) if p))
            continue
        if step.lead:
            prose(console, f"next: {step.lead}")
            console.command(command)
        else:
            console.command(command, lead="next: ")
        if step.note:
            prose(console, step.note, indent=6, style="dim")


def problems(console: Console, items: list) -> None:
    if not items:
        return
    console.print("[bold]problems[/]")
    for p in items:
        where = f"  {token(p.path)}" if p.path else ""
        console.print(f"  [{SEVERITY_STYLE[p.severity]}]{p.severity}[/] {w(p.code)}{where}")
        prose(console, p.message, indent=4)


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


# --- preflight ---------------------------------------------------------------------------

@renderer(PreflightReport)
def render_preflight(console: Console, report: PreflightReport, view: View) -> None:
    if report.nothing_left:
        console.print("[bold green]NOTHING LEFT TO TRAIN[/]  every batch folder is trained; "
                      "drop the next batch in")
    else:
        verdict = "[bold green]READY[/]" if report.ready else "[bold red]NOT READY[/]"
        if report.batch:
            batch = f"{w(report.batch)} (step {report.step})"
        elif report.requested:  # asked for by name, and not there: say so, and what is
            known = ", ".join(b.name for b in report.batches[:SHOWN]) or "none yet"
            more = f" and {len(report.batches) - SHOWN} more" if len(report.batches) > SHOWN \
                else ""
            batch = f"no batch {w(report.requested)}; the batches: {w(known)}{more}"
        else:
            batch = "no batch chosen"
        console.print(f"{verdict}  {batch}")
    if report.inspection is not None:
        i = report.inspection
        if i.status is None:
            said = "not inspected yet"
        else:
            said = (f"[{_status_style(i.status)}]{i.status}[/], {i.error_count} error(s), "
                    f"{i.warning_count} warning(s)"
                    + ("" if i.current else " [yellow](before the files changed)[/]"))
        console.print(f"inspector   {said}: {token(i.path)}")
    if report.files:
        console.print("files")
        for f in report.files:
            rows = "?" if f.rows is None else f"{f.rows:,}"
            console.print(f"  {rows} rows  {f.sha256[:16]}  {token(f.path)}")
    v = report.validation
    state = "missing" if not v.present else ("CHANGED" if v.changed else
                                             "pinned now" if v.newly_pinned else "unchanged")
    rows = f", {v.rows:,} rows" if v.rows else ""
    console.print(f"hold-out    {state}{rows}: {token(v.path)}")
    if v.repinned_by and v.pinned_sha256:  # the operator's signed re-pin set the pin
        console.print(f"            pin {token(v.pinned_sha256[:12])}, re-pinned by "
                      f"{token(v.repinned_by)}", hang=12)
    c = report.checkpoint
    where = f" -> {token(c.target)}" if c.is_link else ""
    latest = f"latest {w(c.latest)} ({c.kind})" if c.latest else "none"
    console.print(f"checkpoint  {latest}: {token(c.link)}{where}")
    console.print("HF token    " + (f"available ({w(report.hf_token_source)})"
                                    if report.hf_token_available else "not found"))
    problems(console, report.problems)
    next_steps(console, report, view)


def _status_style(status: str) -> str:
    return {"READY": "bold green", "NEEDS_MAPPING": "bold yellow", "INVALID": "bold red",
            "succeeded": "bold green", "running": "cyan", "failed": "bold red",
            "cancelled": "yellow", "lost": "bold red"}.get(status, "bold")


# --- inspector and mapping ---------------------------------------------------------------

def render_inspection(console: Console, report, view: View) -> None:
    rows = sum(f.rows for f in report.files)
    console.print(f"[{_status_style(report.status)}]{report.status}[/]  {token(report.path)}"
                  + ("  [dim](cached)[/]" if report.cached else ""))
    console.print(f"{rows:,} rows in {len(report.files)} file(s); {report.error_count:,} "
                  f"error(s), {report.warning_count:,} warning(s)")
    console.print("files")
    for f in report.files:
        console.print(f"  [{_status_style(f.status)}]{f.status}[/]  {w(f.format)}  "
                      f"{f.rows:,} rows  {token(f.path)}")
    if report.errors:
        console.print(f"[bold]findings[/] ({report.error_count:,} errors, "
                      f"{report.warning_count:,} warnings"
                      + (f"; {len(report.errors)} listed" if report.truncated else "") + ")")
        unit = {f.path: f.line_numbers for f in report.files}
        for file, findings in _by_file(report.errors):
            console.print(f"  {token(file)}")
            for e in findings:  # the message under the code, wrapped between words
                where = f"{unit.get(file, 'line')} {e.line}" if e.line else "file"
                console.print(f"    {where} [{SEVERITY_STYLE.get(e.severity, '')}]"
                              f"{e.severity}[/] {token(e.code)}: {w(e.message)}", hang=6)
    if report.mapping_preview is not None:
        m = report.mapping_preview
        reasons = ", ".join(f"{w(k)} {v}" for k, v in m.drop_reasons.items())
        console.print(f"mapping     the suggestion keeps {'' if m.exact else 'about '}"
                      f"{m.rows_out:,} of {m.rows_in:,} rows"
                      + (f"; drops {m.rows_dropped:,} ({reasons})" if m.rows_dropped else ""))
    next_steps(console, report, view)


def _by_file(findings: list) -> list[tuple[str, list]]:
    groups: dict[str, list] = {}
    for f in findings:
        groups.setdefault(f.file, []).append(f)
    return list(groups.items())


def render_mapping(console: Console, result, view: View) -> None:
    console.print(f"[bold]mapped[/] {token(result.source)}"
                  + ("  [dim](unchanged: same spec and files as before)[/]"
                     if result.unchanged else ""))
    console.print(f"  into {token(result.output)}")
    console.print(f"{result.rows_in:,} rows in, {result.rows_out:,} out, "
                  f"{result.rows_dropped:,} dropped, {result.rows_changed:,} repaired")
    for f in result.files:
        console.print(f"  {f.rows_in:,} -> {f.rows_out:,}  ({f.mapping})  {token(f.output)}")
    if result.dropped:
        reasons = ", ".join(f"{w(k)} {v}" for k, v in result.drop_reasons.items())
        console.print(f"[bold]dropped[/] ({reasons}); the manifest lists every one: "
                      f"{token(result.manifest)}")
        for file, rows in _by_file_rows(result.dropped):
            console.print(f"  {token(file)}")
            for row in rows:
                prose(console, f"line {row.line}: {row.reason}", indent=4)
        _more(console, result.rows_dropped, len(result.dropped), "the manifest")
    next_steps(console, result, view)


def _by_file_rows(rows: list) -> list[tuple[str, list]]:
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(getattr(r, "file", None) or r.path, []).append(r)
    return list(groups.items())


# --- the step's data ---------------------------------------------------------------------

def render_merge(console: Console, result, view: View) -> None:
    console.print(f"[bold]merged[/] step {result.step} ({w(result.batch)}), strategy "
                  f"{result.strategy}: {result.rows:,} rows in {duration(result.seconds)}"
                  + ("  [dim](cached: nothing written)[/]" if result.cached else ""))
    console.print("sources (training order)")
    for s in result.sources:
        console.print(f"  {w(s.part)}  {s.rows_in:,} -> {s.rows_out:,} rows  ({s.origin})  "
                      f"{token(s.path)}")
    if result.output:
        console.print(f"output      {token(result.output)}")
        console.print(f"manifest    {token(result.manifest)}")
    _duplicates(console, result.duplicate_count, result.duplicates_dropped,
                result.duplicates)
    _replay(console, result.replay)
    console.print(f"hold-out    {result.holdout.rows:,} rows, never merged: "
                  f"{token(result.holdout.path)}")
    for note in result.notes:
        prose(console, f"note: {note}")


def _duplicates(console: Console, count: int, dropped: bool, rows: list) -> None:
    if not count:
        console.print("duplicates  none")
        return
    console.print(f"duplicates  {count:,} ({'dropped' if dropped else 'kept'})")
    for d in rows[:SHOWN]:
        console.print(f"  {token(d.path)}:{d.line}")
        console.print(f"    same as {token(d.duplicate_of.path)}:{d.duplicate_of.line}")
    _more(console, count, min(len(rows), SHOWN))


def _replay(console: Console, replay) -> None:
    if replay.mode == "sampled":
        console.print(f"replay      {replay.sampled_rows:,} of {replay.earlier_rows:,} earlier "
                      f"rows (fraction {replay.fraction:g}, seed {replay.seed})")
    elif replay.mode == "nothing_earlier":
        console.print("replay      nothing earlier to replay")


def render_preprocess(console: Console, result, view: View) -> None:
    console.print(f"[bold]tokenized[/] step {result.step} ({w(result.batch)}): "
                  f"{result.rows:,} rows, {result.tokens:,} tokens ({result.assistant_tokens:,} "
                  f"trained) in {duration(result.seconds)}"
                  + ("  [dim](cached: nothing written)[/]" if result.cached else ""))
    console.print(f"dataset     {token(result.path)}")
    console.print(f"model       {w(result.model)}, chat template {w(result.chat_template)}, "
                  f"max_length {result.max_length:,}")
    if result.truncated_rows:
        console.print(f"[yellow]truncated[/]   {result.truncated_rows:,} row(s) longer than "
                      f"{result.max_length:,} tokens lose their end (the answer):")
        for t in result.truncated[:SHOWN]:
            console.print(f"  {token(t.path)}:{t.line}  {t.tokens:,} tokens")
        _more(console, result.truncated_rows, min(len(result.truncated), SHOWN))
    else:
        console.print("truncated   none")
    pad = result.padding
    console.print(f"padding     at batch size {pad.batch_size}: {pad.random_batches:.1%} in "
                  f"random batches, {pad.length_grouped:.1%} grouped by length")
    console.print("parts")
    for part in result.parts:
        console.print(f"  {part.selected_rows:,} of {part.rows:,} rows"
                      + (" (cached)" if part.cached else "") + f"  {token(part.path)}")
    _duplicates(console, result.duplicate_count, result.duplicates_dropped, [])
    _replay(console, result.replay)
    for note in result.notes:
        prose(console, f"note: {note}")


# --- jobs --------------------------------------------------------------------------------

def render_handle(console: Console, handle, view: View) -> None:
    console.print(f"{w(handle.job_id)}  [{_status_style(handle.status)}]{w(handle.status)}[/]"
                  f"  ({w(handle.backend)}, draft {w(handle.draft_id)})")
    for label, value in (("url", handle.url), ("log", handle.log_path),
                         ("pid", handle.pid)):
        if value:
            console.print(f"{label:<11} {token(value)}")
    next_steps(console, handle, view)


def render_job(console: Console, status, view: View) -> None:
    console.print(f"{w(status.job_id)}  [{_status_style(status.status)}]{w(status.status)}[/]"
                  f"  ({w(status.backend)}, draft {w(status.draft_id)})")
    if status.url:
        console.print(f"url         {token(status.url)}")
    if status.log_path:
        console.print(f"log         {token(status.log_path)}")
    result = status.result or {}
    if "model_path" in result:
        console.print(f"model       {token(result['model_path'])}")
    if "final_eval_loss" in result:
        before = result.get("eval_loss_before")
        before = f"{before:.4g}" if isinstance(before, int | float) else "-"
        after = result["final_eval_loss"]
        after = f"{after:.4g}" if isinstance(after, int | float) else w(after)
        console.print(f"eval loss   {before} -> {after}")
    if isinstance(result.get("seconds"), int | float):
        console.print(f"took        {duration(result['seconds'])}")
    if status.promoted is not None:
        moved = "latest moved to it" if status.promoted else \
            "[yellow]promoted: false[/], latest stayed"
        prose(console, f"gate        {moved}: {status.promotion_reason or '-'}")
    if getattr(status, "holdout", None) is not None:  # what the gate measured
        h = status.holdout
        console.print(f"hold-out    {token(h.short)} ({w(h.pinned_by)}): {token(h.path)}",
                      hang=12)
    if getattr(status, "ended", None):
        prose(console, f"ended       {status.ended}")
    if getattr(status, "latest_mismatch", None):  # the fix is among the next steps
        console.print("[bold red]latest_link_mismatch[/] (the model store's link)")
        prose(console, status.latest_mismatch, indent=2)
    _model_sync(console, status)
    next_steps(console, status, view)


def _model_sync(console: Console, status) -> None:
    """A finished hf-jobs step: which version came home from which Hub commit, or why not
    (the re-run command is among the next steps)."""
    synced = status.model_sync
    if synced is not None:
        how = "already in the store" if synced.already_synced else "brought home"
        latest = "latest moved to it" if synced.latest_moved else "latest not moved"
        console.print(f"model sync  {how}: {w(synced.version)} ({latest})")
        console.print(f"  from {w(synced.hub_model_id)}@{w(synced.hub_revision)}")
        console.print(f"  to   {token(synced.path)}")
    elif status.model_sync_error:
        console.print("[bold red]model sync failed[/] (the job's outcome stands)")
        prose(console, status.model_sync_error, indent=2)


def render_job_list(console: Console, jobs, view: View) -> None:
    if not jobs.jobs:
        console.print("no jobs yet")
        return
    console.print("[bold]jobs[/] (job, status, backend, draft)")
    for j in jobs.jobs:
        console.print(f"  {token(j.job_id)}  [{_status_style(j.status)}]{w(j.status)}[/]  "
                      f"{w(j.backend)}  {token(j.draft_id)}")


# --- promotion ---------------------------------------------------------------------------

def render_promotion_request(console: Screen, request, view: View) -> None:
    """What the operator signs to move ``latest``: the version and its content identity
    (signed, with the store and the workspace); what ``latest`` is now and what the
    ledger says of the version are shown apart, as not signed."""
    console.print(f"[bold]{token(request.request_id)}[/]  make [bold]{token(request.version)}"
                  "[/] the latest")
    console.print(f"digest      {token(request.digest)}")
    if view.bound_to:
        console.print(f"workspace   {token(view.bound_to)} (the token is bound to it)")
    console.print("[bold]signed[/] (the token moves latest to exactly this content)")
    console.print(f"version     {token(request.version)}: {request.files} files, content "
                  f"sha256 {token(request.identity)}")
    console.print(f"path        {token(request.version_path)}")
    console.print(f"latest      becomes {token(request.version)} (now "
                  f"{token(request.latest or 'none')}; not signed)")
    if request.step is not None:
        console.print("[bold]not signed[/] (what the ledger says about this version)")
        gate = "-" if request.gate_promoted is None else (
            "passed" if request.gate_promoted else "held it back")
        prose(console, f"step        {request.step} ({request.batch}); the gate {gate}: "
                       f"{request.gate_reason or '-'}")
    if not view.approving:
        next_steps(console, request, view)
        return
    console.print("")
    console.print("[bold]You are signing[/]")
    console.print(f"  request     {token(request.request_id)}")
    console.print(f"  digest      {token(request.digest)}")
    console.print(f"  latest      {token(request.latest or 'none')} -> [bold]"
                  f"{token(request.version)}[/] in {token(request.store)}", hang=14)
    console.print(f"  content     sha256 {token(request.identity[:16])}, {request.files} "
                  "files", hang=14)
    if view.bound_to:
        console.print(f"  workspace   {token(view.bound_to)}", hang=14)


def render_promotion_result(console: Console, result, view: View) -> None:
    console.print(f"[bold]latest[/] is now [bold]{w(result.latest)}[/] (was "
                  f"{w(result.previous or 'none')}) in {token(result.store)}")
    console.print(f"signed by   {w(result.operator)}, key {w(result.kid)}")


def render_promotion_outcome(console: Console, outcome, view: View) -> None:
    if outcome.result is not None:
        render_promotion_result(console, outcome.result, view)
    else:
        render_promotion_request(console, outcome.request, view)


def register_domain_renderers() -> None:
    """Bind the views above to their result types (imported lazily: heavy modules)."""
    from tunestep.server.repin_screen import REPIN_RENDERERS
    from tunestep.tools.data.mapping import MappingResult
    from tunestep.tools.data.merge import MergeResult
    from tunestep.tools.data.preprocess import PreprocessResult
    from tunestep.tools.drafts.draft import JobDraft
    from tunestep.tools.inspector import InspectionReport
    from tunestep.tools.lineage.promotion import PromotionOutcome, PromotionRequest, PromotionResult
    from tunestep.tools.runs.job_control import JobList, JobStatus
    from tunestep.tools.runs.submit import JobHandle

    _RENDERERS.update({InspectionReport: render_inspection, JobDraft: render_draft,
                       JobStatus: render_job, JobList: render_job_list,
                       MappingResult: render_mapping, MergeResult: render_merge,
                       PreprocessResult: render_preprocess, JobHandle: render_handle,
                       PromotionRequest: render_promotion_request,
                       PromotionResult: render_promotion_result,
                       PromotionOutcome: render_promotion_outcome, **REPIN_RENDERERS})
