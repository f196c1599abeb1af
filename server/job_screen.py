"""The job screens: a submitted job's handle, a job's status (its result, the gate and
the model brought home from the Hub), and the list of recent jobs."""

from __future__ import annotations

from rich.console import Console

from tunestep.server.next_steps import next_steps
from tunestep.server.screen import View, duration, prose, token, w
from tunestep.server.screen_parts import _status_style


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
