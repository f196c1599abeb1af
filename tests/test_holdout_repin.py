"""Re-pinning the hold-out set: only the operator's signed token moves the pin, every
read of the pin verifies it, and later drafts and gates name the hold-out they measured."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.holdout_repin import apply_repin, repin, request_repin, review_request
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.drafts.operator import sign_repin
from tunestep.tools.runs.step_outcome import holdout_of_draft
from tunestep.tools.signing.approval import ACTION_PROMOTE, ACTION_REPIN, sign_approval

HOLDOUT = "datasets/processed_webdev_coding/validation.jsonl"
NEW_ROW = {"messages": [
    {"role": "system", "content": "You review web-development code."},
    {"role": "user", "content": "A question nobody trains on: is <blink> still valid?"},
    {"role": "assistant", "content": '{"verdict": "no"}'}]}


def holdout(ws):
    return ws.root / HOLDOUT


def edit(ws, drop: int = 1, add: list | None = None) -> None:
    """Drop the first ``drop`` rows and append ``add`` (one new row by default)."""
    path = holdout(ws)
    lines = path.read_bytes().splitlines(keepends=True)
    extra = b"".join(orjson.dumps(r) + b"\n" for r in (add if add is not None else [NEW_ROW]))
    path.write_bytes(b"".join(lines[drop:]) + extra)


def sign(ws, operator, request_id: str) -> str:
    return sign_repin(ws, review_request(ws, request_id), name=operator.name,
                      key_path=operator.info.private_key_path,
                      passphrase=operator.passphrase, ttl="10m").token


def code_of(fn, *args) -> str:
    with pytest.raises(TunestepError) as err:
        fn(*args)
    return err.value.code


def codes(report) -> dict[str, str]:
    return {p.code: p.severity for p in report.problems}


def test_an_edited_holdout_is_refused_then_a_signed_repin_lets_the_draft_name_the_new_sha(
        model_ws, operator):
    ws = model_ws
    first = check_batch(ws)
    assert first.validation.newly_pinned
    edit(ws)
    refused = check_batch(ws)
    assert codes(refused)["validation_changed"] == "error"
    # The refusal names the re-pin besides "Restore it": MCP syntax in the MCP text.
    assert "repin_holdout()" in " ".join(refused.next_actions)
    assert "Restore it" in next(p.message for p in refused.problems
                                if p.code == "validation_changed")
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "draft_preflight_failed"
    assert err.value.hint is not None and err.value.hint.tool == "repin_holdout"
    from tunestep.tools.data.merge import merge_datasets

    with pytest.raises(TunestepError) as err:
        merge_datasets(ws, "batch_100_01")
    assert err.value.code == "validation_changed" and "repin_holdout()" in str(err.value)

    outcome = repin(ws, None, operator.trusted)  # what the assistant may do: prepare
    assert not outcome.repinned
    request = outcome.request
    new_sha = refused.validation.sha256
    assert (request.subject.old_sha256, request.subject.new_sha256) == (
        first.validation.sha256, new_sha)
    assert request.old_pinned_by == "first sight"
    assert request.subject.rows.compared and request.subject.rows.added == 1
    assert request.subject.rows.removed == 1
    assert check_batch(ws).validation.changed  # a request alone moves nothing

    done = repin(ws, sign(ws, operator, request.request_id), operator.trusted)
    assert done.repinned and done.result.new_sha256 == new_sha
    now = check_batch(ws)
    assert "validation_changed" not in codes(now)
    assert now.validation.pinned_sha256 == new_sha
    assert now.validation.repinned_by == request.request_id
    with ledger.open_ledger(ws) as conn:  # the first-sight pin stays as it was: history
        assert conn.execute("SELECT sha256 FROM validation_pins").fetchone()[0] == \
            first.validation.sha256
        audit = [r["action"] for r in conn.execute("SELECT action FROM audit")]
    assert "validation.repin" in audit and "validation.repin_approve" in audit

    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    evals = [f for f in draft.files if f.role == "eval"]
    assert [f.sha256 for f in evals] == [new_sha]  # in the signed manifest
    assert new_sha in draft.manifest
    measured = holdout_of_draft(ws, draft.draft_id)
    assert measured.short == new_sha[:12]
    assert measured.pinned_by == f"re-pinned by {request.request_id} ({operator.name})"
    # A training job's status names the hold-out its gate measures, on screen too.
    from chain_helpers import record_job_end
    from rich.console import Console

    from tunestep.server.render import render
    from tunestep.tools.runs.job_control import job_status

    console = Console(width=80, record=True, highlight=False)
    render(console, draft, as_json=False, approving=True, bound_to=str(ws.root))
    signing = " ".join(console.export_text().split("You are signing", 1)[1].split())
    assert f"hold-out rows (sha256 {new_sha[:12]})" in signing
    job = record_job_end(ws, draft.draft_id, "local", {"error": "stopped"}, status="failed")
    status = job_status(ws, job)
    assert status.holdout == measured
    console = Console(width=80, record=True, highlight=False)
    render(console, status, as_json=False)
    assert f"hold-out    {new_sha[:12]} (re-pinned by {request.request_id}" in \
        console.export_text()

    edit(ws, drop=0, add=[NEW_ROW])  # tampering after the re-pin: changed again
    again = check_batch(ws)
    assert codes(again)["validation_changed"] == "error"
    assert again.validation.pinned_sha256 == new_sha


def test_rows_added_and_removed_are_counted_by_normalized_content(sample_ws, operator):
    ws = sample_ws
    check_batch(ws)
    path = holdout(ws)
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    assert len(rows) >= 5
    changed = json.loads(json.dumps(rows[3]))
    changed["messages"][-1]["content"] += " (edited)"
    lines = [json.dumps(rows[0], indent=None, separators=(", ", ":  "),  # re-written only:
                        sort_keys=True)]                               # the same row
    lines += [json.dumps(r) for r in rows[2:3]]  # row 2 (index 1) removed
    lines += [json.dumps(changed)]  # row 4 changed: one removed, one added
    lines += [json.dumps(r) for r in rows[4:]]
    lines += [json.dumps(rows[2]), json.dumps(NEW_ROW)]  # a duplicate and a new row
    path.write_text("\n".join(lines) + "\n\n")
    diff = request_repin(ws).subject.rows
    assert (diff.old_rows, diff.new_rows) == (len(rows), len(rows) + 1)
    assert (diff.added, diff.removed) == (3, 2)
    assert diff.unchanged == len(rows) + 1 - 3
    assert {r.row for r in diff.removed_rows} == {2, 4}
    assert any("nobody trains on" in r.preview for r in diff.added_rows)

    # A pin whose bytes were not kept: said so, never guessed.
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("DELETE FROM holdout_snapshots")
    honest = request_repin(ws).subject.rows
    assert not honest.compared and honest.added is None and "not kept" in honest.note
    assert (honest.old_rows, honest.new_rows) == (len(rows), len(rows) + 1)


def test_a_repin_row_written_into_the_ledger_without_a_valid_signature_is_ignored(
        sample_ws, operator):
    ws = sample_ws
    pinned = check_batch(ws).validation.sha256
    edit(ws)
    request = request_repin(ws)
    s = request.subject
    forged = sign_approval(Ed25519PrivateKey.generate(), draft_id=request.request_id,
                           digest=request.digest, workspace=str(ws.root), op="mallory",
                           ttl_seconds=600, ledger_id=s.ledger, act=ACTION_REPIN)
    nonce = json.loads(__import__("base64").urlsafe_b64decode(
        forged.split(".")[1] + "==").decode())["nonce"]
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        for row_nonce, token in (("a" * 32, None), (nonce, forged)):
            conn.execute(
                "INSERT INTO holdout_repins(nonce, request_id, path, old_sha256, new_sha256,"
                " kid, operator, at, seq, token) VALUES (?, ?, ?, ?, ?, 'k', 'mallory', ?,"
                " ?, ?)", (row_nonce, request.request_id, s.path, s.old_sha256,
                           s.new_sha256, time.time(), ledger.next_seq(conn), token))
    report = check_batch(ws)
    assert codes(report)["validation_changed"] == "error"
    assert report.validation.pinned_sha256 == pinned and report.validation.repinned_by is None
    reasons = {r.reason for r in report.validation.ignored_repins}
    assert reasons == {"no_token", "bad_token"}
    assert codes(report)["repin_unverified"] == "warning"

    # A genuine token copied into a row that re-pins other bytes: wrong_request.
    token = sign(ws, operator, request.request_id)
    claims = json.loads(__import__("base64").urlsafe_b64decode(
        token.split(".")[1] + "==").decode())
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute(
            "INSERT INTO holdout_repins(nonce, request_id, path, old_sha256, new_sha256,"
            " kid, operator, at, seq, token) VALUES (?, ?, ?, ?, ?, 'k', 'x', ?, ?, ?)",
            (claims["nonce"], request.request_id, s.path, s.old_sha256, "f" * 64,
             time.time(), ledger.next_seq(conn), token))
    report = check_batch(ws)
    assert "wrong_request" in {r.reason for r in report.validation.ignored_repins}
    assert report.validation.pinned_sha256 == pinned
    # That token's nonce is now taken by the forged row: the operator's apply is a replay.
    assert code_of(apply_repin, ws, token, operator.trusted) == "approval_replayed"

    # With no trusted key the signed records cannot be checked: ignored, never believed.
    untrusting = ws.for_call(None)
    assert {r.reason for r in check_batch(untrusting).validation.ignored_repins} >= {
        "unverified"}


def test_a_signed_repin_for_other_bytes_another_workspace_or_another_act_is_refused(
        sample_ws, operator):
    ws = sample_ws
    check_batch(ws)
    edit(ws)
    request = request_repin(ws)
    token = sign(ws, operator, request.request_id)
    edit(ws, drop=1)  # the file moved on after the operator signed
    assert code_of(apply_repin, ws, token, operator.trusted) == "repin_stale"
    assert code_of(review_request, ws, request.request_id) == "repin_stale"

    edit(ws, drop=0, add=[])  # request again for the bytes as they are now
    request = request_repin(ws)
    key = operator.info.private_key_path
    from tunestep.tools.signing.operator_keys import load_private_key

    private = load_private_key(key, operator.passphrase)
    elsewhere = sign_approval(private, draft_id=request.request_id, digest=request.digest,
                              workspace="/elsewhere/ws", op=operator.name, ttl_seconds=600,
                              ledger_id=request.subject.ledger, act=ACTION_REPIN)
    assert code_of(apply_repin, ws, elsewhere, operator.trusted) == "approval_wrong_draft"
    other_digest = sign_approval(private, draft_id=request.request_id, digest="0" * 64,
                                 workspace=str(ws.root), op=operator.name, ttl_seconds=600,
                                 ledger_id=request.subject.ledger, act=ACTION_REPIN)
    assert code_of(apply_repin, ws, other_digest, operator.trusted) == "approval_wrong_draft"
    promote = sign_approval(private, draft_id=request.request_id, digest=request.digest,
                            workspace=str(ws.root), op=operator.name, ttl_seconds=600,
                            ledger_id=request.subject.ledger, act=ACTION_PROMOTE)
    assert code_of(apply_repin, ws, promote, operator.trusted) == "approval_wrong_action"
    other_ledger = sign_approval(private, draft_id=request.request_id, digest=request.digest,
                                 workspace=str(ws.root), op=operator.name, ttl_seconds=600,
                                 ledger_id="0" * 32, act=ACTION_REPIN)
    assert code_of(apply_repin, ws, other_ledger, operator.trusted) == "approval_wrong_ledger"
    unknown = sign_approval(private, draft_id="repin-000000000000", digest=request.digest,
                            workspace=str(ws.root), op=operator.name, ttl_seconds=600,
                            ledger_id=request.subject.ledger, act=ACTION_REPIN)
    assert code_of(apply_repin, ws, unknown, operator.trusted) == "repin_unknown"
    assert check_batch(ws).validation.changed  # nothing of the above moved the pin


def test_a_repin_token_is_used_once_and_a_second_repin_chains_from_the_first(
        sample_ws, operator):
    ws = sample_ws
    check_batch(ws)
    edit(ws)
    first = request_repin(ws)
    token = sign(ws, operator, first.request_id)
    apply_repin(ws, token, operator.trusted)
    assert code_of(apply_repin, ws, token, operator.trusted) == "approval_replayed"
    assert code_of(request_repin, ws) == "repin_unchanged"
    edit(ws, drop=2, add=[])  # a second intended change: the old pin is the re-pinned one
    second = request_repin(ws)
    assert second.subject.old_sha256 == first.subject.new_sha256
    assert second.old_pinned_by == f"re-pinned by {first.request_id}"
    assert (second.subject.rows.added, second.subject.rows.removed) == (0, 2)
    apply_repin(ws, sign(ws, operator, second.request_id), operator.trusted)
    report = check_batch(ws)
    assert not report.validation.changed and report.validation.repinned_by == second.request_id
    # Deleting the first re-pin's row breaks the chain: the second no longer applies.
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("DELETE FROM holdout_repins WHERE request_id = ?", (first.request_id,))
    report = check_batch(ws)
    assert report.validation.changed
    assert {r.reason for r in report.validation.ignored_repins} == {"not_in_force"}


def test_the_cli_repin_review_fits_80_columns_and_check_names_the_command(
        sample_ws, capsys, monkeypatch, tmp_path):
    from test_screen_width import Screens, bad_lines

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse battery")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    s = Screens(capsys, sample_ws.root)
    assert s.run("operator", "init", "--name", "olly", workspace=False)[0] == 0
    s.run("check")  # pins the hold-out
    edit(sample_ws, add=[NEW_ROW, {"messages": [{"role": "user", "content": "x" * 300}]}])
    code, screen = s.run("check")
    assert code == 1 and "validation_changed" in screen
    assert "tunestep repin" in screen and "repin_holdout(" not in screen  # CLI syntax
    code, screen = s.run("repin", "--yes")
    assert code == 0 and not bad_lines(screen)
    new_sha = check_batch(sample_ws).validation.sha256
    assert "You are signing" in screen and new_sha in screen.split()
    assert "1 removed" in screen and "2 added" in screen
    assert "re-pinned" in screen
    code, screen = s.run("check")
    assert "validation_changed" not in screen and "re-pinned by" in screen


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_mcp_tool_prepares_a_request_and_cannot_repin_without_a_token(
        sample_ws, anyio_backend):
    from mcp.client import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    check_batch(sample_ws)
    edit(sample_ws)
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        check = await client.call_tool("check_batch", {})
        prepared = await client.call_tool("repin_holdout", {})
        forged = await client.call_tool("repin_holdout", {"approval_token": "tsa1.x.y"})
    assert "repin_holdout()" in " ".join(check.structured_content["next_actions"])
    request = prepared.structured_content["request"]
    assert prepared.structured_content["repinned"] is False
    assert request["approve_command"].startswith(f"tunestep approve {request['request_id']}")
    assert "repin_holdout(approval_token=" in request["next_actions"][0]
    assert error_code(forged) == "approval_malformed"
    assert check_batch(sample_ws).validation.changed


def test_a_genuine_repin_row_redated_outside_its_tokens_validity_is_ignored(
        sample_ws, operator):
    ws = sample_ws
    pinned = check_batch(ws).validation.sha256
    edit(ws)
    request = request_repin(ws)
    apply_repin(ws, sign(ws, operator, request.request_id), operator.trusted)
    assert not check_batch(ws).validation.changed
    import sqlite3

    conn = sqlite3.connect(ws.root / ".tunestep" / "state.sqlite")  # the file, not the API
    with conn:
        conn.execute("UPDATE holdout_repins SET at = at + 30 * 86400")
    conn.close()
    report = check_batch(ws)
    assert report.validation.changed and report.validation.pinned_sha256 == pinned
    assert [r.reason for r in report.validation.ignored_repins] == ["outside_validity"]
