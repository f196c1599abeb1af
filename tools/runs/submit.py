"""submit_job: the only door to a job, and it opens only for the operator's signature.

Order of checks (each refusal is an audit event and a TunestepError whose code names
the reason): the token verifies against a key given at launch (approval.verify_approval:
missing, malformed, untrusted key, bad signature, audience, action, expiry); the draft
exists; the token names this draft and this workspace; the stored manifest bytes hash to
the stored digest (else draft_tampered) and to the token's digest; the draft recomputed
now has the same digest (else stale; the recompute only detects that); the nonce was
never used. What runs (job.json, the Hub request) is made from the verified manifest
bytes only, and the job is started with the digests it verifies against. The nonce
row and the job row are written in one transaction before the backend is called, so
two concurrent submits of one token give exactly one job. An hf-jobs row stays
'submitting' until the Hub has its job, and the same token may resume it (hf_submit.py).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_write_bytes
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import canonical_json
from tunestep.tools.core.next_step import NextAction, mcp_texts
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft import (
    JOBS_DIR,
    JobDraft,
    draft_from_row,
    manifest_digest,
    recompute,
    stored_manifest,
    what_changed,
)
from tunestep.tools.runs.hf_submit import initial_result, resumable_job

if TYPE_CHECKING:  # cryptography loads at the first submit, not at server start
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from tunestep.tools.signing.approval import ApprovalClaims


class JobHandle(BaseModel):
    job_id: str
    draft_id: str
    backend: str
    status: str
    pid: int | None = None
    external_id: str | None = None
    url: str | None = None
    log_path: str | None = None
    next_actions: list[str] = []
    next_steps: list[NextAction] = []  # next_actions, structured


def _follow(job_id: str, *tools: str) -> dict:
    steps = [NextAction(tool=tool, args={"job_id": job_id}) for tool in tools]
    return {"next_steps": steps, "next_actions": mcp_texts(steps)}


def submit_job(ws: Workspace, draft_id: str, approval_token: str | None,
               trusted: dict[str, Ed25519PublicKey]) -> JobHandle:
    """Start the approved draft's job, or refuse with the reason."""
    from tunestep.tools.signing.approval import verify_approval

    try:
        claims = verify_approval(approval_token or "", trusted)
        draft = _approved_draft(ws, draft_id, claims)
        job_id = _resumable(ws, claims.nonce, draft_id)  # an hf-jobs submit cut short
        fresh = job_id is None
        if job_id is None:
            job_id = f"job-{secrets.token_hex(6)}"
            _claim_nonce(ws, draft, claims, job_id, approval_token or "")
    except TunestepError as exc:
        _audit_refusal(ws, draft_id, exc)
        raise
    if draft.backend == "hf-jobs":
        return _start_hf(ws, draft, job_id, claims.nonce, fresh=fresh)
    return _start(ws, draft, job_id)


def _resumable(ws: Workspace, nonce: str, draft_id: str) -> str | None:
    with ledger.open_ledger(ws) as conn:
        return resumable_job(conn, nonce, draft_id)


def _approved_draft(ws: Workspace, draft_id: str, claims: ApprovalClaims) -> JobDraft:
    """The draft parsed from the stored manifest bytes after they hash to the token's
    digest: what runs below (job.json, the Hub request) comes from these bytes only."""
    if claims.workspace != str(ws.root):  # first: another workspace is not a replaced ledger
        raise TunestepError("approval_wrong_draft", f"the token was signed for the workspace "
                            f"{claims.workspace}, not this one ({ws.root}): submit it there")
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
        row = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                           (draft_id,)).fetchone()
    if row is None:
        raise TunestepError("draft_unknown", f"no draft {draft_id!r} in the ledger of the "
                            f"workspace {ws.root}")
    if claims.ledger != identity:
        # The used nonces live in the ledger: a ledger made afresh must not forget them.
        raise TunestepError("approval_wrong_ledger", f"the token was signed for this "
                            f"workspace's ledger as it was before ({ws.state_dir}/state.sqlite "
                            "was deleted or replaced since); draft again and ask the operator "
                            "for a new approval")
    if claims.draft_id != draft_id:
        raise TunestepError("approval_wrong_draft",
                            f"the token approves {claims.draft_id}, not {draft_id}")
    data, _ = stored_manifest(row, draft_id)  # the bytes hash to the stored digest, or
    if manifest_digest(data) != claims.digest:  # draft_tampered
        raise TunestepError("approval_wrong_draft",
                            "the token approves another version of this draft (digest differs)")
    stored = draft_from_row(row, draft_id, digest=claims.digest)
    # cheap and clearer first; the insert still decides
    _refuse_used_nonce(ws, claims.nonce, draft_id)
    now = recompute(ws, stored)  # staleness only: nothing of it runs
    if now.digest != claims.digest:
        changed = what_changed(stored, now)
        raise TunestepError("draft_stale", f"the draft no longer matches the workspace "
                            f"({changed}); draft again and ask the operator for a new approval")
    return stored


