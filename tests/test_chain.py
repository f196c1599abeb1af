"""Where the next step starts: exact Hub commits, local starts in the bundle, Hub bases."""

from __future__ import annotations

import json

import pytest
from chain_helpers import (
    MODEL_REPO,
    fake_local_version,
    host_base_model,
    hub_base_workspace,
    local_base_workspace,
    record_job_end,
)
from conftest import FAKE_TOKEN

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
from tunestep.tools.drafts.draft import DraftRequest, draft_job

SHA1, SHA2 = "1" * 40, "2" * 40
REMOTE = {"backend": "hf-jobs", "flavor": "t4-medium"}


def remote_result(draft, sha: str, **extra) -> dict:
    return {"ok": True, "step": draft.step, "batch": draft.batch, "mode": draft.job_config["mode"],
            "version": f"versions/{draft.step:04d}_{draft.batch}",
            "model_path": f"/tmp/tunestep/store/qwen3_webdev/versions/{draft.step:04d}_"
                          f"{draft.batch}",
            "hub": {"model_id": MODEL_REPO, "revision": sha, "private": True}, **extra}


def map_batch_2(ws, batch: str = "batch_100_02") -> None:
    source = f"datasets/incremental/{batch}"
    apply_mapping(ws, source, suggest_mapping(ws, source).mapping)


@pytest.fixture
def local_ws(tmp_path, tiny_model_dir):
    return local_base_workspace(tmp_path / "local", tiny_model_dir, base_rows=40,
                                holdout_rows=10)


@pytest.fixture
def hub_ws(tmp_path, tiny_model_dir, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    return hub_base_workspace(tmp_path, base_rows=40, holdout_rows=10)


def test_a_remote_step_resumes_from_the_exact_commit_the_last_one_pushed(hub_ws):
    ws = hub_ws
    first = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    assert first.job_config["base_model"] == "tester/tiny-base"
    assert first.job_config["resume_from"] is None and first.start.source == "base"
    assert not [f for f in first.files if f.role == "checkpoint"]
    record_job_end(ws, first.draft_id, "hf-jobs", remote_result(first, SHA1))
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT * FROM steps").fetchone()
    assert (step["hub_model_id"], step["hub_revision"], step["version"], step["promoted"]) == (
        MODEL_REPO, SHA1, "0001_batch_100_01", 1)

    map_batch_2(ws)
    second = draft_job(ws, DraftRequest(**REMOTE))
    assert second.batch == "batch_100_02"
    assert second.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"
    assert second.start.source == "hub" and second.start.hub_revision == SHA1
    assert second.job_config["hyperparameters"]["learning_rate"] == 1e-3  # resuming
    plan_md = (ws.root / second.run_plan).read_text()
    assert f"hf://{MODEL_REPO}@{SHA1}" in plan_md

    # A local step now would start from an older checkpoint: refused, with the way out.
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest())
    assert err.value.code == "model_not_synced" and "tunestep sync" in err.value.message

    # The digest covers the revision: the same request after another commit differs.
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE steps SET hub_revision = ? WHERE step = 1", (SHA2,))
    third = draft_job(ws, DraftRequest(**REMOTE))
    assert third.job_config["resume_from"].endswith(SHA2) and third.digest != second.digest


def test_a_step_the_job_did_not_promote_is_not_resumed_from(hub_ws):
    ws = hub_ws
    first = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    record_job_end(ws, first.draft_id, "hf-jobs", remote_result(first, SHA1))
    map_batch_2(ws)
    second = draft_job(ws, DraftRequest(**REMOTE))
    record_job_end(ws, second.draft_id, "hf-jobs", remote_result(
        second, SHA2, promotion={"promoted": False, "reason": "eval loss rose"}))
    nxt = draft_job(ws, DraftRequest(**REMOTE))
    assert nxt.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"


