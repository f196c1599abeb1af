"""preprocess: the step's training rows tokenized ahead of the job, content-keyed.

The tokenization is the job's own (``tunestep.tools.jobs.sft_data``: the model's chat
template, or a training variant with ``{% generation %}`` markers, labels -100 outside the
assistant turns, end-of-turn token trained, truncation keeping the start), so a job that
finds a matching folder trains on exactly what it would have built itself.

Layout under ``paths.tokenized``:

- ``.parts/<part key>/``: one source file tokenized (``save_to_disk``) plus ``part.json``
  with per-row lengths. The key covers the file's sha256, the tokenizer files, the chat
  template inputs and ``max_length``, so a batch is tokenized once however many later
  steps include it.
- ``<batch>/``: the step's dataset, what the job loads with ``load_from_disk``: the parts'
  Arrow files hard-linked in training order (a selected subset is written out), a
  ``state.json`` listing them, and ``tunestep_cache.json`` with the step's cache key and
  stats. Each folder is built under a temp name and renamed into place.

A hit (same key) returns without loading the tokenizer; one file's tokenizing is
``tokenize_part``'s. .specs/data_pipeline.md has more.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_directory, atomic_write_bytes
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.data_writer import data_lock
from tunestep.tools.data.merge import SHOWN
from tunestep.tools.data.selection import Progress, select_rows
from tunestep.tools.data.step_data import ReplayInfo, RowRef, SourceFile, StepDatasets
from tunestep.tools.data.tokenize_part import Tokenizer, quiet_datasets, tokenize_file
from tunestep.tools.data.tokenized_cache import (  # re-exported: callers import them from here
    CACHE_FILE,
    CACHE_VERSION,
    config_key,
    part_key,
    step_key,
    tokenizer_dir,
    tokenizer_fingerprint,
)
from tunestep.tools.data.tokenized_cache import (
    intact as _intact,
)
from tunestep.tools.data.tokenized_cache import (
    read_json as _read_json,
)

PART_FILE = "part.json"
PARTS_DIR = ".parts"
# transformers' group_by_length sampler sorts within megabatches of this many batches.
MEGABATCH_FACTOR = 50


class TruncatedRow(RowRef):
    tokens: int  # the row's length before truncation


class TokenizedPart(BaseModel):
    """One source file's share of the step's dataset."""

    path: str
    sha256: str
    part_key: str
    cached: bool  # tokenized by an earlier run (this or another step)
    rows: int  # rows in the file
    selected_rows: int  # rows of it in the step's dataset


class PaddingWaste(BaseModel):
    """Share of padded positions that are padding, at the plan's batch size."""

    batch_size: int
    random_batches: float
    length_grouped: float  # transformers' group_by_length (megabatches sorted by length)


class PreprocessResult(BaseModel):
    batch: str
    step: int
    strategy: str
    path: str  # the tokenized dataset (load_from_disk)
    cache_key: str
    cached: bool  # the whole step matched: nothing was tokenized or written
    model: str
    tokenizer_dir: str
    chat_template: str  # model | trl | bundled: where the training template came from
    max_length: int
    rows: int
    tokens: int
    assistant_tokens: int
    truncated_rows: int
    truncated: list[TruncatedRow]  # the first ones
    padding: PaddingWaste
    parts: list[TokenizedPart]
    replay: ReplayInfo
    duplicate_count: int
    duplicates_dropped: bool
    notes: list[str] = Field(default_factory=list)
    seconds: float


