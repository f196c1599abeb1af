"""Job status, logs and cancel, for both backends, from the ledger outwards.

The ledger is the record; a status call refreshes it from the backend (a local process
that vanished without recording its end is marked ``lost``; an HF job's stage is asked
of the Hub, and on completion its pushed outputs are fetched into the workspace and the
step is recorded; a remote inspection's report is fetched into its job folder instead,
and no step is recorded: ``hf_status``). ``job_logs`` reads a log through ``log_filter``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from pydantic import BaseModel

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.model_sync import SyncedVersion
from tunestep.tools.lineage.promotion_records import IgnoredPromotion
from tunestep.tools.runs.hf_status import HF_STAGES, hf_api, refresh_hf, split_external
from tunestep.tools.runs.job_progress import JobProgress, progress_fields
from tunestep.tools.runs.job_rows import draft_kind, job_row
from tunestep.tools.runs.log_filter import LogFilter
from tunestep.tools.runs.step_outcome import HoldoutMeasured, holdout_of_draft

TERMINAL = set(ledger.JOB_ENDED)
# submit_job records a job as 'starting' (with its approval) and then starts it: a local
# job within a second, a remote one once its bundle is uploaded. A job still 'starting'
# this long after it was recorded lost the process that submitted it (killed between the
# two); without this it would stay 'starting' for ever.
STARTING_GRACE_S = {"local": 120.0, "hf-jobs": 3600.0}


class JobStatus(BaseModel):
    job_id: str
    draft_id: str
    backend: str
    status: str
    terminal: bool
    pid: int | None = None
    external_id: str | None = None
    url: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    log_path: str | None = None
    result: dict[str, Any] = {}
    # An hf-jobs training step that succeeded: its pushed model, brought into the store
    # (model_sync); or why that failed (the job's outcome stands; sync_model retries).
    model_sync: SyncedVersion | None = None
    model_sync_error: str | None = None
    next_actions: list[str] = []
    next_steps: list[NextAction] = []  # the same, as data (each view in its own syntax)
    # A finished training step: whether its version became latest (the promotion gate),
    # and why; None until the job has said.
    promoted: bool | None = None
    promotion_reason: str | None = None
    # How far it is, from its own output, and when another call can say more
    # (tools/runs/job_progress.py; None once the job has ended).
    progress: JobProgress | None = None
    ask_again_after_s: float | None = None
    # The ledger's latest and the store's link (tools/lineage/latest_check.py): a link that
    # disagrees (latest_link_mismatch) and signed records that do not verify are named.
    latest: str | None = None
    latest_mismatch: str | None = None
    ignored_promotions: list[IgnoredPromotion] = []
    # A training job: the hold-out its gate measures (the signed draft's eval file, and
    # whether an operator's re-pin set it: tools/step_outcome.holdout_of_draft).
    holdout: HoldoutMeasured | None = None
    # A job that did not succeed: how it ended, in words (a signal, a lost supervisor, an
    # exit code), for the operator who did not watch it end.
    ended: str | None = None


class JobLogs(BaseModel):
    job_id: str
    lines: list[str]
    total_lines: int | None = None
    # False: only the job's own log lines (what train.log holds) and its last error, each
    # without escape codes; progress bars, libraries' chatter, the metrics dicts the
    # trainer prints again and the result line are left out (``raw`` keeps them).
    raw: bool = True
    left_out: int = 0  # lines of the log the filtered view left out


class JobList(BaseModel):
    jobs: list[JobStatus]


def _status(row) -> JobStatus:
    result = ledger.loads(row["result"]) or {}
    promotion = result.get("promotion") if isinstance(result.get("promotion"), dict) else None
    return JobStatus(
        promoted=promotion.get("promoted") if promotion else None,
        promotion_reason=promotion.get("reason") if promotion else None,
        job_id=row["job_id"], draft_id=row["draft_id"], backend=row["backend"],
        status=row["status"], terminal=row["status"] in TERMINAL, pid=row["pid"],
        external_id=row["external_id"], url=row["url"], exit_code=row["exit_code"],
        started_at=row["started_at"], ended_at=row["ended_at"], log_path=row["log_path"],
        result=result)


def job_status(ws: Workspace, job_id: str) -> JobStatus:
    """Where the job is now: running, succeeded, failed, cancelled or lost."""
    row = job_row(ws, job_id)
    if row["status"] == "starting":  # nothing to ask a backend yet: no pid, no remote id
        _settle_starting(ws, row)
        row = job_row(ws, job_id)
    elif row["status"] == "submitting":  # hf-jobs: the Hub may have its job (hf_submit.py)
        from tunestep.tools.runs.hf_submit import settle_submitting

        settle_submitting(ws, row)
        row = job_row(ws, job_id)
    elif row["status"] not in TERMINAL:
        if row["backend"] == "local":
            _refresh_local(ws, row)
        else:
            refresh_hf(ws, row)
        row = job_row(ws, job_id)
    status = _status(row)
    if status.status == "succeeded" and status.backend == "hf-jobs":
        status = _bring_model_home(ws, status)
    if status.status in ("failed", "cancelled", "lost") and not status.next_steps:
        status = _after_the_end(ws, status)
    status = _with_latest(ws, status)
    return status.model_copy(update=progress_fields(ws, status))


def _with_latest(ws: Workspace, status: JobStatus) -> JobStatus:
    """The ledger's latest beside a training job's status, and what disagrees with it."""
    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.lineage.latest_check import latest_state

    if draft_kind(ws, status.draft_id) != "train":
        return status
    try:
        plan = load_plan(ws).plan
        with ledger.open_ledger(ws) as conn:
            state = latest_state(ws, conn, plan.model_link, plan.model)
    except TunestepError:  # no plan or store to compare with: the job's status stands
        return status
    update: dict[str, Any] = {"latest": state.ledger_latest,
                              "ignored_promotions": state.ignored,
                              "holdout": holdout_of_draft(ws, status.draft_id),
                              "latest_mismatch": None if state.matches else state.message}
    if not state.matches and state.fix_action is not None:
        # The fix among the next steps: each view says it in its own syntax (the CLI's
        # `tunestep promote VERSION`, MCP's promote_version(version=...)).
        steps = [*status.next_steps, state.fix_action]
        update |= {"next_steps": steps, "next_actions": [a.mcp() for a in steps]}
    return status.model_copy(update=update)


def _after_the_end(ws: Workspace, status: JobStatus) -> JobStatus:
    """How a job that did not succeed ended, in words, and what to do next."""
    result = status.result
    ended = result.get("note") or result.get("error")
    if status.status == "failed" and not ended:
        ended = (f"the job exited with code {status.exit_code}" if status.exit_code
                 is not None else "the job failed")
    with ledger.open_ledger(ws) as conn:
        found = conn.execute("SELECT batch, kind FROM drafts WHERE draft_id = ?",
                             (status.draft_id,)).fetchone()
    batch = found["batch"] if found else None
    steps = [NextAction(lead="see what it printed:", tool="job_logs",
                        args={"job_id": status.job_id})]
    if found is not None and found["kind"] == "train" and batch:
        steps.append(NextAction(lead="to run the step again, draft it anew (its approval "
                                "token is spent):", tool="draft_job", args={"batch": batch}))
    return status.model_copy(update={"ended": ended, "next_steps": steps,
                                     "next_actions": [a.mcp() for a in steps]})


def _bring_model_home(ws: Workspace, status: JobStatus) -> JobStatus:
    """A succeeded remote training step's model into the store, unless it is there."""
    from tunestep.tools.lineage.model_sync import sync_model

    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT version, hub_revision FROM steps WHERE job_id = ?",
                            (status.job_id,)).fetchone()
    if step is None or not step["hub_revision"] or not step["version"]:
        return status  # an inspection, or a step that pushed no model
    try:
        report = sync_model(ws, step["version"])
    except TunestepError as exc:
        again = NextAction(lead="bring the model home again:", tool="sync_model",
                           args={"version": step["version"]})
        return status.model_copy(update={"model_sync_error": str(exc),
                                         "next_actions": [again.mcp()],
                                         "next_steps": [again]})
    return status.model_copy(update={"model_sync": report.synced[0]})


