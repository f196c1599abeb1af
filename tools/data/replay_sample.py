"""The replay regime's sample: which earlier rows a resuming step replays, and its files.

The sample (``sample_replay``) is stratified by source and grade and rotates: the rows
replayed least often by earlier steps come first, as the records
``<paths.logs>/replay_rows_<batch>.json`` say (``record_replay``, ``replay_history``).
Strategy ``list`` hands the job the sample as a file of its own (``replay_file``).
merge.py's docstring and .specs/data_pipeline.md tell the regime as a whole.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_write_bytes
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.data_rows import read_rows, row_sha256
from tunestep.tools.data.data_writer import MANIFEST_VERSION, data_lock, manifest_path
from tunestep.tools.data.step_data import ReplayInfo, SourceFile, StepDatasets, TrainFile
from tunestep.tools.data.step_sources import BASE_PART

# ---------------------------------------------------------------------------------------
# The sample


def row_grade(row: Any, pattern: Any) -> str | None:
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


def held_back_batches(conn) -> set[str]:
    """Batches trained only into versions outside the latest version's line: the gate held
    the step back (and no one promoted it since), or the operator rolled latest back past
    it (``tools/lineage``). The weights a step resumes from never learned them."""
    from tunestep.tools.lineage.line import lineage

    return set(lineage(conn).not_learned)


def sample_replay(files: list[SourceFile], kept: list[list[int]], grades: list[list[str | None]],
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
# Which rows earlier steps replayed (the rotation)


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
