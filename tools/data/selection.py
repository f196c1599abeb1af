"""The step's rows: its sources, the rows kept from each, the replay sample; nothing written.

``select_rows`` reads every row of every source once: it refuses a row equal to a
hold-out row, finds the duplicates, and narrows the earlier rows to the replay sample.
Both ways of handing the data to the job (merge.py) start from what it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_json
from tunestep.tools.core.plan import LoadedPlan, Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.batch_folders import discover_batches
from tunestep.tools.data.data_rows import read_regular, read_rows, row_key, row_sha256
from tunestep.tools.data.data_writer import MANIFEST_VERSION
from tunestep.tools.data.holdout_pin import pinned_validation
from tunestep.tools.data.replay_sample import (
    held_back_batches,
    replay_history,
    row_grade,
    sample_replay,
)
from tunestep.tools.data.step_data import (
    DuplicateRow,
    HoldoutInfo,
    RowRef,
    SourceFile,
    StepDatasets,
    TrainFile,
)
from tunestep.tools.data.step_sources import (
    ReadyMemo,
    choose_batch,
    find_sources,
    require_ready,
)

Progress = Callable[[int, int | None, str], None]

STRATEGIES: tuple[str, ...] = ("list", "file")


def _holdout_keys(ws: Workspace, rel: str) -> dict[Any, int]:
    keys: dict[Any, int] = {}
    for line, row in read_rows(ws.resolve(rel), rel):
        keys.setdefault(row_key(row, normalize=True), line)
    return keys


def resumes(ws: Workspace, plan: Plan) -> bool:
    """Whether a step would start from trained weights (not the base model): the ledger's
    latest, its files as recorded; never where the store's link points."""
    if plan.data.regime == "from_base":
        return False
    from tunestep.tools.lineage.latest_check import trained_start

    with ledger.open_ledger(ws) as conn:
        return trained_start(ws, conn, plan.model_link, plan.model)


