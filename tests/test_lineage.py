"""One record of which version is latest: after the operator promotes or rolls back by
hand, the next draft, check_batch and replay all follow the signed move (tools/lineage)."""

from __future__ import annotations

import shutil

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
from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.drafts.operator import sign_promotion
from tunestep.tools.lineage.chain import record_version
from tunestep.tools.lineage.line import lineage
from tunestep.tools.lineage.promotion import promote, promote_version, review_request

V1, V2 = "0001_batch_100_01", "0002_batch_100_02"
SHA1, SHA2 = "1" * 40, "2" * 40
REMOTE = {"backend": "hf-jobs", "flavor": "t4-medium"}
HELD = {"promoted": False, "reason": "the gate demands +1.00 (max_regression -1.0)"}


def map_batch(ws, batch: str) -> None:
    """Map a batch the sample wrote in another format (batch 3 is canonical already)."""
    source = f"datasets/incremental/{batch}"
    mapping = suggest_mapping(ws, source).mapping
    if mapping is not None:
        apply_mapping(ws, source, mapping)


def signed(ws, operator, version: str) -> str:
    request = promote(ws, version, None, operator.trusted).request
    return sign_promotion(ws, review_request(ws, request.request_id), name=operator.name,
                          key_path=operator.info.private_key_path,
                          passphrase=operator.passphrase, ttl="10m").token


def move(ws, operator, version: str) -> None:
    promote_version(ws, version, signed(ws, operator, version), operator.trusted)


def local_result(ws, draft, promotion: dict | None = None) -> dict:
    store = ws.resolve_model_store("models/qwen3_webdev")
    name = f"{draft.step:04d}_{draft.batch}"
    return {"ok": True, "step": draft.step, "batch": draft.batch, "version": f"versions/{name}",
            "model_path": str(store / "versions" / name),
            **({"promotion": promotion} if promotion else {})}


def not_promoted(ws) -> list[str]:
    return [p.message for p in check_batch(ws).problems if p.code == "step_not_promoted"]


def trained(draft) -> dict[str, int]:
    return {u.part: u.trained for u in draft.sources}


@pytest.fixture
def two_local_steps(tmp_path, tiny_model_dir, operator):
    """Step 1 passed its gate (latest on it); step 2's version failed (stored, latest
    stayed): the ledger and store as the local job leaves them, without training."""
    ws = operator.trust(local_base_workspace(tmp_path / "local", tiny_model_dir, base_rows=40,
                                              holdout_rows=10))
    store = ws.resolve_model_store("models/qwen3_webdev")
    first = draft_job(ws, DraftRequest(batch="batch_100_01"))
    fake_local_version(ws, store / "versions/0000_base", V1)
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    map_batch(ws, "batch_100_02")
    second = draft_job(ws, DraftRequest())
    shutil.copytree(store / "versions/0000_base", store / "versions" / V2)
    record_job_end(ws, second.draft_id, "local", local_result(ws, second, HELD))
    map_batch(ws, "batch_100_03")
    return ws


def test_a_manual_promote_and_rollback_steer_the_next_local_draft(two_local_steps, operator):
    ws = two_local_steps
    held = draft_job(ws, DraftRequest())
    assert held.job_config["resume_from"].endswith(V1)
    assert trained(held)["batch_100_02"] == 100 and not_promoted(ws)

    move(ws, operator, V2)  # the operator takes the version the gate held back
    with ledger.open_ledger(ws) as conn:
        assert conn.execute("SELECT promoted FROM steps WHERE step = 2").fetchone()[0] == 0
        line = lineage(conn, "models/qwen3_webdev")
    assert (line.latest, line.line, line.moved_by) == (V2, [V1, V2], "operator")
    after = draft_job(ws, DraftRequest())
    assert after.job_config["resume_from"].endswith(V2)
    assert trained(after)["batch_100_02"] < 100  # learned now: sampled like batch 1
    assert not not_promoted(ws)  # check_batch reads the same record

    move(ws, operator, V1)  # and rolls back
    back = draft_job(ws, DraftRequest())
    assert back.job_config["resume_from"].endswith(V1)
    uses = {u.part: (u.trained, u.why) for u in back.sources}
    assert uses["batch_100_02"][0] == 100 and "rolled back" in uses["batch_100_02"][1]
    assert uses["batch_100_01"][0] < 100
    assert not not_promoted(ws)  # not "not promoted": the operator rolled it back
    (message,) = [p.message for p in check_batch(ws).problems if p.code == "step_rolled_back"]
    assert "step 2" in message and "rolled back by the operator" in message
    assert f"latest moved back to {V1}" in message
    assert check_batch(ws).retrain == ["batch_100_02"]


