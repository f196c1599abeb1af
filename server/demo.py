"""`tunestep demo`: the real path on a sample workspace and a tiny local model.

Plays both parts, labelled: the assistant (the MCP tools' domain functions) and the
operator (a demo key, `tunestep approve`). Two steps: the first batch as it comes, the
second after mapping it from ShareGPT, resuming from the first step's checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tunestep.tools.core.errors import TunestepError

MARKER = ".tunestep-demo"
DEMO_PASSPHRASE = b"demo-only-passphrase"


def run_demo(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.screen import screen
    from tunestep.tools.signing.trusted_keys import load_trusted_keys

    console = screen(console)  # every line wrapped between words at the width
    fresh = getattr(args, "fresh", None)
    base = _fresh_folder(Path(fresh or args.path))
    console.rule("[bold]tunestep demo" + (" --fresh" if fresh else ""))
    ws, key = _sample(console, base)
    if fresh:  # a workspace for a first step by hand: every batch untrained
        _what_next(console, base, ws.root, key)
        return 0
    trusted = load_trusted_keys([key.public_key_path])

    first = _step(console, ws, trusted, key.private_key_path, "batch_100_01", number=1)
    second = _step(console, ws, trusted, key.private_key_path, "batch_100_02", number=2)
    ok = first == "succeeded" and second == "succeeded"
    console.rule("[bold]done" if ok else "[bold red]a step failed")
    plan_dir = ws.root / ".specs"
    console.print(f"metrics  {ws.root / 'logs'}/metrics_step_*.csv\n"
                  f"samples  {ws.root / 'logs'}/samples_step_*.md\n"
                  f"plots    {plan_dir / 'plots'}/*.png\n"
                  f"ledger   {ws.state_dir / 'state.sqlite'}\n"
                  f"model    {ws.root / 'models/qwen3_webdev'} -> latest")
    _what_next(console, base, ws.root, key)
    return 0 if ok else 1


def _sample(console: Console, base: Path):
    """The sample workspace, its tiny model store and the demo key, in ``base``."""
    from transformers.utils import logging as hf_logging

    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.signing.operator_keys import create_operator_key

    hf_logging.disable_progress_bar()  # "Writing model shards" bars: noise in the demo
    console.print(f"sample workspace, tiny Qwen3 model store and a DEMO operator key in {base}")
    build_sample_workspace(base / "workspace", store=base / "model-store", with_model=True)
    ws = open_workspace(base / "workspace")
    key = create_operator_key("demo-operator", DEMO_PASSPHRASE, base / "operator-DEMO-ONLY")
    console.print(f"[yellow]demo operator key[/] {key.private_key_path} (passphrase in the "
                  "source: for the demo only)")
    return ws, key


def tunestep_command() -> str:
    """How to run this `tunestep` from a new shell: the bare name when the shell finds
    this very program, else its absolute path (make runs .venv/bin/tunestep, which no
    new shell finds unless the venv is activated)."""
    here = Path(sys.executable).parent / "tunestep"
    found = shutil.which("tunestep")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "tunestep"
    if here.exists():
        return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m tunestep.server.cli"


def next_commands(base: Path, workspace: Path, key) -> list[tuple[str, str]]:
    """(what, command) for the first step by hand on the demo workspace; each command
    runs as printed in a new shell (DRAFT_ID, TOKEN and JOB_ID: what the one before
    printed)."""
    ts = tunestep_command()
    ws = f"--workspace {shlex.quote(str(workspace))}"
    public = shlex.quote(str(key.public_key_path))
    private = shlex.quote(str(key.private_key_path))
    secret = f"TUNESTEP_OPERATOR_PASSPHRASE={DEMO_PASSPHRASE.decode()}"
    return [
        ("what the next step needs", f"{ts} check {ws}"),
        ("draft it (prints DRAFT_ID)", f"{ts} draft {ws}"),
        ("sign it with the demo key (prints TOKEN)",
         f"{secret} {ts} approve DRAFT_ID {ws} --key {private}"),
        ("start it (prints JOB_ID)",
         f"{ts} submit DRAFT_ID TOKEN {ws} --operator-key {public}"),
        ("watch it", f"{ts} status JOB_ID {ws} --wait 900"),
        ("connect an MCP client (Claude Code; other clients: README)",
         f"claude mcp add tunestep -- {ts} serve {ws} --operator-key {public}"),
        ("a fresh sample workspace, every batch untrained", f"{ts} demo --fresh DIR"),
    ]


def _what_next(console: Console, base: Path, workspace: Path, key) -> None:
    from tunestep.server.screen import screen, token

    out = screen(console)
    console.rule("[bold]what next")
    out.print(f"workspace  {token(workspace)}")
    if tunestep_command() != "tunestep":
        out.print("(put `tunestep` on your PATH with `source .venv/bin/activate` in the "
                  "repository, or type the path as below)")
    for what, line in next_commands(base, workspace, key):
        out.print(f"[bold]{what}[/]")
        out.command(line)  # long ones go on after a shell `\`: they still paste and run


def _fresh_folder(path: Path) -> Path:
    """The demo folder, emptied if an earlier demo made it; anything else is left alone."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise TunestepError("demo_folder_in_use", "the folder exists and was not made by "
                                "the demo; choose another --path", path=str(path))
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `tunestep demo`; safe to delete\n")
    return path