def _settle_starting(ws: Workspace, row) -> None:
    from tunestep.tools.runs import local_backend as local

    grace = STARTING_GRACE_S.get(row["backend"], max(STARTING_GRACE_S.values()))
    if time.time() - row["created_at"] > grace:
        local.record_outcome(ws, row["job_id"], "lost", None, {
            "error": "the submitting process ended before the job was started; draft "
                     "and approve the step again"})


def _refresh_local(ws: Workspace, row) -> None:
    from tunestep.tools.runs import local_backend as local

    # The supervisor records its own end; re-read in case it just did.
    if (row["status"] == "running" and not local.is_alive(row["pid"])
            and job_row(ws, row["job_id"])["status"] == "running"):
        # Killed outright (SIGKILL, out of memory): what it left of the job is stopped now.
        left = local.stop_leftovers(row["pid"], row["job_id"]) if row["pid"] else 0
        local.record_outcome(ws, row["job_id"], "lost", None, {
            "error": f"the job's supervisor (pid {row['pid']}) ended without recording an "
                     "outcome: killed outright (kill -9, out of memory) or the machine "
                     "restarted" + (f"; {left} process(es) of the job it left were stopped"
                                    if left else "")})


def job_logs(ws: Workspace, job_id: str, tail: int = 50, raw: bool = False) -> JobLogs:
    """The last ``tail`` lines of the job's output: its own log lines and its last error
    (``LogFilter``), or with ``raw`` every line as written."""
    if tail < 1 or tail > 5000:
        raise TunestepError("bad_argument", "tail must be between 1 and 5000 lines")
    row = job_row(ws, job_id)
    if row["backend"] == "hf-jobs":
        from tunestep.tools.hub import jobs_api as hf_jobs

        if not row["external_id"]:  # still submitting: no Hub job is known yet
            return JobLogs(job_id=job_id, lines=[], total_lines=0, raw=raw)
        namespace, job = split_external(row["external_id"])
        # The Hub gives the last lines only: ask for more when most will be left out.
        asked = tail if raw else min(5000, tail * 4)
        logs = hf_jobs.hf_job_logs(hf_api(), job, asked, namespace=namespace)
        if raw:
            return JobLogs(job_id=job_id, lines=logs.lines)
        kept = LogFilter(tail)
        for line in logs.lines:
            kept.add(line)
        return JobLogs(job_id=job_id, lines=kept.lines(), raw=False,
                       left_out=kept.left_out)
    path = ws.resolve(row["log_path"]) if row["log_path"] else None
    if path is None or not path.is_file():
        return JobLogs(job_id=job_id, lines=[], total_lines=0, raw=raw)
    count = 0
    last: deque[str] = deque(maxlen=tail)
    kept = LogFilter(tail)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            count += 1
            if raw:
                last.append(line.rstrip("\n"))
            else:
                kept.add(line)
    if raw:
        return JobLogs(job_id=job_id, lines=list(last), total_lines=count)
    return JobLogs(job_id=job_id, lines=kept.lines(), total_lines=count, raw=False,
                   left_out=kept.left_out)


