"""Re-pin the hold-out set: the operator's signed act, verified whenever the pin is read.

The hold-out set is pinned on first sight (``preflight.check_validation``); every later
change is ``validation_changed``, and every gate measures on the pinned bytes. Changing
what every later gate measures is the operator's decision, so it goes through the same
gate as a job or a promotion: a token the operator signed (act ``repin_holdout``).

1. ``request_repin(ws)`` (MCP ``repin_holdout`` without a token; ``tunestep repin``)
   stores a re-pin request: a canonical document (``RepinSubject``) naming the workspace,
   the ledger, the hold-out path, the pinned sha256, the sha256 of the file now, and the
   rows added and removed (counts and the first few, compared by normalized content
   against the ledger's copy of the pinned bytes, ``tools/holdout_rows``; a pin made
   before copies were kept says so and compares nothing). Its digest is sha256 over the
   document's canonical bytes; its id ``repin-`` + 12 hex of the digest.
2. The operator signs it: ``tunestep approve repin-…``, or ``tunestep repin`` in one go.
3. ``apply_repin(ws, token, trusted)`` checks, in order: the token (``verify_approval``,
   act ``repin_holdout``); the request exists (``repin_unknown``); the token's ledger is
   this ledger (``approval_wrong_ledger``); its nonce unused (``approval_replayed``: before
   the pin checks, since a used token's pin has moved on); its workspace is this one and
   its digest the hash of the stored request bytes (``approval_wrong_draft``); the plan's
   hold-out path is the request's, the file now hashes to the request's new sha256 and the
   pin in force is its old one (``repin_stale``). One
   transaction inserts the ``holdout_repins`` row (nonce PRIMARY KEY, the token kept) and
   a copy of the new bytes.

Every read of the pin believes a re-pin only when its kept token verifies
(``tools/data/holdout_records.py``); check_batch names a row that does not
(``repin_unverified``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction, mcp_texts
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.holdout_continuity import continuity
from tunestep.tools.data.holdout_records import (
    SNAPSHOT_MAX,
    RepinSubject,
    keep_snapshot,
    parse_subject,
    pin_state,
    raw_bytes,
    snapshot,
    subject_bytes,
    subject_digest,
)
from tunestep.tools.data.holdout_rows import RowDiff, RowsUnreadable, diff, parse_rows, refs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

REQUEST_PREFIX = "repin-"
TOOL = "repin_holdout"  # the MCP tool; `tunestep repin` on the CLI


class RepinRequest(BaseModel):
    request_id: str
    digest: str  # sha256 over the subject's canonical bytes: the token's digest
    subject: RepinSubject
    old_pinned_by: str  # "first sight" or the re-pin request that set the old pin
    approve_command: str
    repin_command: str
    next_actions: list[str] = Field(default_factory=list)
    next_steps: list[NextAction] = Field(default_factory=list)


class RepinResult(BaseModel):
    request_id: str
    path: str
    old_sha256: str
    new_sha256: str
    operator: str
    kid: str


class RepinOutcome(BaseModel):
    """repin_holdout's answer: the request (always), and the re-pin when a token came."""

    repinned: bool
    request: RepinRequest
    result: RepinResult | None = None


def repin_action(lead: str = "if the change is intended, the operator re-pins the "
                             "hold-out set (signed):") -> NextAction:
    return NextAction(lead=lead, tool=TOOL)


# --------------------------------------------------------------------------- requests


def _hold_out(ws: Workspace) -> tuple[str, Path]:
    from tunestep.tools.core.plan import load_plan

    rel = load_plan(ws).plan.paths.validation
    return rel, ws.resolve(rel)


