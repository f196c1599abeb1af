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
.specs/data_pipeline.md is the long form.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from tunestep.tools import ledger
from tunestep.tools.atomic import atomic_open, atomic_write_bytes
from tunestep.tools.datafiles import check_batch_name, list_data_files
from tunestep.tools.errors import TunestepError
from tunestep.tools.hashing import canonical_json, sha256_file, sha256_json
from tunestep.tools.plan import LoadedPlan, Plan, load_plan
from tunestep.tools.preflight import BatchInfo, discover_batches, pinned_validation
from tunestep.tools.step_data import (  # re-exported: callers import them from here
    DuplicateRow,
    HoldoutInfo,
    ReplayInfo,
    RowRef,
    SourceFile,
    StepDatasets,
    Strategy,
    TrainFile,
)
from tunestep.tools.tokenized_cache import find_tokenized
from tunestep.tools.workspace import Workspace

Progress = Callable[[int, int | None, str], None]

STRATEGIES: tuple[str, ...] = ("list", "file")
BASE_PART = "base"  # the part name of the base training set (batch names match a pattern)
MANIFEST_VERSION = 1
SHOWN = 100  # rows listed in a result; the manifest lists every one
MAPPING_MANIFEST = "manifest.json"  # apply_mapping's own record, not data


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
# Reading rows


def read_rows(path: Path, shown: str, data: bytes | None = None) -> list[tuple[int, Any]]:
    """(1-based line or element, parsed row) for every row of a data file.

    JSONL lines are split as Python's text mode splits them (universal newlines) and blank
    lines skipped, exactly as the job's loader does, so row *i* here is row *i* there.
    """
    raw = _read_regular(path, shown) if data is None else data
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(raw))
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TunestepError("data_encoding", "the data file is not UTF-8", path=shown) from None
    if suffix == ".json":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TunestepError("data_json", f"invalid JSON: {exc}", path=shown) from None
        if isinstance(value, dict):
            return [(1, value)]
        if not isinstance(value, list):
            raise TunestepError("data_json", "a .json data file must hold an array or object",
                                path=shown)
        return [(i + 1, row) for i, row in enumerate(value)]
    rows = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise TunestepError("data_json", f"invalid JSON: {exc}", path=shown,
                                line=number) from None
    return rows


def _read_regular(path: Path, shown: str) -> bytes:
    """The whole file, opened non-blocking and checked regular (never a FIFO or device).

    Merge holds one source file in memory at a time; the inspector has already refused
    every row over data.max_row_bytes and every .json over 64 MiB before this reads.
    """
    from tunestep.tools.readfile import open_regular

    with open_regular(path, shown) as handle:
        return handle.read()


def _text(value: Any, normalize: bool) -> Any:
    if isinstance(value, str):
        return " ".join(value.split()) if normalize else value
    return canonical_json(value)


def row_sha256(row: Any) -> str:
    """A row's content hash (canonical JSON): what the replay records identify it by."""
    return hashlib.sha256(canonical_json(row)).hexdigest()


def replay_record_path(plan: Plan, batch: str) -> str:
    """Which earlier rows a step's replay sample holds, beside the step's logs."""
    return f"{plan.paths.logs}/replay_rows_{batch}.json"


def replay_history(ws: Workspace, plan: Plan, step: int) -> dict[tuple[str, str], int]:
    """(path, row hash) -> how many earlier steps' replay samples held that row.

    Read from the records of steps before ``step``; an unreadable record counts nothing
    (the rotation then starts over for its rows, it never fails a step).
    """
    folder = ws.resolve(plan.paths.logs)
    counts: dict[tuple[str, str], int] = {}
    if not folder.is_dir():
        return counts
    for path in sorted(folder.glob("replay_rows_*.json")):
        try:
            record = orjson.loads(path.read_bytes())
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and record["step"] < step):
                continue
            for rel, _line, sha in record["rows"]:
                counts[(rel, sha)] = counts.get((rel, sha), 0) + 1
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return counts


