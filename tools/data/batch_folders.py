"""The batch folders: which there are, in step order, and what the inspector last said.

Apart from preflight's report because the selection reads the same folder list
(``discover_batches``) to choose a step's sources.
"""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel

from tunestep.tools.core.datafiles import DataFile, batch_step, list_data_files
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import LoadedPlan
from tunestep.tools.core.workspace import Workspace


class BatchInfo(BaseModel):
    name: str
    step: int
    path: str
    trained: bool


class LastInspection(BaseModel):
    """What the inspector last said of the batch's data (the mapped copy when there is one)."""

    path: str
    status: str | None = None  # READY / NEEDS_MAPPING / INVALID; None: not inspected yet
    current: bool = False  # the report is of the files as they are now
    error_count: int = 0
    warning_count: int = 0


def discover_batches(ws: Workspace, loaded: LoadedPlan, trained: set[str]) -> list[BatchInfo]:
    """Batch folders in step order; folders whose name is not a batch are ignored."""
    folder = ws.resolve(loaded.plan.paths.incremental)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        step = batch_step(child.name, loaded.plan.data.batch_pattern)
        if step is None or not child.is_dir():
            continue
        found.append(BatchInfo(name=child.name, step=step, path=ws.relative(child),
                               trained=child.name in trained))
    return sorted(found, key=lambda b: (b.step, b.name))


def last_inspection(ws: Workspace, conn: sqlite3.Connection, mapped: str, original: str,
                    files: list[DataFile]) -> LastInspection:
    """The latest cached report of the batch's data: its mapped copy when one exists.

    ``current`` compares the report's file hashes with the files now, so an edit after
    the inspection reads as "inspected before the change", never as its old verdict.
    """
    from tunestep.tools.inspector.report import InspectionReport

    mapped_dir = ws.resolve(mapped)
    path = mapped if mapped_dir.is_dir() else original
    row = conn.execute("SELECT report FROM inspections WHERE path = ? ORDER BY created_at "
                       "DESC LIMIT 1", (path,)).fetchone()
    if row is None:
        return LastInspection(path=path)
    try:
        report = InspectionReport.model_validate_json(row["report"])
    except ValueError:
        return LastInspection(path=path)
    if path == original:
        now = {f.path: f.sha256 for f in files}
    else:
        now = {ws.relative(f): sha256_file(f) for f in list_data_files(mapped_dir, ws.root)
               if f.name != "manifest.json"}
    current = {f.path: f.sha256 for f in report.files} == now
    return LastInspection(path=path, status=report.status, current=current,
                          error_count=report.error_count, warning_count=report.warning_count)
