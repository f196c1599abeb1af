"""How far a running local job has come, read from its log: for `status --wait`.

The job's own log lines (``train_sft.py``'s ``log()``: a UTC stamp, ``[step ...]``, the
message) say its stage ("loading model", "training", "saving"), and the metrics lines
(``log {...}``) carry the trainer's ``epoch``. Only the end of the log is read, so a long
log costs no more than a short one.
"""

from __future__ import annotations

import re
import time

import orjson
from pydantic import BaseModel

from tunestep.tools import ledger
from tunestep.tools.workspace import Workspace

TAIL_BYTES = 64 * 1024
_OWN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[[^\]]*\] (.*)$")
_STAGE_END = re.compile(r"[:(\[{=]| on | from | in \d")


class JobProgress(BaseModel):
    stage: str | None = None  # the job's last own log line, its first words
    epoch: float | None = None  # the trainer's last reported epoch
    epochs: float | None = None  # num_train_epochs of the draft
    elapsed_s: float | None = None  # since the job started

    def line(self) -> str:
        parts = [self.stage or "starting"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch:.3g}" + (f"/{self.epochs:g}" if self.epochs
                                                       else ""))
        if self.elapsed_s is not None:
            minutes, seconds = divmod(int(self.elapsed_s), 60)
            parts.append(f"{minutes}:{seconds:02d} elapsed")
        return ", ".join(parts)


def read_progress(ws: Workspace, job_id: str) -> JobProgress:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT j.log_path, j.started_at, d.payload FROM jobs j LEFT JOIN "
                           "drafts d ON d.draft_id = j.draft_id WHERE j.job_id = ?",
                           (job_id,)).fetchone()
    if row is None:
        return JobProgress()
    epochs = None
    payload = ledger.loads(row["payload"]) if row["payload"] else None
    if isinstance(payload, dict):
        hp = (payload.get("job_config") or {}).get("hyperparameters") or {}
        epochs = hp.get("num_train_epochs") if isinstance(
            hp.get("num_train_epochs"), int | float) else None
    progress = JobProgress(epochs=epochs, elapsed_s=time.time() - row["started_at"]
                           if row["started_at"] else None)
    if not row["log_path"]:
        return progress
    try:
        path = ws.resolve(row["log_path"])
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return progress
    for line in reversed(tail.splitlines()):
        found = _OWN.match(line)
        if found is None:
            continue
        message = found.group(1)
        if message.startswith("log {"):
            if progress.epoch is None:
                try:
                    metrics = orjson.loads(message[4:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(metrics.get("epoch"), int | float):
                    progress.epoch = float(metrics["epoch"])
        elif progress.stage is None:
            progress.stage = _STAGE_END.split(message, 1)[0].strip()[:40] or None
        if progress.stage is not None and progress.epoch is not None:
            break
    return progress
