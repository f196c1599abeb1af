"""The job process's own plumbing: SIGTERM as ``Cancelled``, the failure lines, the
relaunch over several GPUs, and how long the process and the job ran before training.

Apart from ``train_sft`` so that the script keeps the step's flow; nothing here knows
what a step is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_common import EXIT_FAILED, Cancelled, RunLog, scrub
else:  # a sibling of the job script, loaded by its finder
    from job_common import EXIT_FAILED, Cancelled, RunLog, scrub

# The last stdout line of a finished job (tools/runs/local_backend.py reads it).
RESULT_PREFIX = "TUNESTEP_RESULT"
ERROR_PREFIX = "TUNESTEP_ERROR"


def install_cancel_handler(state: dict) -> None:
    """SIGTERM raises ``Cancelled`` (the step unwinds), until ``state["committed"]``."""
    def handler(signum, frame):
        # Once the version is being committed the step is done; while unwinding a first
        # cancel, a second SIGTERM must not interrupt the cleanup.
        if state.get("committed") or state.get("cancelling"):
            return
        state["cancelling"] = True
        raise Cancelled()

    signal.signal(signal.SIGTERM, handler)


def process_age(pid: str = "self") -> float | None:
    """Seconds since a process started, from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def startup_seconds(t_process: float) -> dict:
    """Wall time before training starts: since this process began (interpreter start and
    imports included), and since the job began: ``TUNESTEP_JOB_STARTED`` (epoch seconds)
    when a launcher sets it, else on Hugging Face Jobs (``TUNESTEP_OUTPUT_REPO`` set) the
    age of the container's first process, ``uv run``, so the dependency install counts."""
    own = process_age()
    out = {"process_to_training": round(own if own is not None
                                        else time.monotonic() - t_process, 2),
           "job_to_training": None}
    started = os.environ.get("TUNESTEP_JOB_STARTED", "").strip()
    try:
        if started:
            out["job_to_training"] = round(time.time() - float(started), 2)
        elif os.environ.get("TUNESTEP_OUTPUT_REPO") and (first := process_age("1")):
            out["job_to_training"] = round(first, 2)
    except ValueError:
        pass
    return out


def fail(message: str, code: int, log_path: Path | None, reason: str | None = None) -> int:
    """Report a failure: the run log, one stderr line, the ``TUNESTEP_ERROR`` line; the
    exit status back."""
    message = " ".join(scrub(message).split())  # one line
    if log_path is not None:
        RunLog(log_path, "train_sft", echo=False)(f"FAILED ({code}): {message}")
    print(f"train_sft: error: {message}", file=sys.stderr, flush=True)
    error = {"ok": False, "error": message, "exit_code": code}
    if reason:
        error["code"] = reason
    print(f"{ERROR_PREFIX} {json.dumps(error)}", flush=True)
    return code


def relaunch(command: list[str], num_processes: int) -> int:
    """Become accelerate's launcher over ``num_processes`` GPUs, or fail clearly."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < num_processes:
        return fail(f"the flavor promised {num_processes} GPUs but CUDA sees {visible}",
                    EXIT_FAILED, None)
    print(f"train_sft: launching {num_processes} processes (one per GPU)", flush=True)
    os.execv(command[0], command)
    return EXIT_FAILED  # not reached: execv replaced this process
