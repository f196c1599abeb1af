"""`latest` moves only on evidence, and remote results are checked before they move
anything (issue 17). Each case goes through the storage underneath: the ledger edited with
sqlite3, the store's link moved with `ln -sfn`, files put into a version by hand, a
result.json pushed to the loopback Hub."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time

import pytest
from chain_helpers import (
    MODEL_REPO,
    STEPS_REPO,
    fake_local_version,
    host_base_model,
    hub_base_workspace,
    local_base_workspace,
    record_job_end,
)
from conftest import FAKE_TOKEN

from tunestep.server.cli import main as cli
from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import load_plan
from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.drafts.operator import sign_promotion
from tunestep.tools.hub import poll as hf_poll
from tunestep.tools.jobs.job_evaluate import LOWER_IS_BETTER
from tunestep.tools.lineage import version_files
from tunestep.tools.lineage.chain import starting_point
from tunestep.tools.lineage.line import lineage
from tunestep.tools.lineage.model_sync import sync_model
from tunestep.tools.lineage.promotion import promote, promote_version, review_request
from tunestep.tools.runs.job_control import job_status
from tunestep.tools.runs.submit import submit_job
from tunestep.tools.signing.approval import parse_token, sign_approval
from tunestep.tools.signing.operator_keys import create_operator_key
from tunestep.tools.signing.trusted_keys import load_trusted_keys

LINK = "models/qwen3_webdev"
V1, V2 = "0001_batch_100_01", "0002_batch_100_02"
HELD = {"promoted": False, "reason": "the gate held it back"}
REMOTE = {"backend": "hf-jobs", "flavor": "t4-medium"}


def map_batch(ws, batch: str) -> None:
    source = f"datasets/incremental/{batch}"
    mapping = suggest_mapping(ws, source).mapping
    if mapping is not None:
        apply_mapping(ws, source, mapping)


def local_result(ws, draft, promotion: dict | None = None) -> dict:
    name = f"{draft.step:04d}_{draft.batch}"
    store = ws.resolve_model_store(LINK)
    return {"ok": True, "step": draft.step, "batch": draft.batch, "version": f"versions/{name}",
            "model_path": str(store / "versions" / name),
            **({"promotion": promotion} if promotion else {})}


def signed(ws, operator, version: str) -> str:
    request = promote(ws, version, None, operator.trusted).request
    return sign_promotion(ws, review_request(ws, request.request_id), name=operator.name,
                          key_path=operator.info.private_key_path,
                          passphrase=operator.passphrase, ttl="10m").token


def ln_sfn(ws, target: str) -> None:
    """`ln -sfn <target> <store>/latest`, as someone with a shell does it."""
    store = ws.resolve_model_store(LINK)
    subprocess.run(["ln", "-sfn", target, str(store / "latest")], check=True)


def codes(ws) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for problem in check_batch(ws).problems:
        found.setdefault(problem.code, []).append(problem.message)
    return found


def refused(call, *args) -> TunestepError:
    with pytest.raises(TunestepError) as err:
        call(*args)
    return err.value


def link_refused(ws, **request) -> bool:
    """draft_job refuses on the link: its preflight names latest_link_mismatch (and the
    start point refuses it too, when reached without the preflight)."""
    err = refused(draft_job, ws, DraftRequest(**request))
    return err.code == "draft_preflight_failed" and "latest_link_mismatch" in err.message


def ledger_line(ws):
    with ledger.open_ledger(ws) as conn:
        return lineage(conn, LINK)


@pytest.fixture
def two_steps(tmp_path, tiny_model_dir, operator):
    """Step 1 passed its gate (latest V1); step 2's version V2 was held back (stored and
    recorded, latest stayed): as the local job leaves the ledger and the store."""
    ws = operator.trust(local_base_workspace(tmp_path / "local", tiny_model_dir,
                                             base_rows=40, holdout_rows=10))
    store = ws.resolve_model_store(LINK)
    first = draft_job(ws, DraftRequest(batch="batch_100_01"))
    fake_local_version(ws, store / "versions/0000_base", V1)
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    map_batch(ws, "batch_100_02")
    second = draft_job(ws, DraftRequest())
    shutil.copytree(store / "versions/0000_base", store / "versions" / V2)
    record_job_end(ws, second.draft_id, "local", local_result(ws, second, HELD))
    map_batch(ws, "batch_100_03")
    return ws


def forge_promotion(ws, version: str, token: str | None = None, nonce: str = "f" * 32,
                    request_id: str = "promote-forged") -> None:
    """One row in `promotions`, written with sqlite3 behind tunestep's back."""
    conn = sqlite3.connect(ws.state_dir / "state.sqlite")
    try:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 100 FROM sequence").fetchone()[0]
        conn.execute("INSERT INTO promotions(nonce, request_id, store, version, previous, kid,"
                     " operator, at, seq, token) VALUES (?, ?, ?, ?, ?, 'k', 'mallory', ?, ?,"
                     " ?)", (nonce, request_id, LINK, version, V1, time.time(), seq, token))
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- promotions