def record_replay(ws: Workspace, plan: Plan, step: StepDatasets) -> str | None:
    """Write which earlier rows this step's sample holds (file, line, content hash).

    Written when the sample is (the draft or a merge), replaced when the step is drafted
    again; the next steps' rotation reads it (``replay_history``).
    """
    if step.replay.mode != "sampled":
        return None
    rows = []
    for source, read, chosen in _sampled_sources(ws, step):
        rows += [[source.path, read[i][0], row_sha256(read[i][1])] for i in chosen]
    rel = replay_record_path(plan, step.batch)
    record = orjson.dumps({"batch": step.batch, "step": step.step, "seed": step.replay.seed,
                           "digest": step.digest, "rows": rows}) + b"\n"
    out = ws.resolve(rel)
    if not (out.is_file() and out.read_bytes() == record):
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, record)
    return rel


def row_key(row: Any, *, normalize: bool) -> Any:
    """What makes two rows the same training example: roles and contents, nothing else.

    Other keys (ids, metadata) are left out because the job's loader drops them too. With
    ``normalize`` runs of whitespace count as one space (the hold-out comparison).
    """
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, list):
        # A tuple of strings: hashable, exact, and far cheaper than serialising each row.
        return tuple((m.get("role"), _text(m.get("content"), normalize))
                     if isinstance(m, dict) else _text(m, normalize) for m in messages)
    return _text(row, normalize)


# ---------------------------------------------------------------------------------------
# Which sources


class _Source(BaseModel):
    part: str
    step: int
    origin: Literal["base", "original", "mapped"]
    inspect: str  # what the inspector is asked about (a folder or the base file)
    files: list[str]


def _choose(batches: list[BatchInfo], named: str | None, incremental: str) -> BatchInfo:
    if named is not None:
        check_batch_name(named)
        chosen = next((b for b in batches if b.name == named), None)
        if chosen is None:
            raise TunestepError("batch_missing", "no such batch folder (or its name does not "
                                "match data.batch_pattern)", path=f"{incremental}/{named}")
        return chosen
    chosen = next((b for b in batches if not b.trained), None)
    if chosen is None:
        raise TunestepError("batch_missing", "no untrained batch folder: name a batch, or drop "
                            f"the next one into {incremental}/", path=incremental)
    return chosen


def _sources(ws: Workspace, plan: Plan, batches: list[BatchInfo],
             chosen: BatchInfo) -> list[_Source]:
    base = plan.paths.train
    if not ws.resolve(base).is_file():
        raise TunestepError("train_missing", "the base training set is missing", path=base)
    found = [_Source(part=BASE_PART, step=0, origin="base", inspect=base, files=[base])]
    order = (chosen.step, chosen.name)
    for info in batches:
        if (info.step, info.name) > order:
            continue
        mapped = f"{plan.paths.mapped}/{info.name}"
        mapped_dir = ws.resolve(mapped)
        origin: Literal["original", "mapped"] = "mapped" if mapped_dir.is_dir() else "original"
        folder_rel = mapped if origin == "mapped" else info.path
        folder = ws.resolve(folder_rel)
        files = [f"{folder_rel}/{p.name}" for p in list_data_files(folder, ws.root)
                 if not (origin == "mapped" and p.name == MAPPING_MANIFEST)]
        if not files:
            raise TunestepError("batch_empty", "the folder holds no .jsonl, .json or .parquet "
                                "file", path=folder_rel)
        found.append(_Source(part=info.name, step=info.step, origin=origin,
                             inspect=folder_rel, files=files))
    return found


READY_MEMO = "ready_memo.json"  # under .tunestep/: READY verdicts by everything they depend on
READY_MEMO_SIZE = 2000


def _folder_hashes(ws: Workspace, rel: str) -> list[list[str]]:
    """(name, sha256) of every visible file in a folder (or of the file itself)."""
    path = ws.resolve(rel)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [[p.name, sha256_file(p)] for p in files]


