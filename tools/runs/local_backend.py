"""The local backend: the job script as a detached process on this machine.

``start`` launches a small supervisor in its own session (so the job outlives the MCP
server that started it). The supervisor runs the job script, streams its output to the
job's log, and records the outcome in the ledger: exit code, the script's
``TUNESTEP_RESULT`` summary, and on success the step itself.

A job is one process group, the supervisor's (its pid, the one ``submit`` prints, is the
group id). SIGTERM, SIGINT or SIGHUP to that pid (``tunestep cancel``, ``kill PID``,
``kill -INT PID``), or to the group, stops the trainer and everything it started: the
supervisor passes the signal on to the group, waits a grace period, kills what is left,
and records the job as cancelled with the signal's name. A supervisor killed outright
(SIGKILL) cannot record anything: the trainer dies with it (``PR_SET_PDEATHSIG`` on
Linux), and ``job_status`` stops any survivor of the group and records the job as lost.
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

from tunestep.tools.core import ledger
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.jobs import JOB_SCRIPT

RESULT_PREFIX = "TUNESTEP_RESULT "
ERROR_PREFIX = "TUNESTEP_ERROR "
SCRIPT_NAME = JOB_SCRIPT  # copied into the job folder with the other JOB_FILES
# Variables a local job never needs; the token is passed on only when the job pushes.
JOB_ID_ENV = "TUNESTEP_JOB_ID"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TUNESTEP_OPERATOR_PASSPHRASE")
RECORD_ATTEMPTS = 20  # each waits ledger.wait_s() (30 s) for the ledger


def job_dir(ws: Workspace, job_id: str) -> Path:
    return ws.state_dir / "jobs" / job_id


def start(ws: Workspace, job_id: str, *, pass_token: bool = False, digest: str = "",
          config_sha256: str = "") -> int:
    """Launch the supervisor for a prepared job folder; returns its pid.

    ``digest`` (the signed manifest's) and ``config_sha256`` (of ``job.json``) go on its
    command line: the supervisor and the job verify against them (tools/runs/job_launch.py).
    """
    folder = job_dir(ws, job_id)
    env = {k: v for k, v in os.environ.items() if pass_token or k not in SECRET_ENV}
    env.setdefault("TRACKIO_DIR", str(ws.state_dir / "trackio"))
    env["PYTHONUNBUFFERED"] = "1"
    env[JOB_ID_ENV] = job_id  # inherited by every process of the job (job_processes)
    # Idle OpenMP threads spin; on a small shared machine they cost more than they give.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    with open(folder / "output.log", "ab") as log:
        proc = subprocess.Popen(
            # -I: neither the workspace (the working directory) nor PYTHONPATH is on the
            # supervisor's import path, so nothing planted there runs beside the token.
            [sys.executable, "-I", "-m", "tunestep.tools.runs.local_backend", str(ws.root), job_id,
             digest, config_sha256],
            cwd=ws.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        # Only a row still starting becomes running: one that job_status settled meanwhile
        # (lost after the start grace, cancelled) keeps its end, and its job is stopped.
        moved = conn.execute(
            "UPDATE jobs SET pid = ?, status = 'running', started_at = ?, log_path = ?"
            " WHERE job_id = ? AND status = 'starting'",
            (proc.pid, time.time(), ws.relative(folder / "output.log"), job_id)).rowcount
    if not moved:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the whole job
        from tunestep.tools.core.errors import TunestepError

        raise TunestepError("job_settled", f"{job_id} was settled while it started (see "
                            "`tunestep status`): the process just started was stopped")
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


def cancel(pid: int | None, job_id: str | None = None) -> bool:
    """SIGTERM the job's process group; True when there was something to stop.

    With the supervisor gone, the processes it left in its group (``job_processes``) are
    stopped instead.
    """
    if is_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        return True
    if pid and job_id and job_processes(pid, job_id):
        stop_leftovers(pid, job_id)
        return True
    return False


def job_processes(pgid: int, job_id: str) -> list[int]:
    """Live processes of the job's group that carry the job's mark.

    Every process of a job inherits ``TUNESTEP_JOB_ID`` (``start``); checking it keeps a
    reused process-group id from ever meaning an unrelated program. Linux only
    (``/proc``); elsewhere an empty list.
    """
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    mark = f"{JOB_ID_ENV}={job_id}".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b") ", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == b"Z":
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def stop_leftovers(pgid: int, job_id: str, grace: float = 5.0) -> int:
    """SIGTERM, then after ``grace`` seconds SIGKILL, every process ``job_processes``
    finds (never this one); returns how many were still there for SIGKILL."""
    pids = [p for p in job_processes(pgid, job_id) if p != os.getpid()]
    killed = 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL:
            killed = len(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if is_alive(p)]
            time.sleep(0.1)
        if not pids:
            break
    return killed


def supervise(root: str, job_id: str, digest: str = "", config_sha256: str = "") -> int:
    """Run in the detached process: the job script, then the outcome into the ledger."""
    import shutil

    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.runs.job_launch import job_command, verified_scripts

    ws = open_workspace(root)
    folder = job_dir(ws, job_id)
    stop = _StopSignals(job_id)
    try:  # the signed scripts, copied out of the workspace, or the job does not run
        scripts, limit = verified_scripts(ws, job_id, folder, digest)
    except TunestepError as exc:
        print(f"tunestep: {exc.code}: {exc.message}", flush=True)
        record_outcome(ws, job_id, "failed", 2, {"error": exc.message, "code": exc.code})
        return 2
    result: dict = {}
    command = job_command(scripts, folder / "job.json", config_sha256, ws.root)
    child = subprocess.Popen(command, cwd=ws.root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)
    if stop.signal_name is not None:  # stopped while the trainer was being started
        child.terminate()
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
    # Whatever the trainer started and left behind dies with the job.
    left = stop_leftovers(os.getpgid(0), job_id, grace=2.0)
    _drop_empty_staging(ws, folder)
    if stop.signal_name is not None:
        result = {**result, **stop.note(left)}
        print(f"tunestep: {result['note']}", flush=True)
    status = "cancelled" if stop.signal_name else ("succeeded" if code == 0 else "failed")
    if timed_out.is_set() and not stop.signal_name and code != 0:
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


def _drop_empty_staging(ws: Workspace, folder: Path) -> None:
    """The model store's ``.staging/`` once the job is done with it, when it is empty (a
    version is built there and moved out); anything left in it is left for a look."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        config = orjson.loads((folder / "job.json").read_bytes())
        store = ws.resolve_model_store(config["outputs"]["model_store"]).resolve()
        (store / ".staging").rmdir()  # refuses a folder that is not empty


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
STOP_GRACE_S = 30  # from a stop signal until what is left of the job is killed
HOW = {"SIGTERM": "tunestep cancel, or kill PID", "SIGINT": "Ctrl-C, or kill -INT PID",
       "SIGHUP": "the terminal closed, or kill -HUP PID"}


