"""The data screens: preflight (`tunestep check`), the inspector's report, a mapping, and
the step's data (merge, preprocess)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from tunestep.server.next_steps import next_steps
from tunestep.server.screen import View, duration, prose, token, w
from tunestep.server.screen_parts import SEVERITY_STYLE, SHOWN, _more, _status_style, problems

if TYPE_CHECKING:  # the result types load with the domain, when render binds the screens
    from tunestep.tools.data.preflight import PreflightReport


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
    elif v.present and v.pin_note and not v.pin_unverified:  # first sight: confirmed by
        console.print(f"            {v.pin_note}", hang=12)  # a signed draft, or not yet
    c = report.checkpoint
    where = f" -> {token(c.target)}" if c.is_link else ""
    latest = f"latest {w(c.latest)} ({c.kind})" if c.latest else "none"
    console.print(f"checkpoint  {latest}: {token(c.link)}{where}")
    console.print("HF token    " + (f"available ({w(report.hf_token_source)})"
                                    if report.hf_token_available else "not found"))
    problems(console, report.problems)
    next_steps(console, report, view)


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