class _ReadyMemo:
    """Skips the inspector for a source it already found READY with the same inputs.

    The inspector's own cache keys each batch by every earlier batch too (its cross-batch
    duplicate check), so asking it about all fifty sources of step 50 hashes ~1,300 files.
    Here each file is hashed once per call, and the key covers what the verdict depends
    on: the source's files (and, when mapped, the original batch), every earlier source,
    the hold-out set, the plan and the inspector's version. Only READY is remembered:
    a refusal always carries the inspector's fresh findings.
    """

    def __init__(self, ws: Workspace, plan_sha256: str, holdout_sha256: str) -> None:
        self.path = ws.state_dir / READY_MEMO
        try:
            from tunestep.tools.inspector import INSPECTOR_VERSION
        except ImportError:
            INSPECTOR_VERSION = None
        self.base = {"inspector": INSPECTOR_VERSION, "plan": plan_sha256,
                     "holdout": holdout_sha256}
        self.entries: dict[str, float] = {}
        with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError):
            self.entries = dict(orjson.loads(self.path.read_bytes()))
        self.chain: list[str] = []
        self.changed = False

    def key(self, ws: Workspace, source: _Source, original: str | None) -> str:
        own = _folder_hashes(ws, source.inspect)
        folder = ws.resolve(source.inspect).is_dir()
        # The shas this key stands for, by workspace path: what a hit vouches READY.
        self.own = {f"{source.inspect}/{name}" if folder else source.inspect: sha
                    for name, sha in own}
        if original is not None:
            own.append(["original", sha256_json(_folder_hashes(ws, original))])
        key = sha256_json({**self.base, "path": source.inspect, "files": own,
                           "earlier": self.chain})
        self.chain.append(key)
        return key

    def add(self, key: str) -> None:
        self.entries[key] = time.time()
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        newest = sorted(self.entries.items(), key=lambda kv: kv[1])[-READY_MEMO_SIZE:]
        with contextlib.suppress(OSError):  # a cache: failing to keep it costs time only
            atomic_write_bytes(self.path, orjson.dumps(dict(newest)))


def _inspect(ws: Workspace, path: str) -> Any:
    """The inspector's report on a folder or file (a seam the tests replace)."""
    from tunestep.tools.inspector import run_inspector

    return run_inspector(ws, path)


def _require_ready(ws: Workspace, source: _Source, mapped_root: str) -> Any:
    report = _inspect(ws, source.inspect)
    status = getattr(report, "status", None)
    if status == "READY":
        return report
    errors = list(getattr(report, "errors", []) or [])
    count = getattr(report, "error_count", len(errors))
    listed = "; ".join(
        f"{getattr(e, 'file', None) or source.inspect}:{getattr(e, 'line', None) or '-'} "
        f"{getattr(e, 'code', '')} {getattr(e, 'message', e)}".strip() for e in errors[:5])
    hint = ""
    if status == "NEEDS_MAPPING":
        hint = (f" Apply the inspector's mapping so that {mapped_root}/{source.part}/ holds "
                "canonical rows; the step then reads that folder.")
    first = errors[0] if errors else None
    raise TunestepError(
        "batch_not_ready",
        f"{source.inspect} is {status} per the inspector ({count} finding(s))"
        + (f": {listed}" if listed else "") + "." + hint,
        path=getattr(first, "file", None) or source.inspect,
        line=getattr(first, "line", None))


