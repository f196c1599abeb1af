"""Fetched outputs merge into the cumulative files: history, train.log, Trackio by run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tunestep.tools.lineage.outputs_merge import append_log_once, merge_history, merge_trackio


def entry(step: int, batch: str, loss: float) -> dict:
    return {"step": step, "batch": batch, "draft_id": f"draft-{step}", "eval_loss": loss}


def test_history_merges_by_step_in_order_and_is_idempotent(tmp_path):
    local, fetched = tmp_path / "history.json", tmp_path / "fetched.json"
    local.write_text(json.dumps([entry(2, "batch_100_02", 0.8), entry(1, "batch_100_01", 1.0)]))
    fetched.write_text(json.dumps([entry(3, "batch_100_03", 0.6)]))  # a one-step copy
    merged = merge_history(local, fetched, 3, "batch_100_03")
    assert [e["step"] for e in merged] == [1, 2, 3]
    assert json.loads(local.read_text()) == merged
    # the same fetch again: same history
    assert merge_history(local, fetched, 3, "batch_100_03") == merged
    fetched.write_text(json.dumps([entry(2, "batch_100_02", 0.7)]))  # step 2 trained again
    again = merge_history(local, fetched, 2, "batch_100_02")
    assert [(e["step"], e["eval_loss"]) for e in again] == [(1, 1.0), (2, 0.7), (3, 0.6)]


def test_a_fetched_history_adds_its_own_step_and_overwrites_no_other(tmp_path):
    """A remote step's history that also carries (rewritten) entries of earlier steps:
    only its own step's entry is taken."""
    import pytest

    from tunestep.tools.core.errors import TunestepError

    local, fetched = tmp_path / "history.json", tmp_path / "fetched.json"
    local.write_text(json.dumps([entry(1, "batch_100_01", 1.0), entry(2, "batch_100_02", 0.8)]))
    fetched.write_text(json.dumps([entry(1, "batch_100_01", 0.01), entry(2, "batch_100_02",
                                  0.01), entry(3, "batch_100_03", 0.6)]))
    merged = merge_history(local, fetched, 3, "batch_100_03")
    assert [(e["step"], e["eval_loss"]) for e in merged] == [(1, 1.0), (2, 0.8), (3, 0.6)]
    # A fetched history without the step's own entry adds nothing and says so.
    fetched.write_text(json.dumps([entry(1, "batch_100_01", 0.01)]))
    with pytest.raises(TunestepError) as err:
        merge_history(local, fetched, 4, "batch_100_04")
    assert err.value.code == "history_invalid"
    assert json.loads(local.read_text()) == merged
    for bad in ('{"step": 1}', "[1, 2]", "not json"):
        fetched.write_text(bad)
        with pytest.raises(TunestepError) as err:
            merge_history(local, fetched, 4, "batch_100_04")
        assert err.value.code == "history_invalid"


def test_train_log_is_appended_once_per_draft(tmp_path):
    local, fetched = tmp_path / "logs" / "train.log", tmp_path / "remote.log"
    local.parent.mkdir()
    local.write_text("local step 1\nlocal step 2")  # no final newline
    fetched.write_text("remote line a\nremote line b\n")
    assert append_log_once(local, fetched, "draft-abc") is True
    text = local.read_text()
    assert text.startswith("local step 1\nlocal step 2\n# ---- remote step draft-abc")
    assert text.count("remote line a") == 1 and text.endswith("end of remote step draft-abc ----\n")
    assert append_log_once(local, fetched, "draft-abc") is False
    assert local.read_text() == text
    fresh = tmp_path / "new" / "train.log"
    assert append_log_once(fresh, fetched, "draft-x") and "remote line b" in fresh.read_text()


def _trackio_run(folder: Path, name: str, losses: list[float]) -> None:
    code = ("import sys, trackio\n"
            "trackio.init(project='tunestep', name=sys.argv[1])\n"
            "for v in sys.argv[2:]: trackio.log({'loss': float(v)})\n"
            "trackio.finish()\n")
    subprocess.run([sys.executable, "-c", code, name, *map(str, losses)], check=True,
                   env={**os.environ, "TRACKIO_DIR": str(folder)}, capture_output=True,
                   timeout=120)


def _trackio_view(folder: Path) -> dict:
    """What Trackio itself reads back from ``folder``: run -> logged losses."""
    code = ("import json, trackio\n"
            "from trackio.sqlite_storage import SQLiteStorage as S\n"
            "runs = S.get_runs('tunestep')\n"
            "print(json.dumps({r: [m.get('loss') for m in S.get_logs('tunestep', r)]"
            " for r in runs}))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "TRACKIO_DIR": str(folder)}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trackio_runs_of_a_remote_step_join_the_workspace_store(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    _trackio_run(local, "step1-local", [1.0, 0.9])
    _trackio_run(remote, "step2-remote", [0.8, 0.7, 0.6])
    assert merge_trackio(local, remote / "tunestep.db") != []
    view = _trackio_view(local)
    assert view == {"step1-local": [1.0, 0.9], "step2-remote": [0.8, 0.7, 0.6]}
    assert merge_trackio(local, remote / "tunestep.db") == []  # merged once
    assert _trackio_view(local) == view
    # A workspace without a store yet gets the remote one as it is.
    empty = tmp_path / "empty"
    assert merge_trackio(empty, remote / "tunestep.db")
    assert _trackio_view(empty) == {"step2-remote": [0.8, 0.7, 0.6]}
