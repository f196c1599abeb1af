"""Where the next step starts: a local checkpoint, an exact Hub commit, or the base model.

Steps chain. A step trained on Hugging Face Jobs pushes its model to the private model
repo and the ledger records the commit (``steps.hub_revision``); the next remote step
resumes from ``hf://<model_id>@<that sha>``, never from whatever ``main`` holds when it
runs. A local version remembers where it came from (``model_versions``: its own job, or
a download of a pushed commit), so a remote step that follows a synced or pushed local
version resumes from the same commit. A start that exists only on this machine (the
first remote step after local steps, or a local base model) travels inside the step's
bundle, hashed file by file into the draft's digest, and the remote config names its
mount path: a remote job config never holds a path of this machine.

The local start is the ledger's latest version (``tools/latest_check``), its files checked
against the record made with it; the store's ``latest`` link is never followed, and a link
that disagrees with the ledger refuses the draft (``latest_link_mismatch``).

A local step after a remote one needs that remote model in the store first
(``sync_model`` / ``tunestep sync``): it is refused with ``model_not_synced`` rather
than silently training on an older checkpoint.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.adapter_merge import adapter_base_of, local_merge, remote_merge
from tunestep.tools.lineage.adapter_merge import is_local_path as is_local_path
from tunestep.tools.lineage.adapter_merge import local_path as _local_path
from tunestep.tools.lineage.model_store import checkpoint_kind
from tunestep.tools.lineage.start_point import StartPoint

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
START_DIR = "start"  # a local start's folder inside the bundle
# Files of a version folder that never travel: epoch checkpoints and generated cards.
SKIPPED_PARTS = ("checkpoints", "README.md", ".cache", ".tunestep_sync.json")


def version_step(name: str) -> int | None:
    """The step number of a version folder ``NNNN_<batch>``."""
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def record_version(conn: sqlite3.Connection, *, store: str, version: str, step: int | None,
                   batch: str | None, job_id: str | None, source: str,
                   hub_model_id: str | None, hub_revision: str | None,
                   promoted: bool, files: list | None = None) -> None:
    """One local model version and its origin (``job``: trained here; ``hub``: synced),
    with its files ``[[path, sha256, size], ...]`` as made (``tools/version_files``)."""
    conn.execute(
        "INSERT OR REPLACE INTO model_versions(store, version, step, batch, job_id, source,"
        " hub_model_id, hub_revision, promoted, recorded_at, files)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (store, version, step, batch, job_id, source, hub_model_id, hub_revision,
         int(promoted), time.time(),
         ledger.dumps([list(f) for f in files]) if files is not None else None))


def version_origin(conn: sqlite3.Connection, store: str, version: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM model_versions WHERE store = ? AND version = ?",
                        (store, version)).fetchone()


def latest_step(conn: sqlite3.Connection, link: str | None = None) -> sqlite3.Row | None:
    """The step whose version is latest (``tools/lineage``: the gate's moves and the
    operator's signed ones, replayed), with the backend its job ran on."""
    from tunestep.tools.lineage.line import lineage

    line = lineage(conn, link)
    if line.latest_step is None:
        return None
    return conn.execute(
        "SELECT s.*, j.backend FROM steps s LEFT JOIN jobs j ON j.job_id = s.job_id"
        " WHERE s.step = ? ORDER BY s.recorded_at DESC LIMIT 1", (line.latest_step,)).fetchone()


def unsynced_step(conn: sqlite3.Connection, store: Path,
                  link: str | None = None) -> sqlite3.Row | None:
    """The latest version's step, when its model lives only on the Hub (not in the store)."""
    newest = latest_step(conn, link)
    if newest is None or not newest["hub_revision"] or not newest["version"]:
        return None
    if (store / "versions" / newest["version"]).is_dir():
        return None
    return newest


def _refuse_unpushed(conn: sqlite3.Connection, store: Path, link: str) -> None:
    """The latest version's step ran remotely but the ledger knows no commit it pushed and
    the store lacks its version: any start would silently skip it."""
    newest = latest_step(conn, link)
    if newest is None or newest["backend"] != "hf-jobs" or newest["hub_revision"]:
        return
    if newest["version"] and (store / "versions" / newest["version"]).is_dir():
        return
    raise TunestepError(
        "remote_step_unpushed",
        f"step {newest['step']} ({newest['batch']}) succeeded on HF Jobs, but the ledger holds "
        "no commit of the model it pushed (its result.json was not fetched), so the next step "
        f"cannot start from it: ask `tunestep status {newest['job_id']}` again, or put that "
        "model into the store by hand", path=link)


def _draft_base(conn: sqlite3.Connection, draft_id: str | None) -> str | None:
    from tunestep.tools.signing.signed_manifest import signed_fields

    row = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                       (draft_id,)).fetchone() if draft_id else None
    if row is None:
        return None
    signed = signed_fields(row, draft_id or "")  # a draft before schema 6: its old payload
    config = signed["job_config"] if signed else ledger.loads(row["payload"])["job_config"]
    return config["base_model"]


