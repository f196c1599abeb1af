"""One token, one paid job on Hugging Face Jobs, whatever the network did.

``submit_job`` records the job row and the token's nonce in one transaction, then comes
here. An hf-jobs row stays ``submitting`` until the Hub has a job for it:

1. Take the row's lease (``result.submit.lease_until``, 10 minutes), so two processes
   holding the same token never submit at the same time (``submit_in_progress``).
2. Ask the Hub for a job labelled ``tunestep-nonce=<nonce>``; if there is one, adopt it
   (record its id, ``running``) and stop: that job is the token's one job.
3. Commit the bundle (idempotent: the same bytes give the same tree), then create the job
   with the labels ``tunestep-draft`` and ``tunestep-nonce``.
4. When the creation's answer is lost (5xx, timeout, dropped connection, unreadable
   answer), look for the label again right away and adopt what is there.
5. Any failure leaves the row ``submitting`` with the error and releases the lease: the
   same token, submitted again, resumes at step 1 and still starts at most one job.

``settle_submitting`` (from ``job_status``) does step 2 for a row whose submitter is gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace

logger = logging.getLogger(__name__)

LEASE_S = 600.0
NONCE_LABEL = "tunestep-nonce"
SUBMITTING = "submitting"
RETRY_HINT = ("submit_job again with the same approval token: it first looks for this "
              "token's job on the Hub and starts at most one")


class HfStarted(BaseModel):
    """What submit_job tells its caller once the Hub has the token's job."""

    external_id: str  # namespace/job id
    job_id: str  # the Hub's job id
    url: str
    adopted: bool  # found on the Hub by its nonce label rather than created just now
    revision: str | None = None


def initial_result(now: float | None = None) -> dict[str, Any]:
    """The ``result`` of a fresh hf-jobs row: its submitter holds the lease."""
    return {"submit": {"lease_until": (now or time.time()) + LEASE_S, "attempts": 1}}


def resumable_job(conn, nonce: str, draft_id: str) -> str | None:
    """The job id a used nonce may resume: an hf-jobs row of this draft still submitting."""
    row = conn.execute(
        "SELECT j.job_id, j.backend, j.status, j.draft_id FROM approvals a"
        " JOIN jobs j ON j.job_id = a.job_id WHERE a.nonce = ?", (nonce,)).fetchone()
    if row and row["backend"] == "hf-jobs" and row["status"] == SUBMITTING \
            and row["draft_id"] == draft_id:
        return row["job_id"]
    return None


def _nonce_of(conn, job_id: str) -> str | None:
    row = conn.execute("SELECT nonce FROM approvals WHERE job_id = ?", (job_id,)).fetchone()
    return row["nonce"] if row else None