def test_after_a_rollback_with_no_new_batch_check_offers_the_retraining(
        tmp_path, tiny_model_dir, operator, capsys, monkeypatch):
    """Both batches trained and promoted, then rolled back to step 1: not "nothing left to
    train" but the rolled-back batch, by its name, with the draft command that retrains it."""
    from tunestep.server.cli import main as cli

    ws = operator.trust(local_base_workspace(tmp_path / "local", tiny_model_dir, base_rows=40,
                                              holdout_rows=10, batches=2))
    store = ws.resolve_model_store("models/qwen3_webdev")
    first = draft_job(ws, DraftRequest(batch="batch_100_01"))
    fake_local_version(ws, store / "versions/0000_base", V1)
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    map_batch(ws, "batch_100_02")
    second = draft_job(ws, DraftRequest())
    fake_local_version(ws, store / "versions/0000_base", V2)
    record_job_end(ws, second.draft_id, "local", local_result(ws, second))
    report = check_batch(ws)
    assert report.nothing_left and report.retrain == []
    move(ws, operator, V1)
    report = check_batch(ws)
    assert not report.nothing_left and report.retrain == ["batch_100_02"]
    assert report.last_step.rolled_back and not report.last_step.promoted
    assert report.next_steps[0].tool == "draft_job"
    assert report.next_steps[0].args == {"batch": "batch_100_02"}
    # The CLI checks the signed rollback with the operator's public key, as promote does.
    monkeypatch.setenv("TUNESTEP_OPERATOR_KEYS", str(operator.info.public_key_path))
    assert cli(["check", "-w", str(ws.root)]) == 1  # no new batch: a step waits on a choice
    out = " ".join(capsys.readouterr().out.split())
    assert "NOTHING LEFT" not in out and "not promoted" not in out.lower()
    assert "batch_100_02 await retraining" in out
    assert "rolled back by the operator" in out and "tunestep draft batch_100_02" in out
    again = draft_job(ws, DraftRequest(batch="batch_100_02"))  # the command it offers
    assert {u.part: u.trained for u in again.sources}["batch_100_02"] == 100
    assert "rolled back by the operator" in ws.resolve(again.run_plan).read_text()

    move(ws, operator, "0000_base")  # back to the base: nothing recorded is learned
    with ledger.open_ledger(ws) as conn:
        line = lineage(conn, "models/qwen3_webdev")
    assert line.learned == [] and line.not_learned == ["batch_100_01", "batch_100_02"]


