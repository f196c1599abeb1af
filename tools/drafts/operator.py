"""The operator's side: review a stored draft and sign it (keys: approval.create_operator_key).

CLI only. No MCP tool reaches this module: the assistant can never sign. The review
always starts from the draft stored in the ledger (not from anything the assistant
says about it) and recomputes it, so a stale draft is refused before it is signed.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_write_text
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft import JobDraft, load_draft, recompute, what_changed
from tunestep.tools.signing.approval import (
    ACTION_PROMOTE,
    ACTION_REPIN,
    ACTION_SUBMIT_JOB,
    parse_ttl,
    sign_approval,
)
from tunestep.tools.signing.operator_keys import default_operator_dir, load_private_key

PASSPHRASE_ENV = "TUNESTEP_OPERATOR_PASSPHRASE"
DEFAULT_NAME = "operator"
DEFAULT_FILE = "default"  # in the key folder: the name `approve` uses when none is given
KEY_SUFFIX = ".key.pem"
MIN_PASSPHRASE = 12  # characters; the key file is only as strong as its passphrase


class ApprovalGrant(BaseModel):
    draft_id: str
    digest: str
    operator: str
    expires_in_seconds: int
    token: str


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def check_new_passphrase(passphrase: bytes) -> None:
    """A new key's passphrase: at least MIN_PASSPHRASE characters."""
    if len(passphrase.decode("utf-8", "replace")) < MIN_PASSPHRASE:
        raise TunestepError("operator_passphrase_short", f"the passphrase must have at least "
                            f"{MIN_PASSPHRASE} characters (a few words are easy to type)")


class OperatorKey(BaseModel):
    """The private key `approve` signs with, and the operator name it signs as."""

    name: str
    path: Path


def operator_keys(folder: Path | None = None) -> list[str]:
    """The names of the private keys in the key folder, sorted."""
    folder = folder or default_operator_dir()
    try:
        return sorted(p.name[:-len(KEY_SUFFIX)] for p in folder.iterdir()
                      if p.name.endswith(KEY_SUFFIX) and not p.name.startswith("."))
    except OSError:
        return []


def default_operator(folder: Path | None = None) -> str | None:
    """The name `operator init` made the default, when that key still exists."""
    folder = folder or default_operator_dir()
    try:
        name = (folder / DEFAULT_FILE).read_text().strip()
    except OSError:
        return None
    return name if name in operator_keys(folder) else None


def remember_default(name: str, folder: Path | None = None) -> bool:
    """Make ``name`` the default for `approve` unless another key already is; True if so."""
    folder = folder or default_operator_dir()
    if default_operator(folder) is not None:
        return False
    atomic_write_text(folder / DEFAULT_FILE, name + "\n")
    return True


def find_operator_key(name: str | None = None, key: Path | None = None,
                      folder: Path | None = None) -> OperatorKey:
    """The key to sign with: ``key``, else ``name``'s, else the default or the only one.

    Decided before any passphrase is asked, so a wrong choice costs nothing: several keys
    and no default, or none, raise an error that lists them and says how to choose.
    """
    folder = Path(folder) if folder else default_operator_dir()
    if key is not None:
        key = Path(key).expanduser()
        if not key.is_file():
            raise TunestepError("operator_key_missing", "no private key file there",
                                path=str(key))
        stem = key.name[:-len(KEY_SUFFIX)] if key.name.endswith(KEY_SUFFIX) else key.stem
        return OperatorKey(name=name or stem or DEFAULT_NAME, path=key)
    names = operator_keys(folder)
    listed = ", ".join(names)
    if name is not None:
        if name in names:
            return OperatorKey(name=name, path=folder / f"{name}{KEY_SUFFIX}")
        raise TunestepError("operator_key_missing", f"no key named {name!r} in {folder}; "
                            + (f"the keys there: {listed} (choose with --name NAME)" if names
                               else "create one with `tunestep operator init --name "
                                    f"{name}`"))
    if not names:
        raise TunestepError("operator_key_missing", f"no operator key in {folder}: create one "
                            "with `tunestep operator init --name NAME`, or give --key PATH")
    chosen = names[0] if len(names) == 1 else default_operator(folder)
    if chosen is None:
        raise TunestepError("operator_key_ambiguous", f"{len(names)} operator keys in "
                            f"{folder} ({listed}) and none is the default: choose one with "
                            f"--name, e.g. --name {names[0]}")
    return OperatorKey(name=chosen, path=folder / f"{chosen}{KEY_SUFFIX}")


def review_draft(ws: Workspace, draft_id: str) -> JobDraft:
    """The stored draft, refused when the workspace no longer matches it."""
    stored = load_draft(ws, draft_id)
    now = recompute(ws, stored)
    if now.digest != stored.digest:
        raise TunestepError("draft_stale", "the workspace changed since this draft was made "
                            f"({what_changed(stored, now)}); ask for a new draft")
    return stored


def _sign(ws: Workspace, subject_id: str, digest: str, *, act: str, audit_action: str,
          audit_detail: dict, name: str, key_path: Path, passphrase: bytes,
          ttl: str) -> ApprovalGrant:
    """Sign one stored subject (a draft or a promotion request) and audit the signing."""
    private_key = load_private_key(key_path, passphrase)
    seconds = parse_ttl(ttl)
    with ledger.open_ledger(ws) as conn:  # the ledger the subject is stored in
        identity = ledger.ledger_id(conn)
    token = sign_approval(private_key, draft_id=subject_id, digest=digest,
                          workspace=str(ws.root), op=name, ttl_seconds=seconds,
                          ledger_id=identity, act=act)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, audit_action, subject_id,
                     detail={"digest": digest, **audit_detail, "operator": name,
                             "ttl": seconds})
    return ApprovalGrant(draft_id=subject_id, digest=digest, operator=name,
                         expires_in_seconds=seconds, token=token)


def sign_draft(ws: Workspace, draft: JobDraft, *, name: str, key_path: Path,
               passphrase: bytes, ttl: str) -> ApprovalGrant:
    return _sign(ws, draft.draft_id, draft.digest, act=ACTION_SUBMIT_JOB,
                 audit_action="draft.approve", audit_detail={}, name=name,
                 key_path=key_path, passphrase=passphrase, ttl=ttl)


def sign_promotion(ws: Workspace, request, *, name: str, key_path: Path, passphrase: bytes,
                   ttl: str) -> ApprovalGrant:
    """Sign a promotion request (act ``promote``): this version becomes ``latest``.

    ``request`` is a reviewed ``tunestep.tools.lineage.promotion.PromotionRequest``.
    """
    return _sign(ws, request.request_id, request.digest, act=ACTION_PROMOTE,
                 audit_action="promotion.approve", audit_detail={"version": request.version},
                 name=name, key_path=key_path, passphrase=passphrase, ttl=ttl)


def sign_repin(ws: Workspace, request, *, name: str, key_path: Path, passphrase: bytes,
               ttl: str) -> ApprovalGrant:
    """Sign a hold-out re-pin request (act ``repin_holdout``): every later gate measures
    the hold-out set as it is now. ``request`` is a reviewed
    ``tunestep.tools.data.holdout_repin.RepinRequest``."""
    return _sign(ws, request.request_id, request.digest, act=ACTION_REPIN,
                 audit_action="validation.repin_approve",
                 audit_detail={"old": request.subject.old_sha256,
                               "new": request.subject.new_sha256},
                 name=name, key_path=key_path, passphrase=passphrase, ttl=ttl)
