"""The store's ``latest`` link against the ledger's line; the resume point from the ledger.

The link ``<store>/latest`` is a convenience for people and for the job that moves it; it
is not evidence. Anyone who reaches the store can ``ln -sfn`` it to a version the gate
held back or to a folder made by hand. So every reader that used to follow it asks here:

- ``latest_state``: the ledger's latest (``tools/lineage``, signed moves verified) and
  where the link points; a disagreement is ``latest_link_mismatch`` with the command that
  fixes it (a signed ``tunestep promote`` of the ledger's latest, or removing the link
  when the ledger's line is the base model). check_batch reports it, draft_job refuses
  on it, job_status and sync_model name it. A remote step whose version is not in the
  store yet is no mismatch: the link moves when ``sync_model`` brings it home.
- ``resume_folder``: the folder the next step starts from, taken from the ledger's
  latest and checked against the version's recorded files (``tools/version_files``:
  names, sizes, sha256, no symlink); a version with no record is refused
  (``version_unrecorded``) until the operator's signed promotion records it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pydantic import BaseModel, Field

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.line import lineage
from tunestep.tools.lineage.promotion_records import IgnoredPromotion
from tunestep.tools.lineage.version_files import recorded_files, scan_version


class LatestState(BaseModel):
    """The ledger's latest and the link's, and whether they agree."""

    ledger_latest: str | None  # None: the ledger's line is the base model
    link_target: str | None  # the link as written (None: no link)
    matches: bool
    pending_sync: bool = False  # the ledger's latest is a remote step not in the store yet
    recording: bool = False  # a running local job moved the link; its step is not recorded yet
    message: str | None = None  # the mismatch, in words
    fix: str | None = None  # the CLI command that repairs it
    fix_action: NextAction | None = None  # the same as data (MCP: promote_version)
    ignored: list[IgnoredPromotion] = Field(default_factory=list)


def _link_target(store: Path) -> tuple[str | None, Path | None]:
    link = store / "latest"
    if not link.is_symlink():
        return (None, link.resolve()) if link.exists() else (None, None)
    try:
        return os.readlink(link), link.resolve()
    except OSError:
        return os.readlink(link), None


def _base_folder(ws: Workspace, model: str) -> Path | None:
    path = Path(model).expanduser()
    path = path if path.is_absolute() else ws.root / model
    return path.resolve() if path.exists() else None


def latest_state(ws: Workspace, conn: sqlite3.Connection, link: str, model: str,
                 store: Path | None = None) -> LatestState:
    """Compare ``<store>/latest`` with the ledger's latest version of ``link``."""
    store = store if store is not None else ws.resolve_model_store(link)
    line = lineage(conn, link)
    written, points = _link_target(store)
    latest = line.latest
    state = LatestState(ledger_latest=latest, link_target=written, matches=True,
                        ignored=line.ignored)
    if latest is not None:
        folder = store / "versions" / latest
        if not folder.is_dir():
            # A remote step's version not home yet: sync_model brings it and moves the
            # link (model_not_synced / remote_step_unpushed say what is missing).
            remote = conn.execute("SELECT 1 FROM steps WHERE version = ?",
                                  (latest,)).fetchone()
            state.pending_sync = remote is not None
            if state.pending_sync or latest.startswith("step-"):
                return state
        state.matches = (written is not None and points is not None
                         and points == folder.resolve())
    else:
        base = _base_folder(ws, model)
        state.matches = points is None or (base is not None and points == base)
    if state.matches:
        return state
    if _finishing_local_job(conn, store, points):
        # A local job moves the link to the version it just made a moment before its
        # supervisor records the step: for that moment the link is ahead of the ledger.
        # It is not followed (the resume point comes from the ledger), and not a fault.
        state.matches, state.recording = True, True
        return state
    where = written if written is not None else "a real folder"
    if latest is not None:
        state.message = (f"{link}/latest points at {where}, but the ledger's latest is "
                         f"{latest}; the link is not followed")
        state.fix = f"tunestep promote {latest} --workspace {ws.root}"
        state.fix_action = NextAction(
            lead=f"the operator points latest at {latest} again, signed:",
            tool="promote_version", args={"version": latest})
    else:
        state.message = (f"{link}/latest points at {where}, but the ledger moved latest "
                         "never (its line is the base model); the link is not followed")
        state.fix = (f"rm {link}/latest, or make a version latest, signed: tunestep "
                     f"promote VERSION --workspace {ws.root}")
        state.fix_action = NextAction(
            note=f"remove the link {link}/latest, or have the operator promote a version "
                 "(signed)")
    return state


