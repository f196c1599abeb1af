"""The draft and approval commands: draft a job, approve (sign) a draft, a promotion
request or a hold-out re-pin request, promote a model version, re-pin the hold-out set.
What the operator signs is shown on stderr right above the question; the token alone
goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tunestep.server.cli_common import (
    EXIT_OK,
    EXIT_PROBLEM,
    _show,
    _trusted_key_paths,
    _workspace,
)
from tunestep.server.cli_prompts import _confirm, _key_passphrase
from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:  # rich loads only for commands that print to a person
    from rich.console import Console


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


def cmd_approve(args: argparse.Namespace, console: Console) -> int:
    from tunestep.server.render import make_console, render, screen
    from tunestep.tools.drafts.operator import find_operator_key, review_draft, sign_draft

    # Which key first: a wrong or ambiguous choice is said before any passphrase is typed.
    key = find_operator_key(args.name, args.key, args.config_dir)
    ws = _workspace(args)
    if args.draft_id.startswith("promote-"):  # a promotion request, not a job draft
        from tunestep.tools.drafts.operator import sign_promotion
        from tunestep.tools.lineage.promotion import review_request

        return _approve_request(args, ws, key, review_request, sign_promotion)
    if args.draft_id.startswith("repin-"):  # a hold-out re-pin request
        from tunestep.tools.data.holdout_repin import review_request as review_repin
        from tunestep.tools.drafts.operator import sign_repin

        return _approve_request(args, ws, key, review_repin, sign_repin)
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


def _sign_request(args: argparse.Namespace, ws, key, request, sign):
    """Render a request (a promotion, a hold-out re-pin) as the ledger holds it now, ask,
    and sign it with ``sign`` (operator.sign_promotion or operator.sign_repin)."""
    from tunestep.server.render import make_console, render

    err = make_console(stderr=True)
    render(err, request, as_json=False, approving=True, bound_to=str(ws.root))
    if not _confirm(f"Sign {request.request_id} with key {key.name}?", args.yes):
        err.print("not approved")
        return None
    return sign(ws, request, name=key.name, key_path=key.path,
                passphrase=_key_passphrase(key.path), ttl=args.ttl)


def _approve_request(args: argparse.Namespace, ws, key, review, sign) -> int:
    """`tunestep approve promote-...|repin-...`: sign the stored request, print the token."""
    from tunestep.server.render import make_console, screen

    grant = _sign_request(args, ws, key, review(ws, args.draft_id), sign)
    if grant is None:
        return EXIT_PROBLEM
    if args.json:
        print(grant.model_dump_json(indent=2))
        return EXIT_OK
    screen(make_console(stderr=True)).print(
        f"approved {grant.draft_id} for {grant.expires_in_seconds} s; paste this token:")
    print(grant.token)
    return EXIT_OK


def _apply_signed_act(args: argparse.Namespace, console: Console, make_request, sign,
                      apply) -> int:
    """`tunestep promote` / `tunestep repin`: sign here (or take --token) and apply it.

    Without --operator-key the key that signs here is the one trusted: its public half
    beside it (outside the workspace, which is checked before anything is applied)."""
    from tunestep.tools.drafts.operator import find_operator_key
    from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace, load_trusted_keys

    ws = _workspace(args)
    paths = _trusted_key_paths(args)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    if token is None:
        key = find_operator_key(args.name, args.key, args.config_dir)
        paths = paths or [key.path.with_name(key.path.name.replace(".key.pem", ".pub.pem"))]
        grant = _sign_request(args, ws, key, make_request(ws), sign)
        if grant is None:
            return EXIT_PROBLEM
        token = grant.token
    ensure_keys_outside_workspace(paths, ws.root)
    _show(args, console, apply(ws, token, load_trusted_keys(paths)))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace, console: Console) -> int:
    """Move latest to a recorded version: sign here and apply, or apply a pasted token."""
    from tunestep.tools.drafts.operator import sign_promotion
    from tunestep.tools.lineage.promotion import promote_version, request_promotion

    return _apply_signed_act(
        args, console, lambda ws: request_promotion(ws, args.version), sign_promotion,
        lambda ws, token, keys: promote_version(ws, args.version, token, keys))


def cmd_repin(args: argparse.Namespace, console: Console) -> int:
    """Pin the hold-out set as it is now: sign here and apply, or apply a pasted token."""
    from tunestep.tools.data.holdout_repin import repin, request_repin
    from tunestep.tools.drafts.operator import sign_repin

    return _apply_signed_act(args, console, request_repin, sign_repin, repin)
