"""The local backend: the job script as a detached process on this machine.

``start`` launches a small supervisor in its own session (so the job outlives the MCP
server that started it). The supervisor runs the job script, streams its output to the
job's log, and records the outcome in the ledger: exit code, the script's
``TUNESTEP_RESULT`` summary, and on success the step itself. A cancel sends SIGTERM to
the whole process group; the supervisor records it as cancelled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from tunestep.tools import ledger
from tunestep.tools.jobs import JOB_SCRIPT
from tunestep.tools.workspace import Workspace, open_workspace

RESULT_PREFIX = "TUNESTEP_RESULT "
ERROR_PREFIX = "TUNESTEP_ERROR "
SCRIPT_NAME = JOB_SCRIPT  # copied into the job folder with the other JOB_FILES
# Variables a local job never needs; the token is passed on only when the job pushes.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TUNESTEP_OPERATOR_PASSPHRASE")
RECORD_ATTEMPTS = 20  # each waits ledger.wait_s() (30 s) for the ledger


def job_dir(ws: Workspace, job_id: str) -> Path:
    return ws.state_dir / "jobs" / job_id


def start(ws: Workspace, job_id: str, *, pass_token: bool = False, digest: str = "",
          config_sha256: str = "") -> int:
    """Launch the supervisor for a prepared job folder; returns its pid.

    ``digest`` (the signed manifest's) and ``config_sha256`` (of ``job.json``) go on its
    command line: the supervisor and the job verify against them (tools/job_launch.py).
    """
    folder = job_dir(ws, job_id)
    env = {k: v for k, v in os.environ.items() if pass_token or k not in SECRET_ENV}
    env.setdefault("TRACKIO_DIR", str(ws.state_dir / "trackio"))
    env["PYTHONUNBUFFERED"] = "1"
    # Idle OpenMP threads spin; on a small shared machine they cost more than they give.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    with open(folder / "output.log", "ab") as log:
        proc = subprocess.Popen(
            # -I: neither the workspace (the working directory) nor PYTHONPATH is on the
            # supervisor's import path, so nothing planted there runs beside the token.
            [sys.executable, "-I", "-m", "tunestep.tools.backends.local", str(ws.root), job_id,
             digest, config_sha256],
            cwd=ws.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE jobs SET pid = ?, status = 'running', started_at = ?,"
                     " log_path = ? WHERE job_id = ?",
                     (proc.pid, time.time(), ws.relative(folder / "output.log"), job_id))
    return proc.pid


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it ended
        if finished:
            return False
    except ChildProcessError:
        pass  # not our child (started by another server process): probe instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().split(b") ", 1)[1][:1] == b"Z"
    except (OSError, IndexError):
        return False


def cancel(pid: int | None) -> bool:
    """SIGTERM the job's process group; True when there was something to stop."""
    if not is_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    return True


def supervise(root: str, job_id: str, digest: str = "", config_sha256: str = "") -> int:
    """Run in the detached process: the job script, then the outcome into the ledger."""
    import shutil

    from tunestep.tools.errors import TunestepError
    from tunestep.tools.job_launch import job_command, verified_scripts

    ws = open_workspace(root)
    folder = job_dir(ws, job_id)
    cancelled = False
    try:  # the signed scripts, copied out of the workspace, or the job does not run
        scripts, limit = verified_scripts(ws, job_id, folder, digest)
    except TunestepError as exc:
        print(f"tunestep: {exc.code}: {exc.message}", flush=True)
        record_outcome(ws, job_id, "failed", 2, {"error": exc.message, "code": exc.code})
        return 2

    def on_term(signum, frame):  # forward the cancel to the script, then record it
        nonlocal cancelled
        cancelled = True
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    result: dict = {}
    command = job_command(scripts, folder / "job.json", config_sha256, ws.root)
    child = subprocess.Popen(command, cwd=ws.root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timed_out = threading.Event()

    def on_timeout():  # the signed time limit (manifest timeout_seconds), as on HF Jobs
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    timer = threading.Timer(limit, on_timeout)
    timer.daemon = True
    timer.start()
    assert child.stdout is not None
    for raw in child.stdout:
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        if raw.startswith(RESULT_PREFIX.encode()):
            with contextlib.suppress(orjson.JSONDecodeError):
                result = orjson.loads(raw[len(RESULT_PREFIX):])
        elif raw.startswith(ERROR_PREFIX.encode()) and not result:  # a named refusal
            with contextlib.suppress(orjson.JSONDecodeError):
                error = orjson.loads(raw[len(ERROR_PREFIX):])
                if isinstance(error, dict) and isinstance(error.get("code"), str):
                    result = {"error": str(error.get("error", "")), "code": error["code"]}
    code = child.wait()
    timer.cancel()
    shutil.rmtree(scripts, ignore_errors=True)
    status = "cancelled" if cancelled else ("succeeded" if code == 0 else "failed")
    if timed_out.is_set() and not cancelled and code != 0:
        status, result = "failed", {"error": f"stopped at its signed time limit ({limit} s)",
                                    "code": "job_timeout"}
    for attempt in range(RECORD_ATTEMPTS):  # the result must land: a busy ledger is waited
        try:                                # out, not left for job_status to call "lost"
            record_outcome(ws, job_id, status, code, result)
            break
        except ledger.LedgerBusy:
            if attempt == RECORD_ATTEMPTS - 1:
                raise
    return code


def record_outcome(ws: Workspace, job_id: str, status: str, exit_code: int | None,
                   result: dict) -> None:
    """The job's end, and on success of a training draft the step, in one transaction.

    Only a ``train`` draft makes a step: an inspection (or any other kind) that succeeds
    records its outcome and nothing else.
    """
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE jobs SET status = ?, exit_code = ?, ended_at = ?, result = ?"
                     " WHERE job_id = ?",
                     (status, exit_code, time.time(), ledger.dumps(result), job_id))
        job = conn.execute("SELECT draft_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        ledger.audit(conn, "job.end", job_id, outcome=status,
                     detail={"exit_code": exit_code, "draft_id": job["draft_id"]})
        draft = conn.execute("SELECT kind FROM drafts WHERE draft_id = ?",
                             (job["draft_id"],)).fetchone()
        if status == "succeeded" and draft is not None and draft["kind"] == "train":
            record_step(conn, job_id, job["draft_id"], result)


def step_outcome(result: dict) -> tuple[str | None, str | None, str | None, bool]:
    """(hub model id, pushed commit sha, version folder name, promoted) from a job result.

    ``promotion.promoted`` is the job's decision; a result without one was promoted (the
    job moved ``latest``). The version is the folder name ``NNNN_<batch>``.
    """
    hub = result.get("hub") if isinstance(result.get("hub"), dict) else {}
    version = result.get("version")
    name = version.rsplit("/", 1)[-1] if isinstance(version, str) and version else None
    promotion = result.get("promotion") if isinstance(result.get("promotion"), dict) else {}
    return (hub.get("model_id"), hub.get("revision"), name,
            promotion.get("promoted", True) is not False)


def record_step(conn, job_id: str, draft_id: str, result: dict) -> None:
    from tunestep.tools.chain import record_version
    from tunestep.tools.draft_model import job_config_of, manifest_of_row
    from tunestep.tools.errors import TunestepError
    from tunestep.tools.version_files import made_files

    draft = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                         (draft_id,)).fetchone()
    backend = conn.execute("SELECT backend FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    try:  # where the step is recorded comes from the signed manifest, never the view
        manifest = manifest_of_row(draft, draft_id)
    except TunestepError as exc:
        ledger.audit(conn, "step.record", draft_id, outcome="refused",
                     detail={"code": exc.code, "job_id": job_id})
        return
    if manifest is not None:
        payload = {"parent_version": manifest.parent_version}
        config = job_config_of(manifest, draft_id)
    else:  # a draft stored before manifests (schema 7): its job was submitted before
        payload = ledger.loads(draft["payload"])
        config = payload["job_config"]
    datasets = [*config["train_files"], config["eval_file"]]
    model_id, revision, version, promoted = step_outcome(result)
    conn.execute(
        "INSERT OR REPLACE INTO steps(step, batch, draft_id, job_id, digest, mode, datasets,"
        " model_path, metrics, recorded_at, hub_model_id, hub_revision, version, promoted,"
        " parent, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (config["step"], config["batch"], draft_id, job_id, draft["digest"], config["mode"],
         ledger.dumps(datasets), result.get("model_path"),
         ledger.dumps({k: v for k, v in result.items() if k != "model_path"}), time.time(),
         model_id, revision, version, int(promoted),
         # What the job trained from, fixed when the draft was made: a promotion while the
         # job ran does not change it (None: a draft from before schema 5).
         payload.get("parent_version"), ledger.next_seq(conn)))
    # Did the step help: the job's hold-out evaluation summary and its gate's reason.
    promotion = result.get("promotion") if isinstance(result.get("promotion"), dict) else {}
    evaluation = result.get("evaluation") if isinstance(result.get("evaluation"), dict) else {}
    conn.execute("UPDATE steps SET evaluation = ?, promotion_reason = ? WHERE step = ?",
                 (ledger.dumps(evaluation), promotion.get("reason"), config["step"]))
    if version and backend is not None and backend["backend"] == "local":
        # A local job wrote the version itself (and may have pushed it: then a later
        # remote step resumes from that exact commit). A remote job's version arrives
        # with sync_model, which records its own row.
        record_version(conn, store=config["outputs"]["model_store"], version=version,
                       step=config["step"], batch=config["batch"], job_id=job_id,
                       source="job", hub_model_id=model_id, hub_revision=revision,
                       promoted=promoted, files=made_files(result))
    ledger.audit(conn, "step.record", config["batch"],
                 detail={"step": config["step"], "job_id": job_id,
                         "model_path": result.get("model_path"), "hub_revision": revision,
                         "promoted": promoted})


if __name__ == "__main__":
    sys.exit(supervise(*sys.argv[1:5]))