class _StopSignals:
    """The supervisor's stop signals: the first one passes SIGTERM on to the whole group
    (the trainer and what it started), and is remembered for the job's record."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.signal_name: str | None = None
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), self._on_stop)

    def _on_stop(self, signum, frame) -> None:
        first = self.signal_name is None
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if not first:
            return
        # The group includes this process: ignore SIGTERM while sending it to the group,
        # so the supervisor lives on to record the end.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(0), signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, previous)
        # A trainer that does not end within the grace period is killed (it may be stuck
        # in a library that ignores SIGTERM); the supervisor then records the end.
        signal.signal(signal.SIGALRM, self._on_grace_over)
        signal.alarm(STOP_GRACE_S)

    def _on_grace_over(self, signum, frame) -> None:
        for pid in job_processes(os.getpgid(0), self.job_id):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def note(self, left: int) -> dict:
        name = self.signal_name or "?"
        killed = f"; {left} process(es) had to be killed" if left else ""
        return {"stopped_by": name,
                "note": f"stopped by {name} ({HOW.get(name, 'a signal')}): the trainer and "
                        f"every process it started were stopped{killed}"}


def _die_with_parent() -> None:
    """In the trainer, before exec: SIGTERM it when the supervisor dies (Linux), so a
    supervisor killed outright (SIGKILL) leaves no trainer running on."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def record_outcome(ws: Workspace, job_id: str, status: str, exit_code: int | None,
                   result: dict) -> bool:
    """The job's end, and on success of a training draft the step, in one transaction.

    Only a ``train`` draft makes a step: an inspection (or any other kind) that succeeds
    records its outcome and nothing else. A job ends once: when its row has ended already
    (two job_status calls that both found its supervisor dead, or the supervisor that
    recorded its end between a caller's look and its write) nothing is written and False
    is returned; the first end recorded stands, with its one ``job.end`` event.
    """
    ended = ", ".join("?" * len(ledger.JOB_ENDED))
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        # The check and the write are one statement under the write lock: no window.
        changed = conn.execute(
            "UPDATE jobs SET status = ?, exit_code = ?, ended_at = ?, result = ?"
            f" WHERE job_id = ? AND status NOT IN ({ended})",
            (status, exit_code, time.time(), ledger.dumps(result), job_id,
             *ledger.JOB_ENDED)).rowcount
        if changed != 1:
            return False
        job = conn.execute("SELECT draft_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        ledger.audit(conn, "job.end", job_id, outcome=status,
                     detail={"exit_code": exit_code, "draft_id": job["draft_id"]})
        draft = conn.execute("SELECT kind FROM drafts WHERE draft_id = ?",
                             (job["draft_id"],)).fetchone()
        if status == "succeeded" and draft is not None and draft["kind"] == "train":
            record_step(conn, job_id, job["draft_id"], result)
    return True


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
    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.drafts.draft_model import job_config_of, manifest_of_row
    from tunestep.tools.lineage.chain import record_version
    from tunestep.tools.lineage.version_files import made_files

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
