"""The job commands: submit an approved draft, then status (and --wait), logs, cancel,
and sync (bring models pushed by remote steps into the store).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tunestep.server.cli_common import (
    EXIT_OK,
    EXIT_PROBLEM,
    _fingerprints,
    _show,
    _trusted_key_paths,
    _workspace,
)
from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.runs.submit import submit_job
    from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace, pin_trusted_keys

    ws = _workspace(args)
    token = args.token if args.token != "-" else sys.stdin.readline().strip()
    paths = _trusted_key_paths(args) or _default_public_key(args)
    ensure_keys_outside_workspace(paths, ws.root)
    trusted = pin_trusted_keys(paths, _fingerprints(args))
    try:
        handle = submit_job(ws, args.draft_id, token, trusted)
    except TunestepError as exc:
        if exc.code != "approval_untrusted_key":
            raise
        shown = ", ".join(str(p) for p in paths)
        raise TunestepError(exc.code, f"the token was signed by a key this command does not "
                            f"trust (it trusts {shown}): give the signer's public key with "
                            "--operator-key PUBKEY or TUNESTEP_OPERATOR_KEYS") from None
    _show(args, console, handle)
    return EXIT_OK


def _default_public_key(args: argparse.Namespace) -> list:
    """Without --operator-key or TUNESTEP_OPERATOR_KEYS: the public half of the key
    `tunestep approve` would sign with (the default made by `operator init`, or the only
    one), found the same way, else a refusal that names the flag and the variable."""
    from tunestep.tools.drafts.operator import find_operator_key

    try:
        key = find_operator_key(None, None, args.config_dir)
    except TunestepError as exc:
        raise TunestepError("approval_untrusted_key", "no operator public key to check the "
                            "token with: give it with --operator-key PUBKEY or "
                            f"TUNESTEP_OPERATOR_KEYS=PUBKEY ({exc.message})") from None
    public = key.path.with_name(key.path.name.replace(".key.pem", ".pub.pem"))
    if not public.is_file():
        raise TunestepError("approval_untrusted_key", f"the default operator key has no public "
                            f"half beside it ({public}): give it with --operator-key PUBKEY "
                            "or TUNESTEP_OPERATOR_KEYS=PUBKEY")
    return [public.resolve()]


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.runs.job_control import job_status, list_jobs, wait_for_job

    ws = _workspace(args)
    if args.job_id is None:
        _show(args, console, list_jobs(ws))
        return EXIT_OK
    if args.wait:
        try:
            status = wait_for_job(ws, args.job_id, timeout=args.wait,
                                  on_poll=None if args.json else _progress_lines(ws))
        except KeyboardInterrupt:
            return _stopped_waiting(args, ws, args.job_id)
    else:
        status = job_status(ws, args.job_id)
    _show(args, console, status)
    return EXIT_OK if status.status != "failed" else EXIT_PROBLEM


def _progress_lines(ws):
    """While `status --wait` waits: a line on stderr whenever the job's stage or epoch
    changes (stage, epoch, elapsed; tools/runs/job_progress.py), and one a minute otherwise."""
    import time

    last = {"said": None, "at": 0.0}

    def on_poll(status) -> None:
        if status.terminal:
            return
        progress = getattr(status, "progress", None)
        parts = [status.status]
        if progress is not None and progress.stage:
            parts[0] += f": {progress.stage}"
        if progress is not None and progress.epoch is not None:
            parts.append(f"epoch {progress.epoch:.3g}" + (f"/{progress.epochs:g}"
                                                          if progress.epochs else ""))
        key = ", ".join(parts)
        if status.started_at:
            minutes, seconds = divmod(int(time.time() - status.started_at), 60)
            parts.append(f"{minutes}:{seconds:02d} elapsed")
        if key != last["said"] or time.monotonic() - last["at"] >= 60:
            print(f"  {', '.join(parts)}", file=sys.stderr, flush=True)
            last.update(said=key, at=time.monotonic())

    return on_poll


def _stopped_waiting(args: argparse.Namespace, ws, job_id: str) -> int:
    """Ctrl-C while waiting ends the wait, not the job: say so, and how to stop it."""
    from tunestep.server.next_steps import cli_command
    from tunestep.server.screen import View
    from tunestep.tools.core.next_step import NextAction

    view = View(workspace=getattr(args, "hint_workspace", None))
    cancel = cli_command(NextAction(tool="cancel_job", args={"job_id": job_id}), view)
    again = cli_command(NextAction(tool="job_status", args={"job_id": job_id}), view)
    print(f"\nstopped waiting; {job_id} keeps running.\n  to stop it:   {cancel}\n"
          f"  to wait again: {again} --wait {args.wait:g}", file=sys.stderr)
    return 130


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.runs.job_control import job_logs

    logs = job_logs(_workspace(args), args.job_id, args.tail, raw=args.raw)
    if args.json:
        _show(args, console, logs)
    else:
        from tunestep.server.render import visible_text

        print("\n".join(visible_text(line) for line in logs.lines))
        if logs.left_out:
            print(f"({logs.left_out} line(s) of progress bars and library output left out; "
                  "--raw shows every line)", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.runs.job_control import cancel_job

    _show(args, console, cancel_job(_workspace(args), args.job_id))
    return EXIT_OK


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.lineage.model_sync import sync_model

    _show(args, console, sync_model(_workspace(args), args.version))
    return EXIT_OK