def test_a_forged_promotions_row_moves_nothing_and_is_named(two_steps, tmp_path):
    ws = two_steps
    forge_promotion(ws, V2)  # no token at all
    line = ledger_line(ws)
    assert line.latest == V1 and [(i.version, i.reason) for i in line.ignored] == [
        (V2, "no_token")]
    found = codes(ws)
    assert "promotion_unverified" in found and V2 in found["promotion_unverified"][0]
    assert "step_not_promoted" in found  # the gate's refusal is still said
    draft = draft_job(ws, DraftRequest())
    assert draft.job_config["resume_from"].endswith(V1)

    # A row carrying a token the attacker signed with a key of their own.
    mallory = tmp_path / "mallory"
    info = create_operator_key("mallory", b"pass phrase!", mallory)
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(info.private_key_path.read_bytes(),
                                             password=b"pass phrase!")
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
    own = sign_approval(key, draft_id="promote-forged", digest="0" * 64,
                        workspace=str(ws.root), op="mallory", ttl_seconds=600,
                        ledger_id=identity, act="promote")
    forge_promotion(ws, V2, own, nonce=parse_token(own)[1].nonce)
    reasons = {i.reason for i in ledger_line(ws).ignored}
    assert reasons == {"no_token", "bad_token"} and ledger_line(ws).latest == V1
    # Trusting that key does not help either: the request it names is not in the ledger.
    mallory = ws.for_call(load_trusted_keys([info.public_key_path]))
    assert {i.reason for i in ledger_line(mallory).ignored} == {"no_token", "wrong_request"}
    assert ledger_line(mallory).latest == V1


def test_a_genuine_token_copied_into_another_row_moves_nothing(two_steps, operator):
    ws = two_steps
    promote_version(ws, V2, signed(ws, operator, V2), operator.trusted)
    promote_version(ws, V1, signed(ws, operator, V1), operator.trusted)  # rolled back
    assert ledger_line(ws).latest == V1 and not ledger_line(ws).ignored
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT * FROM promotions WHERE version = ?", (V2,)).fetchone()
    # The V2 record's token again, in a new row that replays last.
    forge_promotion(ws, V2, row["token"], request_id=row["request_id"])
    line = ledger_line(ws)
    assert line.latest == V1 and [i.reason for i in line.ignored] == ["wrong_record"]
    # A process that trusts no key verifies nothing: the signed records are said to be
    # unverified and the ledger's line is the gate's alone.
    line = ledger_line(ws.for_call(None))
    assert [i.reason for i in line.ignored] == ["unverified"] * 3
    assert line.latest == V1 and line.moved_by == "gate"


# --------------------------------------------------------------------------- the link


