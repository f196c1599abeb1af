"""sync_model: the exact pushed commit into versions/NNNN_<batch>, latest moved as locally."""

from __future__ import annotations

import pytest
from chain_helpers import MODEL_REPO, host_base_model, hub_base_workspace, record_job_end
from conftest import FAKE_TOKEN

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.lineage.model_store import latest_checkpoint
from tunestep.tools.lineage.model_sync import sync_model

REMOTE = {"backend": "hf-jobs", "flavor": "t4-medium"}


@pytest.fixture
def ws(tmp_path, tiny_model_dir, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    return hub_base_workspace(tmp_path, base_rows=40, holdout_rows=10)


def push_step_model(fake_hub, tiny_model_dir, marker: bytes) -> tuple[str, str]:
    """The tiny model pushed to the model repo as a step's job does; (sha, weights' sha)."""
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    files["tunestep_version.json"] = b'{"step": 1, "marker": "' + marker + b'"}'
    if f"models/{MODEL_REPO}" not in fake_hub.repos:
        fake_hub.add_repo(MODEL_REPO, "model", private=True)
    first = fake_hub.push_files(MODEL_REPO, files, repo_type="model")
    # A later push moves main on: the sync must read the step's commit, not main.
    fake_hub.push_files(MODEL_REPO, {"tunestep_version.json": b'{"step": 99}'},
                        repo_type="model")
    return first, files["tunestep_version.json"].decode()


def remote_step(ws, sha: str, promoted: bool = True, batch: str = "batch_100_01"):
    draft = draft_job(ws, DraftRequest(batch=batch, **REMOTE))
    result = {"ok": True, "version": f"versions/{draft.step:04d}_{draft.batch}",
              "hub": {"model_id": MODEL_REPO, "revision": sha, "private": True},
              "promotion": {"promoted": promoted}}
    return draft, record_job_end(ws, draft.draft_id, "hf-jobs", result)


def audits(ws, action: str) -> int:
    with ledger.open_ledger(ws) as conn:
        return conn.execute("SELECT count(*) FROM audit WHERE action = ?", (action,)).fetchone()[0]


def test_sync_downloads_the_steps_commit_and_moves_latest(ws, fake_hub, tiny_model_dir):
    sha, version_json = push_step_model(fake_hub, tiny_model_dir, b"step-one")
    remote_step(ws, sha)
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert latest_checkpoint(store) is None
    before = check_batch(ws)
    assert "model_not_synced" in {p.code for p in before.problems}
    assert [(s.tool, s.args) for s in before.next_steps if s.tool == "sync_model"] == [
        ("sync_model", {"version": "0001_batch_100_01"})]

    report = sync_model(ws)
    (synced,) = report.synced
    assert (synced.version, synced.hub_revision, synced.kind) == ("0001_batch_100_01", sha,
                                                                   "full")
    assert synced.latest_moved and not synced.already_synced and report.latest == synced.version
    folder = store / "versions" / "0001_batch_100_01"
    assert (folder / "tunestep_version.json").read_text() == version_json  # not main's
    assert (folder / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors").read_bytes()
    assert latest_checkpoint(store) == folder.resolve()
    assert not (folder / ".cache").exists() and not any((store / ".staging").iterdir())
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT * FROM model_versions").fetchone()
    assert (row["source"], row["hub_model_id"], row["hub_revision"]) == ("hub", MODEL_REPO, sha)
    # check_batch reports that checkpoint now, and the commit it came from.
    after = check_batch(ws)
    assert after.checkpoint.latest == str(folder.resolve())
    assert (after.checkpoint.source, after.checkpoint.hub_revision) == ("hub", sha)
    assert "model_not_synced" not in {p.code for p in after.problems}

    # Again: nothing to do; by name it says it is there, and writes nothing.
    assert sync_model(ws).synced == []
    again = sync_model(ws, "0001_batch_100_01").synced[0]
    assert again.already_synced and not again.latest_moved
    assert audits(ws, "model.sync") == 1


def test_a_failed_download_leaves_the_store_as_it_was_and_can_be_rerun(ws, fake_hub,
                                                                       tiny_model_dir):
    from tunestep.tools.runs.job_control import job_status

    sha, _ = push_step_model(fake_hub, tiny_model_dir, b"x")
    _, job_id = remote_step(ws, sha)
    store = ws.resolve_model_store("models/qwen3_webdev")
    fault = fake_hub.inject("GET", f"/{MODEL_REPO}/resolve/*/model.safetensors", "500",
                            times=None)
    status = job_status(ws, job_id)  # the job's success stands; the download failed
    assert status.status == "succeeded" and status.model_sync is None
    assert status.model_sync_error and FAKE_TOKEN not in status.model_sync_error
    assert [s.tool for s in status.next_steps] == ["sync_model"]
    with pytest.raises(TunestepError) as err:
        sync_model(ws)
    assert err.value.code.startswith("hf_") or err.value.code.startswith("hub_")
    assert FAKE_TOKEN not in str(err.value)
    assert fault.hits >= 1
    assert not (store / "versions" / "0001_batch_100_01").exists()
    assert latest_checkpoint(store) is None
    assert not list((store / ".staging").iterdir())
    fake_hub.faults.clear()
    (synced,) = sync_model(ws).synced
    assert synced.latest_moved and (store / "versions" / "0001_batch_100_01").is_dir()


def test_a_step_not_promoted_is_written_but_latest_stays(ws, fake_hub, tiny_model_dir):
    from test_chain import map_batch_2

    sha1, _ = push_step_model(fake_hub, tiny_model_dir, b"one")
    remote_step(ws, sha1)
    sync_model(ws)
    sha2, _ = push_step_model(fake_hub, tiny_model_dir, b"two")
    map_batch_2(ws)
    remote_step(ws, sha2, promoted=False, batch="batch_100_02")
    (synced,) = sync_model(ws).synced
    store = ws.resolve_model_store("models/qwen3_webdev")
    assert synced.version == "0002_batch_100_02" and (store / "versions" / synced.version).is_dir()
    assert not synced.promoted and not synced.latest_moved
    assert latest_checkpoint(store).name == "0001_batch_100_01"


def test_an_unknown_version_is_named(ws):
    with pytest.raises(TunestepError) as err:
        sync_model(ws, "0007_nothing")
    assert err.value.code == "sync_unknown_version"


def test_cli_sync_and_the_mcp_tool_are_the_same_function(ws, fake_hub, tiny_model_dir, capsys):
    import json

    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.cli import main as cli

    sha, _ = push_step_model(fake_hub, tiny_model_dir, b"cli")
    remote_step(ws, sha)

    async def call() -> dict:
        async with Client(build_server(ServerConfig(workspace=ws.root))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["sync_model"].annotations.idempotent_hint is True
            result = await client.call_tool("sync_model", {"version": "batch_100_01"})
            assert not result.is_error
            return result.structured_content

    first = anyio.run(call)
    assert first["synced"][0]["latest_moved"] is True
    assert cli(["sync", "--workspace", str(ws.root), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["synced"] == [] and again["latest"] == "0001_batch_100_01"