def test_a_manual_promote_of_a_synced_remote_version_is_resumed_by_its_commit(
        tmp_path, tiny_model_dir, fake_hub, monkeypatch, operator):
    """Remote step 1 passed (pushed SHA1, never synced); step 2 failed its gate (pushed
    SHA2), was synced and promoted by hand: the next remote step resumes from SHA2, and a
    local one is not refused for step 1's missing model."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    ws = operator.trust(hub_base_workspace(tmp_path, base_rows=40, holdout_rows=10))
    store = ws.resolve_model_store("models/qwen3_webdev")

    def remote(draft, sha, **extra):
        return {"ok": True, "step": draft.step, "batch": draft.batch,
                "version": f"versions/{draft.step:04d}_{draft.batch}",
                "model_path": f"/tmp/tunestep/store/qwen3_webdev/versions/{draft.step:04d}_"
                              f"{draft.batch}",
                "hub": {"model_id": MODEL_REPO, "revision": sha, "private": True}, **extra}

    def synced(name, step, batch, sha):  # what sync_model leaves: the folder and its row
        shutil.copytree(tiny_model_dir, store / "versions" / name)
        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            record_version(conn, store="models/qwen3_webdev", version=name, step=step,
                           batch=batch, job_id=None, source="hub", hub_model_id=MODEL_REPO,
                           hub_revision=sha, promoted=False)

    first = draft_job(ws, DraftRequest(batch="batch_100_01", **REMOTE))
    record_job_end(ws, first.draft_id, "hf-jobs", remote(first, SHA1))
    map_batch(ws, "batch_100_02")
    second = draft_job(ws, DraftRequest(**REMOTE))
    record_job_end(ws, second.draft_id, "hf-jobs", remote(second, SHA2, promotion=HELD))
    map_batch(ws, "batch_100_03")
    assert draft_job(ws, DraftRequest(**REMOTE)).job_config["resume_from"].endswith(SHA1)

    synced(V2, 2, "batch_100_02", SHA2)
    move(ws, operator, V2)
    nxt = draft_job(ws, DraftRequest(**REMOTE))
    assert nxt.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA2}"
    assert trained(nxt)["batch_100_02"] < 100
    assert not [p for p in check_batch(ws).problems
                if p.code in ("step_not_promoted", "model_not_synced")]
    assert draft_job(ws, DraftRequest()).job_config["resume_from"].endswith(V2)  # local

    synced(V1, 1, "batch_100_01", SHA1)
    move(ws, operator, V1)
    back = draft_job(ws, DraftRequest(**REMOTE))
    assert back.job_config["resume_from"] == f"hf://{MODEL_REPO}@{SHA1}"
    assert trained(back)["batch_100_02"] == 100


@pytest.mark.e2e
def test_a_chain_promoted_by_hand_then_rolled_back(tmp_path, tiny_model_dir, operator):
    """Two real local steps on the tiny model (8 rows a batch, 1 epoch): step 1 with no
    gate (latest moves), step 2 with a gate that cannot pass (margin -0.99); the
    operator promotes step 2 and step 3's draft resumes from it; then rolls back to step 1,
    and the next draft resumes from step 1 and trains batch 2 in full."""
    from tunestep.tools.core.plan import Gate, load_plan, render_plan_document
    from tunestep.tools.runs.job_control import job_logs, wait_for_job
    from tunestep.tools.runs.submit import submit_job

    ws = operator.trust(local_base_workspace(tmp_path / "local", tiny_model_dir, base_rows=8,
                                              holdout_rows=4, batch_rows=8))
    one, two = "0001_batch_8_01", "0002_batch_8_02"  # the sample names batches by size

    def step(gate: Gate | None, batch: str | None = None):
        plan = load_plan(ws).plan
        plan = plan.model_copy(update={"gate": gate, "training": plan.training.model_copy(
            update={"num_train_epochs": 1})})
        (ws.root / ".specs/training/plan.md").write_text(render_plan_document(plan))
        draft = draft_job(ws, DraftRequest(batch=batch))
        handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                            operator.trusted)
        status = wait_for_job(ws, handle.job_id, timeout=900)
        assert status.status == "succeeded", job_logs(ws, handle.job_id, 40).lines
        return draft, status

    _, status = step(None, "batch_8_01")
    assert status.promoted is not False
    map_batch(ws, "batch_8_02")
    second, status = step(Gate(margin=-0.99))
    assert second.job_config["resume_from"].endswith(one)
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert status.promoted is False and (store / "versions" / two).is_dir()
    assert not_promoted(ws)

    map_batch(ws, "batch_8_03")
    move(ws, operator, two)
    third = draft_job(ws, DraftRequest())
    assert third.batch == "batch_8_03" and third.job_config["resume_from"].endswith(two)
    assert trained(third)["batch_8_02"] < 8  # learned: sampled
    assert not not_promoted(ws)

    move(ws, operator, one)
    back = draft_job(ws, DraftRequest())
    assert back.job_config["resume_from"].endswith(one)
    assert trained(back)["batch_8_02"] == 8  # all of batch 2's rows again


def test_a_promotion_while_a_step_runs_does_not_change_what_it_trained_from(
        two_local_steps, operator):
    """Step 3 is drafted on V1; while its job runs the operator promotes V2. Step 3's
    weights still descend from V1 only: batch 2 is not learned by them."""
    ws = two_local_steps
    store = ws.resolve_model_store("models/qwen3_webdev")
    third = draft_job(ws, DraftRequest())
    assert third.job_config["resume_from"].endswith(V1) and third.parent_version == V1
    move(ws, operator, V2)  # the job is running now
    v3 = f"{third.step:04d}_{third.batch}"
    fake_local_version(ws, store / "versions/0000_base", v3)
    record_job_end(ws, third.draft_id, "local", local_result(ws, third))
    with ledger.open_ledger(ws) as conn:
        parent = conn.execute("SELECT parent FROM steps WHERE step = ?",
                              (third.step,)).fetchone()[0]
        line = lineage(conn, "models/qwen3_webdev")
    assert parent == V1
    assert (line.latest, line.line) == (v3, [V1, v3])
    assert line.learned == ["batch_100_01", third.batch]
    assert line.not_learned == ["batch_100_02"]


def test_a_clock_that_jumps_back_does_not_reorder_the_moves_of_latest(
        two_local_steps, operator, monkeypatch):
    """The operator promotes V2, then the clock jumps back an hour and they roll back to
    V1: the rollback is the later event, so V1 is latest (by wall clock it would sort
    before the promotion, and before the steps too)."""
    import time

    ws = two_local_steps
    move(ws, operator, V2)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    move(ws, operator, V1)
    with ledger.open_ledger(ws) as conn:
        stamps = [r[0] for r in conn.execute("SELECT at FROM promotions ORDER BY seq")]
        line = lineage(conn, "models/qwen3_webdev")
    assert stamps[1] < stamps[0]  # the clock did go back
    assert (line.latest, line.line, line.moved_by) == (V1, [V1], "operator")
    assert line.not_learned == ["batch_100_02"]
