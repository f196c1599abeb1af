"""What a local job runs, verified by its launcher before it starts.

The supervisor (``runs/local_backend.py``) is started by ``submit_job`` with the draft's
digest and the sha256 of ``job.json`` on its command line. Before the job script runs,
the supervisor reads the draft's manifest from the ledger and refuses unless its bytes
hash to that digest, then copies every job script from the job folder (which lies inside
the workspace, where the assistant may write) into a private folder (``mkdtemp``, 0700,
outside the workspace) while hashing each against the manifest. The script then runs from
that copy with ``python -I`` (no workspace folder, no PYTHONPATH, no user site on its
import path) and verifies ``job.json`` against its digest itself (``--config-sha256``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import copy_hashing
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft_model import parse_manifest
from tunestep.tools.jobs import JOB_SCRIPT


def verified_scripts(ws: Workspace, job_id: str, folder: Path, digest: str
                     ) -> tuple[Path, int]:
    """A private copy of the job's scripts, each byte-checked against the signed manifest,
    and the job's signed time limit in seconds (``timeout_seconds``).

    Raises ``draft_tampered`` when the stored manifest no longer hashes to ``digest``, and
    ``job_script_changed`` when a script in the job folder differs from its signed hash.
    """
    with ledger.open_ledger(ws) as conn:
        row = conn.execute(
            "SELECT d.draft_id, d.manifest FROM jobs j JOIN drafts d ON d.draft_id = j.draft_id"
            " WHERE j.job_id = ?", (job_id,)).fetchone()
    if row is None or row["manifest"] is None:
        raise TunestepError("draft_tampered", f"job {job_id} has no signed manifest")
    data = row["manifest"]
    data = data.encode() if isinstance(data, str) else bytes(data)
    manifest = parse_manifest(data, digest, row["draft_id"])
    scripts = {f.path: f.sha256 for f in manifest.files if f.role == "script"}
    if JOB_SCRIPT not in scripts:
        raise TunestepError("draft_tampered", "the manifest names no job script")
    private = Path(tempfile.mkdtemp(prefix=f"tunestep-{job_id}-"))
    try:
        for name, expected in scripts.items():
            _copy_checked(folder / name, private / name, expected, name)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return private, manifest.timeout_seconds


def _copy_checked(source: Path, target: Path, expected: str, name: str) -> None:
    try:
        with open(target, "xb") as writer:
            copied = copy_hashing(source, writer)
    except OSError as exc:
        raise TunestepError("job_script_changed", f"cannot read the job's {name}: "
                            f"{exc.strerror}") from None
    if copied != expected:
        raise TunestepError("job_script_changed", f"the job's {name} is not the signed one "
                            "(changed after submit); the job does not run")
    os.chmod(target, 0o500 if name.endswith(".py") else 0o400)


def job_command(scripts: Path, config: Path, config_sha256: str, root: Path) -> list[str]:
    """The job script in isolated mode from its verified copy, its config's digest given."""
    return [sys.executable, "-I", str(scripts / JOB_SCRIPT), "--config", str(config),
            "--config-sha256", config_sha256, "--root", str(root)]
