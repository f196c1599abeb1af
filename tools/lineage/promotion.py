"""Promote or roll back: move a model store's ``latest`` to a recorded version, signed.

A step's job moves ``latest`` only when the promotion gate passes (plan key ``gate``); a
version that fails is still stored and recorded. Moving ``latest`` by hand, forwards to a
version the gate held back or back to an earlier one, is the operator's decision, so it
goes through the same gate as a job: a token the operator signed.

1. ``request_promotion(ws, version)`` (MCP ``promote_version`` without a token) stores a
   promotion request: the version's path in the store and its content identity (sha256
   over every file's path and sha256, the epoch checkpoints left out; no symlink followed,
   each file read up to its recorded size: ``tools/version_files``). Its digest is over
   that, the store and the workspace; its id is ``promote-`` + 12 hex of the digest.
2. The operator signs it: ``tunestep approve promote-…`` (act ``promote``), or
   ``tunestep promote VERSION`` in one go.
3. ``promote_version(ws, version, token, trusted)`` checks, in order: the token (signature,
   trusted key, audience, ``act == "promote"``, expiry: ``verify_approval``); the request
   exists (``promotion_unknown``); the token was signed for this ledger
   (``approval_wrong_ledger``); the token names this request, workspace and digest, and
   the request is for ``version`` (``approval_wrong_draft``); the version's identity now is
   the one signed (``promotion_stale``); the nonce is new (``approval_replayed``: inserted
   with a PRIMARY KEY in the transaction that records the move, the token kept in the
   row: every later read verifies it, ``tools/promotion_records``). Then ``latest`` is
   swapped atomically (a new relative link under a temp name, renamed over: the job's own
   way, ``tools/jobs/job_store.move_latest``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import fsync_dir
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction, mcp_texts
from tunestep.tools.core.plan import load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.latest_check import latest_state
from tunestep.tools.lineage.model_store import checkpoint_kind
from tunestep.tools.lineage.promotion_records import request_digest
from tunestep.tools.lineage.version_files import identity as files_identity
from tunestep.tools.lineage.version_files import record_files, recorded_files, scan_version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUEST_PREFIX = "promote-"
SKIPPED = ("checkpoints",)  # epoch checkpoints: not part of what a version serves


class PromotionRequest(BaseModel):
    """What the operator signs: this version, with this content, becomes ``latest``."""

    request_id: str
    digest: str
    store: str  # the model link, models/<name>
    version: str  # folder name under versions/
    version_path: str  # <store>/versions/<version>
    identity: str  # sha256 over the version's files (path + sha256 each)
    files: int
    latest: str | None  # the version latest points at now
    step: int | None = None
    batch: str | None = None
    gate_promoted: bool | None = None  # the job's gate decision for this version
    gate_reason: str | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)
    approve_command: str
    promote_command: str
    next_actions: list[str] = Field(default_factory=list)
    next_steps: list[NextAction] = Field(default_factory=list)  # next_actions, as data


class PromotionResult(BaseModel):
    request_id: str
    store: str
    version: str
    previous: str | None
    latest: str
    operator: str
    kid: str


def _version_name(version: str) -> str:
    name = version.strip().removeprefix("versions/").rstrip("/")
    if not VERSION_NAME.match(name):
        raise TunestepError("version_unknown", "give a version folder name such as "
                            "0002_batch_100_02 (see the store's versions/)", path=version)
    return name


def _store(ws: Workspace) -> tuple[str, Path]:
    plan = load_plan(ws).plan
    return plan.model_link, ws.resolve_model_store(plan.model_link)


def _version_folder(store: Path, name: str, link: str) -> Path:
    folder = store / "versions" / name
    if folder.is_symlink() or not folder.is_dir() or checkpoint_kind(folder) is None:
        known = sorted(p.name for p in (store / "versions").iterdir()
                       if p.is_dir() and checkpoint_kind(p)) if (store / "versions").is_dir() \
            else []
        raise TunestepError("version_unknown", f"no model version {name!r} in the store; "
                            f"versions: {', '.join(known) or 'none'}",
                            path=f"{link}/versions/{name}")
    return folder


def version_identity(folder: Path, shown: str | None = None,
                     recorded: list | None = None) -> tuple[str, int]:
    """sha256 over (relative path, sha256) of every file, sorted; and the file count.

    No symlink is followed (one inside the version is refused, ``version_symlink``), and
    with the version's record each file is read up to its recorded size only
    (``tools/version_files``)."""
    entries = scan_version(folder, shown or folder.name, recorded)
    return files_identity(entries), len(entries)


def _content(conn: sqlite3.Connection, link: str, store: Path,
             name: str) -> tuple[str, list, bool]:
    """(identity, files, whether the ledger recorded them) of one version, checked against
    its record when it has one."""
    folder = _version_folder(store, name, link)
    recorded = recorded_files(conn, link, name)
    entries = scan_version(folder, f"{link}/versions/{name}", recorded)
    return files_identity(entries), entries, recorded is not None


def _latest_now(ws: Workspace, conn: sqlite3.Connection, link: str, store: Path) -> str | None:
    """The version that is latest now: the ledger's line; where that is the base model,
    the link's target when it points at the base (never a link the ledger disagrees with)."""
    state = latest_state(ws, conn, link, load_plan(ws).plan.model, store)
    if state.ledger_latest is not None or not state.matches:
        return state.ledger_latest
    return current_latest(store)


