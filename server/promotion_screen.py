"""The promotion screens: a request to move ``latest`` (what the operator signs, and what
is shown but not signed), and what a promotion did."""

from __future__ import annotations

from rich.console import Console

from tunestep.server.next_steps import next_steps
from tunestep.server.screen import Screen, View, prose, token, w


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
