"""preprocess: the job's own tokenization, written ahead, keyed by content."""

from __future__ import annotations

import os
import shutil
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
from tunestep.tools.data import merge, preprocess, selection, step_sources
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.jobs import sft_data

TRAIN = "datasets/processed_webdev_coding/train.jsonl"
MAPPED = "datasets/processed_webdev_coding_mapped"
TOKENIZED = "datasets/tokenized"
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


@pytest.fixture(autouse=True)
def ready(monkeypatch):
    monkeypatch.setattr(step_sources, "_inspect", lambda ws, path: types.SimpleNamespace(
        status="READY", errors=[], error_count=0))


def make_ws(root: Path, model: Path, **plan) -> Workspace:
    """Base 30 rows, three batches of 10 (the second mapped), the tiny model as the plan's."""
    plan.setdefault("training", {"max_length": 512})
    build_sample_workspace(root, base_rows=30, batch_rows=10, batches=3, holdout_rows=8,
                           plan_overrides={"model": str(model), **plan})
    ws = open_workspace(root)
    src = ws.root / "datasets/incremental/batch_10_02/conversations.json"
    rows = [{"messages": [{"role": ROLES[t["from"]], "content": t["value"]}
                          for t in row["conversations"]]}
            for row in orjson.loads(src.read_bytes())]
    out = ws.root / MAPPED / "batch_10_02"
    out.mkdir(parents=True)
    (out / "mapped.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return ws


@pytest.fixture
def ws(tmp_path, tiny_model_dir) -> Workspace:
    return make_ws(tmp_path / "ws", tiny_model_dir)


def job_tokenization(ws: Workspace, files: list[str], model: Path, max_length: int):
    """What train_sft.py builds itself from the same files."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    rows = sft_data.load_chat_rows([ws.root / f for f in files])
    return sft_data.tokenize_chat(rows, tok, max_length,
                                  chat_template=sft_data.training_chat_template(tok))


def columns(ds) -> dict[str, list]:
    return {name: ds[name] for name in ("input_ids", "attention_mask", "labels")}


def test_tokenized_dataset_is_exactly_what_the_job_would_build(ws, tiny_model_dir):
    from datasets import load_from_disk

    result = preprocess.preprocess(ws, "batch_10_03")
    assert result.path == f"{TOKENIZED}/batch_10_03" and not result.cached
    assert result.rows == 60 and result.chat_template == "model"
    step = merge.step_datasets(ws, "batch_10_03")
    ours = load_from_disk(str(ws.root / result.path))
    theirs = job_tokenization(ws, [f.path for f in step.train_files], tiny_model_dir, 512)
    assert columns(ours) == columns(theirs)
    assert ours.features == theirs.features
    assert result.tokens == sum(len(x) for x in theirs["input_ids"])
    assert result.assistant_tokens == sum(sum(t != -100 for t in x) for x in theirs["labels"])
    # Labels cover the assistant turn and its end-of-turn token, nothing of the prompt.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    first = [t for t in ours[0]["labels"] if t != -100]
    assert tok.decode(first).rstrip().endswith("<|im_end|>")
    assert "Task:" not in tok.decode(first)
    # draft_job sees it through step_datasets.
    assert step.tokenized_dir == result.path and step.tokenized_key == result.cache_key
    import hashlib

    names = {Path(f.path).name for f in step.tokenized_files}
    assert {"state.json", "dataset_info.json", "data-00000-of-00004.arrow"} <= names
    for f in step.tokenized_files:  # what a draft can put into its digest
        assert f.sha256 == hashlib.sha256((ws.root / f.path).read_bytes()).hexdigest()


def test_a_hit_returns_at_once_and_writes_nothing(ws):
    first = preprocess.preprocess(ws, "batch_10_03")
    folder = ws.root / first.path
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    started = time.monotonic()
    again = preprocess.preprocess(ws, "batch_10_03")
    assert again.cached and again.cache_key == first.cache_key
    assert time.monotonic() - started < 2
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert again.model_dump(exclude={"cached", "seconds", "parts"}) == \
        first.model_dump(exclude={"cached", "seconds", "parts"})
    with ledger.open_ledger(ws) as conn:
        writes = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'preprocess.write'"
                              ).fetchone()[0]
    assert writes == 1


def test_a_tampered_tokenized_file_is_not_used(ws):
    first = preprocess.preprocess(ws, "batch_10_02")
    arrow = ws.root / first.path / "data-00001-of-00003.arrow"
    data = bytearray(arrow.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    arrow.unlink()  # a hard link: write a new file, leave the part alone
    arrow.write_bytes(bytes(data))
    assert merge.step_datasets(ws, "batch_10_02").tokenized_dir is None
    again = preprocess.preprocess(ws, "batch_10_02")
    assert not again.cached and again.cache_key == first.cache_key
    assert [p.cached for p in again.parts] == [True, True, True]
    assert merge.step_datasets(ws, "batch_10_02").tokenized_dir == first.path


def test_any_change_makes_a_new_entry(ws, tmp_path, tiny_model_dir):
    base = preprocess.preprocess(ws, "batch_10_03")
    keys = {base.cache_key}

    # max_length
    shorter = preprocess.preprocess(ws, "batch_10_03", max_length=400)
    assert not shorter.cached and shorter.cache_key not in keys
    keys.add(shorter.cache_key)

    # one input file: only that file is tokenized again
    target = ws.root / "datasets/incremental/batch_10_01/examples.jsonl"
    with open(target, "ab") as handle:
        handle.write(orjson.dumps({"messages": [{"role": "user", "content": "one more"},
                                                {"role": "assistant", "content": "Grade: 3"}]})
                     + b"\n")
    edited = preprocess.preprocess(ws, "batch_10_03")
    assert not edited.cached and edited.cache_key not in keys and edited.rows == 61
    assert [p.cached for p in edited.parts] == [True, False, True, True]
    keys.add(edited.cache_key)

    # the tokenizer's chat template
    model = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, model)
    template = model / "chat_template.jinja"
    template.write_text(template.read_text() + "{#- edited -#}\n")
    plan_path = ws.root / ".specs/training/plan.md"
    plan_path.write_text(plan_path.read_text().replace(str(tiny_model_dir), str(model)))
    retemplated = preprocess.preprocess(ws, "batch_10_03")
    assert not retemplated.cached and retemplated.cache_key not in keys
    assert not any(p.cached for p in retemplated.parts)


def test_earlier_batches_are_tokenized_once_for_all_later_steps(ws):
    first = preprocess.preprocess(ws, "batch_10_01")
    assert [p.cached for p in first.parts] == [False, False]
    later = preprocess.preprocess(ws, "batch_10_03")
    assert [p.cached for p in later.parts] == [True, True, False, False]
    # Both step folders stay loadable; the shared parts are stored once (hard links).
    from datasets import load_from_disk

    assert len(load_from_disk(str(ws.root / first.path))) == 40
    assert len(load_from_disk(str(ws.root / later.path))) == 60
    one = ws.root / first.path / "data-00000-of-00002.arrow"
    other = ws.root / later.path / "data-00000-of-00004.arrow"
    assert os.path.samefile(one, other)


def test_truncation_is_counted_and_cut_away_assistants_are_refused(ws, tiny_model_dir):
    result = preprocess.preprocess(ws, "batch_10_01", max_length=450)
    assert result.truncated_rows > 0
    assert result.truncated[0].tokens > 450 and result.truncated[0].line >= 1
    from datasets import load_from_disk

    ds = load_from_disk(str(ws.root / result.path))
    assert max(len(x) for x in ds["input_ids"]) == 450
    step = merge.step_datasets(ws, "batch_10_01", max_length=450)
    assert step.tokenized_dir == result.path
    theirs = job_tokenization(ws, [f.path for f in step.train_files], tiny_model_dir, 450)
    assert columns(ds) == columns(theirs)

    # So short that prompts fill it: an error listing the lines, and no dataset written.
    shutil.rmtree(ws.root / TOKENIZED)
    with pytest.raises(TunestepError) as err:
        preprocess.preprocess(ws, "batch_10_01", max_length=40)
    assert err.value.code == "assistant_truncated"
    assert err.value.path == TRAIN and err.value.line == 1
    assert f"{TRAIN}:1 (" in err.value.message and "max_length 40" in err.value.message
    assert not (ws.root / TOKENIZED / "batch_10_01").exists()


def test_strategy_file_tokenizes_the_merged_rows(tmp_path, tiny_model_dir, monkeypatch):
    from datasets import load_from_disk

    monkeypatch.setattr(selection, "resumes", lambda ws, plan: True)  # replay samples when resuming
    ws = make_ws(tmp_path / "ws", tiny_model_dir,
                 data={"merge_strategy": "file", "replay_fraction": 0.3})
    merged = merge.merge_datasets(ws, "batch_10_03")
    result = preprocess.preprocess(ws, "batch_10_03")
    assert result.rows == merged.rows == 25  # 15 of the 50 earlier rows + batch 3
    assert result.replay.sampled_rows == 15
    ours = load_from_disk(str(ws.root / result.path))
    theirs = job_tokenization(ws, [merged.output], tiny_model_dir, 512)
    assert columns(ours) == columns(theirs)
    assert merge.step_datasets(ws, "batch_10_03").tokenized_dir == result.path


def test_padding_waste_with_and_without_length_grouping():
    lengths = [10, 100] * 50
    waste = preprocess.padding_waste(lengths, batch_size=2, seed=0)
    assert 0 < waste.random_batches < 0.5
    assert waste.length_grouped == 0.0  # pairs of equal lengths after grouping
    assert preprocess.padding_waste([7] * 9, 4, 0).random_batches == 0.0
    assert preprocess.padding_waste([], 2, 0).length_grouped == 0.0


def test_refusals_reach_preprocess_too(ws, monkeypatch):
    monkeypatch.setattr(step_sources, "_inspect", lambda ws, path: types.SimpleNamespace(
        status="INVALID", errors=[], error_count=1))
    with pytest.raises(TunestepError, match="batch_not_ready"):
        preprocess.preprocess(ws, "batch_10_01")
    assert not (ws.root / TOKENIZED / "batch_10_01").exists()


def test_unknown_hub_model_is_a_clear_error(tmp_path, tiny_model_dir):
    ws = make_ws(tmp_path / "ws", tiny_model_dir)
    plan_path = ws.root / ".specs/training/plan.md"
    plan_path.write_text(plan_path.read_text().replace(str(tiny_model_dir), "nobody/no-model"))
    with pytest.raises(TunestepError) as err:
        preprocess.preprocess(ws, "batch_10_01")
    assert err.value.code == "tokenizer_unavailable"
    assert merge.step_datasets(ws, "batch_10_01").tokenized_dir is None


KILL_SCRIPT = """
import sys, time, types
from pathlib import Path
from tunestep.tools.data import preprocess, step_sources
from tunestep.tools.core.workspace import open_workspace
step_sources._inspect = lambda ws, path: types.SimpleNamespace(status="READY", errors=[],
                                                               error_count=0)
marker = Path(sys.argv[2])
assemble = preprocess._assemble

def stalled(parts, out, key):
    files = assemble(parts, out, key)  # the step's files are in the temp folder now
    marker.write_text(str(out))
    time.sleep(120)
    return files

preprocess._assemble = stalled
preprocess.preprocess(open_workspace(sys.argv[1]), "batch_10_02")
"""


def test_a_killed_preprocess_leaves_no_partial_folder(ws, tmp_path):
    script = tmp_path / "kill_preprocess.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, str(script), str(ws.root), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "preprocess ended before it could be killed"
            assert time.monotonic() < deadline, "preprocess never reached the kill point"
            time.sleep(0.05)
        time.sleep(0.05)
        assert Path(marker.read_text()).is_dir()  # the half-built folder, under a temp name
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    root = ws.root / TOKENIZED
    assert not (root / "batch_10_02").exists()
    assert merge.step_datasets(ws, "batch_10_02").tokenized_dir is None
    result = preprocess.preprocess(ws, "batch_10_02")
    assert result.rows == 50
    assert [p.cached for p in result.parts] == [True, True, True]  # finished parts kept
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