def _step(console: Console, ws, trusted, key_path: Path, batch: str, number: int) -> str:
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
    from tunestep.tools.data.preflight import check_batch
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.drafts.operator import review_draft, sign_draft
    from tunestep.tools.inspector import run_inspector
    from tunestep.tools.runs.submit import submit_job

    console.rule(f"[bold]step {number}: {batch}")
    console.print("[cyan]assistant[/] check_batch")
    report = check_batch(ws, batch)
    console.print(f"  ready={report.ready}, {sum(f.rows or 0 for f in report.files)} rows, "
                  f"hold-out {'unchanged' if not report.validation.changed else 'CHANGED'}, "
                  f"checkpoint {Path(report.checkpoint.latest or '-').name}")
    folder = report.batch_path
    console.print(f"[cyan]assistant[/] run_inspector {folder}")
    inspection = run_inspector(ws, folder)
    console.print(f"  {inspection.summary}")
    if inspection.status == "NEEDS_MAPPING":
        suggestion = suggest_mapping(ws, folder)
        console.print(f"[cyan]assistant[/] apply_mapping (suggested: "
                      f"{suggestion.mapping.source_format if suggestion.mapping else '-'})")
        mapped = apply_mapping(ws, folder, suggestion.mapping)
        console.print(f"  {mapped.rows_out}/{mapped.rows_in} rows -> {mapped.output}")
        inspection = run_inspector(ws, mapped.output)
        console.print(f"[cyan]assistant[/] run_inspector {mapped.output}\n  "
                      f"{inspection.summary}")
    console.print("[cyan]assistant[/] draft_job")
    draft = draft_job(ws, DraftRequest(batch=batch))
    est = draft.estimate
    resume = draft.job_config["resume_from"]
    console.print(f"  {draft.draft_id}: {draft.job_config['mode']} fine-tune, "
                  f"lr {draft.job_config['hyperparameters']['learning_rate']:g}, "
                  f"resume from {Path(resume).name if resume else 'the base model'}, "
                  f"~{est.minutes:g} min, ${est.usd:.2f}")
    console.print(f"  run plan: {ws.root / draft.run_plan}")
    shown = draft.approve_command.replace("tunestep", tunestep_command(), 1)
    console.print(f"[magenta]operator[/] {shown} --yes")
    reviewed = review_draft(ws, draft.draft_id)
    grant = sign_draft(ws, reviewed, name="demo-operator", key_path=key_path,
                       passphrase=DEMO_PASSPHRASE, ttl="15m")
    console.print(f"  token {grant.token[:24]}… (pasted to the assistant)")
    console.print("[cyan]assistant[/] submit_job")
    handle = submit_job(ws, draft.draft_id, grant.token, trusted)
    console.print(f"  {handle.job_id} started (pid {handle.pid})")
    status = _wait(console, ws, handle.job_id)
    console.print(f"  {handle.job_id}: [bold]{status.status}[/]")
    if status.status != "succeeded":
        from tunestep.tools.runs.job_control import job_logs

        console.print("\n".join(job_logs(ws, handle.job_id, 30).lines))
        return status.status
    result = status.result
    before, after = result.get("metrics_before", {}), result.get("metrics_after", {})
    console.print(f"  eval loss {_num(result.get('eval_loss_before'))} -> "
                  f"{_num(result.get('final_eval_loss'))}, grade exact "
                  f"{_num(before.get('grade_exact'))} -> {_num(after.get('grade_exact'))}, "
                  f"model {result.get('model_path')}")
    # The gate's one sentence: the metric against latest with its interval (issue 18).
    console.print(f"  gate: {'promoted' if result.get('promoted') else 'held back'}: "
                  f"{(result.get('promotion') or {}).get('reason', '-')}", markup=False)
    return status.status


def _num(value) -> str:
    """A metric as a person reads it: 4 significant digits, '-' when there is none."""
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _wait(console: Console, ws, job_id: str):
    from tunestep.tools.runs.job_control import wait_for_job

    columns = [TextColumn("  training"), BarColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=getattr(console, "console", console),
                  transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def on_poll(status) -> None:
            bar.update(task, description=status.status)

        return wait_for_job(ws, job_id, timeout=900, poll=1.0, on_poll=on_poll)