def _take_lease(ws: Workspace, job_id: str) -> None:
    now = time.time()
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        row = conn.execute("SELECT status, result FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()
        if row is None or row["status"] != SUBMITTING:
            raise TunestepError("approval_replayed", "this approval token already started "
                                f"its job ({job_id}); each token starts one job")
        result = ledger.loads(row["result"]) or {}
        state = result.setdefault("submit", {})
        if state.get("lease_until", 0) > now:
            wait = int(state["lease_until"] - now) + 1
            from tunestep.tools.core.next_step import NextAction

            raise TunestepError("submit_in_progress", f"another submit of this token is "
                                f"running (job {job_id}); its lease ends in {wait} s: ask for "
                                "its status, or submit again after that",
                                hint=NextAction(tool="job_status", args={"job_id": job_id}))
        state.update(lease_until=now + LEASE_S, attempts=state.get("attempts", 0) + 1)
        state.pop("error", None)
        conn.execute("UPDATE jobs SET result = ? WHERE job_id = ?",
                     (ledger.dumps(result), job_id))


def _update_submit_state(ws: Workspace, job_id: str, **changes: Any) -> None:
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        row = conn.execute("SELECT status, result FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()
        if row is None or row["status"] != SUBMITTING:
            return
        result = ledger.loads(row["result"]) or {}
        result.setdefault("submit", {}).update(changes)
        conn.execute("UPDATE jobs SET result = ? WHERE job_id = ?",
                     (ledger.dumps(result), job_id))


def _record_running(ws: Workspace, job_id: str, started: HfStarted, repo: str) -> None:
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        row = conn.execute("SELECT result FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        previous = (ledger.loads(row["result"]) or {}).get("submit", {}) if row else {}
        result = {"revision": started.revision or previous.get("revision"), "repo": repo,
                  "adopted": started.adopted,
                  "submit": {"attempts": previous.get("attempts", 1)}}
        conn.execute("UPDATE jobs SET status = 'running', external_id = ?, url = ?,"
                     " started_at = ?, result = ? WHERE job_id = ? AND status = ?",
                     (started.external_id, started.url, time.time(), ledger.dumps(result),
                      job_id, SUBMITTING))
        ledger.audit(conn, "job.start", job_id, detail={
            "external_id": started.external_id, "adopted": started.adopted})


def _started(job, adopted: bool, revision: str | None) -> HfStarted:
    return HfStarted(external_id=f"{job.namespace}/{job.job_id}", job_id=job.job_id,
                     url=job.url, adopted=adopted, revision=revision or job.revision)


class ExpectedJob(BaseModel):
    """What the token's Hub job must be, from the signed manifest (and the bundle commit
    this row recorded before it asked the Hub to create the job)."""

    draft_id: str
    flavor: str
    image: str
    command: list[str]
    volume: str  # "<dataset repo>:steps/<draft id>"
    revision: str | None  # the bundle commit recorded before the job was created


def run_command(submission: dict, job_config: dict) -> list[str]:
    """The command the Hub runs: the signed one, then the sha256 of the job.json that the
    bundle carries (canonical bytes of the signed job config), which the job verifies."""
    import hashlib

    from tunestep.tools.core.hashing import canonical_json

    return [*submission["command"], "--config-sha256",
            hashlib.sha256(canonical_json(job_config)).hexdigest()]


def expected_job(submission: dict, job_config: dict, draft_id: str,
                 revision: str | None) -> ExpectedJob:
    from tunestep.tools.hub.bundle import step_path

    return ExpectedJob(draft_id=draft_id, flavor=submission["flavor"],
                       image=submission["image"], command=run_command(submission, job_config),
                       volume=f"{submission['dataset_repo']}:{step_path(draft_id)}",
                       revision=revision)


def _mismatch(job, expected: ExpectedJob) -> str | None:
    """What of a Hub job carrying the token's nonce differs from the signed manifest."""
    checks = [("flavor", job.flavor, expected.flavor), ("image", job.image, expected.image),
              ("command", job.command, expected.command),
              ("draft label", job.labels.get("tunestep-draft"), expected.draft_id),
              ("mounted bundle", job.volume, expected.volume)]
    for what, got, want in checks:
        if got != want:
            return f"its {what} is {got!r}, the signed one {want!r}"
    # The bundle commit this row recorded before creating the job. A ledger that lost it
    # (rows wiped) leaves the command's job.json digest to decide: the job refuses any
    # job.json but the signed one, and that config names every input by sha256.
    if expected.revision is not None and job.revision != expected.revision:
        return (f"it mounts bundle commit {job.revision!r}, but this token's bundle is "
                f"{expected.revision!r}")
    return None


def _find(api, nonce: str, namespace: str, expected: ExpectedJob) -> HfStarted | None:
    """The Hub job carrying the token's nonce, adopted only when it is the signed job."""
    from tunestep.tools.hub import jobs_api as hf_jobs

    found = hf_jobs.find_hf_jobs(api, {NONCE_LABEL: nonce}, namespace=namespace)
    if not found:
        return None
    if len(found) > 1:  # cannot happen through tunestep; say so rather than hide one
        logger.warning("%d Hub jobs carry nonce label %s: %s; tracking the oldest",
                       len(found), nonce, ", ".join(j.job_id for j in found))
    oldest = min(found, key=lambda j: (j.created_at is None, j.created_at))
    wrong = _mismatch(oldest, expected)
    if wrong is not None:
        raise TunestepError("hf_job_mismatch", f"the Hub job {oldest.job_id} carries this "
                            f"token's nonce but is not the signed job: {wrong}; it is not "
                            "adopted (cancel it on the Hub if it is not yours)")
    return _started(oldest, adopted=True, revision=None)


def _recorded_revision(ws: Workspace, job_id: str) -> str | None:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT result FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    result = (ledger.loads(row["result"]) or {}) if row else {}
    return (result.get("submit") or {}).get("revision") or result.get("revision")


def start_hf(ws: Workspace, draft, job_id: str, nonce: str, *, fresh: bool) -> HfStarted:
    """Get the Hub to run the token's one job for ``draft``; see the module docstring."""
    from tunestep.tools.hub import jobs_api as hf_jobs
    from tunestep.tools.hub.bundle import upload_step_bundle
    from tunestep.tools.hub.errors import EFFECT_UNKNOWN, HubError
    from tunestep.tools.hub.repos import ensure_repo
    from tunestep.tools.hub.token import read_token

    if not fresh:
        _take_lease(ws, job_id)
    sub = draft.submission
    try:
        token = read_token()
        if not token:
            raise TunestepError("hf_token_missing", "no Hugging Face token: log in with `hf "
                                "auth login` or set HF_TOKEN in the server's environment")
        api = hf_jobs.hub_api(token)
        namespace = hf_jobs.hub_whoami(api)
        signed = sub.model_dump(), draft.job_config, draft.draft_id
        found = _find(api, nonce, namespace,
                      expected_job(*signed, _recorded_revision(ws, job_id)))
        if found is None:
            hub = draft.job_config.get("hub") or {}  # an inspect draft pushes no model
            private = hub.get("private", True) is not False
            if hub.get("push") and hub.get("model_id"):  # private before the job pushes
                ensure_repo(api, hub["model_id"], "model", private=private)
            revision = upload_step_bundle(api, sub.dataset_repo, draft.draft_id,
                                          _bundle_files(ws, draft, job_id), private=private)
            _drop_spool(ws, job_id)
            _update_submit_state(ws, job_id, revision=revision)
            try:
                ref = hf_jobs.submit_hf_job(
                    api, repo_id=sub.dataset_repo, revision=revision,
                    draft_id=draft.draft_id, flavor=sub.flavor,
                    timeout_seconds=sub.timeout_seconds,
                    labels={**sub.labels, NONCE_LABEL: nonce}, image=sub.image,
                    command=run_command(*signed[:2]), secret_names=sub.secrets, token=token,
                    namespace=namespace)
                found = HfStarted(external_id=f"{ref.namespace}/{ref.job_id}",
                                  job_id=ref.job_id, url=ref.url, adopted=False,
                                  revision=revision)
            except HubError as exc:
                if exc.code not in EFFECT_UNKNOWN:
                    raise
                # The Hub may have created the job and lost the answer: look, once.
                try:
                    found = _find(api, nonce, namespace, expected_job(*signed, revision))
                except HubError:
                    found = None
                if found is None:
                    raise
    except Exception as exc:  # a bug or an odd failure must not keep the lease either
        _drop_spool(ws, job_id)
        if not isinstance(exc, TunestepError):
            logger.exception("hf-jobs submit of %s failed", job_id)
            exc = TunestepError("backend_failed", f"the submission failed unexpectedly "
                                f"({type(exc).__name__})")
        _update_submit_state(ws, job_id, lease_until=0, error=exc.code)
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "job.start", job_id, outcome="failed",
                         detail={"code": exc.code, "state": SUBMITTING})
        known = ("the Hub may have started it: job_status finds it by its label"
                 if exc.code in EFFECT_UNKNOWN else "no Hub job carries its token yet")
        raise HubError(exc.code, f"{exc.message}. Job {job_id} is still '{SUBMITTING}' "
                       f"({known}): {RETRY_HINT}",
                       retry_after=getattr(exc, "retry_after", None)) from None
    _record_running(ws, job_id, found, sub.dataset_repo)
    return found


def _bundle_files(ws: Workspace, draft, job_id: str) -> dict:
    from pathlib import Path

    from tunestep.tools.core.hashing import canonical_json
    from tunestep.tools.drafts.draft import JOBS_DIR

    files: dict = {"job.json": canonical_json(draft.job_config)}
    for name, source in draft.submission.bundle.items():
        if source.startswith("job:"):
            files[name] = JOBS_DIR / source.removeprefix("job:")
        elif source.startswith("checkpoint:"):  # a local start (chain.py), hashed in the draft
            files[name] = _spooled(ws, draft, job_id, name, Path(source.removeprefix(
                "checkpoint:")))
        else:
            files[name] = ws.resolve(source)
    return files


def _spool_dir(ws: Workspace, job_id: str):
    from tunestep.tools.runs.local_backend import job_dir

    return job_dir(ws, job_id) / "start"


def _spooled(ws: Workspace, draft, job_id: str, name: str, source) -> object:
    """A private copy of one checkpoint file, hashed while copied and checked against the
    draft: the commit carries the approved bytes even if the store changes meanwhile, and
    a multi-GB weight file is streamed from disk, never held in memory."""
    import shutil

    from tunestep.tools.core.atomic import atomic_open
    from tunestep.tools.core.hashing import copy_hashing

    rel = name.split("/", 1)[1]
    expected = next((f.sha256 for f in draft.files
                     if f.role == "checkpoint" and f.path.endswith("/" + rel)), None)
    target = _spool_dir(ws, job_id) / rel
    try:
        with atomic_open(target, "wb") as writer:
            copied = copy_hashing(source, writer)
    except OSError as exc:
        raise TunestepError("hf_bundle_unreadable", f"cannot read the start checkpoint's "
                            f"file: {exc.strerror}", path=str(source)) from None
    if copied != expected:
        shutil.rmtree(_spool_dir(ws, job_id), ignore_errors=True)
        raise TunestepError("draft_stale", f"the start checkpoint's {rel} changed since the "
                            "draft; draft again and ask the operator for a new approval",
                            path=str(source))
    return target


def _drop_spool(ws: Workspace, job_id: str) -> None:
    import shutil

    shutil.rmtree(_spool_dir(ws, job_id), ignore_errors=True)


def settle_submitting(ws: Workspace, row) -> None:
    """A ``submitting`` row: adopt the Hub's job for its nonce if there is one.

    While another submit holds the lease nothing is asked. A Hub that cannot be reached
    raises its named error and leaves the row as it was.
    """
    from tunestep.tools.hub import jobs_api as hf_jobs
    from tunestep.tools.hub import poll as hf_poll
    from tunestep.tools.hub.token import read_token

    result = ledger.loads(row["result"]) or {}
    if result.get("submit", {}).get("lease_until", 0) > time.time() \
            or not hf_poll.due(result):
        return
    from tunestep.tools.signing.signed_manifest import signed_fields

    with ledger.open_ledger(ws) as conn:
        nonce = _nonce_of(conn, row["job_id"])
        draft = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                             (row["draft_id"],)).fetchone()
    signed = signed_fields(draft, row["draft_id"]) if draft else None
    if nonce is None or signed is None or not signed.get("submission"):
        return
    config = {**signed["job_config"], "draft_id": row["draft_id"]}
    expected = expected_job(signed["submission"], config, row["draft_id"],
                            (result.get("submit") or {}).get("revision"))
    api = hf_jobs.hub_api(read_token())
    try:
        found = _find(api, nonce, hf_jobs.hub_whoami(api), expected)
    except TunestepError as exc:
        hf_poll.schedule(ws, row["job_id"], getattr(exc, "retry_after", None))
        raise
    hf_poll.schedule(ws, row["job_id"])
    if found is None:
        _update_submit_state(ws, row["job_id"], note="no Hub job carries this token yet: "
                             f"{RETRY_HINT} (until the token expires), or cancel_job")
    else:
        repo = signed["submission"]["dataset_repo"]
        _record_running(ws, row["job_id"], found, repo)
