"""How results look in a terminal: a rich view, or the model itself as JSON.

Renderers are picked by result type; anything without one gets a generic key/value
view, so a new tool is usable from the CLI before anyone writes it a view.

At 80 columns nothing a person acts on may be cut: paths, file:line, error codes and
commands are printed as whole words on their own lines (the console soft-wraps, it never
ellipsizes), prose is wrapped at spaces, and the few tables fold instead of cutting.
Next steps are rendered from their structured form (``tools/next_step.py``) as the
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
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from tunestep.tools.preflight import PreflightReport

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
SHOWN = 20  # list items shown before "... and N more" (--json has every one)


@dataclass(frozen=True)
class View:
    """How this screen is shown: on the approval screen; the --workspace hints need."""

    approving: bool = False
    workspace: str | None = None  # added to printed commands when the cwd is elsewhere


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
           approving: bool = False, workspace: str | None = None) -> None:
    """Print ``result``; ``approving``: the screen `tunestep approve` shows before signing."""
    if as_json:
        # print() not console.print(): JSON must reach a pipe byte-exact, unwrapped.
        print(result.model_dump_json(indent=2))
        return
    register_domain_renderers()
    view = View(approving=approving, workspace=workspace)
    for kind in type(result).__mro__:
        if kind in _RENDERERS:
            _RENDERERS[kind](console, result, view)
            return
    render_generic(console, result, view)


# --- building blocks ---------------------------------------------------------------------

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


def visible_text(value: Any) -> str:
    """Like ``safe_text`` for plain ``print`` (no rich): controls visible, tabs kept.

    For job output, which carries row text the assistant wrote: an ESC in a training
    row must not reach the operator's terminal as an escape sequence.
    """
    text = "" if value is None else str(value)
    return _UNSAFE.sub(lambda m: "\t" if m.group() == "\t" else _visible(m), text)


w = safe_text  # short, for the many f-strings below


def prose(console: Console, text: str, indent: int = 0, style: str = "") -> None:
    """Wrapped at spaces to the width (paths and codes stay whole words)."""
    body = Text.from_markup(safe_text(text), style=style)
    console.print(Padding(body, (0, 0, 0, indent)) if indent else body, soft_wrap=False)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h " \
        f"{minutes % 60:02d} min"


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
    "sync_model": ("sync", []),
}


def next_steps(console: Console, result: Any, view: View) -> None:
    """Each next step as a command to type (with its note), else its words."""
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
            console.print(f"  {w(command)}")
        else:
            console.print(f"next: {w(command)}")
        if step.note:
            prose(console, step.note, indent=6, style="dim")


def problems(console: Console, items: list) -> None:
    if not items:
        return
    console.print("[bold]problems[/]")
    for p in items:
        where = f"  {w(p.path)}" if p.path else ""
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
        console.print(f"inspector   {said}: {w(i.path)}")
    if report.files:
        console.print("files")
        for f in report.files:
            rows = "?" if f.rows is None else f"{f.rows:,}"
            console.print(f"  {rows} rows  {f.sha256[:16]}  {w(f.path)}")
    v = report.validation
    state = "missing" if not v.present else ("CHANGED" if v.changed else
                                             "pinned now" if v.newly_pinned else "unchanged")
    rows = f", {v.rows:,} rows" if v.rows else ""
    console.print(f"hold-out    {state}{rows}: {w(v.path)}")
    c = report.checkpoint
    where = f" -> {w(c.target)}" if c.is_link else ""
    latest = f"latest {w(c.latest)} ({c.kind})" if c.latest else "none"
    console.print(f"checkpoint  {latest}: {w(c.link)}{where}")
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
    console.print(f"[{_status_style(report.status)}]{report.status}[/]  {w(report.path)}"
                  + ("  [dim](cached)[/]" if report.cached else ""))
    console.print(f"{rows:,} rows in {len(report.files)} file(s); {report.error_count:,} "
                  f"error(s), {report.warning_count:,} warning(s)")
    console.print("files")
    for f in report.files:
        console.print(f"  [{_status_style(f.status)}]{f.status}[/]  {w(f.format)}  "
                      f"{f.rows:,} rows  {w(f.path)}")
    if report.errors:
        console.print(f"[bold]findings[/] ({report.error_count:,} errors, "
                      f"{report.warning_count:,} warnings"
                      + (f"; {len(report.errors)} listed" if report.truncated else "") + ")")
        unit = {f.path: f.line_numbers for f in report.files}
        for file, findings in _by_file(report.errors):
            console.print(f"  {w(file)}")
            table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
            table.add_column(no_wrap=True, justify="right")
            table.add_column(no_wrap=True)
            table.add_column(no_wrap=True, min_width=max(len(e.code) for e in findings))
            table.add_column(overflow="fold", ratio=1)
            for e in findings:
                where = f"{unit.get(file, 'line')} {e.line}" if e.line else "file"
                table.add_row(f"    {where}", f"[{SEVERITY_STYLE.get(e.severity, '')}]"
                              f"{e.severity}[/]", w(e.code), w(e.message))
            console.print(table, soft_wrap=False)
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
    console.print(f"[bold]mapped[/] {w(result.source)}"
                  + ("  [dim](unchanged: same spec and files as before)[/]"
                     if result.unchanged else ""))
    console.print(f"  into {w(result.output)}")
    console.print(f"{result.rows_in:,} rows in, {result.rows_out:,} out, "
                  f"{result.rows_dropped:,} dropped, {result.rows_changed:,} repaired")
    for f in result.files:
        console.print(f"  {f.rows_in:,} -> {f.rows_out:,}  ({f.mapping})  {w(f.output)}")
    if result.dropped:
        reasons = ", ".join(f"{w(k)} {v}" for k, v in result.drop_reasons.items())
        console.print(f"[bold]dropped[/] ({reasons}); the manifest lists every one: "
                      f"{w(result.manifest)}")
        for file, rows in _by_file_rows(result.dropped):
            console.print(f"  {w(file)}")
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
                      f"{w(s.path)}")
    if result.output:
        console.print(f"output      {w(result.output)}")
        console.print(f"manifest    {w(result.manifest)}")
    _duplicates(console, result.duplicate_count, result.duplicates_dropped,
                result.duplicates)
    _replay(console, result.replay)
    console.print(f"hold-out    {result.holdout.rows:,} rows, never merged: "
                  f"{w(result.holdout.path)}")
    for note in result.notes:
        prose(console, f"note: {note}")


def _duplicates(console: Console, count: int, dropped: bool, rows: list) -> None:
    if not count:
        console.print("duplicates  none")
        return
    console.print(f"duplicates  {count:,} ({'dropped' if dropped else 'kept'})")
    for d in rows[:SHOWN]:
        console.print(f"  {w(d.path)}:{d.line}")
        console.print(f"    same as {w(d.duplicate_of.path)}:{d.duplicate_of.line}")
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
    console.print(f"dataset     {w(result.path)}")
    console.print(f"model       {w(result.model)}, chat template {w(result.chat_template)}, "
                  f"max_length {result.max_length:,}")
    if result.truncated_rows:
        console.print(f"[yellow]truncated[/]   {result.truncated_rows:,} row(s) longer than "
                      f"{result.max_length:,} tokens lose their end (the answer):")
        for t in result.truncated[:SHOWN]:
            console.print(f"  {w(t.path)}:{t.line}  {t.tokens:,} tokens")
        _more(console, result.truncated_rows, min(len(result.truncated), SHOWN))
    else:
        console.print("truncated   none")
    pad = result.padding
    console.print(f"padding     at batch size {pad.batch_size}: {pad.random_batches:.1%} in "
                  f"random batches, {pad.length_grouped:.1%} grouped by length")
    console.print("parts")
    for part in result.parts:
        console.print(f"  {part.selected_rows:,} of {part.rows:,} rows"
                      + (" (cached)" if part.cached else "") + f"  {w(part.path)}")
    _duplicates(console, result.duplicate_count, result.duplicates_dropped, [])
    _replay(console, result.replay)
    for note in result.notes:
        prose(console, f"note: {note}")


# --- drafts and the approval screen ------------------------------------------------------

def render_draft(console: Console, draft, view: View = View()) -> None:
    if draft.kind == "inspect":
        return render_inspect_draft(console, draft, view)
    cfg, est = draft.job_config, draft.estimate
    hp = cfg["hyperparameters"]
    console.print(f"[bold]{w(draft.draft_id)}[/]  step {draft.step} ({w(draft.batch)}), "
                  f"{w(cfg['mode'])} fine-tune on [bold]{w(draft.backend)}[/]")
    console.print(f"digest      {w(draft.digest)}")
    console.print(f"model       {w(cfg['base_model'])}")
    console.print("resume from " + (w(cfg["resume_from"]) if cfg["resume_from"]
                                    else "nothing (a fresh start from the model)"))
    console.print(f"training    lr {hp['learning_rate']:g}, {hp['num_train_epochs']:g} epochs, "
                  f"batch {hp['per_device_train_batch_size']}x"
                  f"{hp['gradient_accumulation_steps']}, max_length {hp['max_length']}, "
                  f"precision {w(hp['precision'])}" + _precision_note(draft, hp["precision"]))
    if cfg.get("lora"):
        console.print("lora        " + ", ".join(f"{w(k)} {w(v)}"
                                                for k, v in cfg["lora"].items()))
    _draft_files(console, draft)
    if getattr(draft, "sources", None):
        console.print("trains on")
        for use in draft.sources:
            console.print(f"  {use.trained:,} of {use.rows:,} rows  {w(use.part)}: "
                          f"{w(use.why)}")
    lengths = getattr(draft, "lengths", None)
    if lengths is not None and lengths.overlong:
        prose(console, f"lengths: {lengths.overlong:,} row(s) over max_length "
                       f"{lengths.max_length:,} (the longest {lengths.longest:,} tokens), "
                       f"handled per data.overlong ({lengths.policy})")
    console.print(f"estimate    {est.total_tokens:,} tokens, {_minutes(est.minutes)}, "
                  f"[bold]${est.usd:.2f}[/] on {w(est.flavor)}"
                  + (f" ({est.processes} GPUs, one process each)"
                     if getattr(est, "processes", 1) > 1 else "")
                  + f"; suggested timeout {w(est.suggested_timeout)}")
    if getattr(est, "eval_rows", 0):  # counted in the estimate above
        console.print(f"evaluation  ~{_minutes(est.eval_minutes)} of it: {est.eval_rows:,} "
                      f"rows x 2 versions, <= {est.eval_max_new_tokens:,} new tokens")
    _draft_warnings_and_approval(console, draft, view)


def _precision_note(draft, precision: str) -> str:
    from tunestep.tools.estimate import expected_precision

    if draft.backend == "local":
        if precision == "auto":
            return " (bf16 where the GPU has it, else fp16; fp32 without CUDA)"
        if precision in ("fp16", "bf16"):
            return " (without a CUDA GPU the job falls back to fp32 and logs it)"
        return ""
    flavor = draft.submission.flavor if draft.submission else draft.request.flavor
    resolved = expected_precision(precision, flavor)
    if resolved and resolved != precision:
        return f" (trains in {resolved} on {w(flavor)})"
    return ""


def _minutes(minutes: float) -> str:
    return duration(minutes * 60) if minutes < 600 else f"about {minutes / 60:.0f} h"


def _draft_files(console: Console, draft) -> None:
    # Every path whole, on its own line: these are what the signature covers.
    console.print("files (the signature covers each sha256)")
    for f in draft.files:
        rows = "" if f.rows is None else f"  {f.rows:,} rows"
        head = f"  {f.role:<9} {f.sha256[:16]}{rows}"
        if len(head) + 2 + len(f.path) <= console.width:
            console.print(f"{head}  {w(f.path)}")
        else:  # the path alone on the next line, so it is never broken
            console.print(head)
            console.print(f"    {w(f.path)}")


def _draft_warnings_and_approval(console: Console, draft, view: View) -> None:
    for warning in draft.warnings:
        prose(console, f"warning: {warning}", style="yellow")
    if not view.approving:  # on the approval screen the operator is running this already
        console.print("approve it in your own terminal:")
        console.print(f"  {w(draft.approve_command)}")


def render_inspect_draft(console: Console, draft, view: View = View()) -> None:
    est, sub = draft.estimate, draft.submission
    console.print(f"[bold]{w(draft.draft_id)}[/]  remote inspection (step {draft.step}) on "
                  f"[bold]{w(draft.backend)}[/]")
    console.print(f"inspects    {w(draft.job_config['path'])}")
    console.print(f"digest      {w(draft.digest)}")
    _draft_files(console, draft)
    console.print(f"estimate    {est.rows:,} rows, {_minutes(est.minutes)}, "
                  f"[bold]${est.usd:.4f}[/] on {w(est.flavor)} (at most ${est.max_usd:.4f}); "
                  f"timeout {duration(sub.timeout_seconds)}")
    _draft_warnings_and_approval(console, draft, view)


# --- jobs --------------------------------------------------------------------------------

def render_handle(console: Console, handle, view: View) -> None:
    console.print(f"{w(handle.job_id)}  [{_status_style(handle.status)}]{w(handle.status)}[/]"
                  f"  ({w(handle.backend)}, draft {w(handle.draft_id)})")
    for label, value in (("url", handle.url), ("log", handle.log_path),
                         ("pid", handle.pid)):
        if value:
            console.print(f"{label:<11} {w(value)}")
    next_steps(console, handle, view)


def render_job(console: Console, status, view: View) -> None:
    console.print(f"{w(status.job_id)}  [{_status_style(status.status)}]{w(status.status)}[/]"
                  f"  ({w(status.backend)}, draft {w(status.draft_id)})")
    if status.url:
        console.print(f"url         {w(status.url)}")
    if status.log_path:
        console.print(f"log         {w(status.log_path)}")
    result = status.result or {}
    if "model_path" in result:
        console.print(f"model       {w(result['model_path'])}")
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
    if getattr(status, "ended", None):
        prose(console, f"ended       {status.ended}")
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
        console.print(f"  to   {w(synced.path)}")
    elif status.model_sync_error:
        console.print("[bold red]model sync failed[/] (the job's outcome stands)")
        prose(console, status.model_sync_error, indent=2)


def render_job_list(console: Console, jobs, view: View) -> None:
    if not jobs.jobs:
        console.print("no jobs yet")
        return
    table = Table("job", "status", "backend", "draft", title="jobs", title_justify="left",
                  box=None, pad_edge=False)
    for column in table.columns:
        column.overflow = "fold"
    for j in jobs.jobs:
        table.add_row(w(j.job_id), f"[{_status_style(j.status)}]{w(j.status)}[/]",
                      w(j.backend), w(j.draft_id))
    console.print(table, soft_wrap=False)


# --- promotion ---------------------------------------------------------------------------

def render_promotion_request(console: Console, request, view: View) -> None:
    console.print(f"[bold]{w(request.request_id)}[/]  make [bold]{w(request.version)}[/] the "
                  f"latest (now {w(request.latest or 'none')})")
    console.print(f"digest      {w(request.digest)}")
    console.print(f"version     {request.files} files, identity {w(request.identity[:16])}")
    console.print(f"  {w(request.version_path)}")
    if request.step is not None:
        gate = "-" if request.gate_promoted is None else (
            "passed" if request.gate_promoted else "held it back")
        prose(console, f"step        {request.step} ({request.batch}); the gate {gate}: "
                       f"{request.gate_reason or '-'}")
    if not view.approving:
        next_steps(console, request, view)


def render_promotion_result(console: Console, result, view: View) -> None:
    console.print(f"[bold]latest[/] is now [bold]{w(result.latest)}[/] (was "
                  f"{w(result.previous or 'none')}) in {w(result.store)}")
    console.print(f"signed by   {w(result.operator)}, key {w(result.kid)}")


def render_promotion_outcome(console: Console, outcome, view: View) -> None:
    if outcome.result is not None:
        render_promotion_result(console, outcome.result, view)
    else:
        render_promotion_request(console, outcome.request, view)


def register_domain_renderers() -> None:
    """Bind the views above to their result types (imported lazily: heavy modules)."""
    from tunestep.tools.draft import JobDraft
    from tunestep.tools.inspector import InspectionReport
    from tunestep.tools.job_control import JobList, JobStatus
    from tunestep.tools.mapping import MappingResult
    from tunestep.tools.merge import MergeResult
    from tunestep.tools.preprocess import PreprocessResult
    from tunestep.tools.promotion import PromotionOutcome, PromotionRequest, PromotionResult
    from tunestep.tools.submit import JobHandle

    _RENDERERS.update({InspectionReport: render_inspection, JobDraft: render_draft,
                       JobStatus: render_job, JobList: render_job_list,
                       MappingResult: render_mapping, MergeResult: render_merge,
                       PreprocessResult: render_preprocess, JobHandle: render_handle,
                       PromotionRequest: render_promotion_request,
                       PromotionResult: render_promotion_result,
                       PromotionOutcome: render_promotion_outcome})
