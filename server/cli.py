"""The `tunestep` command: the same domain functions as the MCP tools, for people.

Exit codes: 0 success (for `check`: ready), 1 a problem the user can fix (the message
names its code, file and line), 2 usage errors. No traceback reaches the user; an
unexpected failure prints one line and asks for a bug report.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, "Console"], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _workspace(args: argparse.Namespace):
    from tunestep.tools.core.workspace import find_workspace

    # The command's one context: the workspace, the keys every read of the ledger's line
    # checks signed promotion records with, the plan and hash memo.
    ws = find_workspace(args.workspace)
    args.hint_workspace = _hint_workspace(ws.root)
    return ws.for_call(_reader_keys(args, ws.root))


def _hint_workspace(root: Path) -> str | None:
    """The --workspace a printed command needs: none when it would find this one anyway."""
    from tunestep.tools.core.workspace import WORKSPACE_ENV

    implicit = os.environ.get(WORKSPACE_ENV) or os.getcwd()
    try:
        if Path(implicit).expanduser().resolve() == root:
            return None
    except OSError:
        pass
    return str(root)


def _show(args: argparse.Namespace, console: Console, result) -> None:
    from tunestep.server.render import render

    render(console, result, args.json, workspace=getattr(args, "hint_workspace", None))


@command("serve")
def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.app import ServerConfig, build_server

    # stdout is the protocol channel in stdio mode: logs go to stderr only.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from tunestep.tools.core.workspace import find_workspace

    keys = _trusted_key_paths(args)
    # A missing or wrong workspace fails now too, not at every tool call.
    workspace = find_workspace(args.workspace).root
    # The keys are read (and checked against the fingerprints) now, once: a wrong path
    # fails at start, and a key file changed later is never trusted.
    server = build_server(ServerConfig(workspace=workspace, operator_keys=keys,
                                       operator_key_fingerprints=_fingerprints(args)))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
            raise TunestepError("bind_refused", f"binding to {args.host} exposes the server "
                                "beyond this machine; pass --allow-remote to mean it")
        server.run("streamable-http", host=args.host, port=args.port)
    return EXIT_OK


@command("check")
def cmd_check(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.preflight import check_batch

    report = check_batch(_workspace(args), args.batch)
    _show(args, console, report)
    return EXIT_OK if report.ready else EXIT_PROBLEM


def _trusted_key_paths(args: argparse.Namespace) -> list:
    from tunestep.tools.signing.trusted_keys import is_inline_pem, trusted_key_paths_from_env

    keys = [p if is_inline_pem(p) else Path(p).expanduser().resolve()
            for p in (args.operator_key or [])]
    return keys + trusted_key_paths_from_env(os.environ.get("TUNESTEP_OPERATOR_KEYS", ""))


def _reader_keys(args: argparse.Namespace, root: Path) -> dict:
    """The keys every read of the ledger's line checks signed promotion records with (as
    `tunestep promote` trusts keys): --operator-key, $TUNESTEP_OPERATOR_KEYS, else the
    public halves in the operator's key folder; none from inside the workspace."""
    from tunestep.tools.lineage.promotion_records import reader_keys

    sources = _trusted_key_paths(args if hasattr(args, "operator_key")
                                 else argparse.Namespace(operator_key=None))
    return reader_keys(sources, getattr(args, "config_dir", None), root)


def _fingerprints(args: argparse.Namespace) -> list[str]:
    env = os.environ.get("TUNESTEP_OPERATOR_KEY_FINGERPRINTS", "")
    return list(getattr(args, "operator_key_fingerprint", None) or []) + [
        f for f in env.replace(",", " ").split() if f]


@command("inspect")
def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.inspector import run_inspector

    report = run_inspector(_workspace(args), args.path, tokens=args.tokens,
                           max_errors=args.max_errors, progress=_progress(console, args))
    _show(args, console, report)
    return EXIT_OK if report.status == "READY" else EXIT_PROBLEM


