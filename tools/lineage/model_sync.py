"""sync_model: bring a model that a step pushed to the Hub home into the model store.

A step on Hugging Face Jobs ends in a container that is thrown away; what lasts is the
commit it pushed to the private model repo (``steps.hub_revision``). Syncing downloads
exactly that commit (``snapshot_download(revision=<sha>)``) into the store's
``.staging/``, hashes it (its files' sha256 and sizes become the version's record in the
ledger, ``tools/version_files``) and then does what a local step does: rename it to
``versions/NNNN_<batch>/`` and, when the ledger's line (``tools/lineage``: the gate as
decided on the host, the verified signed moves) makes it latest, move ``latest`` to it
atomically, with the job's own functions (``tools/jobs/job_store.py``). A download that
fails or is killed leaves only a staging folder, which the next sync removes first: the
store is as it was, and the sync can be run again. Each synced version is recorded in
``model_versions`` with the commit it came from, and carries that in
``.tunestep_sync.json``, so a second sync of the same commit is a no-op that says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction
from tunestep.tools.core.plan import load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.chain import record_version, version_origin
from tunestep.tools.lineage.latest_check import latest_state
from tunestep.tools.lineage.line import lineage
from tunestep.tools.lineage.model_store import checkpoint_kind
from tunestep.tools.lineage.version_files import scan_version

MARKER = ".tunestep_sync.json"


class SyncedVersion(BaseModel):
    version: str  # NNNN_<batch>
    path: str  # models/<name>/versions/<version>
    step: int
    batch: str
    hub_model_id: str
    hub_revision: str
    kind: str | None  # "full" | "lora"
    promoted: bool
    latest_moved: bool
    already_synced: bool


class SyncReport(BaseModel):
    synced: list[SyncedVersion] = Field(default_factory=list)
    latest: str | None  # the ledger's latest version afterwards (None: the base model)
    # The store's link disagrees with the ledger (latest_link_mismatch): not followed.
    latest_mismatch: str | None = None
    latest_fix: NextAction | None = None
    note: str | None = None


def sync_model(ws: Workspace, version: str | None = None) -> SyncReport:
    """Download pushed step models into the store: ``version`` (``NNNN_<batch>``, the
    batch name or the step number), or every remote step not in the store yet, in order."""
    plan = load_plan(ws).plan
    store = _store(ws, plan.model_link)
    with ledger.open_ledger(ws) as conn:
        rows = conn.execute("SELECT * FROM steps WHERE hub_revision IS NOT NULL"
                            " AND version IS NOT NULL ORDER BY step").fetchall()
    if version is not None:
        rows = [r for r in rows if version in (r["version"], r["batch"], str(r["step"]))]
        if not rows:
            raise TunestepError("sync_unknown_version",
                                f"no step in the ledger pushed a model as {version!r}: give "
                                "a version NNNN_<batch>, a batch name or a step number")
    else:
        rows = [r for r in rows if not (store / "versions" / r["version"]).is_dir()]
    synced = [sync_step(ws, plan.model_link, store, row) for row in rows]
    with ledger.open_ledger(ws) as conn:
        state = latest_state(ws, conn, plan.model_link, plan.model, store)
    return SyncReport(synced=synced, latest=state.ledger_latest,
                      latest_mismatch=None if state.matches else state.message,
                      latest_fix=state.fix_action if not state.matches else None,
                      note=None if synced else "every pushed step is in the store already")


def _store(ws: Workspace, link: str) -> Path:
    store = ws.resolve_model_store(link)
    if store.is_symlink() and not store.exists():
        raise TunestepError("checkpoint_missing", "the model link points at a folder that is "
                            "gone: mount or restore the model store, then sync again", path=link)
    store.mkdir(parents=True, exist_ok=True)  # a workspace that only ever trained remotely
    return store


def sync_step(ws: Workspace, link: str, store: Path, row) -> SyncedVersion:
    """One pushed step into ``versions/<version>``; idempotent for the same commit."""
    name, model_id, sha = row["version"], row["hub_model_id"], row["hub_revision"]
    with ledger.open_ledger(ws) as conn:  # in the latest version's line (tools/lineage)
        promoted = lineage(conn, link).holds(name)
    final = store / "versions" / name
    done = SyncedVersion(version=name, path=f"{link}/versions/{name}", step=row["step"],
                         batch=row["batch"], hub_model_id=model_id, hub_revision=sha,
                         kind=None, promoted=promoted, latest_moved=False, already_synced=True)
    with ledger.open_ledger(ws) as conn:
        origin = version_origin(conn, link, name)
    recorded = origin is not None and origin["hub_revision"] == sha and bool(origin["files"])
    shown = f"{link}/versions/{name}"
    files = None
    if final.is_dir():
        if _marker_revision(final) != sha and not recorded:
            raise TunestepError(
                "model_version_exists",
                f"{link}/versions/{name} exists and is not the commit {sha[:12]} of "
                f"{model_id}; move it aside to sync this step", path=f"{link}/versions/{name}")
    else:
        files = _download(store, name, model_id, sha, shown)
        done.already_synced = False
    done.kind = checkpoint_kind(final)
    if not recorded:
        # A sync killed after the rename left the folder unrecorded: hashed now, once.
        files = files if files is not None else scan_version(final, shown)
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            record_version(conn, store=link, version=name, step=row["step"],
                           batch=row["batch"], job_id=row["job_id"], source="hub",
                           hub_model_id=model_id, hub_revision=sha, promoted=promoted,
                           files=files)
    # The link follows the ledger: moved here only when this version is the ledger's
    # latest (a sync killed before the move does it on its re-run).
    done.latest_moved = promoted and _point_latest(ws, link, store, name)
    if not recorded or done.latest_moved:
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "model.sync", name,
                         detail={"hub_model_id": model_id, "hub_revision": sha,
                                 "latest_moved": done.latest_moved,
                                 "already_synced": done.already_synced})
    return done


def _marker_revision(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text()).get("hub_revision")
    except (OSError, ValueError, AttributeError):
        return None


def _download(store: Path, name: str, model_id: str, sha: str, shown: str) -> list:
    """snapshot_download of the exact commit into staging, then one rename into place."""
    from tunestep.tools.hub.errors import hub_call
    from tunestep.tools.hub.jobs_api import hub_api
    from tunestep.tools.hub.token import read_token
    from tunestep.tools.jobs.job_common import JobError
    from tunestep.tools.jobs.job_store import commit_version

    token = read_token()
    staging = store / ".staging" / f"sync-{name}"
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier sync's leftovers
    staging.parent.mkdir(parents=True, exist_ok=True)
    (store / "versions").mkdir(exist_ok=True)
    try:
        with hub_call(f"download {model_id}@{sha[:12]}", token):
            hub_api(token).snapshot_download(model_id, revision=sha, local_dir=staging)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # the client's download notes
        if checkpoint_kind(staging) is None:
            raise TunestepError("model_sync_empty",
                                f"{model_id}@{sha[:12]} holds no model (config.json) or "
                                "adapter (adapter_config.json)")
        (staging / MARKER).write_text(json.dumps(
            {"hub_model_id": model_id, "hub_revision": sha}, indent=2) + "\n")
        files = scan_version(staging, shown)  # the version's record, before it is in place
        try:
            commit_version(staging, store, name)
        except JobError as exc:
            raise TunestepError("model_version_exists", str(exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _point_latest(ws: Workspace, link: str, store: Path, name: str) -> bool:
    """Point ``latest`` at ``name`` when the ledger's line says it is latest and the link
    does not point there yet; True when it moved."""
    from tunestep.tools.jobs.job_common import JobError
    from tunestep.tools.jobs.job_store import move_latest

    with ledger.open_ledger(ws) as conn:
        if lineage(conn, link).latest != name:
            return False
    current = store / "latest"
    target = (store / "versions" / name).resolve()
    if current.is_symlink() and current.resolve() == target:
        return False
    try:
        move_latest(store, name)
    except JobError as exc:
        raise TunestepError("checkpoint_latest_not_link", str(exc)) from None
    return True
