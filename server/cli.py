"""The `tunestep` command: the same domain functions as the MCP tools, for people.

Exit codes: 0 success (for `check`: ready), 1 a problem the user can fix (the message
names its code, file and line), 2 usage errors. No traceback reaches the user; an
unexpected failure prints one line and asks for a bug report.

This module is the command line itself: the argument parser, the command table
(``COMMANDS``) and ``main`` (the console script). The commands live by subject:

  cli_data.py      check, inspect, map, merge, preprocess
  cli_approval.py  draft, approve, promote, repin (what the operator signs)
  cli_jobs.py      submit, status, logs, cancel, sync
  cli_operator.py  serve, operator init, demo (the operator's own setup)
  cli_common.py    what the commands share: the workspace, printing, keys, exit codes
  cli_prompts.py   what a command asks at the terminal: passphrases, yes/no

A new command: its function in the module of its subject, its arguments in
``build_parser`` below, its row in ``COMMANDS``; if an MCP tool's next step should be
printed as this command, its row in ``CLI_COMMANDS`` (server/next_steps.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tunestep.server import cli_approval, cli_data, cli_jobs, cli_operator
from tunestep.server.cli_common import EXIT_PROBLEM, Command
from tunestep.tools.core.errors import TunestepError

# Command name (as typed) -> its function; serve is main's special case (no console).
COMMANDS: dict[str, Command] = {
    "serve": cli_operator.cmd_serve,
    "check": cli_data.cmd_check,
    "inspect": cli_data.cmd_inspect,
    "map": cli_data.cmd_map,
    "merge": cli_data.cmd_merge,
    "preprocess": cli_data.cmd_preprocess,
    "draft": cli_approval.cmd_draft,
    "operator": cli_operator.cmd_operator,
    "approve": cli_approval.cmd_approve,
    "promote": cli_approval.cmd_promote,
    "repin": cli_approval.cmd_repin,
    "submit": cli_jobs.cmd_submit,
    "status": cli_jobs.cmd_status,
    "logs": cli_jobs.cmd_logs,
    "cancel": cli_jobs.cmd_cancel,
    "sync": cli_jobs.cmd_sync,
    "demo": cli_operator.cmd_demo,
}


WORKSPACE_HELP = ("the workspace root (default: $TUNESTEP_WORKSPACE, else the current folder); "
                  "a workspace holds .specs/training/plan.md, .tunestep/ or "
                  "datasets/incremental/")
BATCH_HELP = ("a batch folder name under datasets/incremental/, e.g. batch_100_03 "
              "(default: the next untrained batch)")


def _signed_act_arguments(p: argparse.ArgumentParser, request_prefix: str) -> None:
    """What promote and repin share: sign here, or apply a token from `tunestep approve`."""
    p.add_argument("--token", help=f"apply a token from `tunestep approve {request_prefix}-...` "
                   "instead of signing here (- reads it from stdin)")
    _signing_key_arguments(p)
    p.add_argument("--ttl", default="10m", help="how long the token stays valid (default 10m)")
    p.add_argument("--yes", action="store_true", help="skip the confirmation question")
    p.add_argument("--operator-key", action="append", type=Path, metavar="PUBKEY",
                   help="trusted operator public key (repeatable; default: the signing "
                   "key's own public half); also $TUNESTEP_OPERATOR_KEYS")


def _signing_key_arguments(p: argparse.ArgumentParser) -> None:
    """Which operator key signs: the same three options for approve, promote, repin."""
    p.add_argument("--name", help="which operator key signs (default: the only key, or the "
                   "one operator init made the default)")
    p.add_argument("--key", type=Path, metavar="PATH",
                   help="a private key file instead of one from the key folder")
    p.add_argument("--config-dir", type=Path, metavar="DIR",
                   help="the key folder (default $XDG_CONFIG_HOME/tunestep/operator)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunestep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--workspace", "-w", metavar="DIR", help=WORKSPACE_HELP)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true",
                         help="print the result as JSON (the model the MCP tool returns)")
    common = [where, as_json]

    parser = argparse.ArgumentParser(
        prog="tunestep", description="Prepare incremental fine-tuning steps; the operator "
        "alone approves a job.")
    parser.add_argument("--version", action="version", version=f"tunestep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[where], help="run the MCP server",
                       description="Run the MCP server for one workspace (stdio by default).")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (default) or streamable HTTP")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding to an address other than loopback")
    p.add_argument("--operator-key", action="append", metavar="PUBKEY",
                   help="trusted operator public key: a file, or the PEM text inline "
                   "(repeatable); also $TUNESTEP_OPERATOR_KEYS")
    p.add_argument("--operator-key-fingerprint", action="append", metavar="SHA256",
                   help="refuse to start unless every trusted key has one of these "
                   "fingerprints (sha256:..., printed by `operator init`); also "
                   "$TUNESTEP_OPERATOR_KEY_FINGERPRINTS")

    p = sub.add_parser("check", parents=common, help="preflight the next batch")
    p.add_argument("batch", nargs="?", help=BATCH_HELP)
    p = sub.add_parser("inspect", parents=common, help="validate every row of a dataset")
    p.add_argument("path", help="a data file or folder inside the workspace (relative, or "
                   "absolute inside it), e.g. datasets/incremental/batch_100_03")
    p.add_argument("--tokens", action="store_true", help="count tokens with the plan's model")
    p.add_argument("--max-errors", type=int, default=100, metavar="N",
                   help="list at most N findings (all are counted; default 100)")

    p = sub.add_parser("map", parents=common, help="map a foreign format into *_mapped/")
    p.add_argument("source", help="the data file or folder to map, e.g. "
                   "datasets/incremental/batch_100_02")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--spec", metavar="FILE",
                     help="a MappingSpec JSON file (see .specs/inspector_rules.md)")
    how.add_argument("--suggested", action="store_true", help="the inspector's suggestion")

    p = sub.add_parser("merge", parents=common, help="assemble the step's training data")
    p.add_argument("batch", nargs="?", help=BATCH_HELP)
    p.add_argument("--strategy", choices=["list", "file"],
                   help="list the files (default from the plan) or write one merged file")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None,
                   help="drop exact duplicate rows (default from the plan)")

    p = sub.add_parser("preprocess", parents=common, help="tokenize the step's data")
    p.add_argument("batch", nargs="?", help=BATCH_HELP)
    p.add_argument("--max-length", type=int, metavar="TOKENS",
                   help="truncate rows to this many tokens (default: the plan's)")

    p = sub.add_parser("draft", parents=common, help="draft the job for a batch")
    p.add_argument("batch", nargs="?", help=BATCH_HELP)
    p.add_argument("--mode", choices=["full", "lora"], help="default: the plan's mode")
    p.add_argument("--backend", choices=["local", "hf-jobs"], default="local",
                   help="where the job runs (default local)")
    p.add_argument("--kind", choices=["train", "inspect"], default="train",
                   help="inspect: the inspector as an HF Job (needs --backend hf-jobs)")
    p.add_argument("--flavor", metavar="FLAVOR", help="hf-jobs hardware, e.g. a10g-large, "
                   "t4-medium (default: the plan's job.flavor)")
    p.add_argument("--timeout", metavar="DURATION", help="job timeout, e.g. 2h or 90m "
                   "(default: the plan's job.timeout)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyperparameter, e.g. learning_rate=1e-5 (repeatable)")

    p = sub.add_parser("operator", help="operator key management")
    op = p.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    p = op.add_parser("init", help="create the operator's Ed25519 key pair",
                      description="Create your key pair once; the private key is "
                      "passphrase-encrypted (at least 12 characters), mode 0600.")
    p.add_argument("--name", default="operator",
                   help="key name, also the operator name in approvals (default operator)")
    p.add_argument("--config-dir", type=Path, metavar="DIR",
                   help="where the keys go (default $XDG_CONFIG_HOME/tunestep/operator)")
    p.add_argument("--json", action="store_true", help="print where the keys went as JSON")

    p = sub.add_parser("approve", parents=common, help="review a stored draft and sign it")
    p.add_argument("draft_id", help="the draft to approve, e.g. draft-3f9a0c1d2e4b (from "
                   "tunestep draft or the assistant)")
    _signing_key_arguments(p)
    p.add_argument("--ttl", default="1h", help="how long the token stays valid (default 1h)")
    p.add_argument("--yes", action="store_true", help="skip the confirmation question")

    p = sub.add_parser("promote", parents=common, help="make a recorded model version the "
                       "latest (promote or roll back), signed by the operator")
    p.add_argument("version", help="a folder under the store's versions/, e.g. "
                   "0002_batch_100_02")
    _signed_act_arguments(p, "promote")

    p = sub.add_parser("repin", parents=common, help="pin the hold-out set as it is now "
                       "(every later gate measures it), signed by the operator")
    _signed_act_arguments(p, "repin")

    p = sub.add_parser("submit", parents=common, help="submit an approved draft")
    p.add_argument("draft_id", help="the approved draft, e.g. draft-3f9a0c1d2e4b")
    p.add_argument("token", help="the approval token, or - to read it from stdin")
    p.add_argument("--operator-key", action="append", metavar="PUBKEY",
                   help="trusted operator public key: a file, or the PEM text inline "
                   "(repeatable); also $TUNESTEP_OPERATOR_KEYS")
    p.add_argument("--operator-key-fingerprint", action="append", metavar="SHA256",
                   help="refuse unless every trusted key has one of these fingerprints; "
                   "also $TUNESTEP_OPERATOR_KEY_FINGERPRINTS")
    p.add_argument("--config-dir", type=Path, metavar="DIR",
                   help="without --operator-key: the key folder whose default key's public "
                   "half is trusted (default $XDG_CONFIG_HOME/tunestep/operator)")

    p = sub.add_parser("status", parents=common, help="a job's status, or the recent jobs")
    p.add_argument("job_id", nargs="?", help="the job, e.g. job-5b1c2d3e4f60 (default: list "
                   "the recent jobs)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the job to end")

    p = sub.add_parser("logs", parents=common, help="the tail of a job's log")
    p.add_argument("job_id", help="the job, e.g. job-5b1c2d3e4f60")
    p.add_argument("--tail", type=int, default=50, metavar="LINES",
                   help="how many of the last lines (1-5000, default 50)")
    p.add_argument("--raw", action="store_true", help="every line as the job wrote it "
                   "(default: the job's own log lines and its last error)")

    p = sub.add_parser("cancel", parents=common, help="cancel a running job")
    p.add_argument("job_id", help="the job, e.g. job-5b1c2d3e4f60")

    p = sub.add_parser("sync", parents=common, help="bring models pushed by remote steps "
                       "into the model store")
    p.add_argument("--version", metavar="VERSION", help="one step: NNNN_<batch>, a batch name "
                   "or a step number (default: every pushed step not in the store yet)")

    p = sub.add_parser("demo", help="run the whole path on a sample workspace and tiny model")
    p.add_argument("--path", default=".demo", help="folder for the demo workspace and store")
    p.add_argument("--fresh", metavar="DIR", help="only make a sample workspace (every batch "
                   "untrained), tiny model and demo key in DIR, for a first step by hand")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":  # stdout is the protocol there: no console, no rich
            return cli_operator.cmd_serve(args, None)
        from tunestep.server.render import make_console

        return COMMANDS[args.command](args, make_console())
    except TunestepError as exc:
        if getattr(args, "json", False):  # --json: a refusal is JSON on stdout too
            import json

            print(json.dumps({"error": {"code": exc.code, "message": exc.message,
                                        "path": exc.path, "line": exc.line,
                                        "next": exc.hint.mcp() if exc.hint else None}},
                             indent=2))
        _error("error", exc.message, code=exc.code,
               where=f"{exc.path}{f':{exc.line}' if exc.line else ''}" if exc.path else None)
        if exc.hint is not None:  # in CLI syntax, not the MCP call str(exc) carries
            from types import SimpleNamespace

            from tunestep.server.next_steps import next_steps
            from tunestep.server.render import make_console
            from tunestep.server.screen import View

            next_steps(make_console(stderr=True), SimpleNamespace(next_steps=[exc.hint]),
                       View(workspace=getattr(args, "hint_workspace", None)))
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        _error("interrupted", "")
        return 130
    except BrokenPipeError:  # `tunestep check | head`: the reader left; not an error
        _quiet_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    except Exception as exc:  # the last line of defence: no traceback at the user
        logging.getLogger("tunestep").debug("unexpected failure", exc_info=True)
        _error("internal error", f"{type(exc).__name__}: {exc} (set TUNESTEP_DEBUG=1 for the "
               "traceback; please report it)")
        if os.environ.get("TUNESTEP_DEBUG"):
            raise
        return EXIT_PROBLEM


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second
    BrokenPipeError (the way the Python documentation advises)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _error(label: str, message: str, code: str | None = None, where: str | None = None) -> None:
    from tunestep.server.render import make_console, safe_text, screen, token

    # Messages name workspace files and things like messages[0].role: shown as written,
    # wrapped between words; the code and the file:line are one word each, never cut.
    text = f"[bold red]{label}[/] " + (f"{token(code)}: " if code else "") + safe_text(message)
    screen(make_console(stderr=True)).print(text + (f" ({token(where)})" if where else ""))


if __name__ == "__main__":
    sys.exit(main())
