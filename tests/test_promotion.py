"""Promote and roll back: latest moves only with the operator's signed promote token."""

from __future__ import annotations

import os
import shutil

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.operator import sign_promotion
from tunestep.tools.lineage.promotion import promote, promote_version, review_request
from tunestep.tools.runs.job_control import job_status
from tunestep.tools.signing.approval import sign_approval

HELD = "0001_batch_100_01"
REASON = "grade_within_1 0.40 -> 0.45 (+0.05), the gate demands +1.00 (max_regression -1.0)"


@pytest.fixture
def held_back(model_ws):
    """A step whose gate could not pass: its version is stored and recorded, latest is
    still the base (what the job leaves behind; its result as the job reports it)."""
    ws = model_ws
    store = ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions" / HELD)
    result = {"model_path": str(store / "versions" / HELD), "version": f"versions/{HELD}",
              "promotion": {"promoted": False, "reason": REASON},
              "evaluation": {"metric": "grade_within_1", "before": 0.40, "after": 0.45}}
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, created_at)"
                     " VALUES ('draft-x', 'd', 'train', 'batch_100_01', ?, 0)", (ledger.dumps({
                         "job_config": {"step": 1, "batch": "batch_100_01", "mode": "full",
                                        "train_files": [], "eval_file": {},
                                        "outputs": {"model_store": "models/qwen3_webdev"}}}),))
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES ('job-x', 'draft-x', 'local', 'running', 0)")
    from tunestep.tools.runs.local_backend import record_outcome

    record_outcome(ws, "job-x", "succeeded", 0, result)
    return ws


def latest(ws) -> str:
    store = ws.resolve_model_store("models/qwen3_webdev")
    return os.readlink(store / "latest").rsplit("/", 1)[-1]


def signed(ws, operator, version: str) -> str:
    request = promote(ws, version, None, operator.trusted).request
    return sign_promotion(ws, review_request(ws, request.request_id), name=operator.name,
                          key_path=operator.info.private_key_path,
                          passphrase=operator.passphrase, ttl="10m").token


def refusal(ws, version, token, trusted) -> str:
    with pytest.raises(TunestepError) as err:
        promote_version(ws, version, token, trusted)
    return err.value.code


def test_a_held_back_version_is_recorded_and_reported_with_latest_unchanged(held_back):
    ws = held_back
    assert latest(ws) == "0000_base"
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT * FROM steps").fetchone()
        version = conn.execute("SELECT * FROM model_versions WHERE version = ?",
                               (HELD,)).fetchone()
    assert (step["version"], step["promoted"], step["promotion_reason"]) == (HELD, 0, REASON)
    assert ledger.loads(step["evaluation"])["after"] == 0.45
    assert version["promoted"] == 0
    status = job_status(ws, "job-x")
    assert status.promoted is False and status.promotion_reason == REASON
    report = check_batch(ws)
    held = next(p for p in report.problems if p.code == "step_not_promoted")
    assert held.severity == "warning" and REASON in held.message and "0000_base" in held.message
    assert report.last_step.promoted is False
    assert any(f"promote_version(version='{HELD}')" in a for a in report.next_actions)


def test_promote_and_roll_back_refuse_without_a_valid_token(held_back, operator, tmp_path):
    ws = held_back
    trusted = operator.trusted
    asked = promote(ws, HELD, None, trusted)  # no token: a request, nothing moves
    assert not asked.moved and latest(ws) == "0000_base"
    assert asked.request.gate_promoted is False and asked.request.gate_reason == REASON
    assert asked.request.approve_command.startswith(f"tunestep approve {asked.request.request_id}")

    good = signed(ws, operator, HELD)
    # A submit_job token for the same request: the wrong action.
    request = asked.request
    from tunestep.tools.signing.operator_keys import load_private_key

    key = load_private_key(operator.info.private_key_path, operator.passphrase)
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
    submit_token = sign_approval(key, draft_id=request.request_id, digest=request.digest,
                                 workspace=str(ws.root), op="tester", ttl_seconds=600,
                                 ledger_id=identity)
    assert refusal(ws, HELD, submit_token, trusted) == "approval_wrong_action"
    # A key the server does not trust.
    stranger = sign_approval(Ed25519PrivateKey.generate(), draft_id=request.request_id,
                             digest=request.digest, workspace=str(ws.root), op="x",
                             ttl_seconds=600, act="promote", ledger_id=identity)
    assert refusal(ws, HELD, stranger, trusted) == "approval_untrusted_key"
    # The token is for another version than the one asked for.
    assert refusal(ws, "0000_base", good, trusted) == "approval_wrong_draft"
    assert refusal(ws, HELD, "", trusted) == "approval_missing"
    assert refusal(ws, HELD, good[:-4] + "AAAA", trusted) in ("approval_bad_signature",
                                                             "approval_malformed")
    assert latest(ws) == "0000_base"  # nothing above moved it

    moved = promote(ws, HELD, good, trusted)
    assert moved.moved and moved.result.previous == "0000_base" and latest(ws) == HELD
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert os.readlink(store / "latest") == f"versions/{HELD}"  # relative, as the job's

    back = signed(ws, operator, "0000_base")  # roll back to the base version
    assert promote_version(ws, "0000_base", back, trusted).previous == HELD
    assert latest(ws) == "0000_base"
    # Each token moves latest once.
    assert refusal(ws, HELD, good, trusted) == "approval_replayed"
    assert refusal(ws, "0000_base", back, trusted) == "approval_replayed"
    assert latest(ws) == "0000_base"

    # A version whose content changed after the operator signed is refused: against the
    # files recorded when the job made it (sizes first, nothing hashed past them).
    again = signed(ws, operator, HELD)
    (store / "versions" / HELD / "config.json").write_text("{}")
    assert refusal(ws, HELD, again, trusted) == "version_files_changed"
    assert refusal(ws, "../0000_base", again, trusted) == "version_unknown"
    assert latest(ws) == "0000_base"
    with ledger.open_ledger(ws) as conn:
        outcomes = [r["outcome"] for r in conn.execute(
            "SELECT outcome FROM audit WHERE action = 'version.promote'")]
        used = conn.execute("SELECT COUNT(*) FROM promotions").fetchone()[0]
    assert outcomes.count("ok") == 2 and used == 2
    assert outcomes.count("refused") == 9  # every refusal above is audited


