"""Three chained steps of the real job on a learnable task, each promoted by the default
gate because the hold-out shows it better, then a destructive step (a learning rate that
wrecks the model) that the default gate holds back (issue 18)."""

from __future__ import annotations

import json
import os

import pytest
from test_train_job import chat_rows, job_config, result_of, run_job, write_jsonl

from tunestep.tools.core.plan import Gate

pytestmark = pytest.mark.e2e


def workspace(root, store):
    ws = root / "ws"
    data = ws / "datasets" / "processed"
    write_jsonl(data / "train.jsonl", chat_rows(48, seed=1))
    write_jsonl(data / "validation.jsonl", chat_rows(40, seed=2))
    for step, seed in ((2, 3), (3, 4), (4, 5)):
        write_jsonl(ws / f"datasets/incremental/batch_{step:02d}/rows.jsonl",
                    chat_rows(48, seed=seed))
    store.mkdir(parents=True, exist_ok=True)
    (ws / "models").mkdir()
    (ws / "models" / "tiny_webdev").symlink_to(store, target_is_directory=True)
    return ws


def test_chained_steps_learn_and_a_destructive_step_is_held_back(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    ws = workspace(tmp_path, store)
    gate = Gate().model_dump()  # the plan's default: non-inferiority, margin 0.02
    results = []
    plan = [  # (batch, train file, learning rate): the first from the base model
        ("batch_01", "datasets/processed/train.jsonl", 5e-3),
        ("batch_02", "datasets/incremental/batch_02/rows.jsonl", 2e-3),
        ("batch_03", "datasets/incremental/batch_03/rows.jsonl", 1e-3),
    ]
    for step, (batch, train, lr) in enumerate(plan, start=1):
        cfg = job_config(ws, tiny_model_dir, step=step, batch=batch, train=[train],
                         learning_rate=lr, samples_n=2,
                         resume_from="models/tiny_webdev/latest" if step > 1 else None)
        cfg["gate"] = gate
        results.append(result_of(run_job(ws, cfg, name=f"job{step}.json")))
    within = [r["evaluation"]["after"]["grade_within_1"]["value"] for r in results]
    base = results[0]["evaluation"]["before"]["grade_within_1"]["value"]
    assert base == 0.0  # the random model writes no grade
    # The first step learns the format and much of the task: its gain's interval is
    # well above zero, so the gate promotes it.
    assert results[0]["promoted"] is True and results[0]["promotion"]["gain_low"] > 0
    # Chained: each step resumes from latest; the line ends far above the base.
    assert within[-1] > base + 0.3, within
    assert results[-1]["final_eval_loss"] < results[0]["eval_loss_before"]
    for r in results[1:]:
        assert r["evaluation"]["before_reused"] is True  # paid once per version
    latest_before = os.readlink(store / "latest")
    # A destructive step: a learning rate that wrecks the weights.
    cfg = job_config(ws, tiny_model_dir, step=4, batch="batch_04",
                     train=["datasets/incremental/batch_04/rows.jsonl"], learning_rate=0.5,
                     samples_n=2, resume_from="models/tiny_webdev/latest")
    cfg["gate"] = gate
    wrecked = result_of(run_job(ws, cfg, name="job4.json"))
    promotion = wrecked["promotion"]
    assert wrecked["promoted"] is False and os.readlink(store / "latest") == latest_before
    assert promotion["gain_low"] < -0.02 and "is not above -0.02" in promotion["reason"]
    assert (store / "versions" / "0004_batch_04").is_dir()  # kept, not latest
    print(json.dumps({"within_1": [base, *within],
                      "promoted": [r["promoted"] for r in results],
                      "wrecked_within_1": wrecked["evaluation"]["after"]["grade_within_1"]}))
