"""The model store and the Hub: commit a finished version, move ``latest``, push."""

from __future__ import annotations

import json
import os
from pathlib import Path

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_common import JobError, RunLog
    from .job_config import Paths
else:  # a sibling of the job script, whose folder is on sys.path
    from job_common import JobError, RunLog
    from job_config import Paths


# ---------------------------------------------------------------------------------------
# Version store


def commit_version(staging: Path, store: Path, name: str) -> Path:
    """Rename the finished staging folder to versions/<name> (atomic on one filesystem)."""
    final = store / "versions" / name
    if final.exists():
        raise JobError(f"version {name} appeared while training; not overwriting it")
    os.replace(staging, final)
    return final


def version_manifest(folder: Path) -> list[list]:
    """``[[path, sha256, size], ...]`` of the finished version (epoch checkpoints left out):
    reported in the job's result, the host records it in the ledger as the version's
    evidence (tools/lineage/version_files.py checks every later read against it)."""
    import hashlib

    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts[0] == "checkpoints" or path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out.append([rel.as_posix(), digest.hexdigest(), path.stat().st_size])
    return out


def move_latest(store: Path, name: str) -> None:
    """Point <store>/latest at versions/<name>: new link under a temp name, then rename over."""
    latest = store / "latest"
    if latest.exists() and not latest.is_symlink():
        raise JobError(f"{latest} is a real folder, not a link; leaving it alone")
    tmp = store / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{name}", tmp)  # relative: the store can move or be mounted elsewhere
    os.replace(tmp, latest)


KEPT_IN_REPO = (".gitattributes", "README.md")  # the repo's own files, not a version's


def push_version(cfg: dict, folder: Path, log: RunLog, promotion: dict | None = None) -> dict:
    """Upload the version folder to the Hub repo root as one commit, private by default.

    The returned commit sha pins this step: a later job resumes from
    ``hf://<model_id>@<sha>``.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    hub = cfg["hub"]
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)  # read only here; never logged
    repo = api.create_repo(hub["model_id"], private=hub["private"], exist_ok=True,
                           repo_type="model")
    # Not pushed: epoch checkpoints, and the README.md that PEFT/TRL generate (a card of
    # placeholders whose metadata can carry this machine's local base-model path).
    ops = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p))
           for p in sorted(folder.rglob("*"))
           if p.is_file() and p.relative_to(folder).parts[0] not in ("checkpoints", "README.md")]
    # The commit is exactly this version: files an earlier step left at the repo root go
    # (a full model pushed after a LoRA adapter must not keep adapter_config.json, or
    # whoever downloads the commit loads the old adapter instead).
    pushed = {op.path_in_repo for op in ops}
    ops += [CommitOperationDelete(path) for path in sorted(
        api.list_repo_files(repo.repo_id, repo_type="model"))
        if path not in pushed and path not in KEPT_IN_REPO]
    info = api.create_commit(
        repo.repo_id, operations=ops, repo_type="model",
        commit_message=f"tunestep step {cfg['step']:04d} ({cfg['batch']}), draft {cfg['draft_id']}"
                       + ("" if promotion is None or promotion["promoted"] else
                          " (not promoted by the gate)"),
    )
    log(f"pushed the model to {repo.repo_id} at {info.oid} (private={hub['private']})")
    return {"model_id": repo.repo_id, "revision": info.oid, "private": hub["private"]}


def push_outputs(paths: Paths, result: dict, log: RunLog) -> dict | None:
    """On HF Jobs, send the step's reports back to the bundle repo the backend reads.

    Set by tunestep's hf-jobs backend: ``TUNESTEP_OUTPUT_REPO`` (a dataset repo) and
    ``TUNESTEP_OUTPUT_PATH`` (``outputs/<draft_id>``). Each report lands at
    ``<output path>/<its path relative to --root>`` (the basename when outside the root),
    beside ``result.json`` (the TUNESTEP_RESULT summary), in one commit.
    """
    repo_id, prefix = os.environ.get("TUNESTEP_OUTPUT_REPO"), os.environ.get("TUNESTEP_OUTPUT_PATH")
    if not repo_id or not prefix:
        return None
    from huggingface_hub import CommitOperationAdd, HfApi

    prefix = prefix.strip("/")
    files = [paths.metrics_csv, paths.train_log, paths.samples_md, paths.history_json,
             paths.eval_json, paths.eval_md,
             paths.plots_dir / f"loss_step_{result['batch']}.png",
             paths.plots_dir / "val_progression.png"]
    ops = [CommitOperationAdd(f"{prefix}/result.json", json.dumps(result, indent=2).encode())]
    for f in files:
        if f.is_file():
            rel = f.relative_to(paths.root).as_posix() if f.is_relative_to(paths.root) else f.name
            ops.append(CommitOperationAdd(f"{prefix}/{rel}", f.read_bytes()))
    # The offline Trackio store (trackio.dir) dies with the container: it goes back too,
    # as <prefix>/trackio/<project>.db, and tunestep merges its runs into the workspace's.
    if paths.trackio_dir is not None and paths.trackio_dir.is_dir():
        for db in sorted(paths.trackio_dir.glob("*.db")):
            ops.append(CommitOperationAdd(f"{prefix}/trackio/{db.name}", sqlite_snapshot(db)))
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    info = api.create_commit(repo_id, operations=ops, repo_type="dataset",
                             commit_message=f"tunestep outputs {prefix}")
    log(f"pushed {len(ops)} output files to {repo_id}/{prefix} at {info.oid}")
    return {"repo_id": repo_id, "path": prefix, "revision": info.oid}


def sqlite_snapshot(db: Path) -> bytes:
    """A consistent copy of a SQLite file, its WAL folded in (the online backup API)."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tunestep-db-") as tmp:
        copy = Path(tmp) / db.name
        source, target = sqlite3.connect(str(db)), sqlite3.connect(str(copy))
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        return copy.read_bytes()