def test_a_link_moved_by_hand_is_named_and_never_followed(two_steps, operator, capsys):
    ws = two_steps
    store = ws.resolve_model_store(LINK)
    ln_sfn(ws, f"versions/{V2}")  # the version the gate held back
    found = codes(ws)
    assert "latest_link_mismatch" in found and V1 in found["latest_link_mismatch"][0]
    report = check_batch(ws)
    assert not report.ready
    assert any(a.tool == "promote_version" and a.args == {"version": V1}
               for a in report.next_steps)
    assert link_refused(ws)
    # The start point refuses it on its own too (the preflight is not its only guard).
    plan = load_plan(ws).plan
    err = refused(starting_point, ws, plan, "full", "local", "/tunestep/step")
    assert err.code == "latest_link_mismatch" and err.hint.args == {"version": V1}
    with ledger.open_ledger(ws) as conn:
        job = conn.execute("SELECT job_id FROM steps WHERE step = 1").fetchone()["job_id"]
    status = job_status(ws, job)
    assert status.latest == V1 and V2 in status.latest_mismatch
    assert status.next_steps[-1].tool == "promote_version"
    assert status.next_steps[-1].args == {"version": V1}
    assert status.next_actions[-1].endswith(f"promote_version(version='{V1}')")
    # The CLI's status screen names it too, with the command that fixes it.
    assert cli(["status", job, "--workspace", str(ws.root)]) == 0
    shown = " ".join(capsys.readouterr().out.replace("\\\n", " ").split())
    assert "latest_link_mismatch" in shown and f"versions/{V2}" in shown
    assert f"tunestep promote {V1} --workspace {ws.root}" in shown
    synced = sync_model(ws)
    assert synced.latest == V1 and synced.latest_mismatch
    assert os.readlink(store / "latest") == f"versions/{V2}"  # reported, not repaired

    # A folder made by hand, inside the store and outside it.
    shutil.copytree(store / "versions/0000_base", store / "versions/0099_mine")
    ln_sfn(ws, "versions/0099_mine")
    assert link_refused(ws)
    outside = ws.root.parent / "elsewhere"
    shutil.copytree(store / "versions/0000_base", outside)
    ln_sfn(ws, str(outside))
    assert "latest_link_mismatch" in codes(ws)

    # The fix the problem names: the operator's signed promote of the ledger's latest.
    promote_version(ws, V1, signed(ws, operator, V1), operator.trusted)
    assert os.readlink(store / "latest") == f"versions/{V1}"
    assert "latest_link_mismatch" not in codes(ws)
    assert draft_job(ws, DraftRequest()).job_config["resume_from"].endswith(V1)


def test_the_resume_point_is_the_recorded_version_not_what_the_folder_holds_now(two_steps):
    ws = two_steps
    v1 = ws.resolve_model_store(LINK) / "versions" / V1
    (v1 / "config.json").write_text((v1 / "config.json").read_text() + " ")
    err = refused(draft_job, ws, DraftRequest())
    assert err.code == "version_files_changed" and "config.json" in err.message
    (v1 / "config.json").write_text((v1 / "config.json").read_text()[:-1])
    (v1 / "extra.bin").write_bytes(b"weights from elsewhere")
    err = refused(draft_job, ws, DraftRequest())
    assert err.code == "version_files_changed" and "extra.bin" in err.message
    (v1 / "extra.bin").unlink()
    assert draft_job(ws, DraftRequest()).job_config["resume_from"].endswith(V1)


def test_whether_a_step_resumes_is_the_ledgers_answer_not_the_links(two_steps, tmp_path,
                                                                   tiny_model_dir):
    """The replay regime samples only when the step resumes: merge_datasets and preprocess
    ask the ledger's latest (its files as recorded), as the draft's start point does."""
    from tunestep.tools.data.selection import resumes

    ws = two_steps
    plan = load_plan(ws).plan
    assert resumes(ws, plan)  # the ledger's latest is V1
    ln_sfn(ws, "versions/0000_base")  # the link says: the base model
    assert resumes(ws, plan)
    v1 = ws.resolve_model_store(LINK) / "versions" / V1
    (v1 / "config.json").write_text((v1 / "config.json").read_text() + " ")
    err = refused(resumes, ws, plan)
    assert err.code == "version_files_changed" and "config.json" in err.message

    # The ledger's line is the base model; a trained-looking folder linked by hand is not
    # a start.
    fresh = local_base_workspace(tmp_path / "fresh", tiny_model_dir)
    store = fresh.resolve_model_store(LINK)
    shutil.copytree(store / "versions/0000_base", store / "versions/0001_mine")
    ln_sfn(fresh, "versions/0001_mine")
    assert not resumes(fresh, load_plan(fresh).plan)


