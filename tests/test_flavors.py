"""Every hardware flavor huggingface_hub knows: accepted, priced, and run one process per GPU."""

from __future__ import annotations

import shutil
import sys

import pytest
from huggingface_hub import JobHardware

from tunestep.tools.drafts import estimate
from tunestep.tools.drafts.estimate import FLAVORS, estimate_job, processes_for
from tunestep.tools.jobs.job_common import launch_argv

ARGS = dict(model="Qwen/Qwen3-0.6B", mode="full", train_tokens=200_000, rows=200, epochs=3,
            batch_size=2, grad_accum=1, precision="auto", timeout="2h")


def test_every_jobhardware_flavor_is_in_the_table():
    assert {f.value for f in JobHardware} <= set(FLAVORS)
    for flavor in JobHardware:
        assert estimate_job(flavor=flavor.value, **ARGS).usd > 0


@pytest.mark.parametrize("family", ["cpu-", "t4-", "l4x", "a10g-", "l40sx", "a100", "h200",
                                    "rtx-pro-6000"])
def test_each_family_counts_its_gpus(family):
    names = [n for n in FLAVORS if n.startswith(family)]
    assert names
    single = None
    for name in names:
        hw = FLAVORS[name]
        est = estimate_job(flavor=name, **ARGS)
        assert est.gpus == hw.gpus and est.processes == max(hw.gpus, 1)
        assert processes_for(name) == est.processes
        if family == "cpu-":
            assert hw.gpus == 0 and not hw.bf16
            continue
        if hw.gpus == 1 and single is None:
            single = est
        if hw.gpus > 1 and single is not None:
            # N processes: N x the throughput at the data-parallel efficiency, the plan's
            # global batch kept where it splits over the GPUs (batch 2: over 2, one row
            # each), else N x larger and said so; the machine's price for the whole time.
            ratio = est.tokens_per_second / single.tokens_per_second
            assert ratio == pytest.approx(hw.gpus * estimate.DDP_EFFICIENCY, rel=0.01)
            batch = 2 if 2 % hw.gpus == 0 else 2 * hw.gpus
            assert est.effective_batch == batch
            assert est.optimizer_steps == -(-200 // batch) * 3
            assert any(f"effective batch is {batch}" in w for w in est.warnings) == (batch > 2)
            assert f"x {hw.gpus} GPUs" in est.method
    if family == "t4-":
        est = estimate_job(flavor="t4-small", **{**ARGS, "precision": "bf16"})
        assert any("no bf16" in w for w in est.warnings)


def test_memory_is_per_gpu_whatever_the_count():
    big = {**ARGS, "model": "Qwen/Qwen3-4B"}  # 4B full fine-tune: ~66 GB per replica
    assert any("per GPU" in w for w in estimate_job(flavor="a10g-largex4", **big).warnings)
    assert not any("GB" in w for w in estimate_job(flavor="a100x8", **big).warnings)


def test_live_prices_win_over_the_table(fake_hub, monkeypatch):
    monkeypatch.setattr(estimate, "_price_cache", {})
    for entry in fake_hub.hardware:
        if entry["name"] == "l4x4":
            entry["unitCostMicroUSD"] = 63_333  # $3.80/h
    prices = estimate.live_prices()
    est = estimate_job(flavor="l4x4", prices=prices, **ARGS)
    assert (est.usd_per_hour, est.price_source) == (3.8, "hub")
    assert not any("guess" in w for w in est.warnings)
    # Asked once: the list is cached per endpoint.
    estimate.live_prices()
    assert len(fake_hub.requests_to("GET", "/api/jobs/hardware")) == 1
    # The Hub down: the table, and a word where the table only guesses.
    fake_hub.hardware = None
    assert estimate.live_prices(refresh=True) is None
    table = estimate_job(flavor="l4x4", prices=None, **ARGS)
    assert table.price_source == "guess" and any("guess" in w for w in table.warnings)
    assert estimate_job(flavor="a10g-large", **ARGS).price_source == "table"


def test_offline_never_asks(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert estimate.live_prices(refresh=True) is None


def test_the_job_relaunches_itself_one_process_per_gpu():
    argv = ["--config", "/m/job.json", "--root", "/tmp/t", "--num-processes", "4"]
    cmd = launch_argv("/m/train_sft.py", argv, 4, {})
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", "4", "/m/train_sft.py", "--config", "/m/job.json",
                   "--root", "/tmp/t"]
    assert launch_argv("/m/train_sft.py", argv, 4, {"LOCAL_RANK": "1"}) is None  # a worker
    assert launch_argv("/m/train_sft.py", argv[:4], 1, {}) is None


def test_a_multi_gpu_draft_says_so(tmp_path, tiny_model_dir, monkeypatch):
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True, plan_overrides={
        "hub": {"dataset_repo": "tester/steps", "model_id": "tester/qwen3_webdev"}})
    ws = open_workspace(tmp_path / "ws")
    one = draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                     flavor="h200"))
    eight = draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                       flavor="h200x8"))
    assert "--num-processes" not in one.submission.command
    assert eight.submission.command[-2:] == ["--num-processes", "8"]
    assert eight.digest != one.digest
    assert (eight.estimate.gpus, eight.estimate.processes) == (8, 8)
    plan = (ws.root / eight.run_plan).read_text()
    assert "accelerate launch --num_processes 8" in plan and "8 GPUs" in plan
    # The operator's screen says so too.
    import io

    from rich.console import Console

    from tunestep.server.render import render_draft

    out = io.StringIO()
    render_draft(Console(file=out, width=80), eight)
    # batch 2x1 does not split over 8 GPUs: the screen names the effective batch
    assert eight.estimate.effective_batch == 16
    assert "(8 GPUs, one process each, batch 16)" in " ".join(out.getvalue().split())