# ---------------------------------------------------------------------------------------
# The selection


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
    from tunestep.tools.latest_check import trained_start

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
    from tunestep.tools.patterns import compile_pattern

    grade_re = compile_pattern(plan.grade_pattern)  # RE2: linear time
    with ledger.open_ledger(ws) as conn:
        batches = discover_batches(ws, loaded, ledger.trained_batches(conn))
        holdout_status = pinned_validation(ws, conn, plan.paths.validation)
        held_back = _held_back(conn)
    chosen = _choose(batches, batch, plan.paths.incremental)
    sources = _sources(ws, plan, batches, chosen)
    total = len(sources)
    memo = _ReadyMemo(ws, loaded.sha256, holdout_status.sha256 or "")
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
            report = _require_ready(ws, source, plan.paths.mapped)
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
            data = _read_regular(path, rel)
            if hashlib.sha256(data).hexdigest() != ready.get(rel):
                # Read once: the bytes selected (and so pinned by a draft) are the bytes
                # the inspector found READY, or nothing is.
                raise TunestepError("data_changed", "the file is not the one the inspector "
                                    "found READY (it changed since); run again", path=rel)
            rows = read_rows(path, rel, data)
            keep = []
            grades.append([_grade(row, grade_re) for _, row in rows]
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

    replay = _replay(files, kept, grades, chosen.name, fraction, plan.training.seed,
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


def _grade(row: Any, pattern: Any) -> str | None:
    """The grade in a row's last assistant answer (a replay stratum), or None."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            found = pattern.search(str(message.get("content") or ""))
            return found.group(1) if found else None
    return None


def _shares(total: int, sizes: dict, behind: dict | None = None) -> dict:
    """``total`` split over groups in proportion to their sizes, by the largest remainder
    (ties in key order), so the parts add up to ``total`` exactly. ``behind`` (group ->
    replays per row so far) hands the remainder to the least replayed groups first, so a
    stratum whose share rounds down is not rounded down at every step."""
    whole = sum(sizes.values())
    if whole == 0:
        return dict.fromkeys(sizes, 0)
    keys = sorted(sizes)
    exact = {k: total * sizes[k] / whole for k in keys}
    take = {k: int(exact[k]) for k in keys}
    rest = total - sum(take.values())
    behind = behind or {}
    order = sorted((k for k in keys if exact[k] > take[k]),
                   key=lambda k: (behind.get(k, 0.0), -(exact[k] - take[k]), keys.index(k)))
    for k in order[:rest]:
        take[k] += 1
    return take


def _held_back(conn) -> set[str]:
    """Batches trained only into versions outside the latest version's line: the gate held
    the step back (and no one promoted it since), or the operator rolled latest back past
    it (``tools/lineage``). The weights a step resumes from never learned them."""
    from tunestep.tools.lineage import lineage

    return set(lineage(conn).not_learned)


def _replay(files: list[SourceFile], kept: list[list[int]], grades: list[list[str | None]],
            current: str, fraction: float, seed: int, regime: str,
            resuming: bool, held_back: set[str] | None = None,
            rotation: tuple[int, list[list[str]], dict] | None = None) -> ReplayInfo:
    """Sample the earlier rows in place (``kept`` is narrowed); current batch untouched.

    Stratified in two levels, each rounded by the largest remainder: the sample's size,
    round(fraction x earlier rows), is shared out over the sources by their size, then each
    source's share over its grades. Within each (source, grade) group the rows replayed
    least often by earlier steps come first (``rotation``: this step's number, every
    earlier row's content hash per file, and (path, hash) -> times replayed), ties in an
    order seeded by the seed and the step; so the sample changes from step to step and
    reaches every row of a group before it repeats one.
    """
    held = sorted({f.part for f in files if f.part in (held_back or set())})
    # A held-back batch's rows are new to the weights the step resumes from: whole, as the
    # current batch is (they are not part of the population replay samples from).
    earlier = [i for i, f in enumerate(files) if f.part != current and f.part not in held]
    population = sum(len(kept[i]) for i in earlier)
    info = {"fraction": fraction, "seed": seed, "regime": regime, "earlier_rows": population,
            "held_back": held}
    if regime == "cumulative":
        return ReplayInfo(mode="off", **info, reason="regime cumulative: every row again, "
                          "from the previous weights")
    if regime == "from_base":
        return ReplayInfo(mode="off", **info, reason="regime from_base: every row, from the "
                          "base model")
    if not any(f.part not in (BASE_PART, current) for f in files):
        # The first batch: nothing was trained before it, so the base set is new data too.
        return ReplayInfo(mode="nothing_earlier", **info,
                          reason="the first batch: the base set is new data too, every row")
    if not resuming:
        return ReplayInfo(mode="fresh_start", **info, reason="no trained checkpoint to "
                          "resume from: a fresh start trains every row")
    count = round(fraction * population)
    step, hashes, history = rotation if rotation is not None else (0, [], {})
    times = {i: ([history.get((files[i].path, h), 0) for h in hashes[i]]
                 if i < len(hashes) and hashes[i] else [0] * files[i].rows) for i in earlier}

    def behind(rows: list[int], i: int) -> float:  # replays per row so far
        return sum(times[i][r] for r in rows) / len(rows) if rows else 0.0

    per_source = _shares(count, {i: len(kept[i]) for i in earlier},
                         {i: behind(kept[i], i) for i in earlier})
    rng = random.Random(f"{seed}:{step}")  # a str seed hashes stably (random's version 2)
    strata = repeats = 0
    for i in earlier:
        groups: dict[str, list[int]] = {}
        for row in kept[i]:
            groups.setdefault(grades[i][row] or "", []).append(row)
        strata += len(groups)
        take = _shares(per_source[i], {g: len(rows) for g, rows in groups.items()},
                       {g: behind(rows, i) for g, rows in groups.items()})
        chosen = []
        for g in sorted(groups):
            order = rng.sample(groups[g], len(groups[g]))
            order.sort(key=times[i].__getitem__)  # stable: least replayed first, ties seeded
            chosen += order[:take[g]]
        repeats += sum(1 for row in chosen if times[i][row])
        kept[i] = sorted(chosen)  # the sampled rows keep their original order
    return ReplayInfo(mode="sampled", **info, sampled_rows=count, strata=strata,
                      rotation_step=step, repeated_rows=repeats,
                      reason=f"resuming: the new batch in full plus {fraction:g} of the "
                      f"{population} earlier rows ({count}), stratified by source and grade, "
                      f"least replayed first ({count - repeats} not replayed before)")


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
            from tunestep.tools.next_step import NextAction

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
# The replay sample's own file (strategy list)


def replay_path(plan: Plan, batch: str) -> str:
    return f"{plan.paths.replay}/{batch}.jsonl"


def _sampled_sources(ws: Workspace, step: StepDatasets):
    """Each earlier source of the step with its rows, read once and checked against the
    sha256 it was sampled from, and the indices of the rows the sample chose."""
    for source in step.sources:
        if source.part == step.batch:
            continue
        path = ws.resolve(source.path)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != source.sha256:
            raise TunestepError("data_changed", "the file changed while sampling; draft "
                                "again", path=source.path)
        rows = read_rows(path, source.path, data)
        yield source, rows, range(len(rows)) if source.selected is None else source.selected


def _replay_bytes(ws: Workspace, step: StepDatasets) -> tuple[bytes, list[dict]]:
    """The sampled earlier rows as JSONL, and where each came from (source, lines)."""
    chunks: list[bytes] = []
    sources = []
    for source, rows, chosen in _sampled_sources(ws, step):
        chunks += [orjson.dumps(rows[i][1]) + b"\n" for i in chosen]
        sources.append({"path": source.path, "sha256": source.sha256, "part": source.part,
                        "rows_in": source.rows, "rows_out": len(chosen),
                        "lines": [rows[i][0] for i in chosen]})
    return b"".join(chunks), sources


def replay_file(ws: Workspace, plan: Plan, step: StepDatasets, *, write: bool) -> TrainFile:
    """The replay sample of a strategy-list step as its own JSONL, plus a manifest beside it.

    The originals stay as they are; the sample is a derived file, written atomically and
    only when it differs. Without ``write`` it must already be there and match.
    """
    rel = replay_path(plan, step.batch)
    out = ws.resolve(rel)
    data, sources = _replay_bytes(ws, step)
    sha = hashlib.sha256(data).hexdigest()
    rows = sum(s["rows_out"] for s in sources)
    current = sha256_file(out) if out.is_file() else None
    if current != sha:
        if not write:
            raise TunestepError("replay_stale", "the replay sample of this step is missing or "
                                "was made from other data; draft the step again", path=rel)
        protected = {ws.resolve(f.path) for f in step.sources} | {
            ws.resolve(plan.paths.validation)}
        if out in protected:
            raise TunestepError("merge_target", "paths.replay points at a source or the "
                                "hold-out set; it must be a folder of its own", path=rel)
        with data_lock(ws):
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, data)
            manifest = {"manifest_version": MANIFEST_VERSION, "key": step.digest,
                        "batch": step.batch, "output": {"path": rel, "sha256": sha,
                                                        "rows": rows},
                        "replay": step.replay.model_dump(), "sources": sources}
            atomic_write_bytes(manifest_path(out),
                               orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "merge.write", rel, detail={
                "batch": step.batch, "rows": rows, "sha256": sha, "digest": step.digest,
                "replay": step.replay.mode})
    if write:
        record_replay(ws, plan, step)
    return TrainFile(path=rel, sha256=sha, rows=rows)


# ---------------------------------------------------------------------------------------
# The merged file


def manifest_path(merged: Path) -> Path:
    """``merged_train.jsonl`` -> ``merged_train.manifest.json`` beside it."""
    return merged.with_name(f"{merged.stem}.manifest.json")


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


@contextlib.contextmanager
def data_lock(ws: Workspace) -> Iterator[None]:
    """One tunestep data writer at a time per workspace (merge, preprocess).

    Under it, leftovers of a killed writer (hidden temp names) are known to be stale and
    can be removed.
    """
    ws.state_dir.mkdir(exist_ok=True)
    with open(ws.state_dir / "data.lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): single-writer is then the caller's duty
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_leftovers(folder: Path, name: str) -> list[str]:
    """Temp files/folders a killed atomic write of ``name`` left in ``folder``."""
    import shutil

    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        stale = (entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp")) or \
            entry.name.startswith(f".{name}.old-")
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


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