def test_a_version_without_a_record_is_refused_until_a_signed_promotion_records_it(
        two_steps, operator):
    ws = two_steps
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE model_versions SET files = NULL WHERE version = ?", (V1,))
    err = refused(draft_job, ws, DraftRequest())
    assert err.code == "version_unrecorded" and err.hint.tool == "promote_version"
    promote_version(ws, V1, signed(ws, operator, V1), operator.trusted)
    with ledger.open_ledger(ws) as conn:
        assert version_files.recorded_files(conn, LINK, V1)
    assert draft_job(ws, DraftRequest()).job_config["resume_from"].endswith(V1)


# --------------------------------------------------------------------------- hashing


def test_a_symlinked_adapter_config_added_after_signing_is_refused(two_steps, operator,
                                                                   tmp_path):
    ws = two_steps
    token = signed(ws, operator, V2)
    planted = tmp_path / "adapter_config.json"
    planted.write_text(json.dumps({"base_model_name_or_path": "x", "peft_type": "LORA"}))
    v2 = ws.resolve_model_store(LINK) / "versions" / V2
    (v2 / "adapter_config.json").symlink_to(planted)
    err = refused(promote_version, ws, V2, token, operator.trusted)
    assert err.code == "version_symlink" and "adapter_config.json" in err.message
    assert ledger_line(ws).latest == V1
    assert refused(promote, ws, V2, None, operator.trusted).code == "version_symlink"


def test_a_large_sparse_file_is_never_hashed(two_steps, operator, monkeypatch):
    ws = two_steps
    store = ws.resolve_model_store(LINK)
    hashed: list[str] = []
    real = version_files._hash_bounded
    monkeypatch.setattr(version_files, "_hash_bounded",
                        lambda path, size, shown: hashed.append(shown) or real(path, size, shown))
    # In a recorded version: the recorded size is compared first, nothing is read.
    with open(store / "versions" / V2 / "model.safetensors", "r+b") as handle:
        handle.truncate(8 << 30)
    err = refused(promote, ws, V2, None, operator.trusted)
    assert err.code == "version_files_changed" and "bytes, recorded" in err.message
    assert hashed == []
    # In a folder nobody recorded: refused as sparse before any byte is hashed.
    mine = store / "versions" / "0099_mine"
    shutil.copytree(store / "versions/0000_base", mine)
    with open(mine / "padding.bin", "wb") as handle:
        handle.truncate(8 << 30)
    err = refused(promote, ws, "0099_mine", None, operator.trusted)
    assert err.code == "version_file_sparse" and hashed == []


def test_an_adapter_config_that_is_not_an_object_is_a_named_error(tmp_path, tiny_model_dir):
    ws = local_base_workspace(tmp_path / "local", tiny_model_dir, base_rows=40,
                              holdout_rows=10)
    store = ws.resolve_model_store(LINK)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("[1, 2, 3]")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    first = draft_job(ws, DraftRequest(batch="batch_100_01", mode="lora"))
    fake_local_version(ws, adapter, V1)
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    map_batch(ws, "batch_100_02")
    err = refused(draft_job, ws, DraftRequest(mode="lora"))
    assert err.code == "adapter_config_invalid" and "list" in err.message
    assert store.is_dir()


# --------------------------------------------------------------------------- remote


@pytest.fixture
def hub_ws(tmp_path, tiny_model_dir, fake_hub, monkeypatch, operator):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(hf_poll, "MIN_INTERVAL_S", 0.0)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    fake_hub.add_repo(MODEL_REPO, "model", private=True)
    return operator.trust(hub_base_workspace(tmp_path, base_rows=40, holdout_rows=10))