def current_latest(store: Path) -> str | None:
    latest = store / "latest"
    if not latest.is_symlink():
        return None
    return Path(os.readlink(latest)).name


def _step_of(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM steps WHERE version = ? ORDER BY step DESC LIMIT 1",
                        (name,)).fetchone()


def build_request(ws: Workspace, version: str) -> PromotionRequest:
    """The promotion request for ``version`` as the store holds it now (no writes)."""
    name = _version_name(version)
    link, store = _store(ws)
    with ledger.open_ledger(ws) as conn:
        identity, entries, _ = _content(conn, link, store, name)
        step = _step_of(conn, name)
        latest = _latest_now(ws, conn, link, store)
    count = len(entries)
    digest = request_digest(link, name, identity, str(ws.root))
    request_id = f"{REQUEST_PREFIX}{digest[:12]}"
    evaluation = ledger.loads(step["evaluation"]) if step is not None else {}
    # The token goes to promote_version over MCP, to `tunestep promote --token -` on the CLI
    # (server/next_steps.py says each in its own syntax).
    actions = [NextAction(lead=f"the operator signs it in their terminal: tunestep approve "
                               f"{request_id} --workspace {ws.root}; then apply the token:",
                          tool="promote_version", args={"version": name},
                          from_result={"approval_token": "<the token they paste>"})]
    if latest == name:
        actions.insert(0, NextAction(note=f"latest already points at {name}: promoting it "
                                          "changes nothing"))
    return PromotionRequest(
        request_id=request_id, digest=digest, store=link, version=name,
        version_path=f"{link}/versions/{name}", identity=identity, files=count,
        latest=latest, step=step["step"] if step is not None else None,
        batch=step["batch"] if step is not None else None,
        gate_promoted=bool(step["promoted"]) if step is not None else None,
        gate_reason=step["promotion_reason"] if step is not None else None,
        evaluation=evaluation or {},
        approve_command=f"tunestep approve {request_id} --workspace {ws.root}",
        promote_command=f"tunestep promote {name} --workspace {ws.root}",
        next_actions=mcp_texts(actions), next_steps=actions)


def request_promotion(ws: Workspace, version: str) -> PromotionRequest:
    """Store the request to make ``version`` the latest; moves nothing."""
    request = build_request(ws, version)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO promotion_requests(request_id, digest, store, version,"
            " payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (request.request_id, request.digest, request.store, request.version,
             request.model_dump_json(), time.time()))
        ledger.audit(conn, "promotion.request", request.request_id,
                     detail={"version": request.version, "digest": request.digest})
    return request


def load_request(ws: Workspace, request_id: str) -> PromotionRequest:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT payload FROM promotion_requests WHERE request_id = ?",
                           (request_id,)).fetchone()
    if row is None:
        raise TunestepError("promotion_unknown", f"no promotion request {request_id!r} in this "
                            "workspace's ledger: request the promotion of the version first "
                            "(promote it without a token)")
    return PromotionRequest.model_validate_json(row["payload"])


def review_request(ws: Workspace, request_id: str) -> PromotionRequest:
    """The stored request, refused when the version's content changed since (the operator
    signs what is there now)."""
    stored = load_request(ws, request_id)
    now = build_request(ws, stored.version)
    if now.digest != stored.digest:
        raise TunestepError("promotion_stale", f"version {stored.version} changed since the "
                            "request was made; request the promotion again",
                            path=stored.version_path)
    return now.model_copy(update={"request_id": stored.request_id})