def build_request(ws: Workspace) -> RepinRequest:
    """The re-pin request for the hold-out set as it is now (no writes)."""
    rel, path = _hold_out(ws)
    if not path.is_file():
        raise TunestepError("validation_missing", "the hold-out set is missing: there is "
                            "nothing to re-pin", path=rel)
    data = path.read_bytes()
    new_sha = hashlib.sha256(data).hexdigest()
    with ledger.open_ledger(ws) as conn:
        first = conn.execute("SELECT sha256, rows FROM validation_pins WHERE path = ?",
                             (rel,)).fetchone()
        if first is None:
            raise TunestepError("repin_not_pinned", "the hold-out set was never pinned: the "
                                "next check pins it as it is", path=rel,
                                hint=NextAction(tool="check_batch"))
        state = pin_state(conn, rel, first["sha256"])
        old = snapshot(conn, state.sha256)
        identity = ledger.ledger_id(conn)
        # the file is the pin, but the pin is not what the operator signed: signing it
        # as it is settles that (validation_pin_unverified)
        settled = new_sha != state.sha256 or continuity(ws, conn, rel, state).agrees
    if new_sha == state.sha256 and settled:
        raise TunestepError("repin_unchanged", f"the hold-out set is the pinned one "
                            f"({new_sha[:12]}): nothing to re-pin", path=rel)
    rows = _rows(path.suffix, old, data, first["rows"] if state.repin is None else None)
    subject = RepinSubject(workspace=str(ws.root), ledger=identity, path=rel,
                           old_sha256=state.sha256, new_sha256=new_sha, new_size=len(data),
                           rows=rows)
    digest = subject_digest(subject_bytes(subject))
    request_id = f"{REQUEST_PREFIX}{digest[:12]}"
    actions = [NextAction(lead=f"the operator signs it in their terminal: tunestep approve "
                               f"{request_id} --workspace {ws.root}; then apply the token:",
                          tool=TOOL, from_result={"approval_token": "<the token they paste>"})]
    return RepinRequest(
        request_id=request_id, digest=digest, subject=subject,
        old_pinned_by=f"re-pinned by {state.repin}" if state.repin else "first sight",
        approve_command=f"tunestep approve {request_id} --workspace {ws.root}",
        repin_command=f"tunestep repin --workspace {ws.root}",
        next_actions=mcp_texts(actions), next_steps=actions)


def _rows(suffix: str, old: bytes | None, new: bytes, old_count: int | None) -> RowDiff:
    try:
        new_refs = refs(parse_rows(new, suffix))
    except RowsUnreadable as exc:
        return RowDiff(compared=False, new_rows=0,
                       note=f"the new hold-out cannot be read as rows: {exc}")
    if old is None:
        found = diff(None, new_refs, "the pinned bytes were not kept (pinned before tunestep "
                     "kept a copy, or over 32 MiB): rows added and removed cannot be told; "
                     "only the sha256 and the row counts")
        return found.model_copy(update={"old_rows": old_count})
    try:
        return diff(refs(parse_rows(old, suffix)), new_refs)
    except RowsUnreadable as exc:
        return RowDiff(compared=False, new_rows=len(new_refs),
                       note=f"the pinned bytes cannot be read as rows: {exc}")


def request_repin(ws: Workspace) -> RepinRequest:
    """Store the request to pin the hold-out set as it is now; moves no pin."""
    request = build_request(ws)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO holdout_repin_requests(request_id, digest, path,"
            " old_sha256, new_sha256, subject, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request.request_id, request.digest, request.subject.path,
             request.subject.old_sha256, request.subject.new_sha256,
             subject_bytes(request.subject), time.time()))
        ledger.audit(conn, "validation.repin_request", request.request_id,
                     detail={"path": request.subject.path, "digest": request.digest,
                             "old": request.subject.old_sha256,
                             "new": request.subject.new_sha256})
    return request


def _stored(ws: Workspace, request_id: str) -> tuple[bytes, RepinSubject]:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT subject FROM holdout_repin_requests WHERE request_id = ?",
                           (request_id,)).fetchone()
    subject = parse_subject(row["subject"]) if row is not None else None
    if row is None or subject is None:
        raise TunestepError("repin_unknown", f"no re-pin request {request_id!r} in this "
                            "workspace's ledger: request the re-pin first",
                            hint=NextAction(tool=TOOL))
    return raw_bytes(row["subject"]), subject


def review_request(ws: Workspace, request_id: str) -> RepinRequest:
    """The stored request as the workspace gives it now; refused when the hold-out or the
    pin moved since (the operator signs what is there now)."""
    data, stored = _stored(ws, request_id)
    now = build_request(ws)
    if now.digest != subject_digest(data):
        raise TunestepError("repin_stale", f"the hold-out set or its pin changed since "
                            f"{request_id} was made; request the re-pin again",
                            path=stored.path, hint=NextAction(tool=TOOL))
    return now


# --------------------------------------------------------------------------- applying


def apply_repin(ws: Workspace, approval_token: str | None,
                trusted: dict[str, Ed25519PublicKey]) -> RepinResult:
    """Pin the hold-out set as the operator signed it, or refuse (every check above)."""
    ws = ws.for_call(trusted or ws.trusted_keys)  # the pin in force is read with these keys
    try:
        return _apply(ws, (approval_token or "").strip(), trusted)
    except TunestepError as exc:
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "validation.repin", None, outcome="refused",
                         detail={"code": exc.code})
        raise