def test_promote_version_over_mcp_needs_the_operators_token(held_back, operator):
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    ws = held_back
    server = build_server(ServerConfig(workspace=ws.root,
                                       operator_keys=[operator.info.public_key_path]))

    async def calls():
        async with Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            asked = await client.call_tool("promote_version", {"version": HELD})
            forged = await client.call_tool("promote_version", {
                "version": HELD, "approval_token": "tsa1.e30.AAAA"})
            token = signed(ws, operator, HELD)
            moved = await client.call_tool("promote_version", {
                "version": HELD, "approval_token": token})
            return tools["promote_version"], asked, forged, moved

    tool, asked, forged, moved = anyio.run(calls)
    assert tool.annotations.destructive_hint is True and tool.annotations.read_only_hint is False
    assert asked.structured_content["moved"] is False
    assert error_code(forged) == "approval_malformed"
    assert moved.structured_content["moved"] is True and latest(ws) == HELD


def test_the_operator_promotes_and_rolls_back_from_the_cli(held_back, tmp_path, capsys,
                                                           monkeypatch):
    import json

    from tunestep.server.cli import main as cli

    ws = str(held_back.root)
    keys = tmp_path / "cli-keys"
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse battery")
    assert cli(["operator", "init", "--name", "olly", "--config-dir", str(keys)]) == 0
    capsys.readouterr()
    # Sign here and apply: the key's own public half is the one trusted.
    code = cli(["promote", HELD, "-w", ws, "--yes", "--config-dir", str(keys), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["latest"] == HELD and latest(held_back) == HELD
    # Roll back with a token from `tunestep approve promote-...`, applied separately.
    request = promote(held_back, "0000_base", None, {}).request
    code = cli(["approve", request.request_id, "-w", ws, "--yes", "--config-dir", str(keys)])
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and token.startswith("tsa1.")
    pub = str(keys / "olly.pub.pem")
    code = cli(["promote", HELD, "-w", ws, "--token", token, "--operator-key", pub])
    assert code == 1 and "approval_wrong_draft" in capsys.readouterr().err
    code = cli(["promote", "0000_base", "-w", ws, "--token", token, "--operator-key", pub])
    assert code == 0 and latest(held_back) == "0000_base"
    code = cli(["promote", "0000_base", "-w", ws, "--token", token, "--operator-key", pub])
    assert code == 1 and "approval_replayed" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_gate_that_cannot_pass_keeps_latest_and_the_operator_can_promote(model_ws,
                                                                           operator):
    """The local backend with the tiny model: margin -1.0 demands a proven gain of a whole
    point on a 0-1 metric, which no step can give."""
    from tunestep.tools.core.plan import load_plan, render_plan_document
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.runs.job_control import job_logs, wait_for_job
    from tunestep.tools.runs.submit import submit_job

    ws = model_ws
    plan = load_plan(ws).plan
    plan = plan.model_copy(update={
        "gate": plan.gate.model_copy(update={"margin": -1.0}),
        "training": plan.training.model_copy(update={"num_train_epochs": 1}),
        "samples": plan.samples.model_copy(update={"n": 2, "max_new_tokens": 8})})
    (ws.root / ".specs/training/plan.md").write_text(render_plan_document(plan))
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert draft.job_config["gate"]["margin"] == -1.0
    assert "is above 1, i.e. the hold-out shows it is not worse by more than -1" in (
        ws.root / draft.run_plan).read_text()
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    status = wait_for_job(ws, handle.job_id, timeout=900)
    assert status.status == "succeeded", job_logs(ws, handle.job_id, 40).lines
    assert status.promoted is False and status.promotion_reason
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert latest(ws) == "0000_base"  # the gate held the new version back
    assert (store / "versions" / HELD).is_dir()  # ... which is stored
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT * FROM steps WHERE batch = 'batch_100_01'").fetchone()
    assert step["promoted"] == 0 and step["version"] == HELD  # ... and recorded
    assert step["promotion_reason"] == status.promotion_reason
    assert ledger.loads(step["evaluation"])
    assert any(p.code == "step_not_promoted" for p in check_batch(ws).problems)
    promote_version(ws, HELD, signed(ws, operator, HELD), operator.trusted)
    assert latest(ws) == HELD