def promote_version(ws: Workspace, version: str, approval_token: str | None,
                    trusted: dict[str, Ed25519PublicKey]) -> PromotionResult:
    """Move ``latest`` to ``version`` with the operator's signed token, or refuse."""
    # The ledger's line is read with the keys this move is checked with.
    call = ws.for_call(trusted or ws.trusted_keys)
    return _promote_version(call, version, approval_token, trusted)


def _promote_version(ws: Workspace, version: str, approval_token: str | None,
                     trusted: dict[str, Ed25519PublicKey]) -> PromotionResult:
    from tunestep.tools.signing.approval import ACTION_PROMOTE, verify_approval

    try:
        claims = verify_approval(approval_token or "", trusted, act=ACTION_PROMOTE)
        stored = load_request(ws, claims.draft_id)
        with ledger.open_ledger(ws) as conn:
            if claims.ledger != ledger.ledger_id(conn):
                raise TunestepError("approval_wrong_ledger", "the token was signed for "
                                    "another ledger of this workspace; request the "
                                    "promotion again and ask the operator for a new token")
        name = _version_name(version)
        if stored.version != name:
            raise TunestepError("approval_wrong_draft", f"the token approves making "
                                f"{stored.version} the latest, not {name}")
        if claims.workspace != str(ws.root):
            raise TunestepError("approval_wrong_draft",
                                "the token was signed for another workspace")
        if claims.digest != stored.digest:
            raise TunestepError("approval_wrong_draft", "the token approves another "
                                "version of this request (digest differs)")
        link, store = _store(ws)
        with ledger.open_ledger(ws) as conn:
            identity, entries, recorded = _content(conn, link, store, name)
            previous = _latest_now(ws, conn, link, store)
        if request_digest(link, name, identity, str(ws.root)) != stored.digest:
            raise TunestepError("promotion_stale", f"version {name} changed since the "
                                "operator signed; request the promotion again",
                                path=stored.version_path)
        with ledger.open_ledger(ws) as conn:
            try:
                with ledger.transaction(conn):
                    conn.execute(
                        "INSERT INTO promotions(nonce, request_id, store, version, previous,"
                        " kid, operator, at, seq, token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (claims.nonce, stored.request_id, link, name, previous, claims.kid,
                         claims.op, time.time(), ledger.next_seq(conn),
                         (approval_token or "").strip()))
                    if not recorded:  # a hand-put folder: the signed content is its record
                        record_files(conn, link, name, entries)
                    # This row is the whole record of the move: which version is latest
                    # and which batches it learned are derived from it (tools/lineage).
                    move_latest(store, name)
                    ledger.audit(conn, "version.promote", f"{link}/versions/{name}",
                                 detail={"request_id": stored.request_id, "previous": previous,
                                         "operator": claims.op, "kid": claims.kid})
            except sqlite3.IntegrityError:
                raise TunestepError("approval_replayed", "this approval token was already "
                                    "used; each token moves latest once") from None
    except TunestepError as exc:
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "version.promote", version, outcome="refused",
                         detail={"code": exc.code})
        raise
    return PromotionResult(request_id=stored.request_id, store=link, version=name,
                           previous=previous, latest=name, operator=claims.op, kid=claims.kid)


def move_latest(store: Path, name: str) -> None:
    """Point ``<store>/latest`` at ``versions/<name>`` with the job's own atomic swap (a new
    relative link under a temp name, renamed over the old one)."""
    from tunestep.tools.jobs.job_common import JobError
    from tunestep.tools.jobs.job_store import move_latest as swap

    try:
        swap(store, name)
    except JobError as exc:
        raise TunestepError("latest_not_link", str(exc), path=str(store / "latest")) from None
    fsync_dir(store)


class PromotionOutcome(BaseModel):
    """promote_version's answer: the request (always), and the move when a token came."""

    moved: bool
    request: PromotionRequest
    result: PromotionResult | None = None


def promote(ws: Workspace, version: str, approval_token: str | None,
            trusted: dict[str, Ed25519PublicKey]) -> PromotionOutcome:
    """Without a token: store and return the request for the operator to sign. With one:
    move ``latest`` (every check of ``promote_version``)."""
    if not (approval_token or "").strip():
        return PromotionOutcome(moved=False, request=request_promotion(ws, version))
    result = promote_version(ws, version, approval_token, trusted)
    return PromotionOutcome(moved=True, request=load_request(ws, result.request_id),
                            result=result)
