"""Next steps as the `tunestep` command a person types.

A result's next steps are data (``tools/core/next_step.py``); here each becomes the CLI
command, never the MCP call the assistant makes: ``CLI_COMMANDS`` says which command
(and which of its arguments are positional) stands for which MCP tool. A tool without a
row there is said in words.
"""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console

from tunestep.server.screen import Screen, View, prose, screen, w


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
