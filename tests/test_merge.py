"""merge_datasets / step_datasets: the step's rows, their order, hashes, dedup, replay, leaks."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import orjson
import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.data import data_rows, merge, replay_sample, selection, step_sources
from tunestep.tools.demo.sample_workspace import build_sample_workspace

TRAIN = "datasets/processed_webdev_coding/train.jsonl"
HOLDOUT = "datasets/processed_webdev_coding/validation.jsonl"
MERGED = "datasets/processed_webdev_coding/merged_train.jsonl"
MANIFEST = "datasets/processed_webdev_coding/merged_train.manifest.json"
MAPPED = "datasets/processed_webdev_coding_mapped"
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def ready_report(**_):
    return types.SimpleNamespace(status="READY", errors=[], error_count=0)


@pytest.fixture
def inspector(monkeypatch):
    """READY for every source unless a test says otherwise: path -> report."""
    verdicts: dict[str, object] = {}
    monkeypatch.setattr(step_sources, "_inspect",
                        lambda ws, path: verdicts.get(path, ready_report()))
    return verdicts


def map_sharegpt(ws: Workspace, batch: str = "batch_10_02") -> Path:
    """What apply_mapping would write for the sample's ShareGPT batch."""
    src = ws.root / "datasets/incremental" / batch / "conversations.json"
    rows = [{"messages": [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                          for t in row["conversations"]]}
            for row in orjson.loads(src.read_bytes())]
    out = ws.root / MAPPED / batch
    out.mkdir(parents=True, exist_ok=True)
    (out / "mapped.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    (out / "manifest.json").write_bytes(b'{"note": "apply_mapping record, not data"}')
    return out


def small_ws(root: Path, **overrides) -> Workspace:
    """Base 30 rows, three batches of 10 (the second mapped), hold-out 8."""
    plan = overrides.pop("plan", {})
    build_sample_workspace(root, base_rows=30, batch_rows=10, batches=3, holdout_rows=8,
                           plan_overrides=plan, **overrides)
    ws = open_workspace(root)
    map_sharegpt(ws)
    return ws


@pytest.fixture
def ws(tmp_path, inspector) -> Workspace:
    return small_ws(tmp_path / "ws")


def jsonl_rows(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(row) + b"\n")


def set_plan(ws: Workspace, **data) -> None:
    """Rewrite the plan's data section (and seed) in place."""
    from tunestep.tools.core.plan import load_plan, render_plan_document

    plan = load_plan(ws).plan
    training = data.pop("training", {})
    updated = plan.model_copy(update={
        "data": plan.data.model_copy(update=data),
        "training": plan.training.model_copy(update=training)})
    (ws.root / ".specs/training/plan.md").write_text(render_plan_document(updated))


def digests(ws: Workspace, *rels: str) -> dict[str, str]:
    return {r: hashlib.sha256((ws.root / r).read_bytes()).hexdigest() for r in rels}


# ---------------------------------------------------------------------------------------
# Strategy list


def test_list_is_base_then_batches_in_order_with_hashes(ws):
    result = merge.merge_datasets(ws, "batch_10_03", strategy="list")
    paths = [f.path for f in result.train_files]
    assert paths == [TRAIN, "datasets/incremental/batch_10_01/examples.jsonl",
                     f"{MAPPED}/batch_10_02/mapped.jsonl",  # mapped wins; its manifest is no data
                     "datasets/incremental/batch_10_03/examples.jsonl"]
    for f in result.train_files:
        assert f.sha256 == hashlib.sha256((ws.root / f.path).read_bytes()).hexdigest()
    assert [f.rows for f in result.train_files] == [30, 10, 10, 10]
    assert result.rows == 60
    assert [s.origin for s in result.sources] == ["base", "original", "mapped", "original"]
    assert result.output is None and not (ws.root / MERGED).exists()  # nothing copied


def test_default_batch_is_the_first_untrained_and_later_batches_stay_out(ws):
    assert merge.step_datasets(ws).batch == "batch_10_01"
    assert [f.part for f in merge.step_datasets(ws).sources] == ["base", "batch_10_01"]
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO steps(step, batch, recorded_at) VALUES (1, 'batch_10_01', 0)")
    step = merge.step_datasets(ws)
    assert (step.batch, step.step) == ("batch_10_02", 2)
    assert [f.part for f in step.sources] == ["base", "batch_10_01", "batch_10_02"]


def test_named_batch_must_exist_and_be_a_name(ws):
    with pytest.raises(TunestepError) as missing:
        merge.step_datasets(ws, "batch_10_09")
    assert missing.value.code == "batch_missing"
    with pytest.raises(TunestepError) as pathlike:
        merge.step_datasets(ws, "sub/batch_10_01")
    assert pathlike.value.code == "batch_name"


def test_list_reports_duplicates_but_cannot_drop_them(ws):
    base = jsonl_rows(ws.root / TRAIN)
    append_row(ws.root / "datasets/incremental/batch_10_03/examples.jsonl", base[4])
    result = merge.merge_datasets(ws, "batch_10_03", strategy="list", dedup=True)
    assert result.duplicate_count == 1 and not result.duplicates_dropped
    assert result.rows == 61
    assert result.duplicates[0].duplicate_of.path == TRAIN
    assert result.duplicates[0].duplicate_of.line == 5
    assert any("duplicate" in note for note in result.notes)


# ---------------------------------------------------------------------------------------
# Strategy file


def test_file_writes_rows_in_order_with_a_manifest(ws):
    result = merge.merge_datasets(ws, "batch_10_03", strategy="file")
    merged = ws.root / MERGED
    expected = (jsonl_rows(ws.root / TRAIN)
                + jsonl_rows(ws.root / "datasets/incremental/batch_10_01/examples.jsonl")
                + jsonl_rows(ws.root / MAPPED / "batch_10_02/mapped.jsonl")
                + jsonl_rows(ws.root / "datasets/incremental/batch_10_03/examples.jsonl"))
    assert jsonl_rows(merged) == expected
    assert result.output == MERGED and result.rows == 60 and not result.cached
    assert result.output_sha256 == hashlib.sha256(merged.read_bytes()).hexdigest()
    manifest = orjson.loads((ws.root / MANIFEST).read_bytes())
    assert manifest["output"] == {"path": MERGED, "sha256": result.output_sha256, "rows": 60}
    ranges = [(s["path"], s["first_line"], s["last_line"]) for s in manifest["sources"]]
    assert ranges[0] == (TRAIN, 1, 30) and ranges[-1][1:] == (51, 60)
    assert all(s["sha256"] for s in manifest["sources"])
    assert manifest["replay"]["mode"] == "fresh_start" and manifest["dedup"]["dropped"] == []
    assert manifest["holdout"]["path"] == HOLDOUT
    # The hold-out set is never a source.
    assert HOLDOUT not in [s["path"] for s in manifest["sources"]]


def test_file_merge_is_cached_until_a_source_changes(ws):
    first = merge.merge_datasets(ws, "batch_10_03", strategy="file")
    stamp = (ws.root / MERGED).stat().st_mtime_ns
    again = merge.merge_datasets(ws, "batch_10_03", strategy="file")
    assert again.cached and again.output_sha256 == first.output_sha256
    assert (ws.root / MERGED).stat().st_mtime_ns == stamp
    append_row(ws.root / "datasets/incremental/batch_10_01/examples.jsonl",
               {"messages": [{"role": "user", "content": "new"},
                             {"role": "assistant", "content": "Grade: 7"}]})
    changed = merge.merge_datasets(ws, "batch_10_03", strategy="file")
    assert not changed.cached and changed.rows == 61
    assert changed.output_sha256 != first.output_sha256


def test_file_dedup_drops_later_copies_and_reports_them(ws):
    base = jsonl_rows(ws.root / TRAIN)
    batch3 = ws.root / "datasets/incremental/batch_10_03/examples.jsonl"
    copy = dict(base[2], id="other-metadata")  # other keys do not make it a new example
    append_row(batch3, copy)
    result = merge.merge_datasets(ws, "batch_10_03", strategy="file", dedup=True)
    assert result.rows == 60 and result.duplicate_count == 1 and result.duplicates_dropped
    dropped = result.duplicates[0]
    assert (dropped.path, dropped.line) == (ws.relative(batch3), 11)
    assert (dropped.duplicate_of.path, dropped.duplicate_of.line) == (TRAIN, 3)
    manifest = orjson.loads((ws.root / MANIFEST).read_bytes())
    assert manifest["dedup"]["dropped"][0]["line"] == 11
    assert manifest["sources"][-1]["rows_in"] == 11 and manifest["sources"][-1]["rows_out"] == 10
    kept = merge.merge_datasets(ws, "batch_10_03", strategy="file", dedup=False)
    assert kept.rows == 61 and not kept.duplicates_dropped


def test_plan_strategy_file_makes_step_datasets_need_a_fresh_merge(ws):
    set_plan(ws, merge_strategy="file")
    with pytest.raises(TunestepError) as stale:
        merge.step_datasets(ws, "batch_10_02")
    assert stale.value.code == "merge_stale"
    merged = merge.merge_datasets(ws, "batch_10_02")
    step = merge.step_datasets(ws, "batch_10_02")
    assert step.merged == MERGED
    assert [(f.path, f.sha256, f.rows) for f in step.train_files] == \
        [(MERGED, merged.output_sha256, 50)]
    # A merge for another batch makes it stale again.
    merge.merge_datasets(ws, "batch_10_03")
    with pytest.raises(TunestepError, match="merge_stale"):
        merge.step_datasets(ws, "batch_10_02")


# ---------------------------------------------------------------------------------------
# Refusals


def test_row_equal_to_a_holdout_row_is_refused(ws):
    holdout = jsonl_rows(ws.root / HOLDOUT)
    leaked = holdout[3]
    spaced = {"messages": [dict(m, content=f"  {m['content']}  ".replace(" ", "  "))
                           for m in leaked["messages"]]}
    target = ws.root / "datasets/incremental/batch_10_01/examples.jsonl"
    append_row(target, spaced)
    before = digests(ws, HOLDOUT, ws.relative(target))
    for strategy in ("list", "file"):
        with pytest.raises(TunestepError) as err:
            merge.merge_datasets(ws, "batch_10_03", strategy=strategy)
        assert err.value.code == "holdout_leak"
        assert (err.value.path, err.value.line) == (ws.relative(target), 11)
        assert "hold-out line 4" in err.value.message
    assert not (ws.root / MERGED).exists()
    assert digests(ws, HOLDOUT, ws.relative(target)) == before


def test_batch_not_ready_is_refused_with_the_inspectors_errors(ws, inspector):
    finding = types.SimpleNamespace(file="datasets/incremental/batch_10_03/examples.jsonl",
                                    line=7, code="row_no_assistant",
                                    message="no assistant message")
    inspector["datasets/incremental/batch_10_03"] = types.SimpleNamespace(
        status="INVALID", errors=[finding], error_count=3)
    with pytest.raises(TunestepError) as err:
        merge.merge_datasets(ws, "batch_10_03", strategy="file")
    assert err.value.code == "batch_not_ready"
    assert "INVALID" in err.value.message and "3 finding" in err.value.message
    assert "examples.jsonl:7 row_no_assistant no assistant message" in err.value.message
    assert (err.value.path, err.value.line) == (finding.file, 7)
    assert not (ws.root / MERGED).exists()
    # Earlier steps do not include batch 3, so they are not held up by it.
    assert merge.merge_datasets(ws, "batch_10_02", strategy="list").rows == 50


def test_unmapped_batch_gets_the_mapping_hint(ws, inspector):
    import shutil

    shutil.rmtree(ws.root / MAPPED / "batch_10_02")
    inspector["datasets/incremental/batch_10_02"] = types.SimpleNamespace(
        status="NEEDS_MAPPING", errors=[], error_count=0)
    with pytest.raises(TunestepError) as err:
        merge.step_datasets(ws, "batch_10_02")
    assert err.value.code == "batch_not_ready"
    assert f"{MAPPED}/batch_10_02/" in err.value.message


def test_ready_verdicts_are_remembered_until_an_input_changes(ws, monkeypatch):
    asked: list[str] = []

    def counting(ws, path):
        asked.append(path)
        return ready_report()

    monkeypatch.setattr(step_sources, "_inspect", counting)
    merge.step_datasets(ws, "batch_10_03")
    assert len(asked) == 4
    asked.clear()
    merge.step_datasets(ws, "batch_10_03")
    assert asked == []  # nothing changed: no source is inspected again
    append_row(ws.root / "datasets/incremental/batch_10_01/examples.jsonl",
               {"messages": [{"role": "user", "content": "u"},
                             {"role": "assistant", "content": "Grade: 1"}]})
    merge.step_datasets(ws, "batch_10_03")
    # The changed batch, and every later one (the inspector compares with earlier batches).
    assert asked == ["datasets/incremental/batch_10_01", f"{MAPPED}/batch_10_02",
                     "datasets/incremental/batch_10_03"]
    asked.clear()
    # A mapped batch is asked about again when its original changes.
    original = ws.root / "datasets/incremental/batch_10_02/conversations.json"
    original.write_bytes(original.read_bytes() + b"\n")
    merge.step_datasets(ws, "batch_10_03")
    assert asked == [f"{MAPPED}/batch_10_02", "datasets/incremental/batch_10_03"]
    asked.clear()
    set_plan(ws, dedup=False)  # the plan is part of what a verdict depends on
    merge.step_datasets(ws, "batch_10_03")
    assert len(asked) == 4


def test_a_refused_batch_is_asked_again_every_time(ws, inspector):
    inspector["datasets/incremental/batch_10_03"] = types.SimpleNamespace(
        status="INVALID", errors=[], error_count=1)
    for _ in range(2):
        with pytest.raises(TunestepError, match="batch_not_ready"):
            merge.step_datasets(ws, "batch_10_03")
    del inspector["datasets/incremental/batch_10_03"]  # fixed
    assert merge.step_datasets(ws, "batch_10_03").rows == 60


# ---------------------------------------------------------------------------------------
# Replay


@pytest.fixture
def resuming(monkeypatch):
    """A trained checkpoint to resume from (the replay regime samples only then)."""
    monkeypatch.setattr(selection, "resumes", lambda ws, plan: plan.data.regime != "from_base")


def test_replay_samples_earlier_rows_with_the_seed(ws, resuming):
    set_plan(ws, merge_strategy="file", replay_fraction=0.25)
    result = merge.merge_datasets(ws, "batch_10_03")
    # Earlier: base 30 + batch 1 + batch 2 = 50 rows; a quarter of them, then batch 3 whole.
    assert (result.replay.mode, result.replay.earlier_rows, result.replay.sampled_rows) == \
        ("sampled", 50, 12)
    assert result.rows == 22
    assert result.sources[-1].rows_out == 10
    manifest = orjson.loads((ws.root / MANIFEST).read_bytes())
    selected = manifest["replay"]["selected"]
    assert sum(len(lines) for lines in selected.values()) == 12
    assert manifest["replay"]["seed"] == 42
    merged = jsonl_rows(ws.root / MERGED)
    base = jsonl_rows(ws.root / TRAIN)
    assert merged[:len(selected[TRAIN])] == [base[line - 1] for line in selected[TRAIN]]
    # Same seed, same sample; another seed, another sample.
    again = merge.merge_datasets(ws, "batch_10_03")
    assert again.cached
    set_plan(ws, training={"seed": 7})
    other = merge.merge_datasets(ws, "batch_10_03")
    assert not other.cached
    assert orjson.loads((ws.root / MANIFEST).read_bytes())["replay"]["selected"] != selected


def test_replay_leaves_the_first_batch_and_a_fresh_start_whole(ws, monkeypatch):
    set_plan(ws, merge_strategy="file", replay_fraction=0.5)
    first = merge.merge_datasets(ws, "batch_10_01")
    assert first.replay.mode == "nothing_earlier" and first.rows == 40
    fresh = merge.merge_datasets(ws, "batch_10_03")  # no trained checkpoint in this store
    assert fresh.replay.mode == "fresh_start" and fresh.rows == 60


def test_replay_one_is_the_full_cumulative_set(ws, resuming):
    set_plan(ws, merge_strategy="file", replay_fraction=1.0)
    full = merge.merge_datasets(ws, "batch_10_03")
    assert full.replay.sampled_rows == 50 and full.rows == 60


def _grade_of(row: dict) -> str:
    import re

    return re.search(r"(?i)grade\s*[:=]\s*(\d+)", row["messages"][-1]["content"]).group(1)


@pytest.mark.parametrize("strategy", ["list", "file"])
def test_each_regime_trains_its_row_counts(ws, resuming, strategy):
    """replay: new batch + a stratified share of earlier rows; cumulative and from_base:
    every row (from_base does not resume, so the replay regime's sampling is off too)."""
    set_plan(ws, merge_strategy=strategy, replay_fraction=0.4, regime="replay")
    replay = merge.step_datasets(ws, "batch_10_03", write=True)
    assert (replay.replay.mode, replay.replay.earlier_rows, replay.replay.sampled_rows) == \
        ("sampled", 50, 20)
    assert replay.rows == 30 and sum(f.rows for f in replay.train_files) == 30
    per_source = {f.part: len(f.selected) if f.selected is not None else f.rows
                  for f in replay.sources}
    # Stratified: each source keeps about 0.4 of its rows (30 -> 12, 10 -> 4, 10 -> 4).
    assert per_source == {"base": 12, "batch_10_01": 4, "batch_10_02": 4, "batch_10_03": 10}
    if strategy == "list":
        # The sample is a file of its own; the new batch goes to the job untouched.
        assert replay.replay_file == "datasets/processed_webdev_coding/replay/batch_10_03.jsonl"
        assert replay.train_files[0].path == replay.replay_file
        sample = jsonl_rows(ws.root / replay.replay_file)
        assert len(sample) == 20
        manifest = orjson.loads(
            (ws.root / "datasets/processed_webdev_coding/replay/batch_10_03.manifest.json"
             ).read_bytes())
        assert sum(s["rows_out"] for s in manifest["sources"]) == 20
        # Grades keep their shares in the base set's sample (largest remainder per stratum).
        base = jsonl_rows(ws.root / TRAIN)
        chosen = [base[line - 1] for line in manifest["sources"][0]["lines"]]
        for grade in {_grade_of(r) for r in base}:
            share = sum(_grade_of(r) == grade for r in base) * 0.4
            assert abs(sum(_grade_of(r) == grade for r in chosen) - share) < 1.0 + 1e-9
        # Without write, a changed sample file is refused, not silently used.
        (ws.root / replay.replay_file).write_bytes(b"")
        with pytest.raises(TunestepError) as err:
            merge.step_datasets(ws, "batch_10_03")
        assert err.value.code == "replay_stale"
    for regime in ("cumulative", "from_base"):
        set_plan(ws, regime=regime)
        if strategy == "file":
            merge.merge_datasets(ws, "batch_10_03")
        every = merge.step_datasets(ws, "batch_10_03", write=True)
        assert every.replay.mode == "off" and every.rows == 60
        assert regime in every.replay.reason
    originals = digests(ws, TRAIN, HOLDOUT)
    assert originals == digests(ws, TRAIN, HOLDOUT)


# ---------------------------------------------------------------------------------------
# Audit, kill safety


def test_a_written_merge_is_audited(ws):
    merge.merge_datasets(ws, "batch_10_03", strategy="file")
    merge.merge_datasets(ws, "batch_10_03", strategy="file")  # cached: nothing written
    with ledger.open_ledger(ws) as conn:
        events = conn.execute("SELECT target, detail FROM audit WHERE action = 'merge.write'"
                              ).fetchall()
    assert len(events) == 1 and events[0]["target"] == MERGED
    assert orjson.loads(events[0]["detail"])["rows"] == 60


KILL_SCRIPT = """
import sys, time, types
from pathlib import Path
from tunestep.tools.data import merge, step_sources
from tunestep.tools.core.workspace import open_workspace
step_sources._inspect = lambda ws, path: types.SimpleNamespace(status="READY", errors=[],
                                                               error_count=0)
marker = Path(sys.argv[2])

def progress(done, total, message):
    if message.startswith("merging") and done == 2:  # two files already in the temp file
        marker.write_text("inside")
        time.sleep(120)

merge.merge_datasets(open_workspace(sys.argv[1]), "batch_10_03", strategy="file",
                     progress=progress)
"""


def test_a_killed_merge_leaves_the_previous_file_whole(ws, tmp_path):
    previous = merge.merge_datasets(ws, "batch_10_02", strategy="file")
    before = digests(ws, MERGED, MANIFEST)
    script = tmp_path / "kill_merge.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, str(script), str(ws.root), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the merge ended before it could be killed"
            assert time.monotonic() < deadline, "the merge never reached the kill point"
            time.sleep(0.05)
        leftovers = [p.name for p in (ws.root / MERGED).parent.iterdir()
                     if p.name.startswith(".merged_train")]
        assert leftovers  # the half-written temp file exists right now...
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    # ...but the real path still holds the previous merge, byte for byte.
    assert digests(ws, MERGED, MANIFEST) == before
    assert merge.merge_datasets(ws, "batch_10_02", strategy="file").cached
    assert previous.rows == 50
    done = merge.merge_datasets(ws, "batch_10_03", strategy="file")
    assert done.rows == 60 and not done.cached
    assert not [p for p in (ws.root / MERGED).parent.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------
# Reading rows and keys


def test_rows_are_counted_as_the_job_counts_them(tmp_path):
    from tunestep.tools.jobs import sft_data

    path = tmp_path / "rows.jsonl"
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    line = orjson.dumps(row)
    path.write_bytes(line + b"\r\n\r\n" + line + b"\n   \n" + line + b"\r" + line)
    rows = data_rows.read_rows(path, "rows.jsonl")
    assert [n for n, _ in rows] == [1, 3, 5, 6]
    assert len(sft_data.load_chat_rows([path])) == len(rows)


def test_row_key_ignores_metadata_and_normalizes_only_when_asked():
    a = {"messages": [{"role": "user", "content": "x  y"}], "id": 1}
    b = {"messages": [{"role": "user", "content": "x y"}], "id": 2}
    assert data_rows.row_key(a, normalize=False) != data_rows.row_key(b, normalize=False)
    assert data_rows.row_key(a, normalize=True) == data_rows.row_key(b, normalize=True)
    assert data_rows.row_key(dict(a, id=3), normalize=False) == \
        data_rows.row_key(a, normalize=False)


def test_with_the_real_inspector_a_mapped_sample_is_ready(tmp_path, monkeypatch):
    inspector = pytest.importorskip("tunestep.tools.inspector")
    if not hasattr(inspector, "run_inspector"):
        pytest.skip("run_inspector has not landed yet")
    ws = small_ws(tmp_path / "ws")
    step = merge.step_datasets(ws, "batch_10_03")
    assert [f.origin for f in step.sources] == ["base", "original", "mapped", "original"]
    import shutil

    shutil.rmtree(ws.root / MAPPED / "batch_10_02")
    with pytest.raises(TunestepError) as err:
        merge.step_datasets(ws, "batch_10_03")
    assert err.value.code == "batch_not_ready" and "NEEDS_MAPPING" in err.value.message


def test_replay_rotates_through_every_earlier_row_over_seven_steps(tmp_path, inspector,
                                                                   resuming):
    """issue 18: each step used to replay the same sample; now, within each (source,
    grade) stratum, every row is replayed once before any row is replayed twice."""
    build_sample_workspace(tmp_path / "ws", base_rows=30, batch_rows=10, batches=8,
                           holdout_rows=8)
    ws = open_workspace(tmp_path / "ws")
    map_sharegpt(ws)
    set_plan(ws, merge_strategy="list", replay_fraction=0.25)
    plan = __import__("tunestep.tools.core.plan", fromlist=["load_plan"]).load_plan(ws).plan
    base = jsonl_rows(ws.root / TRAIN)
    grade_of = {data_rows.row_sha256(row): _grade_of(row) for row in base}
    seen: dict[tuple[str, str], list[int]] = {}  # (path, row) -> steps that replayed it
    samples = []
    for step in range(2, 9):
        result = merge.step_datasets(ws, f"batch_10_{step:02d}", write=True)
        record = orjson.loads((ws.root / replay_sample.replay_record_path(plan, result.batch))
                              .read_bytes())
        assert record["step"] == step and result.replay.rotation_step == step
        rows = {(path, sha) for path, _line, sha in record["rows"]}
        assert len(rows) == len(record["rows"]) == result.replay.sampled_rows
        # the record names real rows: file, line and content hash agree
        for path, line, sha in record["rows"][:5]:
            assert data_rows.row_sha256(jsonl_rows(ws.root / path)[line - 1]) == sha
        for key in rows:
            seen.setdefault(key, []).append(step)
        samples.append({sha for path, sha in rows if path == TRAIN})
        # stratified: each grade of the base set gets its share (largest remainder: +-1)
        by_grade: dict[str, int] = {}
        for sha in samples[-1]:
            by_grade[grade_of[sha]] = by_grade.get(grade_of[sha], 0) + 1
        sizes: dict[str, int] = {}
        for g in grade_of.values():
            sizes[g] = sizes.get(g, 0) + 1
        share = len(samples[-1]) / len(base)
        assert all(abs(by_grade.get(g, 0) - share * n) <= 1 for g, n in sizes.items())
    assert samples[0] != samples[1]  # the sample changes from step to step
    # Coverage: every base row and every row of the first batch was replayed.
    base_keys = {(TRAIN, sha) for sha in grade_of}
    assert base_keys <= set(seen)
    assert sum(1 for path, _ in seen if "batch_10_01" in path) == 10
    # No repeat before full coverage, per stratum: when a row is replayed a second time,
    # every row of its stratum has been replayed at least once before that step.
    for (path, sha), steps in seen.items():
        if path != TRAIN or len(steps) < 2:
            continue
        stratum = [k for k in base_keys if grade_of[k[1]] == grade_of[sha]]
        assert all(min(seen[k]) < steps[1] for k in stratum), (sha, steps)
    # Reproducible: the same step drafted again gives the same sample, byte for byte.
    last = ws.root / replay_sample.replay_record_path(plan, "batch_10_08")
    before = last.read_bytes()
    merge.step_datasets(ws, "batch_10_08", write=True)
    assert last.read_bytes() == before