def cancel_job(ws: Workspace, job_id: str) -> JobStatus:
    """Stop a running job. Stopping spends nothing, so it needs no approval."""
    row = job_row(ws, job_id)
    if row["status"] == "submitting":
        row = _cancel_submitting(ws, row)
    if row["status"] in TERMINAL:
        return job_status(ws, job_id)  # with how it ended and what to do next
    if row["backend"] == "local":
        from tunestep.tools.runs import local_backend as local

        if not local.cancel(row["pid"], job_id):
            local.record_outcome(ws, job_id, "cancelled", None, {"note": "was not running"})
    else:
        from tunestep.tools.hub import jobs_api as hf_jobs
        from tunestep.tools.hub import poll as hf_poll
        from tunestep.tools.runs import local_backend as local

        namespace, job = split_external(row["external_id"])
        remote = hf_jobs.hf_job_cancel(hf_api(), job, namespace=namespace)
        hf_poll.schedule(ws, job_id)
        if remote.terminal and HF_STAGES.get(remote.stage) == "cancelled":
            local.record_outcome(ws, job_id, "cancelled", None,
                                 ledger.loads(job_row(ws, job_id)["result"]) or {})
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "job.cancel", job_id)
    return wait_for_job(ws, job_id, timeout=30) if row["backend"] == "local" else job_status(
        ws, job_id)


def _cancel_submitting(ws: Workspace, row):
    """Cancel before the Hub has a job: adopt one made meanwhile, else end the row here."""
    from tunestep.tools.runs import local_backend as local
    from tunestep.tools.runs.hf_submit import settle_submitting

    settle_submitting(ws, row)
    row = job_row(ws, row["job_id"])
    if row["status"] != "submitting":
        return row  # the Hub had it: cancel that job
    lease = ((ledger.loads(row["result"]) or {}).get("submit") or {}).get("lease_until", 0)
    if lease > time.time():
        raise TunestepError("submit_in_progress", "a submit of this job is running right now; "
                            "cancel it once job_status shows its Hub job")
    local.record_outcome(ws, row["job_id"], "cancelled", None, {
        "note": "cancelled before the Hub had a job; its approval token can no longer "
                "start one"})
    return job_row(ws, row["job_id"])


def wait_for_job(ws: Workspace, job_id: str, timeout: float, poll: float = 0.5,
                 on_poll=None) -> JobStatus:
    """Poll until the job ends or ``timeout`` seconds pass; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(ws, job_id)
        if on_poll is not None:
            on_poll(status)
        if status.terminal or time.monotonic() >= deadline:
            return status
        time.sleep(poll)


def list_jobs(ws: Workspace, limit: int = 20) -> JobList:
    if limit < 1 or limit > 1000:  # SQLite takes 64-bit integers only: never a traceback
        raise TunestepError("bad_argument", "limit must be between 1 and 1000 jobs")
    with ledger.open_ledger(ws) as conn:
        rows = conn.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?",
                            (limit,)).fetchall()
    return JobList(jobs=[_status(r) for r in rows])
