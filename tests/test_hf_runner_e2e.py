"""One real remote step on the loopback Hub's job runner: the approved bundle, run as HF
Jobs would run it (mounted at its commit, ``uv run`` swapped for this interpreter), pushes
its model and outputs back as commits, and job_status takes the result home."""

from __future__ import annotations

import hub_stub
import pytest
from chain_helpers import host_base_model, hub_base_workspace
from conftest import FAKE_TOKEN, Operator

from tunestep.tools.core import ledger
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.runs.job_control import job_logs, job_status
from tunestep.tools.runs.submit import submit_job

pytestmark = pytest.mark.e2e
fake_hub = hub_stub.fake_hub


def test_a_remote_step_runs_from_its_bundle_and_comes_home(fake_hub, tmp_path,
                                                          tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fake_hub.tokens = {FAKE_TOKEN}  # the job authenticates with the secret it was given
    fake_hub.runner = hub_stub.JobRunner(max_seconds=240)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    ws = hub_base_workspace(tmp_path, {"training": {"num_train_epochs": 1, "max_length": 512}})
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                       flavor="cpu-basic", timeout="1d"))  # cpu: hours
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)

    hub_job = fake_hub.wait_job(handle.external_id, timeout=240)
    logs = job_logs(ws, handle.job_id, tail=40).lines
    assert hub_job["status"]["stage"] == "COMPLETED", "\n".join(logs)
    assert hub_job["stub"]["launcher"] == ["uv", "run", "--locked"]
    status = job_status(ws, handle.job_id)
    assert status.status == "succeeded", status.result
    model_repo = fake_hub.repo(chain_model := "tester/qwen3_webdev", "model")
    assert model_repo.private and "model.safetensors" in model_repo.files
    assert status.result["hub"]["revision"] == model_repo.head
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT hub_model_id, hub_revision FROM steps").fetchone()
    assert (step["hub_model_id"], step["hub_revision"]) == (chain_model, model_repo.head)
    assert FAKE_TOKEN not in "\n".join(logs)


def test_a_remote_inspection_runs_on_the_runner_and_reports(fake_hub, tmp_path, monkeypatch):
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.inspector import run_inspector

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    fake_hub.tokens = {FAKE_TOKEN}
    fake_hub.runner = hub_stub.JobRunner(max_seconds=240)
    build_sample_workspace(tmp_path / "ws", plan_overrides={"hub": {"dataset_repo":
                                                                    "tester/steps"}})
    ws = open_workspace(tmp_path / "ws")
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(kind="inspect", batch="batch_100_01",
                                       backend="hf-jobs"))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    hub_job = fake_hub.wait_job(handle.external_id, timeout=240)
    assert hub_job["status"]["stage"] == "COMPLETED", job_logs(ws, handle.job_id, 40).lines
    status = job_status(ws, handle.job_id)
    local = run_inspector(ws, "datasets/incremental/batch_100_01")
    assert status.status == "succeeded"
    assert (status.result["status"], status.result["counts"]) == (local.status, local.counts)