def test_lora_on_hf_jobs_names_a_hub_base(hub_ws, local_ws):
    lora = draft_job(hub_ws, DraftRequest(batch="batch_100_01", mode="lora", **REMOTE))
    assert lora.job_config["base_model"] == "tester/tiny-base"
    record_job_end(hub_ws, lora.draft_id, "hf-jobs", remote_result(lora, SHA1))
    map_batch_2(hub_ws)
    nxt = draft_job(hub_ws, DraftRequest(mode="lora", **REMOTE))
    assert nxt.job_config["base_model"] == "tester/tiny-base"  # the adapter's base, from step 1
    assert nxt.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"
    # A full step on the adapter: the job merges it into its Hub base, both signed.
    full = draft_job(hub_ws, DraftRequest(mode="full", **REMOTE))
    cfg = full.job_config
    assert cfg["mode"] == "full" and cfg["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"
    assert cfg["base_model"] == "tester/tiny-base"
    assert cfg["merge_adapter"] == {"base_files": []}
    assert full.start.merge is not None and full.start.merge.base == "tester/tiny-base"
    assert full.start.merge.adapter == f"hf://{MODEL_REPO}@{SHA1}"
    assert "merged into its base tester/tiny-base" in full.start.described

    # A local base path would reach the job as a path it does not have: refused, named.
    with pytest.raises(TunestepError) as err:
        draft_job(local_ws, DraftRequest(batch="batch_100_01", mode="lora", **REMOTE))
    assert err.value.code == "remote_base_not_on_hub" and "model:" in err.value.message


def test_a_local_start_travels_in_the_bundle_never_as_a_host_path(local_ws, tmp_path,
                                                                  tiny_model_dir):
    ws = local_ws
    # The plan's base is a local folder: a full remote step carries it in the bundle.
    first = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    cfg = first.job_config
    assert cfg["base_model"] == "/tunestep/step/start" and cfg["resume_from"] is None
    assert str(tmp_path) not in json.dumps(cfg)
    ckpt = [f for f in first.files if f.role == "checkpoint"]
    assert {f.path for f in ckpt} >= {"models/qwen3_webdev/versions/0000_base/config.json"}
    assert first.submission.bundle["start/config.json"].startswith("checkpoint:")

    # After a local step the remote step resumes from that version, uploaded with it.
    record_job_end(ws, draft_job(ws, DraftRequest(batch="batch_100_01")).draft_id, "local",
                   {"version": "versions/0001_batch_100_01", "hub": None})
    version = fake_local_version(ws, tiny_model_dir, "0001_batch_100_01")
    map_batch_2(ws)
    nxt = draft_job(ws, DraftRequest(**REMOTE))
    assert nxt.job_config["resume_from"] == "/tunestep/step/start"
    assert nxt.start.source == "bundle" and "0001_batch_100_01" in nxt.start.described
    assert str(tmp_path) not in json.dumps(nxt.job_config)
    names = {n for n in nxt.submission.bundle if n.startswith("start/")}
    assert "start/model.safetensors" in names and "start/config.json" in names
    # Every file is checked against the version's record: a changed file is refused
    # (it is not the version the job made), never carried as if it were.
    (version / "config.json").write_text((version / "config.json").read_text() + " ")
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(**REMOTE))
    assert err.value.code == "version_files_changed" and "config.json" in err.value.message


def test_a_pushed_local_version_chains_by_its_commit(local_ws, tiny_model_dir):
    ws = local_ws
    local = draft_job(ws, DraftRequest(batch="batch_100_01"))
    record_job_end(ws, local.draft_id, "local", {
        "version": "versions/0001_batch_100_01",
        "hub": {"model_id": MODEL_REPO, "revision": SHA1, "private": True}})
    fake_local_version(ws, tiny_model_dir, "0001_batch_100_01")
    map_batch_2(ws)
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT * FROM model_versions").fetchone()
    assert (row["version"], row["source"], row["hub_revision"]) == (
        "0001_batch_100_01", "job", SHA1)
    nxt = draft_job(ws, DraftRequest(**REMOTE))
    assert nxt.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"
    assert not [f for f in nxt.files if f.role == "checkpoint"]


def test_a_local_start_is_committed_from_a_verified_copy_streamed_from_disk(
        local_ws, fake_hub, monkeypatch, tmp_path):
    from conftest import Operator

    from tunestep.tools.hub import bundle
    from tunestep.tools.runs import hf_submit
    from tunestep.tools.runs.submit import submit_job

    ws = local_ws
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(bundle, "BUNDLE_INLINE_MAX", 1024)  # the weights go by path
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id), operator.trusted)
    repo = fake_hub.repo("tester/qwen3_webdev-steps")
    weights = ws.resolve_model_store("models/qwen3_webdev") / "versions/0000_base"
    committed = repo.tree(repo.head)
    prefix = f"steps/{draft.draft_id}/start/"
    assert committed[prefix + "model.safetensors"] == (weights / "model.safetensors").read_bytes()
    assert committed[prefix + "config.json"] == (weights / "config.json").read_bytes()
    assert not list((ws.state_dir / "jobs").glob("*/start/*"))  # the spool is gone

    # A file that changes between the draft's check and the read is never committed.
    (weights / "config.json").write_text((weights / "config.json").read_text() + " ")
    with pytest.raises(TunestepError) as err:
        hf_submit._spooled(ws, draft, "job-x", "start/config.json", weights / "config.json")
    assert err.value.code == "draft_stale"


def test_a_remote_step_without_a_pushed_commit_stops_the_next_draft(hub_ws):
    ws = hub_ws
    first = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    result = remote_result(first, SHA1)
    result["hub"] = None  # as when the job's result.json never came back
    job_id = record_job_end(ws, first.draft_id, "hf-jobs", result)
    map_batch_2(ws)
    for request in (DraftRequest(**REMOTE), DraftRequest()):
        with pytest.raises(TunestepError) as err:
            draft_job(ws, request)
        assert err.value.code == "remote_step_unpushed" and job_id in err.value.message