def _apply(ws: Workspace, token: str, trusted: dict[str, Ed25519PublicKey]) -> RepinResult:
    from tunestep.tools.signing.approval import ACTION_REPIN, verify_approval

    claims = verify_approval(token, trusted, act=ACTION_REPIN)
    data, subject = _stored(ws, claims.draft_id)
    with ledger.open_ledger(ws) as conn:
        if claims.ledger != ledger.ledger_id(conn):
            raise TunestepError("approval_wrong_ledger", "the token was signed for another "
                                "ledger of this workspace; request the re-pin again")
        if conn.execute("SELECT 1 FROM holdout_repins WHERE nonce = ?",
                        (claims.nonce,)).fetchone() is not None:
            raise TunestepError("approval_replayed", "this approval token was already used; "
                                "each token re-pins once")
    if claims.workspace != str(ws.root) or subject.workspace != str(ws.root):
        raise TunestepError("approval_wrong_draft", "the token was signed for another "
                            "workspace")
    if claims.digest != subject_digest(data):
        raise TunestepError("approval_wrong_draft", "the token approves another re-pin "
                            "(its digest is not the stored request's)")
    rel, path = _hold_out(ws)
    if rel != subject.path:
        raise TunestepError("repin_stale", f"the plan's hold-out set is {rel} now, the "
                            f"re-pin is for {subject.path}", path=rel)
    now = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(now).hexdigest() != subject.new_sha256:
        raise TunestepError("repin_stale", "the hold-out set changed again since the "
                            f"operator signed (signed {subject.new_sha256[:12]}); request "
                            "the re-pin again", path=rel, hint=NextAction(tool=TOOL))
    with ledger.open_ledger(ws) as conn:
        try:
            with ledger.transaction(conn):
                first = conn.execute("SELECT sha256 FROM validation_pins WHERE path = ?",
                                     (rel,)).fetchone()
                state = pin_state(conn, rel, first["sha256"]) if first else None
                if state is None or state.sha256 != subject.old_sha256:
                    raise TunestepError(
                        "repin_stale", "the pin in force is no longer the one the operator "
                        f"signed to replace ({subject.old_sha256[:12]}); request the re-pin "
                        "again", path=rel)
                conn.execute(
                    "INSERT INTO holdout_repins(nonce, request_id, path, old_sha256,"
                    " new_sha256, kid, operator, at, seq, token) VALUES (?, ?, ?, ?, ?, ?, ?,"
                    " ?, ?, ?)", (claims.nonce, claims.draft_id, rel, subject.old_sha256,
                                  subject.new_sha256, claims.kid, claims.op, time.time(),
                                  ledger.next_seq(conn), token))
                keep_snapshot(conn, rel, subject.new_sha256,
                              now if len(now) <= SNAPSHOT_MAX else None)
                ledger.audit(conn, "validation.repin", rel, detail={
                    "request_id": claims.draft_id, "old": subject.old_sha256,
                    "new": subject.new_sha256, "operator": claims.op, "kid": claims.kid})
        except sqlite3.IntegrityError:
            raise TunestepError("approval_replayed", "this approval token was already used; "
                                "each token re-pins once") from None
    return RepinResult(request_id=claims.draft_id, path=rel, old_sha256=subject.old_sha256,
                       new_sha256=subject.new_sha256, operator=claims.op, kid=claims.kid)


def repin(ws: Workspace, approval_token: str | None,
          trusted: dict[str, Ed25519PublicKey]) -> RepinOutcome:
    """Without a token: store and return the request for the operator to sign. With one:
    pin the hold-out set as signed (every check of ``apply_repin``)."""
    if not (approval_token or "").strip():
        return RepinOutcome(repinned=False, request=request_repin(ws))
    result = apply_repin(ws, approval_token, trusted)
    data, subject = _stored(ws, result.request_id)
    request = RepinRequest(
        request_id=result.request_id, digest=subject_digest(data), subject=subject,
        old_pinned_by="the pin it replaced",
        approve_command=f"tunestep approve {result.request_id} --workspace {ws.root}",
        repin_command=f"tunestep repin --workspace {ws.root}")
    return RepinOutcome(repinned=True, request=request, result=result)
