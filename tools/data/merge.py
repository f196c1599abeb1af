"""The rows a step trains on: the ordered file list, or one merged file.

A step's data is the base training set, then every batch up to the current one in step
order, each from its mapped folder (``<paths.mapped>/<batch>/``) when apply_mapping wrote
one, else from the batch folder itself. Every source must be READY per the inspector. The
hold-out set is never a source, and a row equal to a hold-out row (whitespace-normalized)
refuses the whole step: training on it would make the validation numbers lie.

Two ways to hand that data to the job (``data.merge_strategy``):

- ``list`` (default): the job gets the source files and their sha256. Nothing is copied,
  so nothing can be dropped: duplicates are reported, replay is refused.
- ``file``: ``merge_datasets`` writes ``paths.merged`` (JSONL, atomically) plus a manifest
  beside it: every source with its sha256 and row range in the output, the duplicates
  dropped (``data.dedup``), the replay sample. The job gets that one file.

The regime (``data.regime``) decides which rows a step trains on:

- ``replay`` (default): when the step resumes from trained weights, the new batch in full
  plus ``data.replay_fraction`` of the earlier rows (base + earlier batches, after dedup),
  sampled per stratum (source x grade), so each source and each grade keeps its share:
  the earlier steps already trained on those rows, and replaying a sample keeps them in
  view against forgetting without giving them 3 more epochs each step. The sample
  rotates: within each stratum the rows replayed least often so far come first (the
  records ``<paths.logs>/replay_rows_<batch>.json`` of earlier steps say which), ties
  in an order seeded by ``training.seed`` and the step, so successive steps reach every
  earlier row before repeating one, and the same inputs give the same sample.
  A fresh start (nothing trained to resume from) or the first batch trains on
  everything. Strategy ``file`` puts the sample into the merged file; strategy ``list``
  writes it as one file of its own under ``paths.replay`` (``<batch>.jsonl`` plus a
  manifest) and hands the job that file and the new batch's files, untouched.
- ``cumulative``: every row again, from the previous weights (the old behaviour).
- ``from_base``: every row, from the base model (draft_job sets no resume point).
This module hands the step's data to the job (``merge_datasets``, ``step_datasets``) and
writes the merged file; the rows come from ``selection`` (sources and their READY check
in ``step_sources``, the replay sample and its files in ``replay_sample``).
.specs/data_pipeline.md is the long form.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_open, atomic_write_bytes
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.data_rows import read_rows
from tunestep.tools.data.data_writer import (
    MANIFEST_VERSION,
    data_lock,
    manifest_path,
    remove_leftovers,
)
from tunestep.tools.data.replay_sample import record_replay, replay_file
from tunestep.tools.data.selection import Progress, select_rows
from tunestep.tools.data.step_data import (
    DuplicateRow,
    HoldoutInfo,
    ReplayInfo,
    StepDatasets,
    Strategy,
    TrainFile,
)
from tunestep.tools.data.tokenized_cache import find_tokenized

SHOWN = 100  # rows listed in a result; the manifest lists every one


class MergeSource(BaseModel):
    path: str
    sha256: str
    part: str
    origin: str
    rows_in: int
    rows_out: int
    first_line: int | None = None  # 1-based lines of the merged output; None when empty
    last_line: int | None = None


class MergeResult(BaseModel):
    batch: str
    step: int
    strategy: Strategy
    cached: bool  # the merged file already matched; nothing was written
    rows: int
    output: str | None = None
    output_sha256: str | None = None
    manifest: str | None = None
    train_files: list[TrainFile]
    sources: list[MergeSource]
    duplicate_count: int
    duplicates_dropped: bool
    duplicates: list[DuplicateRow]
    replay: ReplayInfo
    holdout: HoldoutInfo
    notes: list[str] = Field(default_factory=list)
    seconds: float


# ---------------------------------------------------------------------------------------
# The step's file list (draft_job's view)


def step_datasets(ws: Workspace, batch: str | None = None, *, max_length: int | None = None,
                  progress: Progress | None = None, write: bool = False) -> StepDatasets:
    """The step's ordered training files with their sha256, per the plan's strategy.

    Strategy ``file`` requires a merged file that is fresh for the current sources and
    options (``write`` writes it, as merge_datasets does). Strategy ``list`` with a sampled
    replay hands the job the sample's own file: ``write`` writes it when it is missing or
    differs (the draft does); without ``write`` a missing or different one is
    ``replay_stale``.
    ``tokenized_dir`` names a tokenized dataset made by ``preprocess`` that matches these
    rows, the tokenizer and ``max_length`` (default: the plan's); None when there is none,
    and the job then tokenizes itself.
    """
    loaded = load_plan(ws)
    step = select_rows(ws, batch, loaded=loaded, progress=progress)
    if step.strategy == "list" and step.replay.mode == "sampled":
        replay = replay_file(ws, loaded.plan, step, write=write)
        step.replay_file = replay.path
        step.train_files = [replay, *step.train_files]
    if step.strategy == "file":
        merged = _fresh_merge(ws, loaded.plan, step)
        if merged is None and write:
            merged, cached = _ensure_merged(ws, loaded.plan, step, progress)
            if not cached:
                _audit_merge(ws, loaded.plan.paths.merged, step, merged)
        if merged is None:
            from tunestep.tools.core.next_step import NextAction

            raise TunestepError(
                "merge_stale", "strategy 'file': the merged file is missing or was made from "
                "other data or options; merge first", path=loaded.plan.paths.merged,
                hint=NextAction(tool="merge_datasets", args={"batch": step.batch}))
        step.merged = loaded.plan.paths.merged
        step.train_files = [TrainFile(path=step.merged, sha256=merged["output"]["sha256"],
                                      rows=merged["output"]["rows"])]
    found = find_tokenized(ws, loaded.plan, step, max_length)
    if found is not None:
        step.tokenized_dir, step.tokenized_key, step.tokenized_files = found
    return step


# ---------------------------------------------------------------------------------------
# The merged file


def _read_manifest(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _fresh_merge(ws: Workspace, plan: Plan, step: StepDatasets) -> dict | None:
    """The manifest when the merged file on disk is exactly the one these rows give."""
    out = ws.resolve(plan.paths.merged)
    manifest = _read_manifest(manifest_path(out))
    if manifest is None or manifest.get("key") != step.digest or not out.is_file():
        return None
    if sha256_file(out) != manifest.get("output", {}).get("sha256"):
        return None  # the file changed (or a crash came between file and manifest)
    # The manifest is not believed on its word (issue 17): rows appended to the file with
    # the manifest's hash and count rewritten to match would pass the checks above. The
    # file is fresh only when it is exactly the bytes these sources and rows give.
    if _merged_sha256(ws, step) != manifest["output"]["sha256"]:
        return None
    return manifest


def _merged_sha256(ws: Workspace, step: StepDatasets) -> str | None:
    """The sha256 of the merged file these sources and selected rows make (as
    ``_write_merged`` writes it), one source in memory at a time; None when a source
    changed meanwhile."""
    digest = hashlib.sha256()
    for source in step.sources:
        path = ws.resolve(source.path)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != source.sha256:
            return None
        rows = read_rows(path, source.path, data)
        chosen = range(len(rows)) if source.selected is None else source.selected
        digest.update(b"".join(orjson.dumps(rows[i][1]) + b"\n" for i in chosen))
    return digest.hexdigest()


def merge_datasets(ws: Workspace, batch: str | None = None, strategy: str | None = None,
                   dedup: bool | None = None, progress: Progress | None = None) -> MergeResult:
    """Prepare the step's training data per strategy: the file list, or one merged file.

    ``list``: nothing is written; the result lists the files and hashes the job gets.
    ``file``: writes the merged JSONL and its manifest atomically (an unchanged merge is a
    cache hit and writes nothing). Refuses a batch that is not READY and any row equal to a
    hold-out row.
    """
    started = time.monotonic()
    loaded = load_plan(ws)
    plan = loaded.plan
    step = select_rows(ws, batch, strategy=strategy, dedup=dedup, loaded=loaded,
                       progress=progress)
    shown = step.duplicates[:SHOWN]
    if step.strategy == "list":
        train_files = step.train_files
        if step.replay.mode == "sampled":
            train_files = [replay_file(ws, plan, step, write=True), *train_files]
        sources = [MergeSource(path=f.path, sha256=f.sha256, part=f.part, origin=f.origin,
                               rows_in=f.rows,
                               rows_out=f.rows if f.selected is None else len(f.selected))
                   for f in step.sources]
        result = MergeResult(
            batch=step.batch, step=step.step, strategy="list", cached=False, rows=step.rows,
            train_files=train_files, sources=sources,
            duplicate_count=step.duplicate_count, duplicates_dropped=False, duplicates=shown,
            replay=step.replay, holdout=step.holdout, notes=step.notes,
            seconds=time.monotonic() - started)
        return result  # the whole files are the data; a replay sample audited its own write

    out = ws.resolve(plan.paths.merged)
    manifest, cached = _ensure_merged(ws, plan, step, progress)
    sources = [MergeSource(**{k: s[k] for k in MergeSource.model_fields})
               for s in manifest["sources"]]
    train = TrainFile(path=plan.paths.merged, sha256=manifest["output"]["sha256"],
                      rows=manifest["output"]["rows"])
    result = MergeResult(
        batch=step.batch, step=step.step, strategy="file", cached=cached,
        rows=train.rows, output=train.path, output_sha256=train.sha256,
        manifest=ws.relative(manifest_path(out)), train_files=[train], sources=sources,
        duplicate_count=step.duplicate_count, duplicates_dropped=step.duplicates_dropped,
        duplicates=shown, replay=step.replay, holdout=step.holdout, notes=step.notes,
        seconds=time.monotonic() - started)
    if not cached:
        _audit(ws, result, step.digest)
    return result


def _ensure_merged(ws: Workspace, plan: Plan, step: StepDatasets,
                   progress: Progress | None) -> tuple[dict, bool]:
    """The merged file's manifest, writing the file first unless it is fresh (cached)."""
    out = ws.resolve(plan.paths.merged)
    protected = {ws.resolve(f.path) for f in step.sources} | {ws.resolve(plan.paths.validation)}
    if out in protected:
        raise TunestepError("merge_target", "paths.merged points at a source or the hold-out "
                            "set; it must be a file of its own", path=plan.paths.merged)
    with data_lock(ws):
        remove_leftovers(out.parent, out.name)
        remove_leftovers(out.parent, manifest_path(out).name)
        manifest = _fresh_merge(ws, plan, step)
        cached = manifest is not None
        record_replay(ws, plan, step)
        if manifest is None:
            manifest = _write_merged(ws, out, step, progress)
    return manifest, cached


def _write_merged(ws: Workspace, out: Path, step: StepDatasets,
                  progress: Progress | None) -> dict:
    """Write the merged JSONL, then its manifest; each atomically."""
    digest = hashlib.sha256()
    sources = []
    selected_lines: dict[str, list[int]] = {}
    written = 0
    total = len(step.sources)
    with atomic_open(out, "wb") as handle:
        for done, source in enumerate(step.sources):
            if progress:
                progress(done, total, f"merging {source.path}")
            path = ws.resolve(source.path)
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != source.sha256:
                raise TunestepError("data_changed", "the file changed while merging; run the "
                                    "merge again", path=source.path)
            rows = read_rows(path, source.path, data)
            chosen = range(len(rows)) if source.selected is None else source.selected
            chunk = b"".join(orjson.dumps(rows[i][1]) + b"\n" for i in chosen)
            handle.write(chunk)
            digest.update(chunk)
            count = len(chosen)
            if step.replay.mode == "sampled" and source.part != step.batch:
                selected_lines[source.path] = [rows[i][0] for i in chosen]
            sources.append({
                "path": source.path, "sha256": source.sha256, "part": source.part,
                "step": source.step, "origin": source.origin, "rows_in": source.rows,
                "rows_out": count, "first_line": written + 1 if count else None,
                "last_line": written + count if count else None})
            written += count
    if progress:
        progress(total, total, f"wrote {written} rows to {ws.relative(out)}")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "key": step.digest,
        "batch": step.batch,
        "step": step.step,
        "strategy": "file",
        "output": {"path": ws.relative(out), "sha256": digest.hexdigest(), "rows": written},
        "sources": sources,
        "dedup": {"enabled": step.dedup,
                  "dropped": [d.model_dump() for d in step.duplicates]},
        "replay": {**step.replay.model_dump(), "selected": selected_lines},
        "holdout": step.holdout.model_dump(),
    }
    atomic_write_bytes(manifest_path(out),
                       orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _audit_merge(ws: Workspace, rel: str, step: StepDatasets, manifest: dict) -> None:
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "merge.write", rel, detail={
            "batch": step.batch, "rows": manifest["output"]["rows"],
            "sha256": manifest["output"]["sha256"], "digest": step.digest,
            "duplicates": step.duplicate_count, "replay": step.replay.mode})


def _audit(ws: Workspace, result: MergeResult, digest: str) -> None:
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "merge.write", result.output, detail={
            "batch": result.batch, "rows": result.rows, "sha256": result.output_sha256,
            "digest": digest,
            "duplicates": result.duplicate_count, "replay": result.replay.mode})
