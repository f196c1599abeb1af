"""The remote inspector as a job kind: drafted, approved, submitted through the one gate,
run from the approved bytes, and its report fetched back without recording a step."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import FAKE_TOKEN, Operator

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import canonical_json
from tunestep.tools.core.plan import load_plan
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.drafts.draft import DraftRequest, InspectEstimate, draft_job, load_draft
from tunestep.tools.inspector import run_inspector
from tunestep.tools.runs.job_control import job_status
from tunestep.tools.runs.submit import submit_job

BATCH = "batch_100_01"
BATCH_DIR = f"datasets/incremental/{BATCH}"
REPO = "tester/steps"


@pytest.fixture
def ws(tmp_path, fake_hub, monkeypatch) -> Workspace:
    # hub.dataset_repo only: an inspection pushes no model, so hub.model_id is not needed.
    build_sample_workspace(tmp_path / "ws", plan_overrides={"hub": {"dataset_repo": REPO}})
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return open_workspace(tmp_path / "ws")


@pytest.fixture
def operator(tmp_path) -> Operator:
    return Operator(tmp_path / "operator-keys")


def inspect_request(**changes) -> DraftRequest:
    return DraftRequest(**{"kind": "inspect", "batch": BATCH, "backend": "hf-jobs", **changes})


def code_of(call, *args) -> str:
    with pytest.raises(TunestepError) as err:
        call(*args)
    return err.value.code


def submitted(ws: Workspace, operator: Operator):
    draft = draft_job(ws, inspect_request())
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    return draft, handle


def steps_rows(ws: Workspace) -> int:
    with ledger.open_ledger(ws) as conn:
        return conn.execute("SELECT count(*) FROM steps").fetchone()[0]


def test_an_inspect_draft_is_a_priced_hf_job_over_a_mini_workspace(ws):
    draft = draft_job(ws, inspect_request())
    assert draft.kind == "inspect" and draft.backend == "hf-jobs"
    sub = draft.submission
    assert sub.flavor == "cpu-basic" and sub.timeout_seconds == 900
    assert sub.labels == {"tunestep-batch": BATCH, "tunestep-step": "1",
                          "tunestep-kind": "inspect"}
    assert sub.secrets == ["HF_TOKEN"] and FAKE_TOKEN not in draft.model_dump_json()
    assert "inspect_remote.py" in sub.command[2] and sub.command[-2:] == ["--root",
                                                                          "/tmp/tunestep"]
    roles = {(f.role, f.path) for f in draft.files}
    assert ("eval", "datasets/processed_webdev_coding/validation.jsonl") in roles
    assert ("reference", "datasets/processed_webdev_coding/train.jsonl") in roles
    assert ("plan", ".specs/training/plan.md") in roles
    assert {p for r, p in roles if r == "inspect"} == {
        f"{BATCH_DIR}/{p.name}" for p in (ws.root / BATCH_DIR).iterdir()}
    scripts = {f.path: f.sha256 for f in draft.files if f.role == "script"}
    wheel = next(name for name in scripts if name.endswith(".whl"))
    assert draft.job_config["wheel"] == {"name": wheel, "sha256": scripts[wheel]}
    # The estimate prices the flavor for the expected minutes; no training fields.
    est = draft.estimate
    assert isinstance(est, InspectEstimate) and est.flavor == "cpu-basic"
    assert 0 < est.usd <= est.max_usd == round(900 / 3600 * 0.01, 4)
    assert "train_tokens" not in est.model_dump() and "hyperparameters" not in draft.job_config
    # Deterministic (the wheel is reproducible and cached), and stored as it was drafted.
    assert draft_job(ws, inspect_request()).digest == draft.digest
    stored = load_draft(ws, draft.draft_id)
    assert stored == draft and isinstance(stored.estimate, InspectEstimate)
    assert (ws.root / draft.run_plan).read_text().count(draft.draft_id) >= 2
    # A mapped batch is inspected from its mapped folder.
    mapped = ws.root / load_plan(ws).plan.paths.mapped / BATCH
    mapped.mkdir(parents=True)
    (mapped / "rows.jsonl").write_bytes(next((ws.root / BATCH_DIR).iterdir()).read_bytes())
    again = draft_job(ws, inspect_request())
    assert again.job_config["path"] == mapped.relative_to(ws.root).as_posix()
    assert again.draft_id != draft.draft_id


def test_inspect_refusals(ws, operator):
    assert code_of(draft_job, ws, inspect_request(backend="local")) == "draft_kind_backend"
    assert code_of(draft_job, ws, inspect_request(mode="lora")) == "draft_kind_option"
    assert code_of(draft_job, ws, inspect_request(overrides={"seed": 1})) == "draft_kind_option"
    draft = draft_job(ws, inspect_request())
    # The same gate as training: no token, a stale draft.
    assert code_of(submit_job, ws, draft.draft_id, "", operator.trusted) == "approval_missing"
    token = operator.approve(ws, draft.draft_id)
    holdout = ws.root / "datasets/processed_webdev_coding/train.jsonl"  # a reference file
    original = holdout.read_bytes()
    holdout.write_bytes(original + original.splitlines(keepends=True)[0])
    assert code_of(submit_job, ws, draft.draft_id, token, operator.trusted) == "draft_stale"
    holdout.write_bytes(original)
    with ledger.open_ledger(ws) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_submit_sends_the_approved_bundle_and_request(ws, operator, fake_hub):
    draft, handle = submitted(ws, operator)
    assert handle.backend == "hf-jobs" and handle.external_id in fake_hub.jobs
    repo = fake_hub.repo(REPO)
    assert repo.private
    prefix = f"steps/{draft.draft_id}/"
    tree = {p.removeprefix(prefix): data for p, data in repo.tree(repo.head).items()
            if p.startswith(prefix)}
    wheel = draft.job_config["wheel"]["name"]
    expected = {"job.json", "inspect_remote.py", wheel} | {
        f"workspace/{f.path}" for f in draft.files if f.role != "script"}
    assert set(tree) == expected
    for f in draft.files:  # every committed byte is what the draft's digest covers
        name = f.path if f.role == "script" else f"workspace/{f.path}"
        assert hashlib.sha256(tree[name]).hexdigest() == f.sha256, name
        if f.role != "script":
            assert tree[name] == (ws.root / f.path).read_bytes()
    with zipfile.ZipFile(io.BytesIO(tree[wheel])) as archive:
        names = set(archive.namelist())
        run_py = archive.read("tunestep/tools/inspector/run.py")
    assert "tunestep-0.1.0.dist-info/RECORD" in names
    from tunestep.tools.inspector import run as inspector_run

    assert run_py == Path(inspector_run.__file__).read_bytes()

    (job,) = fake_hub.requests_to("POST", "/api/jobs/")
    spec = job.json
    assert spec["flavor"] == "cpu-basic" and spec["timeoutSeconds"] == 900
    assert spec["labels"]["tunestep-kind"] == "inspect"
    assert spec["labels"]["tunestep-draft"] == draft.draft_id
    assert spec["secrets"] == {"HF_TOKEN": FAKE_TOKEN}
    assert spec["volumes"][0]["revision"] == repo.head
    assert spec["volumes"][0]["path"] == f"steps/{draft.draft_id}"
    # the signed command, then the digest of the bundle's job.json that the job checks
    assert spec["command"][:-2] == draft.submission.command
    assert spec["command"][-2:] == [
        "--config-sha256", hashlib.sha256(canonical_json(draft.job_config)).hexdigest()]
    for req in fake_hub.requests:
        if req is not job:
            assert FAKE_TOKEN.encode() not in req.body


def test_completion_fetches_the_report_and_records_no_step(ws, operator, fake_hub):
    draft, handle = submitted(ws, operator)
    assert job_status(ws, handle.job_id).status == "running"
    local = run_inspector(ws, BATCH_DIR)
    fake_hub.push_files(REPO, {f"outputs/{draft.draft_id}/result.json":
                               local.model_dump_json().encode()})
    fake_hub.set_job_stage(handle.external_id, "COMPLETED")
    status = job_status(ws, handle.job_id)
    assert status.status == "succeeded" and status.terminal
    assert status.result["status"] == local.status
    assert status.result["summary"] == local.summary
    fetched = ws.root / status.result["report_path"]
    assert fetched == ws.state_dir / "jobs" / handle.job_id / "result.json"
    assert fetched.read_bytes() == local.model_dump_json().encode()
    assert steps_rows(ws) == 0
    assert check_batch(ws).batch == BATCH  # still the next batch to train


def test_a_completed_job_without_a_report_is_failed(ws, operator, fake_hub):
    _, handle = submitted(ws, operator)
    fake_hub.set_job_stage(handle.external_id, "COMPLETED")
    status = job_status(ws, handle.job_id)
    assert status.status == "failed" and "result.json" in status.result["error"]
    assert steps_rows(ws) == 0


def test_the_wrapper_runs_the_wheel_on_the_committed_bundle(ws, operator, fake_hub, tmp_path):
    """The job's own command, minus uv and the container: the mount is the committed tree."""
    draft, handle = submitted(ws, operator)
    repo = fake_hub.repo(REPO)
    prefix = f"steps/{draft.draft_id}/"
    mount = tmp_path / "mount"
    for path, data in repo.tree(repo.head).items():
        if path.startswith(prefix):
            target = mount / path.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update({"HF_TOKEN": FAKE_TOKEN, "TUNESTEP_OUTPUT_REPO": REPO,
                "TUNESTEP_OUTPUT_PATH": f"outputs/{draft.draft_id}"})
    command = [sys.executable, str(mount / "inspect_remote.py"), "--config",
               str(mount / "job.json"), "--root", str(tmp_path / "root")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"tunestep from {tmp_path / 'root' / 'lib'}" in done.stdout  # the approved wheel

    fake_hub.set_job_stage(handle.external_id, "COMPLETED")
    status = job_status(ws, handle.job_id)
    local = run_inspector(ws, BATCH_DIR)
    assert status.status == "succeeded"
    assert (status.result["status"], status.result["summary"]) == (local.status, local.summary)
    assert status.result["counts"] == local.counts
    assert steps_rows(ws) == 0

    # A bundle file that is not the approved bytes stops the job before it inspects.
    victim = mount / "workspace" / BATCH_DIR
    first = next(victim.iterdir())
    first.write_bytes(first.read_bytes() + b"\n")
    tampered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert tampered.returncode == 3 and "differ from the approved draft" in tampered.stdout


def test_cli_and_mcp_draft_an_inspection(ws, operator, capsys, monkeypatch):
    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.cli import main
    from tunestep.server.mcp_tools import error_code

    assert main(["draft", BATCH, "--kind", "inspect", "--backend", "hf-jobs",
                 "--workspace", str(ws.root)]) == 0
    assert "remote inspection" in capsys.readouterr().out
    # The operator's approve renders the stored inspect draft and signs it.
    draft_id = draft_job(ws, inspect_request()).draft_id
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", operator.passphrase.decode())
    assert main(["approve", draft_id, "--workspace", str(ws.root), "--name", operator.name,
                 "--key", str(operator.info.private_key_path), "--yes"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].startswith("tsa1.") and "cpu-basic" in err
    assert main(["draft", BATCH, "--kind", "inspect", "--workspace", str(ws.root)]) == 1
    assert "draft_kind_backend" in capsys.readouterr().err

    async def call(arguments: dict):
        async with Client(build_server(ServerConfig(workspace=ws.root))) as client:
            return await client.call_tool("draft_job", arguments)

    result = anyio.run(call, {"batch": BATCH, "kind": "inspect", "backend": "hf-jobs"})
    assert not result.is_error
    assert result.structured_content["kind"] == "inspect"
    assert result.structured_content["submission"]["flavor"] == "cpu-basic"
    refused = anyio.run(call, {"batch": BATCH, "kind": "inspect"})
    assert error_code(refused) == "draft_kind_backend"