# ---------------------------------------------------------------------------------------
# Assembling the step


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link shares the bytes: a batch included by 50 steps is stored once.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _assemble(parts: list[tuple[SourceFile, Path, dict]], out: Path, key: str) -> list[dict]:
    """The step's dataset in ``out``: the parts' Arrow files in order, subsets written out.

    Returns each file's name, sha256 and size (a linked file's hash from its part record).
    """
    from datasets import load_from_disk

    pieces: list[tuple[Path, bool, str | None]] = []  # (file, move rather than link, sha256)
    scratch = out / "_selected"
    info = None
    for index, (source, folder, part) in enumerate(parts):
        info = info or folder / "dataset_info.json"
        if source.selected is None:
            known = {e["name"]: e["sha256"] for e in part["files"]}
            state = _read_json(folder / "state.json") or {}
            pieces += [(folder / e["filename"], False, known.get(e["filename"]))
                       for e in state["_data_files"]]
        elif source.selected:
            subset = load_from_disk(str(folder)).select(source.selected)
            target = scratch / f"{index:05d}"
            with quiet_datasets():
                subset.flatten_indices().save_to_disk(str(target))
            state = _read_json(target / "state.json") or {}
            pieces += [(target / e["filename"], True, None) for e in state["_data_files"]]
    if not pieces:
        raise TunestepError("no_rows", "the step selects no rows at all")
    files = []
    for number, (src, move, digest) in enumerate(pieces):
        name = f"data-{number:05d}-of-{len(pieces):05d}.arrow"
        if move:
            os.replace(src, out / name)
        else:
            _link_or_copy(src, out / name)
        files.append({"name": name, "sha256": digest or sha256_file(out / name),
                      "size": (out / name).stat().st_size})
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copyfile(info, out / "dataset_info.json")
    # datasets' save_to_disk state: load_from_disk concatenates the listed files in order.
    state = {"_data_files": [{"filename": f["name"]} for f in files], "_fingerprint": key[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    atomic_write_bytes(out / "state.json", orjson.dumps(state, option=orjson.OPT_INDENT_2))
    return files + [{"name": n, "sha256": sha256_file(out / n), "size": (out / n).stat().st_size}
                    for n in ("state.json", "dataset_info.json")]


def padding_waste(lengths: list[int], batch_size: int, seed: int) -> PaddingWaste:
    """Padding share with shuffled batches, and with transformers' length grouping."""
    if not lengths:
        return PaddingWaste(batch_size=batch_size, random_batches=0.0, length_grouped=0.0)
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = batch_size * MEGABATCH_FACTOR
    grouped = []
    for start in range(0, len(order), mega):
        grouped += sorted(order[start:start + mega], key=lambda i: -lengths[i])

    def waste(indices: list[int]) -> float:
        padded = real = 0
        for start in range(0, len(indices), batch_size):
            batch = [lengths[i] for i in indices[start:start + batch_size]]
            padded += max(batch) * len(batch)
            real += sum(batch)
        return round(1 - real / padded, 4) if padded else 0.0

    return PaddingWaste(batch_size=batch_size, random_batches=waste(order),
                        length_grouped=waste(grouped))


def _sweep(folder: Path) -> None:
    """Remove what a killed atomic write left (hidden ``.*.tmp`` / ``.*.old-*`` entries)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(".") and (name.endswith(".tmp") or ".old-" in name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _collect_garbage(root: Path, config: str) -> None:
    """Drop parts of old file contents: unused by any step folder, same tokenizer and length.

    Parts made with another tokenizer or max_length stay: switching back is then free.
    Step folders hold hard links, so removing a part never breaks one.
    """
    parts = root / PARTS_DIR
    if not parts.is_dir():
        return
    used = set()
    for folder in root.iterdir():
        record = _read_json(folder / CACHE_FILE) if folder.is_dir() else None
        if record:
            used.update(p["part_key"] for p in record.get("parts", []))
    for entry in parts.iterdir():
        if not entry.is_dir() or entry.name.startswith(".") or entry.name in used:
            continue
        part = _read_json(entry / PART_FILE)
        if part is None or part.get("config") == config:
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The tool


def preprocess(ws: Workspace, batch: str | None = None, max_length: int | None = None,
               progress: Progress | None = None) -> PreprocessResult:
    """Tokenize the step's training rows into ``<paths.tokenized>/<batch>/``.

    Uses the rows the job would train on (strategy, dedup and replay as in merge), the
    plan's model tokenizer and ``max_length`` (default: the plan's). A matching earlier
    result is returned at once (``cached``); otherwise only files not tokenized before are
    tokenized. Refuses a batch that is not READY, a hold-out leak, and rows that would lose
    every assistant token to truncation.
    """
    started = time.monotonic()
    loaded = load_plan(ws)
    plan = loaded.plan
    max_length = max_length or plan.training.max_length
    if max_length < 16:
        raise TunestepError("max_length", "max_length must be at least 16")
    step = select_rows(ws, batch, loaded=loaded, progress=progress)
    folder_src = tokenizer_dir(ws, plan.model)
    fingerprint = tokenizer_fingerprint(folder_src)
    key = step_key(step, fingerprint, max_length)
    root = ws.resolve(plan.paths.tokenized)
    out = ws.resolve(f"{plan.paths.tokenized}/{step.batch}")  # a link out is refused

    with data_lock(ws):
        _sweep(root)
        _sweep(root / PARTS_DIR)
        record = _read_json(out / CACHE_FILE)
        # The step folder is what the job reads, so a hit re-hashes it (parts: sizes only).
        cached = (record is not None and record.get("key") == key
                  and _intact(out, record, hashes=True))
        if not cached:
            record = _build(ws, plan, step, fingerprint, folder_src, key, max_length, root,
                            out, progress)
            _collect_garbage(root, config_key(fingerprint, max_length))
    result = _result(ws, plan, step, record, out, folder_src, cached, started)
    if not cached:
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            ledger.audit(conn, "preprocess.write", result.path, detail={
                "batch": step.batch, "key": key, "rows": result.rows, "tokens": result.tokens,
                "max_length": max_length,
                "tokenized_parts": sum(not p.cached for p in result.parts)})
    return result


def _build(ws: Workspace, plan: Plan, step: StepDatasets, fingerprint: dict, folder_src: Path,
           key: str, max_length: int, root: Path, out: Path, progress: Progress | None) -> dict:
    tok: Tokenizer | None = None
    parts: list[tuple[SourceFile, Path, dict]] = []
    entries = []
    total = len(step.sources)
    for done, source in enumerate(step.sources):
        pkey = part_key(source.sha256, fingerprint, max_length)
        folder = root / PARTS_DIR / pkey
        part = _read_json(folder / PART_FILE)
        hit = part is not None and _intact(folder, part)
        if not hit:
            if progress:
                progress(done, total, f"tokenizing {source.path}")
            tok = tok or Tokenizer(folder_src)
            with atomic_directory(folder) as tmp:
                part = tokenize_file(ws, source, tok, max_length, tmp)
                part["config"] = config_key(fingerprint, max_length)
                atomic_write_bytes(tmp / PART_FILE, orjson.dumps(part))
        parts.append((source, folder, part))
        entries.append((source, pkey, hit, part))
    if progress:
        progress(total, total, f"writing {ws.relative(out)}")
    with atomic_directory(out) as tmp:
        # Hashes of what the job will read, so a draft can pin them in its digest.
        files = _assemble(parts, tmp, key)
        record = _step_record(step, key, fingerprint, max_length, plan.model, entries, files)
        atomic_write_bytes(tmp / CACHE_FILE, orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return record


def _step_record(step: StepDatasets, key: str, fingerprint: dict, max_length: int, model: str,
                 entries: list[tuple[SourceFile, str, bool, dict]], files: list[dict]) -> dict:
    lengths: list[int] = []
    assistant = 0
    truncated = []
    parts = []
    templates = set()
    for source, pkey, hit, part in entries:
        chosen = range(source.rows) if source.selected is None else source.selected
        lengths += [part["lengths"][i] for i in chosen]
        assistant += sum(part["assistant_tokens"][i] for i in chosen)
        keep = set(chosen)
        truncated += [{"path": source.path, "line": line, "tokens": tokens}
                      for index, line, tokens in part["truncated"] if index in keep]
        parts.append({"path": source.path, "sha256": source.sha256, "part_key": pkey,
                      "cached": hit, "rows": source.rows, "selected_rows": len(chosen)})
        templates.add(part["template"])
    return {
        "version": CACHE_VERSION, "key": key, "batch": step.batch, "step": step.step,
        "strategy": step.strategy, "model": model, "tokenizer": fingerprint,
        "chat_template": ",".join(sorted(templates)), "max_length": max_length,
        "rows": len(lengths), "tokens": sum(lengths), "assistant_tokens": assistant,
        "lengths": lengths, "truncated": truncated, "parts": parts, "files": files,
    }


def _result(ws: Workspace, plan: Plan, step: StepDatasets, record: dict, out: Path,
            folder_src: Path, cached: bool, started: float) -> PreprocessResult:
    parts = [TokenizedPart(**{**p, "cached": p["cached"] or cached}) for p in record["parts"]]
    notes = list(step.notes)
    if record["truncated"]:
        notes.append(f"{len(record['truncated'])} row(s) longer than max_length "
                     f"{record['max_length']} were cut at the end (their assistant turn keeps "
                     "its start)")
    return PreprocessResult(
        batch=step.batch, step=step.step, strategy=step.strategy, path=ws.relative(out),
        cache_key=record["key"], cached=cached, model=plan.model,
        tokenizer_dir=ws.relative(folder_src), chat_template=record["chat_template"],
        max_length=record["max_length"], rows=record["rows"], tokens=record["tokens"],
        assistant_tokens=record["assistant_tokens"],
        truncated_rows=len(record["truncated"]),
        truncated=[TruncatedRow(**t) for t in record["truncated"][:SHOWN]],
        padding=padding_waste(record["lengths"], plan.training.per_device_train_batch_size,
                              plan.training.seed),
        parts=parts, replay=step.replay, duplicate_count=step.duplicate_count,
        duplicates_dropped=step.duplicates_dropped, notes=notes,
        seconds=time.monotonic() - started)
