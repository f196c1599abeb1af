"""The hold-out re-pin on a terminal: the review the operator signs, and the result.

What is signed (``tools/data/holdout_repin.RepinSubject``): the hold-out path, the pinned sha256
it replaces and the sha256 of the file now, both in full (one word each, never cut), and
the rows added and removed with a few of each. Row previews are workspace text: shown
through ``safe_text`` like every other string the assistant may have written. 80 columns.
"""

from __future__ import annotations

from tunestep.server.screen import Screen, View, prose, token, w


def _rows_line(rows) -> str:
    if not rows.compared:
        old = "?" if rows.old_rows is None else f"{rows.old_rows:,}"
        return f"{old} -> {rows.new_rows:,} (not compared row by row)"
    return (f"{rows.old_rows:,} -> {rows.new_rows:,}: {rows.added:,} added, "
            f"{rows.removed:,} removed, {rows.unchanged:,} unchanged")


def _examples(console: Screen, sign: str, label: str, shown: list, total: int | None) -> None:
    if not shown:
        return
    console.print(f"{label} (normalized content; row number, content digest)")
    for ref in shown:
        console.print(f"  {sign} row {ref.row:<6} {token(ref.digest)}")
        prose(console, w(ref.preview), indent=6, style="dim")
    if total is not None and total > len(shown):
        console.print(f"  ... and {total - len(shown):,} more")


def render_repin_request(console: Screen, request, view: View) -> None:
    s = request.subject
    console.print(f"[bold]{token(request.request_id)}[/]  re-pin the hold-out set")
    console.print(f"digest      {token(request.digest)}")
    if view.bound_to:
        console.print(f"workspace   {token(view.bound_to)} (the token is bound to it)")
    console.print("[bold]signed[/] (every later gate measures exactly the new bytes)")
    console.print(f"hold-out    {token(s.path)}")
    console.print(f"old sha256  {token(s.old_sha256)}")
    prose(console, f"            the pin in force ({w(request.old_pinned_by)})")
    console.print(f"new sha256  {token(s.new_sha256)}")
    console.print(f"            the file as it is now, {s.new_size:,} bytes")
    console.print(f"rows        {_rows_line(s.rows)}", hang=12)
    if s.rows.note:
        prose(console, f"            {w(s.rows.note)}", style="yellow")
    _examples(console, "+", "added", s.rows.added_rows, s.rows.added)
    _examples(console, "-", "removed", s.rows.removed_rows, s.rows.removed)
    if not view.approving:
        from tunestep.server.next_steps import next_steps

        next_steps(console, request, view)
        return
    console.print("")
    console.print("[bold]You are signing[/]")
    console.print(f"  request     {token(request.request_id)}")
    console.print(f"  digest      {token(request.digest)}")
    change = ("" if not s.rows.compared else
              f", +{s.rows.added:,} -{s.rows.removed:,} rows")
    console.print(f"  hold-out    {token(s.old_sha256[:12])} -> [bold]"
                  f"{token(s.new_sha256[:12])}[/]{change}", hang=14)
    prose(console, "  every later draft and gate measures the new set; the old pin no "
                   "longer applies")
    if view.bound_to:
        console.print(f"  workspace   {token(view.bound_to)}", hang=14)


def render_repin_result(console: Screen, result, view: View) -> None:
    console.print(f"[bold]hold-out[/] re-pinned: {token(result.path)}")
    console.print(f"old sha256  {token(result.old_sha256)}")
    console.print(f"new sha256  {token(result.new_sha256)}")
    console.print(f"signed by   {w(result.operator)}, key {token(result.kid)} "
                  f"({token(result.request_id)})", hang=12)


def render_repin_outcome(console: Screen, outcome, view: View) -> None:
    if outcome.result is not None:
        render_repin_result(console, outcome.result, view)
    else:
        render_repin_request(console, outcome.request, view)


def _renderers() -> dict:
    from tunestep.tools.data.holdout_repin import RepinOutcome, RepinRequest, RepinResult

    return {RepinRequest: render_repin_request, RepinResult: render_repin_result,
            RepinOutcome: render_repin_outcome}


REPIN_RENDERERS = _renderers()
