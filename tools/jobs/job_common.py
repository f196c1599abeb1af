"""What every job module shares: exit codes, the job's errors, atomic writes, the run log.

Stdlib only, imports no tunestep (the job runs where tunestep is not installed).
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 143


class JobError(Exception):
    """A failure with a one-line message for the operator; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED, reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason  # a named refusal (e.g. input_changed), reported with the error


class Cancelled(BaseException):  # BaseException: library `except Exception` must not swallow it
    """Raised from the SIGTERM handler to unwind training."""

# ---------------------------------------------------------------------------------------
# Files: atomic writes, the run log


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp's 0600 would make logs and plots private while train.log (appended with
        # open()) is 0644: give every output the mode open() gives (0666 less the umask).
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def scrub(text: str) -> str:
    """Defence in depth: the token never reaches a log line or an error message."""
    token = os.environ.get("HF_TOKEN")
    return text.replace(token, "***") if token and len(token) >= 8 else text


class RunLog:
    """Human-readable lines appended to train.log (and echoed to stderr), token-scrubbed."""

    def __init__(self, path: Path | None, tag: str, echo: bool = True):
        self.path, self.tag, self.echo = path, tag, echo
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        message = scrub(message)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} [{self.tag}] {message}"
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # accelerate/torchrun set RANK per process


def launch_argv(script: str, argv: list[str], num_processes: int,
                env: dict[str, str]) -> list[str] | None:
    """The command that runs this step with one process per GPU, or None to run here.

    ``uv run train_sft.py --num-processes N`` starts one process in the script's own
    (locked) environment; that process re-executes itself through accelerate's launcher,
    from the same interpreter, so the N workers run exactly the approved dependencies.
    Workers (``LOCAL_RANK`` set by the launcher) and N <= 1 run in place.
    """
    if num_processes <= 1 or "LOCAL_RANK" in env:
        return None
    rest, skip = [], False
    for arg in argv:  # the workers must not launch again
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            rest.append(arg)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), script, *rest]
