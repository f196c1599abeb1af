"""draft_job reads the plan once and hashes each file once (counts, not timings).

The readers behind ``load_plan`` and ``sha256_file`` (``plan._read_plan``,
``hashing._sha256_file``) are wrapped, so every real read of the plan and every real
hash counts, whoever asked. Measured before tools/core/call_context.py, on this workspace:
9 plan reads; the base training set hashed 10 times, the hold-out 8, the batch 5.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tunestep.tools.core import hashing, plan
from tunestep.tools.core.call_context import step_context
from tunestep.tools.drafts.draft import DraftRequest, draft_job, load_draft, recompute


@pytest.fixture
def counted(monkeypatch):
    reads: Counter[str] = Counter()
    real_read, real_hash = plan._read_plan, hashing._sha256_file

    def read_plan(ws):
        reads["plan"] += 1
        return real_read(ws)

    def sha256_file(path):
        reads[str(Path(path).resolve())] += 1
        return real_hash(path)

    monkeypatch.setattr(plan, "_read_plan", read_plan)
    monkeypatch.setattr(hashing, "_sha256_file", sha256_file)
    return reads


def _data_files(ws, draft) -> list[str]:
    return [str(ws.resolve(f.path).resolve()) for f in draft.files
            if f.role in ("train", "eval")]


def test_draft_reads_the_plan_once_and_hashes_each_file_once(model_ws, counted) -> None:
    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    data = _data_files(model_ws, draft)
    assert len(data) == 3  # base set, the batch, the hold-out
    assert counted["plan"] == 1
    assert {path: counted[path] for path in data} == dict.fromkeys(data, 1)
    assert max(n for key, n in counted.items() if key != "plan") == 1

    counted.clear()  # the next call starts afresh: nothing is remembered between calls
    again = recompute(model_ws, load_draft(model_ws, draft.draft_id))
    assert again.digest == draft.digest
    assert counted["plan"] == 1
    assert {path: counted[path] for path in data} == dict.fromkeys(data, 1)


def test_a_changed_file_is_hashed_again(sample_ws, counted) -> None:
    path = sample_ws.root / "datasets/processed_webdev_coding/train.jsonl"
    with step_context(sample_ws):
        first = hashing.sha256_file(path)
        assert hashing.sha256_file(path) == first
        assert counted[str(path.resolve())] == 1
        data = path.read_bytes()
        path.write_bytes(data + data)  # in place: a new size and mtime
        second = hashing.sha256_file(path)
        assert second != first and counted[str(path.resolve())] == 2
        stat = path.stat()
        path.write_bytes(data[::-1] if data[::-1] != data else data + b"\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert hashing.sha256_file(path) != second


def test_outside_a_step_context_nothing_is_remembered(sample_ws, counted) -> None:
    path = sample_ws.root / "datasets/processed_webdev_coding/train.jsonl"
    hashing.sha256_file(path)
    hashing.sha256_file(path)
    plan.load_plan(sample_ws)
    plan.load_plan(sample_ws)
    assert counted[str(path.resolve())] == 2 and counted["plan"] == 2


def test_a_plan_edited_by_a_caller_does_not_change_the_next_read(sample_ws) -> None:
    # Plan itself is frozen; LoadedPlan (its notes) is not, so each caller gets a copy.
    with step_context(sample_ws):
        first = plan.load_plan(sample_ws)
        first.notes.append("edited by a caller")
        first.sha256 = "0" * 64
        second = plan.load_plan(sample_ws)
        assert "edited by a caller" not in second.notes and second.sha256 != "0" * 64
