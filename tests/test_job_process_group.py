"""A local job is one process group: a signal to the printed pid, or cancel, stops the
trainer and everything it started; status says how the job ended and what to do next.

The quick tests put a stand-in trainer into a real job folder (one that starts a
grandchild and sleeps), so that "everything it started" is there to be stopped; the
end-to-end test signals a real training job.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tunestep.tools.core import ledger
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.runs import local_backend as local
from tunestep.tools.runs.job_control import cancel_job, job_logs, job_status, wait_for_job
from tunestep.tools.runs.submit import submit_job

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find the job's processes")

STAND_IN = """\
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(f"ready {grandchild.pid}", flush=True)
time.sleep(300)
"""


def survivors(job_id: str) -> list[int]:
    """Every process on the machine that carries the job's mark, whatever its group."""
    mark = f"{local.JOB_ID_ENV}={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if mark not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if handle.read().rsplit(b") ", 1)[1][:1] == b"Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def gone(job_id: str, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := survivors(job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def start_stand_in(ws, script: str = STAND_IN) -> tuple[str, int]:
    """A draft signed with the stand-in as its job script (a new manifest whose script
    hash is the stand-in's, stored as a draft is: the supervisor verifies the script
    against it), its jobs row, and the job started through the real supervisor."""
    import hashlib
    import json

    from tunestep.tools.drafts.draft import JOBS_DIR
    from tunestep.tools.jobs import JOB_SCRIPT
    from tunestep.tools.signing.signed_manifest import draft_id_for, manifest_digest

    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    with ledger.open_ledger(ws) as conn:
        row = dict(conn.execute("SELECT * FROM drafts WHERE draft_id = ?",
                                (draft.draft_id,)).fetchone())
    manifest = json.loads(bytes(row["manifest"]) if not isinstance(row["manifest"], str)
                          else row["manifest"])
    scripts = [f["path"] for f in manifest["files"] if f["role"] == "script"]
    for ref in manifest["files"]:
        if ref["role"] == "script" and ref["path"] == JOB_SCRIPT:
            ref["sha256"] = hashlib.sha256(script.encode()).hexdigest()
    data = json.dumps(manifest, sort_keys=True).encode()
    digest = manifest_digest(data)
    row.update(draft_id=draft_id_for(digest), digest=digest, manifest=data)
    job_id = f"job-{os.urandom(6).hex()}"
    folder = local.job_dir(ws, job_id)
    folder.mkdir(parents=True)
    for name in scripts:
        (folder / name).write_bytes(script.encode() if name == JOB_SCRIPT
                                    else (JOBS_DIR / name).read_bytes())
    (folder / "job.json").write_text("{}")
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute(f"INSERT INTO drafts({', '.join(row)}) VALUES "
                     f"({', '.join('?' for _ in row)})", tuple(row.values()))
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES (?, ?, 'local', 'starting', ?)",
                     (job_id, row["draft_id"], time.time()))
    pid = local.start(ws, job_id, digest=digest,
                      config_sha256=hashlib.sha256(b"{}").hexdigest())
    deadline = time.monotonic() + 60
    while not any(line.startswith("ready") for line in job_logs(ws, job_id, 50,
                                                                raw=True).lines):
        assert time.monotonic() < deadline, job_logs(ws, job_id, 50, raw=True).lines
        time.sleep(0.1)
    if script == STAND_IN:
        assert len(survivors(job_id)) == 3  # supervisor, trainer, grandchild
    return job_id, pid


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "cancel"])
def test_a_signal_to_the_printed_pid_stops_the_whole_job(sample_ws, how):
    job_id, pid = start_stand_in(sample_ws)
    if how == "cancel":
        cancel_job(sample_ws, job_id)
    else:
        os.kill(pid, getattr(signal, how))  # what Ctrl-C or `kill PID` does to it
    status = wait_for_job(sample_ws, job_id, timeout=60, poll=0.2)
    assert gone(job_id) == []
    assert status.status == "cancelled"
    name = "SIGTERM" if how == "cancel" else how
    assert status.ended and f"stopped by {name}" in status.ended
    assert status.result["stopped_by"] == name
    assert [s.tool for s in status.next_steps] == ["job_logs", "draft_job"]
    assert status.next_steps[1].args == {"batch": "batch_100_01"}


def test_a_supervisor_killed_outright_leaves_nothing_running(sample_ws):
    job_id, pid = start_stand_in(sample_ws)
    os.kill(pid, signal.SIGKILL)  # nothing can be recorded: status finds out and cleans up
    deadline = time.monotonic() + 30
    while local.is_alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status = job_status(sample_ws, job_id)
    assert status.status == "lost"
    assert gone(job_id) == []
    assert f"pid {pid}" in status.ended and "killed outright" in status.ended
    again = cancel_job(sample_ws, job_id)  # cancel on a lost job says how it ended, too
    assert again.status == "lost" and again.ended == status.ended


@pytest.mark.e2e
def test_ctrl_c_on_a_training_job_stops_the_trainer(model_ws, operator):
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01",
                                       overrides={"num_train_epochs": 50.0}))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    deadline = time.monotonic() + 180
    while "training" not in "\n".join(job_logs(ws, handle.job_id, 200).lines):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.5)
    assert len(survivors(handle.job_id)) >= 2
    os.kill(handle.pid, signal.SIGINT)
    status = wait_for_job(ws, handle.job_id, timeout=180)
    assert status.status == "cancelled" and "SIGINT" in status.ended
    assert gone(handle.job_id) == []


PROGRESSING = """\
import time
def log(message):
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "[step 0001_batch_100_01]",
          message, flush=True)
print("ready", flush=True)
log("loading model from /somewhere")
time.sleep(1)
log("training (started 3.0s after the process)")
log('log {"loss": 2.5, "epoch": 1.0}')
time.sleep(300)
"""


def test_status_wait_shows_progress_and_ctrl_c_leaves_the_job_running(sample_ws):
    import subprocess

    job_id, pid = start_stand_in(sample_ws, PROGRESSING)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tunestep.server.cli", "status", job_id, "--wait", "600",
         "-w", str(sample_ws.root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "COLUMNS": "80"},
        # As in a terminal's foreground: a shell that ran the suite in the background (`&`)
        # leaves SIGINT ignored, and Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 60
    while not any("epoch 1" in line for line in seen):
        assert time.monotonic() < deadline, seen
        seen.append(waiting.stderr.readline())
    line = next(line for line in seen if "epoch 1" in line)
    assert re.search(r"running: training, epoch 1(/\d+)?, \d+:\d\d elapsed", line), line
    waiting.send_signal(signal.SIGINT)  # Ctrl-C on the wait
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130
    said = " ".join(err.split())
    assert f"{job_id} keeps running" in said
    assert f"tunestep cancel {job_id} --workspace {sample_ws.root}" in said
    assert job_status(sample_ws, job_id).status == "running" and local.is_alive(pid)
    cancel_job(sample_ws, job_id)
    assert gone(job_id) == []


STUBBORN = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a trainer stuck where SIGTERM is ignored
print("ready", flush=True)
time.sleep(600)
"""


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(sample_ws):
    job_id, pid = start_stand_in(sample_ws, STUBBORN)
    os.kill(pid, signal.SIGINT)
    status = wait_for_job(sample_ws, job_id, timeout=local.STOP_GRACE_S + 90, poll=0.5)
    assert status.status == "cancelled" and "SIGINT" in status.ended
    assert gone(job_id) == []