def select_rows(ws: Workspace, batch: str | None = None, *, strategy: str | None = None,
                dedup: bool | None = None, loaded: LoadedPlan | None = None,
                progress: Progress | None = None,
                resuming: bool | None = None) -> StepDatasets:
    """The step's sources and the rows kept from each; reads every row, writes nothing.

    ``train_files`` is filled for strategy ``list`` (whole files; a sampled replay's file is
    added by ``step_datasets``); for ``file`` it is left empty, because the merged file may
    not exist yet (``step_datasets`` and ``merge_datasets`` fill it). ``resuming`` (default:
    asked of the model store) decides whether the replay regime samples.
    """
    loaded = loaded or load_plan(ws)
    plan = loaded.plan
    strategy = strategy or plan.data.merge_strategy
    if strategy not in STRATEGIES:
        raise TunestepError("merge_strategy", f"unknown strategy '{strategy}'; use one of "
                            f"{', '.join(STRATEGIES)}")
    dedup = plan.data.dedup if dedup is None else dedup
    fraction = plan.data.replay_fraction
    if resuming is None:
        resuming = resumes(ws, plan)
    from tunestep.tools.core.patterns import compile_pattern

    grade_re = compile_pattern(plan.grade_pattern)  # RE2: linear time
    with ledger.open_ledger(ws) as conn:
        batches = discover_batches(ws, loaded, ledger.trained_batches(conn))
        holdout_status = pinned_validation(ws, conn, plan.paths.validation)
        held_back = held_back_batches(conn)
    chosen = choose_batch(batches, batch, plan.paths.incremental)
    sources = find_sources(ws, plan, batches, chosen)
    total = len(sources)
    memo = ReadyMemo(ws, loaded.sha256, holdout_status.sha256 or "")
    originals = {b.name: b.path for b in batches}
    # path -> the sha256 found READY: every file this step pins must be these bytes.
    ready: dict[str, str] = {}
    try:
        for done, source in enumerate(sources):
            key = memo.key(ws, source,
                           originals[source.part] if source.origin == "mapped" else None)
            if key in memo.entries:
                ready.update(memo.own)
                continue
            if progress:
                progress(done, total, f"inspecting {source.inspect}")
            report = require_ready(ws, source, plan.paths.mapped)
            seen = {f.path: f.sha256 for f in getattr(report, "files", None) or []}
            changed = sorted(p for p, sha in seen.items() if memo.own.get(p) != sha)
            if changed:  # the inspector judged other bytes than this call hashed
                raise TunestepError("data_changed", "the file changed while it was "
                                    "inspected; run again", path=changed[0])
            ready.update(seen or memo.own)
            memo.add(key)
    finally:
        memo.save()  # the sources found READY before a refusal stay known

    holdout = _holdout_keys(ws, plan.paths.validation)
    holdout_info = HoldoutInfo(path=plan.paths.validation, sha256=holdout_status.sha256 or "",
                               rows=holdout_status.rows or 0)
    seen: dict[Any, tuple[str, int]] = {}  # key -> first (path, line); a model per row is slow
    duplicates: list[DuplicateRow] = []
    leaks: list[tuple[RowRef, int]] = []
    files: list[SourceFile] = []
    kept: list[list[int]] = []
    grades: list[list[str | None]] = []  # per file, per row: the stratum's grade
    hashes: list[list[str]] = []  # per earlier file, per row: its content hash (rotation)
    drop = dedup and strategy == "file"
    for source in sources:
        for rel in source.files:
            path = ws.resolve(rel)
            data = read_regular(path, rel)
            if hashlib.sha256(data).hexdigest() != ready.get(rel):
                # Read once: the bytes selected (and so pinned by a draft) are the bytes
                # the inspector found READY, or nothing is.
                raise TunestepError("data_changed", "the file is not the one the inspector "
                                    "found READY (it changed since); run again", path=rel)
            rows = read_rows(path, rel, data)
            keep = []
            grades.append([row_grade(row, grade_re) for _, row in rows]
                          if source.part != chosen.name else [])
            hashes.append([row_sha256(row) for _, row in rows]
                          if source.part != chosen.name else [])
            for index, (line, row) in enumerate(rows):
                hit = holdout.get(row_key(row, normalize=True))
                if hit is not None:
                    leaks.append((RowRef(path=rel, line=line), hit))
                if dedup:
                    key = row_key(row, normalize=False)
                    first = seen.get(key)
                    if first is not None:
                        duplicates.append(DuplicateRow(
                            path=rel, line=line,
                            duplicate_of=RowRef(path=first[0], line=first[1])))
                        if drop:
                            continue
                    else:
                        seen[key] = (rel, line)
                keep.append(index)
            files.append(SourceFile(path=rel, sha256=hashlib.sha256(data).hexdigest(),
                                    rows=len(rows), part=source.part, step=source.step,
                                    origin=source.origin))
            kept.append(keep)
    if leaks:
        shown = ", ".join(f"{r.path}:{r.line} = hold-out line {h}" for r, h in leaks[:10])
        raise TunestepError(
            "holdout_leak",
            f"{len(leaks)} training row(s) equal a hold-out row (whitespace-normalized): "
            f"{shown}. Remove them from the training data; the hold-out set stays as it is.",
            path=leaks[0][0].path, line=leaks[0][0].line)

    replay = sample_replay(files, kept, grades, chosen.name, fraction, plan.training.seed,
                     plan.data.regime, resuming, held_back,
                     rotation=(chosen.step, hashes, replay_history(ws, plan, chosen.step)))
    for source_file, keep in zip(files, kept, strict=True):
        if len(keep) != source_file.rows:
            source_file.selected = keep
    rows = sum(len(k) for k in kept)
    digest = sha256_json({
        "v": MANIFEST_VERSION, "batch": chosen.name, "strategy": strategy, "dedup": dedup,
        "sources": [[f.path, f.sha256, f.selected] for f in files],
        "holdout": holdout_info.sha256, "replay": replay.model_dump(),
    })
    notes = []
    if duplicates and not drop:
        notes.append(f"{len(duplicates)} duplicate row(s) found and kept: strategy 'list' "
                     "copies nothing; strategy 'file' with data.dedup drops them")
    train_files = ([TrainFile(path=f.path, sha256=f.sha256, rows=f.rows) for f in files
                    if not (replay.mode == "sampled" and f.part != chosen.name)]
                   if strategy == "list" else [])
    if progress:
        progress(total, total, f"{rows} rows from {len(files)} file(s)")
    return StepDatasets(
        batch=chosen.name, step=chosen.step, strategy=strategy, sources=files,
        train_files=train_files, rows=rows, dedup=dedup, duplicate_count=len(duplicates),
        duplicates_dropped=drop, duplicates=duplicates, replay=replay, holdout=holdout_info,
        digest=digest, notes=notes)