@command("map")
def cmd_map(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
    from tunestep.tools.inspector.spec import parse_mapping_spec

    ws = _workspace(args)
    if args.spec:
        try:
            data = Path(args.spec).expanduser().read_bytes()
        except OSError as exc:
            raise TunestepError("mapping_spec_invalid", f"cannot read the spec file: "
                                f"{exc.strerror or exc}", path=args.spec) from None
        spec = parse_mapping_spec(data, args.spec)
    else:
        suggestion = suggest_mapping(ws, args.source)
        if suggestion.mapping is None:
            raise TunestepError("mapping_none", suggestion.reason, path=args.source)
        spec = suggestion.mapping
    _show(args, console, apply_mapping(ws, args.source, spec, progress=_progress(console, args)))
    return EXIT_OK


@command("merge")
def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.merge import merge_datasets

    _show(args, console, merge_datasets(_workspace(args), args.batch, args.strategy, args.dedup,
                                        progress=_progress(console, args)))
    return EXIT_OK


@command("preprocess")
def cmd_preprocess(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.data.preprocess import preprocess

    _show(args, console, preprocess(_workspace(args), args.batch, args.max_length,
                                    progress=_progress(console, args)))
    return EXIT_OK


def _progress(console: Console, args: argparse.Namespace):
    """A progress callback printing to stderr (never into --json output)."""
    from tunestep.server.render import make_console

    err = make_console(stderr=True)

    def report(done: int, total: int | None, message: str) -> None:
        if not args.json and err.is_terminal:
            from tunestep.server.render import safe_text  # messages name workspace files

            err.print(f"  {safe_text(message)} ({done}{f'/{total}' if total else ''})")

    return report


@command("draft")
def cmd_draft(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    overrides = {}
    for item in args.set or []:
        key, _, raw = item.partition("=")
        overrides[key] = _number(raw)
    request = DraftRequest(kind=args.kind, batch=args.batch, mode=args.mode,
                           backend=args.backend, flavor=args.flavor, timeout=args.timeout,
                           overrides=overrides)
    _show(args, console, draft_job(_workspace(args), request))
    return EXIT_OK


def _number(raw: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@command("operator")
def cmd_operator(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.drafts.operator import check_new_passphrase, remember_default
    from tunestep.tools.signing.operator_keys import create_operator_key

    passphrase = _passphrase(confirm=True, new=True)
    check_new_passphrase(passphrase)
    info = create_operator_key(args.name, passphrase, args.config_dir)
    is_default = remember_default(info.name, info.private_key_path.parent)
    _show(args, console, info)
    if not args.json:
        from tunestep.server.render import screen

        out = screen(console)
        out.print("")
        out.print("Give the server the public key, e.g. in the MCP client config:")
        out.command(f"tunestep serve --operator-key {_quote(info.public_key_path)} "
                    f"--operator-key-fingerprint {info.fingerprint}")
        if is_default:
            out.print(f"`tunestep approve DRAFT_ID` signs with this key ({info.name}) "
                      "unless you pass --name.")
        else:
            out.print("Sign with it:")
            out.command(f"tunestep approve DRAFT_ID --name {info.name}")
    return EXIT_OK


def _quote(value) -> str:
    import shlex

    return shlex.quote(str(value))


def _passphrase(confirm: bool = False, new: bool = False) -> bytes:
    import getpass

    from tunestep.tools.drafts.operator import MIN_PASSPHRASE, passphrase_from_env

    env = passphrase_from_env()
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise TunestepError("passphrase_missing", "no terminal to ask for the passphrase: set "
                            "TUNESTEP_OPERATOR_PASSPHRASE for automation")
    prompt = (f"new passphrase for the operator key (at least {MIN_PASSPHRASE} characters): "
              if new else "operator key passphrase: ")
    first = getpass.getpass(prompt).encode()
    if new:
        from tunestep.tools.drafts.operator import check_new_passphrase

        check_new_passphrase(first)  # before asking again: say it at once
    if confirm and getpass.getpass("again: ").encode() != first:
        raise TunestepError("passphrase_mismatch", "the two passphrases differ")
    return first


PASSPHRASE_TRIES = 3


def _key_passphrase(key_path: Path) -> bytes:
    """The passphrase that unlocks ``key_path``: a mistyped one is asked again (up to
    three tries at a terminal; one from TUNESTEP_OPERATOR_PASSPHRASE is tried once)."""
    from tunestep.tools.drafts.operator import passphrase_from_env
    from tunestep.tools.signing.operator_keys import load_private_key

    for attempt in range(1, PASSPHRASE_TRIES + 1):
        passphrase = _passphrase()
        try:
            load_private_key(key_path, passphrase)
            return passphrase
        except TunestepError as exc:
            if (exc.code != "operator_key_locked" or passphrase_from_env() is not None
                    or attempt == PASSPHRASE_TRIES):
                raise
        print(f"wrong passphrase for {key_path.name}; try again "
              f"({PASSPHRASE_TRIES - attempt} left)", file=sys.stderr)
    raise AssertionError("unreachable")


@command("approve")
def cmd_approve(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.render import make_console, render, screen
    from tunestep.tools.drafts.operator import find_operator_key, review_draft, sign_draft

    # Which key first: a wrong or ambiguous choice is said before any passphrase is typed.
    key = find_operator_key(args.name, args.key, args.config_dir)
    ws = _workspace(args)
    if args.draft_id.startswith("promote-"):  # a promotion request, not a job draft
        return _approve_promotion(args, ws, key)
    if args.draft_id.startswith("repin-"):  # a hold-out re-pin request
        return _approve_repin(args, ws, key)
    draft = review_draft(ws, args.draft_id)
    err = make_console(stderr=True)
    render(err, draft, as_json=False, approving=True, bound_to=str(ws.root))
    if not args.yes:
        if not sys.stdin.isatty():
            raise TunestepError("confirmation_missing", "no terminal to confirm on: review the "
                                "draft and pass --yes")
        # Right under "You are signing": the question names only what the summary shows.
        answer = input(f"Sign {draft.draft_id} with key {key.name}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            err.print("not approved")
            return EXIT_PROBLEM
    grant = sign_draft(ws, draft, name=key.name, key_path=key.path,
                       passphrase=_key_passphrase(key.path), ttl=args.ttl)
    if args.json:
        print(grant.model_dump_json(indent=2))
        return EXIT_OK
    screen(err).print(f"approved {grant.draft_id} for {grant.expires_in_seconds} s; paste "
                      "this token:")
    print(grant.token)  # alone on the last line of stdout, whole, for copy or a pipe
    return EXIT_OK


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise TunestepError("confirmation_missing", "no terminal to confirm on: review the "
                            "request and pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _sign_promotion(args: argparse.Namespace, ws, key, request):
    """Render the request as the store holds it now, ask, and sign it (act promote)."""
    from tunestep.server.render import make_console, render
    from tunestep.tools.drafts.operator import sign_promotion

    err = make_console(stderr=True)
    render(err, request, as_json=False, approving=True, bound_to=str(ws.root))
    if not _confirm(f"Sign {request.request_id} with key {key.name}?", args.yes):
        err.print("not approved")
        return None
    return sign_promotion(ws, request, name=key.name, key_path=key.path,
                          passphrase=_key_passphrase(key.path), ttl=args.ttl)


def _approve_promotion(args: argparse.Namespace, ws, key) -> int:
    from tunestep.server.render import make_console, screen
    from tunestep.tools.lineage.promotion import review_request

    grant = _sign_promotion(args, ws, key, review_request(ws, args.draft_id))
    if grant is None:
        return EXIT_PROBLEM
    if args.json:
        print(grant.model_dump_json(indent=2))
        return EXIT_OK
    screen(make_console(stderr=True)).print(
        f"approved {grant.draft_id} for {grant.expires_in_seconds} s; paste this token:")
    print(grant.token)
    return EXIT_OK


@command("promote")
def cmd_promote(args: argparse.Namespace, console: Console) -> int:
    """Move latest to a recorded version: sign here and apply, or apply a pasted token."""
    from tunestep.tools.drafts.operator import find_operator_key
    from tunestep.tools.lineage.promotion import promote_version, request_promotion
    from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace, load_trusted_keys

    ws = _workspace(args)
    paths = _trusted_key_paths(args)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    if token is None:
        key = find_operator_key(args.name, args.key, args.config_dir)
        # Without --operator-key the key that signs here is the one trusted: its public
        # half beside it (outside the workspace, which is checked below).
        paths = paths or [key.path.with_name(key.path.name.replace(".key.pem", ".pub.pem"))]
        grant = _sign_promotion(args, ws, key, request_promotion(ws, args.version))
        if grant is None:
            return EXIT_PROBLEM
        token = grant.token
    ensure_keys_outside_workspace(paths, ws.root)
    _show(args, console, promote_version(ws, args.version, token, load_trusted_keys(paths)))
    return EXIT_OK


def _sign_repin(args: argparse.Namespace, ws, key, request):
    """Render the re-pin request (old and new sha256, rows added and removed), ask, and
    sign it (act repin_holdout)."""
    from tunestep.server.render import make_console, render
    from tunestep.tools.drafts.operator import sign_repin

    err = make_console(stderr=True)
    render(err, request, as_json=False, approving=True, bound_to=str(ws.root))
    if not _confirm(f"Sign {request.request_id} with key {key.name}?", args.yes):
        err.print("not approved")
        return None
    return sign_repin(ws, request, name=key.name, key_path=key.path,
                      passphrase=_key_passphrase(key.path), ttl=args.ttl)


def _approve_repin(args: argparse.Namespace, ws, key) -> int:
    from tunestep.server.render import make_console, screen
    from tunestep.tools.data.holdout_repin import review_request

    grant = _sign_repin(args, ws, key, review_request(ws, args.draft_id))
    if grant is None:
        return EXIT_PROBLEM
    if args.json:
        print(grant.model_dump_json(indent=2))
        return EXIT_OK
    screen(make_console(stderr=True)).print(
        f"approved {grant.draft_id} for {grant.expires_in_seconds} s; paste this token:")
    print(grant.token)
    return EXIT_OK


@command("repin")
def cmd_repin(args: argparse.Namespace, console: Console) -> int:
    """Pin the hold-out set as it is now: sign here and apply, or apply a pasted token."""
    from tunestep.tools.data.holdout_repin import repin, request_repin
    from tunestep.tools.drafts.operator import find_operator_key
    from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace, load_trusted_keys

    ws = _workspace(args)
    paths = _trusted_key_paths(args)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    if token is None:
        key = find_operator_key(args.name, args.key, args.config_dir)
        paths = paths or [key.path.with_name(key.path.name.replace(".key.pem", ".pub.pem"))]
        grant = _sign_repin(args, ws, key, request_repin(ws))
        if grant is None:
            return EXIT_PROBLEM
        token = grant.token
    ensure_keys_outside_workspace(paths, ws.root)
    _show(args, console, repin(ws, token, load_trusted_keys(paths)))
    return EXIT_OK


@command("submit")
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


@command("status")
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
    from tunestep.server.render import View, cli_command
    from tunestep.tools.core.next_step import NextAction

    view = View(workspace=getattr(args, "hint_workspace", None))
    cancel = cli_command(NextAction(tool="cancel_job", args={"job_id": job_id}), view)
    again = cli_command(NextAction(tool="job_status", args={"job_id": job_id}), view)
    print(f"\nstopped waiting; {job_id} keeps running.\n  to stop it:   {cancel}\n"
          f"  to wait again: {again} --wait {args.wait:g}", file=sys.stderr)
    return 130


@command("logs")
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


@command("cancel")
def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.runs.job_control import cancel_job

    _show(args, console, cancel_job(_workspace(args), args.job_id))
    return EXIT_OK


@command("sync")
def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    from tunestep.tools.lineage.model_sync import sync_model

    _show(args, console, sync_model(_workspace(args), args.version))
    return EXIT_OK


@command("demo")
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.demo import run_demo

    return run_demo(args, console)


WORKSPACE_HELP = ("the workspace root (default: $TUNESTEP_WORKSPACE, else the current folder); "
                  "a workspace holds .specs/training/plan.md, .tunestep/ or "
                  "datasets/incremental/")
BATCH_HELP = ("a batch folder name under datasets/incremental/, e.g. batch_100_03 "
              "(default: the next untrained batch)")


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
    p.add_argument("--token", help="apply a token from `tunestep approve promote-...` "
                   "instead of signing here (- reads it from stdin)")
    _signing_key_arguments(p)
    p.add_argument("--ttl", default="10m", help="how long the token stays valid (default 10m)")
    p.add_argument("--yes", action="store_true", help="skip the confirmation question")
    p.add_argument("--operator-key", action="append", type=Path, metavar="PUBKEY",
                   help="trusted operator public key (repeatable; default: the signing "
                   "key's own public half); also $TUNESTEP_OPERATOR_KEYS")

    p = sub.add_parser("repin", parents=common, help="pin the hold-out set as it is now "
                       "(every later gate measures it), signed by the operator")
    p.add_argument("--token", help="apply a token from `tunestep approve repin-...` instead "
                   "of signing here (- reads it from stdin)")
    _signing_key_arguments(p)
    p.add_argument("--ttl", default="10m", help="how long the token stays valid (default 10m)")
    p.add_argument("--yes", action="store_true", help="skip the confirmation question")
    p.add_argument("--operator-key", action="append", type=Path, metavar="PUBKEY",
                   help="trusted operator public key (repeatable; default: the signing "
                   "key's own public half); also $TUNESTEP_OPERATOR_KEYS")

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
            return cmd_serve(args, None)
        from tunestep.server.render import make_console

        return _COMMANDS[args.command](args, make_console())
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

            from tunestep.server.render import View, make_console, next_steps

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