def starting_point(ws: Workspace, plan: Plan, mode: str, backend: str,
                   mount: str) -> StartPoint:
    """The start of the next step for ``backend``; ``mount`` is the remote bundle's path."""
    from tunestep.tools.lineage.latest_check import latest_state, refuse_mismatch, resume_folder

    store = ws.resolve_model_store(plan.model_link)
    with ledger.open_ledger(ws) as conn:
        # The ledger's line decides, never where the link points (a mismatch is refused).
        refuse_mismatch(latest_state(ws, conn, plan.model_link, plan.model, store),
                        plan.model_link)
        latest = resume_folder(ws, conn, plan.model_link, store) if store.is_dir() else None
        _refuse_unpushed(conn, store, plan.model_link)
        pending = unsynced_step(conn, store, plan.model_link)
        origin = (version_origin(conn, plan.model_link, latest.name)
                  if latest is not None and latest.parent.name == "versions" else None)
        pending_base = _draft_base(conn, pending["draft_id"]) if pending else None
        # A LoRA adapter's base: a LoRA step attaches to it, a full step merges into it.
        latest_base = (adapter_base_of(ws, conn, latest, latest.name)
                       if latest is not None and checkpoint_kind(latest) == "lora" else None)
    if backend == "local":
        if pending is not None:
            raise TunestepError(
                "model_not_synced",
                f"step {pending['step']} ({pending['batch']}) was trained on HF Jobs and its "
                f"model ({pending['hub_model_id']}@{pending['hub_revision'][:12]}) is not in "
                "the model store yet; a local step would start from an older checkpoint. "
                "Run `tunestep sync` (MCP: sync_model) first", path=plan.model_link)
        return _local_start(ws, plan, mode, latest, latest_base)
    return _remote_start(ws, plan, mode, latest, pending, pending_base, origin, mount,
                         latest_base)


def _is_base(ws: Workspace, plan: Plan, latest: Path | None) -> bool:
    if latest is None or not is_local_path(ws, plan.model):
        return False
    base = _local_path(ws, plan.model)
    return base.exists() and latest.resolve() == base.resolve()


def _local_start(ws: Workspace, plan: Plan, mode: str, latest: Path | None,
                 latest_base: str | None) -> StartPoint:
    base = plan.model
    if latest is None or _is_base(ws, plan, latest):
        return StartPoint(base_model=base, resume_from=None, source="base",
                          described=f"the base model {base}")
    kind = checkpoint_kind(latest)
    if mode == "full":
        if kind == "lora":  # LoRA is no one-way door: the job merges the adapter first
            return local_merge(ws, plan.model_link, latest, latest_base)
        return StartPoint(base_model=base, resume_from=str(latest), source="local",
                          described=f"the local checkpoint {latest.name}")
    if kind == "lora":
        return StartPoint(base_model=latest_base or base, resume_from=str(latest),
                          source="local", described=f"the local adapter {latest.name}")
    # LoRA on top of a fully fine-tuned checkpoint: that checkpoint is the new base.
    return StartPoint(base_model=str(latest), resume_from=None, source="local",
                      described=f"new adapters on the local checkpoint {latest.name}")


def _remote_base(ws: Workspace, plan: Plan, base: str | None, what: str) -> str:
    """A LoRA base for a remote job: it must be a Hub model id."""
    if not base or is_local_path(ws, base):
        raise TunestepError(
            "remote_base_not_on_hub",
            f"LoRA on HF Jobs attaches to a Hub base model, but {what} is the local path "
            f"{base!r}: set the plan's `model:` to the Hub id it came from (for example "
            "Qwen/Qwen3-0.6B), or train this step with backend 'local'",
            path=".specs/training/plan.md")
    return base


def _full_label(ws: Workspace, plan: Plan) -> str:
    """``base_model`` of a remote full step that resumes: a record only (the checkpoint
    carries model and tokenizer), so a local base path is replaced by the model repo id."""
    if not is_local_path(ws, plan.model):
        return plan.model
    return plan.hub.model_id or "local-base"


