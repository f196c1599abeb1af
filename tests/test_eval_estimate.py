"""The estimate counts the job's whole hold-out evaluation (two greedy passes)."""

from __future__ import annotations

import io
import shutil

import orjson
import pytest

from tunestep.tools.drafts.estimate import estimate_job
from tunestep.tools.drafts.eval_estimate import (
    BUDGET_MARGIN,
    CHARS_PER_TOKEN,
    HoldOutLengths,
    holdout_lengths,
    token_budget,
)

ARGS = dict(model="Qwen/Qwen3-0.6B", mode="full", train_tokens=200_000, rows=200, epochs=1,
            batch_size=2, grad_accum=1, precision="auto", timeout="10h")


def _est(flavor="a10g-large", rows=2000, ref_chars=400, batch=32, samples=128):
    holdout = HoldOutLengths(rows=rows, longest_reference_chars=ref_chars,
                             prompt_chars=rows * 800)
    return estimate_job(flavor=flavor, holdout=holdout, eval_batch_size=batch,
                        eval_max_new_tokens=token_budget(ref_chars, samples), **ARGS)


def test_the_budget_follows_the_job():
    from tunestep.tools.jobs import job_evaluate

    assert BUDGET_MARGIN == job_evaluate.BUDGET_MARGIN
    assert token_budget(4000, 128) == 4000 / CHARS_PER_TOKEN + BUDGET_MARGIN
    assert token_budget(40, 128) == 128  # never below samples.max_new_tokens
    assert token_budget(4000, 128, chosen=64) == 64  # evaluation.max_new_tokens wins


def test_more_rows_and_longer_answers_cost_more_and_are_in_the_total():
    base = _est()
    assert base.eval_minutes > 0 and base.eval_rows == 2000
    assert _est(rows=4000).eval_minutes > base.eval_minutes
    longer = _est(ref_chars=4000)
    assert longer.eval_max_new_tokens > base.eval_max_new_tokens
    assert longer.eval_minutes > base.eval_minutes
    assert longer.minutes > base.minutes  # counted in the job's minutes and cost
    without = estimate_job(flavor="a10g-large", **ARGS)
    assert without.eval_minutes == 0
    assert base.minutes >= without.minutes + base.eval_minutes - 0.1


def test_a_gpu_evaluates_faster_than_cpu_basic():
    assert _est("a10g-large").eval_minutes < _est("cpu-basic", batch=8).eval_minutes


def test_a_long_evaluation_moves_the_suggested_timeout():
    short, long = _est(rows=10), _est(rows=20_000, ref_chars=8000)
    assert long.suggested_timeout != short.suggested_timeout
    tight = estimate_job(flavor="a10g-large", **{**ARGS, "timeout": "20m"},
                         holdout=HoldOutLengths(rows=20_000, longest_reference_chars=8000,
                                                prompt_chars=0),
                         eval_max_new_tokens=2008, eval_batch_size=32)
    assert any("killed" in w for w in tight.warnings)


def test_holdout_lengths_streams_the_last_answer(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q" * 50},
                          {"role": "assistant", "content": "a" * 30},
                          {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "b" * 700}]},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "Grade: 3"}]}]
    path = tmp_path / "val.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\nnot json\n\n")
    got = holdout_lengths(path)
    assert (got.rows, got.longest_reference_chars) == (3, 700)
    assert got.prompt_chars == 50 + 30 + 5 + 2


def test_draft_screen_and_run_plan_show_the_evaluation(tmp_path, tiny_model_dir):
    from rich.console import Console

    from tunestep.server.render import View, render_draft
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True, plan_overrides={
        "hub": {"dataset_repo": "tester/steps", "model_id": "tester/qwen3_webdev"}})
    ws = open_workspace(tmp_path / "ws")
    draft = draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                       flavor="a10g-large"))
    est = draft.estimate
    val = ws.root / "datasets/processed_webdev_coding/validation.jsonl"
    assert est.eval_rows == sum(1 for line in val.read_bytes().splitlines() if line.strip())
    assert est.eval_minutes > 0
    assert est.eval_max_new_tokens >= draft.job_config["samples"]["max_new_tokens"]
    plan = (ws.root / draft.run_plan).read_text()
    assert f"Evaluation: ~{est.eval_minutes:g} min" in plan
    for view in (View(), View(approving=True)):
        out = io.StringIO()
        render_draft(Console(file=out, width=80), draft, view)
        lines = out.getvalue().splitlines()
        shown = [line for line in lines if line.startswith("evaluation  ~")]
        assert len(shown) == 1 and f"{est.eval_rows:,} rows" in shown[0]
        assert all(len(line) <= 80 for line in lines)
        # precision auto, shown as what the job will resolve it to on this flavor
        assert "precision auto (trains in bf16 on a10g-large)" in " ".join(" ".join(lines).split())
        # the budget the job will use: counted with the model's tokenizer, as the job
        # counts it (issue 18: the screen said "<= 64" where the job used 145)
        assert f"up to {est.eval_max_new_tokens:,} new tokens a row" in " ".join(
            " ".join(lines).split())
    assert est.eval_budget == "exact" and est.eval_passes == 2  # a fresh start
    from transformers import AutoTokenizer

    from tunestep.tools.jobs.job_evaluate import BUDGET_MARGIN
    from tunestep.tools.jobs.sft_data import load_chat_rows, split_prompt

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    refs = [split_prompt(row)[1] for row in load_chat_rows([val])]
    longest = max(len(ids) for ids in tok(refs, add_special_tokens=False)["input_ids"])
    assert est.eval_max_new_tokens == longest + BUDGET_MARGIN

    # A timeout the estimate does not fit: refused before anyone signs.
    from tunestep.tools.core.errors import TunestepError

    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                   flavor="cpu-basic", timeout="5m"))
    assert err.value.code == "draft_exceeds_timeout"
    assert "Raise job.timeout to" in err.value.message and "trained model lost" in \
        err.value.message


def test_other_ranks_wait_out_rank_zeros_evaluation(model_ws, tmp_path):
    """On several GPUs rank 0 answers the hold-out while the others wait in collectives:
    the SFTConfig's ddp_timeout outlasts that pass (never below transformers' 1800 s)."""
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.jobs import job_train

    assert job_train.ddp_timeout_seconds(40, 64, 32) == job_train.DEFAULT_DDP_TIMEOUT
    big = job_train.ddp_timeout_seconds(2000, 2008, 32)
    # 63 batches x 2,008 steps at the planning 30 steps/s is ~70 min; the wait allows more
    assert big > 63 * 2008 / 30 * 2
    assert job_train.ddp_timeout_seconds(4000, 2008, 32) > big
    assert job_train.ddp_timeout_seconds(2000, 4008, 32) > big
    cfg = draft_job(model_ws, DraftRequest(batch="batch_100_01")).job_config
    args = job_train.build_sft_config(cfg, "fp32", tmp_path / "out", False, False, big)
    assert args.ddp_timeout == big
    assert job_train.build_sft_config(cfg, "fp32", tmp_path / "o2", False,
                                      False).ddp_timeout == 1800