def _refuse_used_nonce(ws: Workspace, nonce: str, draft_id: str) -> None:
    with ledger.open_ledger(ws) as conn:
        used = conn.execute("SELECT 1 FROM approvals WHERE nonce = ?", (nonce,)).fetchone()
        # An hf-jobs submit that has no Hub job yet may be resumed with its own token.
        used = used and resumable_job(conn, nonce, draft_id) is None
    if used:
        raise TunestepError("approval_replayed", "this approval token was already used; each "
                            "token starts one job")


def _claim_nonce(ws: Workspace, draft: JobDraft, claims: ApprovalClaims, job_id: str,
                 token: str) -> None:
    with ledger.open_ledger(ws) as conn:
        try:
            with ledger.transaction(conn):
                # An hf-jobs row is 'submitting' (its submitter holding the lease) until
                # the Hub has its job: hf_submit.py.
                hf = draft.backend == "hf-jobs"
                conn.execute(
                    "INSERT INTO jobs(job_id, draft_id, backend, status, created_at, result)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, draft.draft_id, draft.backend, "submitting" if hf else "starting",
                     time.time(), ledger.dumps(initial_result() if hf else {})))
                conn.execute(
                    # the token kept: the hold-out pin is checked against the eval
                    # sha256 the operator signed (tools/data/holdout_continuity.py)
                    "INSERT INTO approvals(nonce, draft_id, kid, operator, job_id, used_at,"
                    " token) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (claims.nonce, draft.draft_id, claims.kid, claims.op, job_id, time.time(),
                     token))
                ledger.audit(conn, "job.submit", job_id,
                             detail={"draft_id": draft.draft_id, "digest": draft.digest,
                                     "operator": claims.op, "kid": claims.kid,
                                     "backend": draft.backend})
        except sqlite3.IntegrityError:
            raise TunestepError("approval_replayed",
                                "this approval token was already used; each token starts "
                                "one job") from None


def _audit_refusal(ws: Workspace, draft_id: str, exc: TunestepError) -> None:
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "job.submit", draft_id, outcome="refused",
                     detail={"code": exc.code})


def _start(ws: Workspace, draft: JobDraft, job_id: str) -> JobHandle:
    try:
        if draft.backend == "local":
            return _start_local(ws, draft, job_id)
        return _start_hf(ws, draft, job_id)
    except Exception as exc:
        code = exc.code if isinstance(exc, TunestepError) else "backend_failed"
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            # a job already ended (settled by job_status meanwhile) keeps its first end
            ended = ", ".join(f"'{s}'" for s in ledger.JOB_ENDED)
            conn.execute("UPDATE jobs SET status = 'failed', ended_at = ?, result = ?"
                         f" WHERE job_id = ? AND status NOT IN ({ended})",
                         (time.time(), ledger.dumps({"error": code}), job_id))
            ledger.audit(conn, "job.start", job_id, outcome="failed", detail={"code": code})
        if isinstance(exc, TunestepError):
            raise
        raise TunestepError("backend_failed",
                            f"the backend could not start the job: {type(exc).__name__}") from exc


def _start_local(ws: Workspace, draft: JobDraft, job_id: str) -> JobHandle:
    from tunestep.tools.runs import local_backend as local

    folder = local.job_dir(ws, job_id)
    folder.mkdir(parents=True)
    for ref in draft.files:  # whole files or none: a killed submit leaves nothing half-copied
        if ref.role == "script":
            atomic_write_bytes(folder / ref.path, (JOBS_DIR / ref.path).read_bytes())
    config = canonical_json(draft.job_config)  # from the verified manifest bytes
    atomic_write_bytes(folder / "job.json", config)
    hub = draft.job_config["hub"]
    if hub["push"]:  # the job would push into whatever repo exists: check it is private
        from tunestep.tools.hub.jobs_api import hub_api
        from tunestep.tools.hub.repos import ensure_repo
        from tunestep.tools.hub.token import read_token

        ensure_repo(hub_api(read_token()), hub["model_id"], "model",
                    private=hub["private"] is not False)
    # The job gets the digests on its command line and verifies before anything else.
    pid = local.start(ws, job_id, pass_token=bool(hub["push"]), digest=draft.digest,
                      config_sha256=hashlib.sha256(config).hexdigest())
    return JobHandle(job_id=job_id, draft_id=draft.draft_id, backend="local", status="running",
                     pid=pid, log_path=ws.relative(folder / "output.log"),
                     **_follow(job_id, "job_status", "job_logs"))


def _start_hf(ws: Workspace, draft: JobDraft, job_id: str, nonce: str, *,
              fresh: bool) -> JobHandle:
    from tunestep.tools.runs.hf_submit import start_hf

    started = start_hf(ws, draft, job_id, nonce, fresh=fresh)
    return JobHandle(job_id=job_id, draft_id=draft.draft_id, backend="hf-jobs",
                     status="running", external_id=started.job_id, url=started.url,
                     **_follow(job_id, "job_status"))