def evaluation(metric: str, worse: bool) -> dict:
    """A paired hold-out report as the job writes it: the step clearly worse, or better."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    change = sign * (-0.5 if worse else 0.5)
    values = {metric: {"value": 0.4}}
    after = {metric: {"value": 0.4 + change}}
    delta = {metric: {"value": change, "low": change - 0.05, "high": change + 0.05,
                      "p_value": 0.001}}
    return {"before": values, "after": after, "delta": delta}


def run_remote(ws, operator, fake_hub, tiny_model_dir, *, worse: bool = False,
               claims: dict | None = None, result_bytes: bytes | None = None,
               extra=None, **request):
    """Draft and submit a remote step, push its model and outputs as the job would (with
    ``claims`` overriding the result's fields), complete it, ask job_status."""
    draft = draft_job(ws, DraftRequest(**{**REMOTE, **request}))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    cfg = draft.job_config
    sha = fake_hub.push_files(MODEL_REPO, {
        p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
        for p in sorted(tiny_model_dir.rglob("*")) if p.is_file()}, repo_type="model")
    gate = cfg["gate"]
    report = evaluation(gate["metric"], worse)
    # What the job would decide, or what a lying result.json claims.
    result = {"ok": True, "draft_id": draft.draft_id, "step": cfg["step"],
              "batch": cfg["batch"], "version": f"versions/{cfg['step']:04d}_{cfg['batch']}",
              "mode": cfg["mode"], "resume_from": cfg["resume_from"],
              "hub": {"model_id": MODEL_REPO, "revision": sha, "private": True},
              "promotion": {"promoted": True, "reason": "trust me"}, "evaluation": report,
              **(claims or {})}
    out = f"outputs/{draft.draft_id}"
    fake_hub.push_files(STEPS_REPO, {
        f"{out}/result.json": result_bytes if result_bytes is not None
        else json.dumps(result).encode(), **(extra(draft) if extra else {})})
    fake_hub.set_job_stage(handle.external_id, "COMPLETED")
    return draft, handle, sha, job_status(ws, handle.job_id)


def test_a_remote_result_claiming_promoted_is_decided_again_on_the_host(
        hub_ws, operator, fake_hub, tiny_model_dir):
    ws = hub_ws
    _, handle, sha, status = run_remote(ws, operator, fake_hub, tiny_model_dir,
                                        worse=True, batch="batch_100_01")
    assert status.status == "succeeded" and status.promoted is False
    assert status.result["promotion"]["decided_by"] == "host"
    assert status.result["promotion_reported"] == {"promoted": True, "reason": "trust me"}
    with ledger.open_ledger(ws) as conn:
        step = conn.execute("SELECT * FROM steps WHERE step = 1").fetchone()
    assert step["promoted"] == 0 and step["hub_revision"] == sha
    assert ledger_line(ws).latest is None  # the attacker's commit did not become latest
    store = ws.resolve_model_store(LINK)
    assert (store / "versions" / V1).is_dir() and not (store / "latest").exists()
    assert "step_not_promoted" in codes(ws)
    # Asked again: the same terminal answer, no crash.
    assert job_status(ws, handle.job_id).promoted is False


def test_a_remote_result_from_another_start_or_step_fails_the_job(
        hub_ws, operator, fake_hub, tiny_model_dir):
    ws = hub_ws
    *_, status = run_remote(ws, operator, fake_hub, tiny_model_dir, batch="batch_100_01",
                            claims={"resume_from": "hf://mallory/model@" + "a" * 40})
    assert status.status == "failed" and status.terminal
    assert status.result["error_code"] == "remote_result_wrong_parent"
    *_, status = run_remote(ws, operator, fake_hub, tiny_model_dir, batch="batch_100_01",
                            claims={"step": 7})
    assert status.result["error_code"] == "remote_result_mismatch"
    with ledger.open_ledger(ws) as conn:
        assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0
    assert ledger_line(ws).latest is None


@pytest.mark.parametrize("payload", [b"[1, 2]", b"{not json", b'{"ok": true}',
                                     b'{"draft_id": 5, "step": "1"}'])
def test_a_malformed_remote_result_fails_the_job_with_a_code(
        hub_ws, operator, fake_hub, tiny_model_dir, payload):
    ws = hub_ws
    _, handle, _, status = run_remote(ws, operator, fake_hub, tiny_model_dir,
                                      result_bytes=payload, batch="batch_100_01")
    assert status.status == "failed" and status.terminal
    assert status.result["error_code"] == "remote_result_invalid"
    assert job_status(ws, handle.job_id).status == "failed"  # said once, stays said
    with ledger.open_ledger(ws) as conn:
        assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0


def test_malformed_fetched_history_keeps_the_jobs_outcome(hub_ws, operator, fake_hub,
                                                          tiny_model_dir):
    ws = hub_ws
    history = ws.root / "logs" / "steps_history.json"
    history.parent.mkdir(exist_ok=True)
    earlier = [{"step": 0, "batch": "warmup", "eval_loss": 1.0}]
    history.write_text(json.dumps(earlier))

    def bad_history(draft) -> dict:
        name = draft.job_config["outputs"]["history_json"]
        return {f"outputs/{draft.draft_id}/{name}": b'{"step": [1]}'}

    _, handle, _, status = run_remote(ws, operator, fake_hub, tiny_model_dir,
                                      batch="batch_100_01", extra=bad_history)
    assert status.status == "succeeded" and status.result["merge_errors"]
    assert "history_invalid" in status.result["merge_errors"][0]
    assert json.loads(history.read_text()) == earlier  # nothing of another step replaced
    assert job_status(ws, handle.job_id).status == "succeeded"


# --------------------------------------------------------------------------- a chain


def test_local_remote_rollback_local_with_the_link_moved_by_hand_in_between(
        hub_ws, operator, fake_hub, tiny_model_dir):
    ws = hub_ws
    store = ws.resolve_model_store(LINK)
    # 1. A local step: V1 is latest.
    first = draft_job(ws, DraftRequest(batch="batch_100_01"))
    fake_local_version(ws, tiny_model_dir, V1)
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    assert ledger_line(ws).latest == V1
    # 2. A remote step from V1 (carried in the bundle); its gate passes on the host, the
    #    model comes home and the link follows the ledger.
    map_batch(ws, "batch_100_02")
    draft, _, _, status = run_remote(ws, operator, fake_hub, tiny_model_dir)
    assert draft.start.source == "bundle" and status.promoted is True
    assert status.model_sync is not None and status.model_sync.latest_moved
    assert ledger_line(ws).latest == V2 and os.readlink(store / "latest") == f"versions/{V2}"
    with ledger.open_ledger(ws) as conn:
        assert version_files.recorded_files(conn, LINK, V2)  # hashed when it came home
    # The link moved back by hand: named, never followed.
    map_batch(ws, "batch_100_03")
    ln_sfn(ws, f"versions/{V1}")
    assert link_refused(ws)
    # 3. The operator rolls back to V1, signed: now the link and the ledger agree.
    promote_version(ws, V1, signed(ws, operator, V1), operator.trusted)
    assert ledger_line(ws).latest == V1 and "latest_link_mismatch" not in codes(ws)
    # The link moved forward by hand to the version rolled back from: refused again.
    ln_sfn(ws, f"versions/{V2}")
    assert "latest_link_mismatch" in codes(ws)
    ln_sfn(ws, f"versions/{V1}")
    # 4. A local step resumes from V1; batch 2 is not learned, so it trains in full.
    local = draft_job(ws, DraftRequest())
    assert local.job_config["resume_from"] == str((store / "versions" / V1).resolve())
    assert ledger_line(ws).not_learned == ["batch_100_02"]


def test_a_link_moved_by_a_finishing_local_job_is_not_a_mismatch(two_steps):
    """A local job moves the link a moment before its supervisor records the step (the
    load test saw check_batch refuse in that window): the job's own version is tolerated
    while its job row runs, and never followed; anything else stays a mismatch."""
    ws = two_steps
    store = ws.resolve_model_store(LINK)
    third = draft_job(ws, DraftRequest())
    mine = f"{third.step:04d}_{third.batch}"
    shutil.copytree(store / f"versions/{V1}", store / "versions" / mine)
    ln_sfn(ws, f"versions/{mine}")
    assert "latest_link_mismatch" in codes(ws)  # no job runs: a hand-made move
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at, result)"
                     " VALUES ('job-finishing', ?, 'local', 'running', ?, '{}')",
                     (third.draft_id, time.time()))
    assert "latest_link_mismatch" not in codes(ws)
    assert draft_job(ws, DraftRequest()).job_config["resume_from"].endswith(V1)  # not followed
    ln_sfn(ws, f"versions/{V2}")  # the held-back version is not the running job's
    assert "latest_link_mismatch" in codes(ws)