def _finishing_local_job(conn: sqlite3.Connection, store: Path, points: Path | None) -> bool:
    """The link points at the version a running local job is finishing, not recorded yet."""
    if points is None or points.parent != (store / "versions").resolve():
        return False
    if conn.execute("SELECT 1 FROM steps WHERE version = ?", (points.name,)).fetchone():
        return False
    running = conn.execute("SELECT d.batch FROM jobs j JOIN drafts d USING (draft_id) "
                           "WHERE j.backend = 'local' AND j.status IN ('starting', 'running')")
    # Only the version that job writes (NNNN_<its batch>), not any folder put there by hand.
    return any(points.name.endswith(f"_{row[0]}") for row in running)


def refuse_mismatch(state: LatestState, link: str) -> None:
    """Raise ``latest_link_mismatch`` when the link disagrees with the ledger."""
    if not state.matches:
        raise TunestepError("latest_link_mismatch", f"{state.message}", path=f"{link}/latest",
                            hint=state.fix_action)


def resume_folder(ws: Workspace, conn: sqlite3.Connection, link: str,
                  store: Path | None = None) -> Path | None:
    """The version folder the next step starts from: the ledger's latest, its files as
    recorded; None when the ledger's line is the base model (or the version is a remote
    one not in the store yet: the chain resumes from its commit)."""
    store = store if store is not None else ws.resolve_model_store(link)
    latest = lineage(conn, link).latest
    if latest is None:
        return None
    if latest.startswith("step-"):  # a step recorded before versions were (schema 1)
        raise TunestepError(
            "version_unrecorded", f"the ledger's latest is {latest}, recorded without a "
            "version folder or its files, so no folder can be checked as the resume point: "
            "the operator promotes the version it made, signed, which records it",
            path=link, hint=NextAction(note="have the operator promote that version "
                                            "(signed): promote_version(version=...)"))
    folder = store / "versions" / latest
    if not folder.is_dir() or folder.is_symlink():
        return None
    recorded = recorded_files(conn, link, latest)
    shown = f"{link}/versions/{latest}"
    if recorded is None:
        raise TunestepError(
            "version_unrecorded", f"{shown} is the ledger's latest but the ledger holds no "
            "record of its files (a version from before schema 6, or put there by hand), so "
            "it cannot be checked", path=shown,
            hint=NextAction(lead="the operator promotes it (signed), which records it:",
                            tool="promote_version", args={"version": latest}))
    scan_version(folder, shown, recorded)
    return folder.resolve()  # through the store's own link (models/<name>), as a job sees it


def trained_start(ws: Workspace, conn: sqlite3.Connection, link: str, model: str,
                  store: Path | None = None) -> bool:
    """Whether the next step starts from trained weights (not the base model), as the
    ledger says: its latest version, that version's files checked against their record
    (``resume_folder``), never the store's link. A remote step's version not in the store
    yet counts (the next remote step resumes from its Hub commit); the base model's own
    folder promoted as a version does not."""
    store = store if store is not None else ws.resolve_model_store(link)
    latest = lineage(conn, link).latest
    if latest is None:
        return False
    if not (store / "versions" / latest).is_dir():
        return conn.execute("SELECT 1 FROM steps WHERE version = ?",
                            (latest,)).fetchone() is not None
    folder = resume_folder(ws, conn, link, store)
    base = _base_folder(ws, model)
    return folder is not None and not (base is not None and folder == base)