def _remote_start(ws: Workspace, plan: Plan, mode: str, latest: Path | None,
                  pending: Any, pending_base: str | None, origin: Any,
                  mount: str, latest_base: str | None = None) -> StartPoint:
    hub: tuple[str, str, str | None, str | None] | None = None  # id, sha, kind, adapter base
    if pending is not None:
        hub = (pending["hub_model_id"], pending["hub_revision"],
               "lora" if pending["mode"] == "lora" else "full", pending_base)
    elif latest is not None and origin is not None and origin["hub_revision"]:
        kind = checkpoint_kind(latest)
        hub = (origin["hub_model_id"], origin["hub_revision"], kind,
               latest_base if kind == "lora" else None)
    if hub is not None:
        model_id, sha, kind, adapter_base = hub
        if not COMMIT_SHA.fullmatch(sha or ""):
            raise TunestepError("hub_revision_invalid",
                                f"the ledger's revision for {model_id} is not a commit sha")
        resume = f"hf://{model_id}@{sha}"
        described = f"{model_id} at commit {sha} (pushed by an earlier step)"
        if mode == "full":
            if kind == "lora":  # merged into its Hub base inside the job
                return remote_merge(ws, StartPoint(
                    base_model="", resume_from=resume, source="hub", described=described,
                    hub_model_id=model_id, hub_revision=sha), adapter_base, plan.model_link,
                    resume)
            return StartPoint(base_model=_full_label(ws, plan), resume_from=resume,
                              source="hub", described=described, hub_model_id=model_id,
                              hub_revision=sha)
        if kind == "full":
            raise TunestepError(
                "remote_base_not_on_hub",
                "LoRA on HF Jobs attaches to a Hub base model, but the latest checkpoint "
                f"is a full fine-tune ({resume}): draft mode 'full', or train the LoRA step "
                "with backend 'local'", path=plan.model_link)
        return StartPoint(base_model=_remote_base(ws, plan, adapter_base or plan.model,
                                                  "the adapter's base"),
                          resume_from=resume, source="hub", described=described,
                          hub_model_id=model_id, hub_revision=sha)
    if latest is not None and not _is_base(ws, plan, latest):
        kind = checkpoint_kind(latest)
        described = (f"the local checkpoint {latest.name}, uploaded in the step's bundle "
                     "(it is on no Hub commit yet)")
        if mode == "full":
            if kind == "lora":  # merged into its Hub base inside the job
                return remote_merge(ws, StartPoint(
                    base_model="", resume_from=f"{mount}/{START_DIR}", source="bundle",
                    described=described, checkpoint=str(latest)), latest_base,
                    plan.model_link, latest.name)
            return StartPoint(base_model=_full_label(ws, plan),
                              resume_from=f"{mount}/{START_DIR}", source="bundle",
                              described=described, checkpoint=str(latest))
        if kind == "full":
            raise TunestepError(
                "remote_base_not_on_hub",
                "LoRA on HF Jobs attaches to a Hub base model, but the latest checkpoint is "
                f"the local full fine-tune {latest.name}: draft mode 'full', or train the "
                "LoRA step with backend 'local'", path=plan.model_link)
        return StartPoint(base_model=_remote_base(ws, plan, latest_base or plan.model,
                                                  "the adapter's base"),
                          resume_from=f"{mount}/{START_DIR}", source="bundle",
                          described=described, checkpoint=str(latest))
    return base_start(ws, plan, mode, "hf-jobs", mount)


def base_start(ws: Workspace, plan: Plan, mode: str, backend: str, mount: str) -> StartPoint:
    """A start from the plan's base model (a first step, or ``data.regime: from_base``)."""
    if backend == "local" or not is_local_path(ws, plan.model):
        return StartPoint(base_model=plan.model, resume_from=None, source="base",
                          described=f"the base model {plan.model}")
    if mode == "lora":
        _remote_base(ws, plan, plan.model, "the plan's model")
    base = _local_path(ws, plan.model)
    if checkpoint_kind(base) != "full":
        raise TunestepError("remote_base_not_on_hub",
                            f"the plan's model {plan.model!r} is neither a Hub id nor a local "
                            "model folder", path=".specs/training/plan.md")
    return StartPoint(base_model=f"{mount}/{START_DIR}", resume_from=None, source="bundle",
                      described=f"the local base model {base.name}, uploaded in the step's "
                                "bundle", checkpoint=str(base))


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of a checkpoint that travel (no epoch checkpoints, no generated card)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).parts[0] not in SKIPPED_PARTS)


def shown_path(ws: Workspace, plan: Plan, path: Path) -> str:
    """A checkpoint file as a person finds it: through ``models/<name>`` when it is in the
    store, else its own path (a local base model outside the workspace)."""
    store = ws.resolve_model_store(plan.model_link).resolve()
    if path.is_relative_to(store):
        return f"{plan.model_link}/{path.relative_to(store).as_posix()}"
    return ws.relative(path)
