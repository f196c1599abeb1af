"""draft_job -> approve -> submit_job: every refusal reason, replay, concurrency, local runs."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import canonical_json
from tunestep.tools.drafts.draft import DraftRequest, draft_job, load_draft
from tunestep.tools.jobs import JOB_FILES
from tunestep.tools.lineage.model_store import latest_checkpoint
from tunestep.tools.runs.job_control import cancel_job, job_logs, job_status, wait_for_job
from tunestep.tools.runs.submit import submit_job
from tunestep.tools.signing.approval import (
    ApprovalClaims,
    _b64url_encode,
    canonical_claims_bytes,
    sign_approval,
)
from tunestep.tools.signing.operator_keys import key_id, load_private_key

pytestmark = pytest.mark.e2e


def refusal(ws, draft_id, token, trusted) -> str:
    with pytest.raises(TunestepError) as err:
        submit_job(ws, draft_id, token, trusted)
    return err.value.code


def forge(private_key, **claims) -> str:
    """A token with exactly these claims, signed by ``private_key`` (bypassing the checks)."""
    body = canonical_claims_bytes(ApprovalClaims.model_construct(**claims))
    return f"tsa1.{_b64url_encode(body)}.{_b64url_encode(private_key.sign(body))}"


@pytest.fixture
def drafted(model_ws):
    return draft_job(model_ws, DraftRequest(batch="batch_100_01"))


def test_same_inputs_give_the_same_draft(model_ws, drafted):
    plan_md = (model_ws.root / drafted.run_plan).read_text()
    assert drafted.draft_id in plan_md and drafted.approve_command in plan_md
    again = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert again.draft_id == drafted.draft_id and again.digest == drafted.digest
    other = draft_job(model_ws, DraftRequest(batch="batch_100_01", mode="lora"))
    assert other.draft_id != drafted.draft_id
    cfg = drafted.job_config
    assert cfg["resume_from"] is None and cfg["hyperparameters"]["learning_rate"] == 1e-3
    assert [f["path"] for f in cfg["train_files"]] == [
        "datasets/processed_webdev_coding/train.jsonl",
        "datasets/incremental/batch_100_01/examples.jsonl"]
    assert drafted.estimate.train_tokens > 0 and drafted.estimate.usd == 0


def test_every_refusal_reason(model_ws, drafted, operator, tmp_path):
    ws, trusted, d = model_ws, operator.trusted, drafted
    key = load_private_key(operator.info.private_key_path, operator.passphrase)
    stranger = Ed25519PrivateKey.generate()
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
    good = dict(v=1, aud="tunestep", act="submit_job", draft_id=d.draft_id, digest=d.digest,
                workspace=str(ws.root), op="tester", kid=key_id(key.public_key()),
                ledger=identity, iat=int(time.time()), exp=int(time.time()) + 600,
                nonce="ab" * 16)

    assert refusal(ws, d.draft_id, "", trusted) == "approval_missing"
    assert refusal(ws, d.draft_id, "tsa1.not-a-token", trusted) == "approval_malformed"
    assert refusal(ws, d.draft_id, forge(stranger, **{
        **good, "kid": key_id(stranger.public_key())}), trusted) == "approval_untrusted_key"
    assert refusal(ws, d.draft_id, forge(stranger, **good), trusted) == "approval_bad_signature"
    assert refusal(ws, d.draft_id, forge(key, **{**good, "act": "delete_all"}),
                   trusted) == "approval_wrong_action"
    assert refusal(ws, d.draft_id, forge(key, **{**good, "aud": "other-tool"}),
                   trusted) == "approval_wrong_audience"
    expired = sign_approval(key, draft_id=d.draft_id, digest=d.digest, workspace=str(ws.root),
                            op="tester", ttl_seconds=60, now=time.time() - 3600,
                            ledger_id=identity)
    assert refusal(ws, d.draft_id, expired, trusted) == "approval_expired"
    unknown = forge(key, **{**good, "draft_id": "draft-000000000000"})
    assert refusal(ws, "draft-000000000000", unknown, trusted) == "draft_unknown"
    other = draft_job(ws, DraftRequest(batch="batch_100_01", mode="lora"))
    assert refusal(ws, other.draft_id, operator.approve(ws, d.draft_id),
                   trusted) == "approval_wrong_draft"
    assert refusal(ws, d.draft_id, forge(key, **{**good, "digest": "0" * 64}),
                   trusted) == "approval_wrong_draft"
    assert refusal(ws, d.draft_id, forge(key, **{**good, "workspace": str(tmp_path)}),
                   trusted) == "approval_wrong_draft"
    assert refusal(ws, d.draft_id, operator.approve(ws, d.draft_id), {}) == \
        "approval_untrusted_key"

    token = operator.approve(ws, d.draft_id)
    batch_file = ws.root / "datasets/incremental/batch_100_01/examples.jsonl"
    original = batch_file.read_bytes()
    batch_file.write_bytes(original.replace(b"Grade: 10", b"Grade: 9", 1))
    assert refusal(ws, d.draft_id, token, trusted) == "draft_stale"
    batch_file.write_bytes(original)

    with ledger.open_ledger(ws) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        refused = conn.execute("SELECT detail FROM audit WHERE action = 'job.submit' AND "
                               "outcome = 'refused'").fetchall()
    assert jobs == 0  # nothing started
    codes = {ledger.loads(r["detail"])["code"] for r in refused}
    assert {"approval_missing", "approval_expired", "draft_stale", "approval_wrong_draft"} <= codes


def test_a_token_starts_one_job_even_when_submitted_concurrently(model_ws, drafted, operator):
    token = operator.approve(model_ws, drafted.draft_id)
    results: list = []

    def submit() -> None:
        try:
            results.append(submit_job(model_ws, drafted.draft_id, token, operator.trusted))
        except TunestepError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handles = [r for r in results if not isinstance(r, str)]
    assert len(handles) == 1 and sorted(r for r in results if isinstance(r, str)) == [
        "approval_replayed"] * 3
    cancel_job(model_ws, handles[0].job_id)
    assert refusal(model_ws, drafted.draft_id, token, operator.trusted) == "approval_replayed"
    with ledger.open_ledger(model_ws) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM approvals").fetchone()[0] == 1


def test_local_job_runs_records_the_step_and_the_next_draft_resumes(model_ws, drafted, operator):
    ws = model_ws
    handle = submit_job(ws, drafted.draft_id, operator.approve(ws, drafted.draft_id),
                        operator.trusted)
    status = wait_for_job(ws, handle.job_id, timeout=600)
    assert status.status == "succeeded", job_logs(ws, handle.job_id, 40).lines
    assert status.exit_code == 0 and status.result["model_path"].endswith("0001_batch_100_01")
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert latest_checkpoint(store).name == "0001_batch_100_01"
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT * FROM steps").fetchone()
    assert (step["step"], step["batch"], step["draft_id"]) == (1, "batch_100_01",
                                                               drafted.draft_id)
    assert step["digest"] == drafted.digest and "sha256" in step["datasets"]
    assert any("train_sft" in line or "step" in line for line in job_logs(ws, handle.job_id).lines)
    assert (ws.root / "logs/metrics_step_batch_100_01.csv").is_file()

    # The next batch needs mapping first: drafting it is refused until it is READY.
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest())
    assert err.value.code == "batch_not_ready"
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping

    source = "datasets/incremental/batch_100_02"
    apply_mapping(ws, source, suggest_mapping(ws, source).mapping)
    # The next step resumes from the new checkpoint, with the resume learning rate.
    nxt = draft_job(ws, DraftRequest())
    assert nxt.batch == "batch_100_02"
    assert nxt.job_config["resume_from"].endswith("0001_batch_100_01")
    assert nxt.job_config["hyperparameters"]["learning_rate"] == 5e-4
    # The finished draft is stale now: its checkpoint moved.
    with pytest.raises(TunestepError) as err:
        operator.approve(ws, drafted.draft_id)
    assert err.value.code == "draft_stale"


def test_cancel_stops_a_running_job_without_moving_latest(model_ws, operator):
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01",
                                       overrides={"num_train_epochs": 50.0}))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    deadline = time.monotonic() + 120
    while "training" not in "\n".join(job_logs(ws, handle.job_id, 200).lines):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.5)
    cancel_job(ws, handle.job_id)  # waits a little; a loaded machine may need longer
    status = wait_for_job(ws, handle.job_id, timeout=180)
    assert status.status == "cancelled" and status.terminal
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert latest_checkpoint(store).name == "0000_base"
    assert job_status(ws, handle.job_id).status == "cancelled"


def test_hf_jobs_submission_sends_the_approved_bundle(tmp_path, tiny_model_dir, fake_hub,
                                                      monkeypatch):
    import shutil

    from conftest import FAKE_TOKEN, Operator

    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.estimate import expected_precision

    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True, plan_overrides={
        "hub": {"dataset_repo": "tester/steps", "model_id": "tester/qwen3_webdev"}})
    ws = open_workspace(tmp_path / "ws")
    operator = Operator(tmp_path / "keys")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    draft = draft_job(ws, DraftRequest(batch="batch_100_01", backend="hf-jobs",
                                       flavor="t4-medium", timeout="45m"))
    assert draft.submission.secrets == ["HF_TOKEN"]
    assert FAKE_TOKEN not in draft.model_dump_json()
    # precision auto on a T4 (no native bf16): the job trains in fp16, the screen says so.
    assert draft.job_config["hyperparameters"]["precision"] == "auto"
    assert expected_precision("auto", draft.submission.flavor) == "fp16"
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    assert handle.backend == "hf-jobs" and handle.external_id in fake_hub.jobs

    assert len(fake_hub.requests_to("POST", "/api/datasets/tester/steps/commit/")) == 1
    repo = fake_hub.repo("tester/steps")
    committed = repo.tree(repo.head)
    prefix = f"steps/{draft.draft_id}/"
    names = {p.removeprefix(prefix) for p in committed if p.startswith(prefix)}
    assert {*JOB_FILES, "job.json", "data/validation.jsonl"} <= names  # every job module
    assert committed[prefix + "data/validation.jsonl"] == (
        ws.root / "datasets/processed_webdev_coding/validation.jsonl").read_bytes()

    (job,) = fake_hub.requests_to("POST", "/api/jobs/")
    spec = job.json
    assert spec["flavor"] == "t4-medium" and spec["timeoutSeconds"] == 45 * 60
    assert spec["labels"]["tunestep-batch"] == "batch_100_01"
    assert spec["labels"]["tunestep-draft"] == draft.draft_id
    assert spec["secrets"] == {"HF_TOKEN": FAKE_TOKEN}
    assert spec["volumes"][0]["revision"] == repo.head
    # the signed command, then the digest of the job.json the bundle carries
    assert spec["command"][:-2] == draft.submission.command
    assert spec["command"][-4:-2] == ["--root", "/tmp/tunestep"]
    assert spec["command"][-2:] == [
        "--config-sha256", hashlib.sha256(canonical_json(draft.job_config)).hexdigest()]
    for req in fake_hub.requests:
        if req is not job:
            assert FAKE_TOKEN.encode() not in req.body
    stored = load_draft(ws, draft.draft_id)
    assert stored.digest == draft.digest
