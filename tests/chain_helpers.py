"""Helpers for the chaining tests: a base model on the loopback Hub, recorded job ends."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from tunestep.tools.core import ledger
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.runs.local_backend import record_outcome

BASE_REPO = "tester/tiny-base"
MODEL_REPO = "tester/qwen3_webdev"
STEPS_REPO = "tester/qwen3_webdev-steps"


def host_base_model(fake_hub, tiny_model_dir: Path, token: str, repo: str = BASE_REPO) -> str:
    """The tiny model as a private Hub model repo, and in this machine's Hub cache (as a
    base model someone drafts with has been downloaded once)."""
    from huggingface_hub import snapshot_download

    fake_hub.add_repo(repo, "model", private=True)
    fake_hub.push_files(repo, {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
                               for p in sorted(tiny_model_dir.rglob("*")) if p.is_file()},
                        repo_type="model")
    snapshot_download(repo, token=token)
    return repo


def hub_base_workspace(tmp_path: Path, plan: dict | None = None, **options) -> Workspace:
    """A sample workspace whose plan names a Hub base model and whose store is empty."""
    settings = {"model": BASE_REPO, "hub": {"model_id": MODEL_REPO, "dataset_repo": STEPS_REPO},
                "training": {"max_length": 512, "learning_rate": 3e-3,
                             "resume_learning_rate": 1e-3},
                "samples": {"n": 2, "max_new_tokens": 8}, **(plan or {})}
    build_sample_workspace(tmp_path / "ws", plan_overrides=settings, **options)
    store = tmp_path / "store" / "qwen3_webdev"
    store.mkdir(parents=True)
    (tmp_path / "ws" / "models").mkdir(exist_ok=True)
    (tmp_path / "ws" / "models" / "qwen3_webdev").symlink_to(store, target_is_directory=True)
    return open_workspace(tmp_path / "ws")


def record_job_end(ws: Workspace, draft_id: str, backend: str, result: dict,
                   status: str = "succeeded") -> str:
    """A job of ``draft_id`` that ended with ``result``, recorded as a backend would."""
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES (?, ?, ?, 'running', ?)", (job_id, draft_id, backend, time.time()))
    record_outcome(ws, job_id, status, 0 if status == "succeeded" else 1, result)
    return job_id


def fake_local_version(ws: Workspace, source: Path, name: str) -> Path:
    """A version folder as a local job leaves it (a copy of ``source``), latest moved, and
    its files recorded in the ledger as the job's result reports them (``version_files``)."""
    from tunestep.tools.lineage.version_files import record_files, scan_version

    store = ws.resolve_model_store("models/qwen3_webdev")
    target = store / "versions" / name
    shutil.copytree(source, target)
    latest = store / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(f"versions/{name}", target_is_directory=True)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        record_files(conn, "models/qwen3_webdev", name, scan_version(target, name),
                     source="job")
    return target


def local_base_workspace(tmp_path: Path, tiny_model_dir: Path, plan: dict | None = None,
                         **options) -> Workspace:
    """A sample workspace whose base model is a local folder (the store's 0000_base)."""
    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    settings = {"hub": {"model_id": MODEL_REPO, "dataset_repo": STEPS_REPO},
                "samples": {"n": 2, "max_new_tokens": 8}, **(plan or {})}
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True,
                           plan_overrides=settings, **options)
    return open_workspace(tmp_path / "ws")
