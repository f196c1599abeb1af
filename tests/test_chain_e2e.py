"""Steps that chain, end to end through the real client and the loopback Hub's job runner.

Two remote steps, then one local step (full fine-tune), and a remote LoRA chain: each
remote step resumes from the exact commit the previous one pushed, every pushed model
comes home into the store as the next version with ``latest`` moved, the ledger records
the revisions, and the history, train.log and Trackio store hold every step.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import hub_stub
import pytest
from chain_helpers import MODEL_REPO, host_base_model, hub_base_workspace
from conftest import FAKE_TOKEN, Operator
from test_chain import map_batch_2

from tunestep.tools.core import ledger
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.hub import poll as hf_poll
from tunestep.tools.lineage.model_store import checkpoint_kind, latest_checkpoint
from tunestep.tools.runs.job_control import job_logs, job_status, wait_for_job
from tunestep.tools.runs.submit import submit_job

pytestmark = pytest.mark.e2e
fake_hub = hub_stub.fake_hub
LEAN = {"training": {"num_train_epochs": 1, "max_length": 512, "learning_rate": 3e-3,
                     "resume_learning_rate": 1e-3, "per_device_train_batch_size": 4},
        "samples": {"n": 1, "max_new_tokens": 4}, "job": {"flavor": "cpu-basic"},
        # One epoch on 8 rows teaches the tiny model nothing the default gate could see
        # (it promotes only a version shown not worse); these tests are about chaining.
        "gate": None}


@pytest.fixture
def chain(fake_hub, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(hf_poll, "MIN_INTERVAL_S", 0.0)  # no 10 s wait between our polls
    fake_hub.tokens = {FAKE_TOKEN}
    fake_hub.runner = hub_stub.JobRunner(max_seconds=240)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    ws = hub_base_workspace(tmp_path, LEAN, base_rows=16, batch_rows=8, holdout_rows=4)
    operator = Operator(tmp_path / "keys")

    def step(**request):
        draft = draft_job(ws, DraftRequest(**request))
        handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                            operator.trusted)
        if draft.backend == "hf-jobs":
            hub_job = fake_hub.wait_job(handle.external_id, timeout=240)
            assert hub_job["status"]["stage"] == "COMPLETED", "\n".join(
                job_logs(ws, handle.job_id, tail=40).lines)
            status = job_status(ws, handle.job_id)
        else:
            status = wait_for_job(ws, handle.job_id, timeout=300)
        assert status.status == "succeeded", job_logs(ws, handle.job_id, tail=40).lines
        return draft, status

    return ws, step


def steps(ws) -> list:
    with ledger.open_ledger(ws) as conn:
        return conn.execute("SELECT * FROM steps ORDER BY step").fetchall()


def test_two_remote_steps_then_a_local_one_chain_and_share_one_history(chain, fake_hub):
    ws, step = chain
    repo = fake_hub.repo  # resolved lazily: the first submit creates the model repo
    first, status1 = step(batch="batch_8_01", backend="hf-jobs")
    sha1 = repo(MODEL_REPO, "model").head
    assert status1.result["hub"]["revision"] == sha1
    assert status1.model_sync.version == "0001_batch_8_01" and status1.model_sync.latest_moved

    map_batch_2(ws, "batch_8_02")
    second, status2 = step(backend="hf-jobs")
    # Step 2 resumed from exactly what step 1 pushed, not from whatever main held.
    assert second.job_config["resume_from"] == f"hf://{MODEL_REPO}@{sha1}"
    sha2 = repo(MODEL_REPO, "model").head
    assert sha2 != sha1 and status2.result["hub"]["revision"] == sha2
    with ledger.open_ledger(ws) as conn:
        prefix = second.draft_id
        pushed = conn.execute("SELECT result FROM jobs WHERE draft_id = ?", (prefix,)).fetchone()
    assert json.loads(pushed["result"])["resume_from"] == f"hf://{MODEL_REPO}@{sha1}"

    third, _status3 = step(backend="local")
    store = ws.resolve_model_store("models/qwen3_webdev")
    # the version the ledger's line names (through the store's link or not: the same folder)
    assert Path(third.job_config["resume_from"]).resolve() == (
        store.resolve() / "versions" / "0002_batch_8_02")

    # The store: a version from each step, latest on the local one.
    names = sorted(p.name for p in (store / "versions").iterdir())
    assert names == ["0001_batch_8_01", "0002_batch_8_02", "0003_batch_8_03"]
    assert all(checkpoint_kind(store / "versions" / n) == "full" for n in names)
    assert latest_checkpoint(store).name == "0003_batch_8_03"
    # The ledger: which revision each step pushed and each local version came from.
    assert [(s["step"], s["hub_revision"]) for s in steps(ws)] == [(1, sha1), (2, sha2),
                                                                   (3, None)]
    with ledger.open_ledger(ws) as conn:
        origins = {r["version"]: (r["source"], r["hub_revision"])
                   for r in conn.execute("SELECT * FROM model_versions")}
    assert origins == {"0001_batch_8_01": ("hub", sha1), "0002_batch_8_02": ("hub", sha2),
                       "0003_batch_8_03": ("job", None)}

    # One history, in order, three points on the progression plot.
    history = json.loads((ws.root / "logs/steps_history.json").read_text())
    assert [(h["step"], h["batch"]) for h in history] == [
        (1, "batch_8_01"), (2, "batch_8_02"), (3, "batch_8_03")]
    assert (ws.root / ".specs/plots/val_progression.png").stat().st_size > 0
    log = (ws.root / "logs/train.log").read_text()
    for draft in (first, second):
        assert log.count(f"remote step {draft.draft_id}: train.log from HF Jobs") == 1
    assert "0003_batch_8_03" in log
    # A status call again fetches nothing twice.
    job_status(ws, status1.job_id)
    assert (ws.root / "logs/train.log").read_text() == log
    # Trackio: the local dashboard's store holds a run of every step.
    with sqlite3.connect(ws.state_dir / "trackio" / "tunestep.db") as db:
        runs = {r[0] for r in db.execute("SELECT DISTINCT run_name FROM metrics")}
    assert {f"{d.draft_id}-step{d.step:04d}-{d.batch}" for d in (first, second, third)} <= runs


def test_a_remote_lora_chain_resumes_its_adapter_on_the_hub_base(chain, fake_hub):
    ws, step = chain
    first, _status1 = step(batch="batch_8_01", backend="hf-jobs", mode="lora")
    sha1 = fake_hub.repo(MODEL_REPO, "model").head
    assert first.job_config["base_model"] == "tester/tiny-base"
    map_batch_2(ws, "batch_8_02")
    second, _status2 = step(backend="hf-jobs", mode="lora")
    assert second.job_config["resume_from"] == f"hf://{MODEL_REPO}@{sha1}"
    assert second.job_config["base_model"] == "tester/tiny-base"
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert [checkpoint_kind(store / "versions" / n)
            for n in ("0001_batch_8_01", "0002_batch_8_02")] == ["lora", "lora"]
    assert latest_checkpoint(store).name == "0002_batch_8_02"
    assert [s["hub_revision"] for s in steps(ws)] == [sha1,
                                                      fake_hub.repo(MODEL_REPO, "model").head]


def test_a_remote_full_step_after_lora_merges_the_adapter_into_its_hub_base(chain, fake_hub):
    """LoRA is not a one-way door on HF Jobs either: the full step's job downloads the
    adapter's pinned commit and its Hub base, merges them and trains in full."""
    ws, step = chain
    step(batch="batch_8_01", backend="hf-jobs", mode="lora")
    sha1 = fake_hub.repo(MODEL_REPO, "model").head
    map_batch_2(ws, "batch_8_02")
    second, _status = step(backend="hf-jobs", mode="full")
    cfg = second.job_config
    assert cfg["resume_from"] == f"hf://{MODEL_REPO}@{sha1}"
    assert cfg["base_model"] == "tester/tiny-base" and cfg["merge_adapter"] == {"base_files": []}
    assert second.start.merge.adapter == f"hf://{MODEL_REPO}@{sha1}"
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert [checkpoint_kind(store / "versions" / n)
            for n in ("0001_batch_8_01", "0002_batch_8_02")] == ["lora", "full"]
    assert latest_checkpoint(store).name == "0002_batch_8_02"
    log = (ws.root / "logs/train.log").read_text()
    assert "merging the LoRA adapter" in log and "into its base" in log
