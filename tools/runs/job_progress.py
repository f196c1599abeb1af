"""How far a running job is, from its own output, and when to ask about it again.

A training job writes one line per event to its output (``tools/jobs/train_sft.py``:
``start:``, ``train rows: ... eval rows: N``, ``evaluated the previous version on N
hold-out rows``, ``training``, one ``log {...}`` per epoch with ``epoch``, ``evaluated the
new version on N``, ``promotion:``, ``pushed ...``, ``done:``). The last of these that
appeared says the stage; the epoch and the hold-out rows evaluated are read from them.
The job reports an evaluation pass when it completes, so ``eval_rows_done`` counts
finished passes' rows, not rows inside a pass still running.

An hf-jobs job's output is its Hub log: read at most once per poll interval, the reading
kept in the ledger between reads (``hub_progress``).

``ask_again_after_s``: an hf-jobs status is answered from the ledger until the Hub may be
asked again (``tools/hub/poll.py``: at least 10 s, or the Hub's Retry-After); asking sooner
gets the same answer. A local job's status is read from the ledger and the process
table, which costs nothing, so a short interval is enough.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError

if TYPE_CHECKING:
    from tunestep.tools.core.workspace import Workspace

LOCAL_POLL_S = 5.0
TAIL_LINES = 400  # the events of one job fit easily; memory stays bounded on huge logs

_EVENT = re.compile(r"^\S+ \[[^\]]*\] (?P<message>.*)$")
_ROWS = re.compile(r"eval rows: (\d+)")
_EVALUATED = re.compile(r"evaluated the (previous|new) version on (\d+) hold-out rows")
# (prefix of the message, the stage the job is in once that line is printed)
_STAGES = (
    ("start:", "starting"),
    ("downloading checkpoint", "downloading the checkpoint"),
    ("loading model from", "loading the model"),
    ("train rows:", "evaluating the previous version on the hold-out"),
    ("evaluated the previous version", "preparing training"),
    ("training (started", "training"),
    ("evaluated the new version", "deciding promotion"),
    ("promotion:", "saving the new version"),
    ("pushed the model", "pushing the reports"),
    ("pushed ", "pushing the reports"),
    ("done:", "done"),
)


class JobProgress(BaseModel):
    """What the job's own output says about how far it is."""

    stage: str | None = None  # None: the job has printed no event yet
    epoch: float | None = None  # the last completed epoch the job logged
    epochs: float | None = None  # how many the draft asked for
    eval_rows_total: int | None = None  # hold-out rows each evaluation pass covers
    eval_rows_done: int = 0  # rows of finished evaluation passes (previous + new)
    last_line: str | None = None  # the job's last event line, as it printed it


def read_progress(lines: list[str], epochs: float | None = None) -> JobProgress:
    """The progress the job's output lines show (oldest first)."""
    progress = JobProgress(epochs=epochs)
    for line in lines:
        match = _EVENT.match(line.strip())
        if match is None:
            continue
        message = match.group("message")
        progress.last_line = line.strip()
        for prefix, stage in _STAGES:
            if message.startswith(prefix):
                progress.stage = stage
                break
        if message.startswith("train rows:") and (rows := _ROWS.search(message)):
            progress.eval_rows_total = int(rows.group(1))
        if evaluated := _EVALUATED.match(message):
            progress.eval_rows_done += int(evaluated.group(2))
        if message.startswith("log {"):
            _read_log(progress, message[4:])
    return progress


def _read_log(progress: JobProgress, payload: str) -> None:
    try:
        logged = json.loads(payload)
    except ValueError:
        return
    if not isinstance(logged, dict):
        return
    if "train_runtime" in logged:  # the trainer's summary: training is over
        progress.stage = "evaluating the new version on the hold-out"
    elif "loss" in logged and isinstance(logged.get("epoch"), int | float):
        progress.epoch = float(logged["epoch"])


def tail_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    """The last ``count`` lines of a file (bounded memory whatever its size)."""
    last: deque[str] = deque(maxlen=count)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            last.append(line.rstrip("\n"))
    return list(last)


def ask_again_after(backend: str, terminal: bool, hub_next_at: float | None,
                    now: float) -> float | None:
    """Seconds until another status call can say something new (None: the job ended)."""
    if terminal:
        return None
    if backend == "hf-jobs":
        from tunestep.tools.hub.poll import MIN_INTERVAL_S

        wait = (hub_next_at or 0.0) - now
        return round(max(wait if wait > 0 else MIN_INTERVAL_S, 1.0), 1)
    return LOCAL_POLL_S


def progress_fields(ws: Workspace, status) -> dict:
    """``progress`` and ``ask_again_after_s`` for a JobStatus (job_control's model).

    A local job's output is its log file; an hf-jobs job's output is its Hub log, which
    costs an API call per read: read at most once per poll interval.
    """
    import time

    from tunestep.tools.hub import poll as hf_poll

    now = time.time()
    wait = ask_again_after(status.backend, status.terminal,
                           hf_poll.next_at(status.result), now)
    progress = None
    if status.backend == "local" and status.log_path and status.status != "starting":
        path = ws.resolve(status.log_path)
        if path.is_file():
            progress = read_progress(tail_lines(path), _epochs(ws, status.draft_id))
    elif status.backend == "hf-jobs" and status.external_id:
        progress = _remote_progress(ws, status, now)
    return {"progress": progress, "ask_again_after_s": wait}


def _remote_progress(ws: Workspace, status, now: float) -> JobProgress | None:
    """An hf-jobs job's progress from its Hub log, read at most once per poll interval
    (the same floor as its status, tools/hub/poll.py); between reads, and after the job
    ended, the last reading kept in the job's ledger result (``hub_progress``) stands."""
    from tunestep.tools.core import ledger
    from tunestep.tools.hub import jobs_api as hf_jobs
    from tunestep.tools.hub import poll as hf_poll
    from tunestep.tools.hub.token import read_token

    kept = status.result.get("hub_progress") or {}
    last = JobProgress.model_validate(kept["progress"]) if kept.get("progress") else None
    if status.terminal or now < float(kept.get("next_at") or 0.0):
        return last
    namespace, _, job = status.external_id.rpartition("/")
    try:
        logs = hf_jobs.hf_job_logs(hf_jobs.hub_api(read_token()), job, TAIL_LINES,
                                   namespace=namespace or None)
        progress = read_progress(logs.lines, _epochs(ws, status.draft_id))
    except TunestepError:  # the Hub refused or failed: the last reading stands
        progress = last
    state = ledger.dumps({"next_at": now + max(hf_poll.MIN_INTERVAL_S, 1.0),
                          "progress": progress.model_dump() if progress else None})
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        # json_set: only this key changes, whatever else wrote the result meanwhile.
        conn.execute("UPDATE jobs SET result = json_set(COALESCE(NULLIF(result, ''), '{}'),"
                     " '$.hub_progress', json(?)) WHERE job_id = ?", (state, status.job_id))
    return progress


def _epochs(ws: Workspace, draft_id: str) -> float | None:
    from tunestep.tools.core import ledger

    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT payload FROM drafts WHERE draft_id = ?",
                           (draft_id,)).fetchone()
    config = ((ledger.loads(row["payload"]) if row else None) or {}).get("job_config") or {}
    epochs = (config.get("hyperparameters") or {}).get("num_train_epochs")
    return float(epochs) if isinstance(epochs, int | float) else None
