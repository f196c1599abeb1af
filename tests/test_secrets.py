"""Secrets: the whole flow with a recognizable fake HF token, then a scan for it everywhere.

Two local steps on the tiny model through the MCP tools (check_batch, run_inspector,
apply_mapping, draft_job, submit_job, job_status, job_logs), the operator approving
with `tunestep approve`, then a third step drafted for HF Jobs and submitted to a
loopback Hub (the real huggingface_hub client, ``tests/hub_stub.py``) that runs to
completion and pushes its outputs back. The token is in HF_TOKEN all along.

It must reach exactly one place: the ``secrets`` of the job request (the client also
authenticates with it, in the ``Authorization`` header, which is what a token is for).
Then it must appear nowhere: not in captured stdout/stderr, any MCP result, any file of
the workspace, the model store, the operator key folder, the trackio and HF homes, the
job logs, or the SQLite ledger (file, WAL, and every row dumped as text); nor in the
bundle the Hub received, nor in `tunestep check --json` and `tunestep status` output.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import hub_stub
import pytest
from conftest import FAKE_TOKEN, scan_for
from mcp import Client

from tunestep.server.app import ServerConfig, build_server
from tunestep.server.cli import main as cli
from tunestep.server.mcp_tools import error_code
from tunestep.tools.demo.sample_workspace import build_sample_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]
fake_hub = hub_stub.fake_hub

REPO = f"{hub_stub.USER}/tunestep-steps"
MODEL_ID = f"{hub_stub.USER}/qwen3-webdev"
PASSPHRASE = "secrets test passphrase"
# Small enough that two local steps take seconds: this test is about where bytes go. At
# 256 tokens most sample rows are too long to keep their answer: they are dropped.
PLAN = {"hub": {"dataset_repo": REPO, "model_id": MODEL_ID},
        "training": {"num_train_epochs": 1, "max_length": 256},
        "data": {"overlong": "drop"},
        "samples": {"n": 2, "max_new_tokens": 8}}


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Recorder:
    """Calls MCP tools and resources, keeping every answer's JSON for the scan."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.answers: list[str] = []

    async def call(self, tool: str, **args) -> dict:
        result = await self.client.call_tool(tool, args)
        self.answers.append(result.model_dump_json())
        text = result.content[0].text if result.content else ""
        assert not result.is_error, f"{tool}: {error_code(result)}: {text[:500]}"
        return result.structured_content

    async def read(self, uri: str) -> dict:
        result = await self.client.read_resource(uri)
        self.answers.append(result.model_dump_json())
        return json.loads(result.contents[0].text)

    async def wait(self, job_id: str, timeout: float = 150) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.call("job_status", job_id=job_id)
            if status["terminal"] or time.monotonic() > deadline:
                return status
            await anyio.sleep(0.5)


class Captured:
    """Everything written to fd 1 and 2 during the test (capfd drains as it reads)."""

    def __init__(self, capfd) -> None:
        self.capfd = capfd
        self.text: list[str] = []

    def drain(self) -> tuple[str, str]:
        out = self.capfd.readouterr()
        self.text += [out.out, out.err]
        return out.out, out.err


def approve(captured: Captured, ws: Path, draft_id: str, key: Path) -> str:
    """The operator's part, as they run it: `tunestep approve DRAFT_ID --yes`."""
    captured.drain()
    code = cli(["approve", draft_id, "-w", str(ws), "--yes", "--name", "secrets-op",
                "--key", str(key), "--ttl", "10m"])
    out, err = captured.drain()
    assert code == 0, err
    return out.strip().splitlines()[-1]


async def local_step(mcp: Recorder, captured: Captured, ws: Path, key: Path,
                     batch: str) -> dict:
    report = await mcp.call("check_batch", batch=batch)
    assert report["ready"] and report["hf_token_available"], report["problems"]
    assert report["hf_token_source"] == "env:HF_TOKEN"
    path = report["batch_path"]
    inspection = await mcp.call("run_inspector", path=path)
    if inspection["status"] == "NEEDS_MAPPING":
        mapped = await mcp.call("apply_mapping", source=path)
        inspection = await mcp.call("run_inspector", path=mapped["output"])
    assert inspection["status"] == "READY", inspection["summary"]
    draft = await mcp.call("draft_job", batch=batch)
    await mcp.read(f"tunestep://drafts/{draft['draft_id']}")
    token = approve(captured, ws, draft["draft_id"], key)
    handle = await mcp.call("submit_job", draft_id=draft["draft_id"], approval_token=token)
    status = await mcp.wait(handle["job_id"])
    logs = await mcp.call("job_logs", job_id=handle["job_id"], tail=200)
    assert status["status"] == "succeeded", "\n".join(logs["lines"][-30:])
    await mcp.read(f"tunestep://jobs/{handle['job_id']}")
    return status


async def hf_step(mcp: Recorder, captured: Captured, ws: Path, key: Path, hub) -> str:
    draft = await mcp.call("draft_job", batch="batch_100_03", backend="hf-jobs",
                           flavor="t4-medium", timeout="30m")
    assert draft["submission"]["secrets"] == ["HF_TOKEN"]
    token = approve(captured, ws, draft["draft_id"], key)
    handle = await mcp.call("submit_job", draft_id=draft["draft_id"], approval_token=token)
    job_id, remote = handle["job_id"], handle["external_id"]
    assert (await mcp.call("job_status", job_id=job_id))["status"] == "running"
    hub.job_logs[remote] += ["loading data", "epoch 1/1 loss 2.0"]
    await mcp.call("job_logs", job_id=job_id, tail=10)
    out = f"outputs/{draft['draft_id']}"
    cfg = draft["job_config"]
    hub.push_files(REPO, {
        f"{out}/result.json": json.dumps({
            "model_path": f"hf://{MODEL_ID}", "final_eval_loss": 2.0,
            "draft_id": draft["draft_id"], "step": cfg["step"], "batch": cfg["batch"],
            "version": f"versions/{cfg['step']:04d}_{cfg['batch']}",
            "resume_from": cfg["resume_from"],
            "hub": {"model_id": MODEL_ID, "revision": "a" * 40, "private": True}}).encode(),
        f"{out}/logs/train.log": b"epoch 1/1 loss 2.0\n",
        f"{out}/logs/metrics_step_batch_100_03.csv": b"epoch,loss\n1,2.0\n"})
    hub.set_job_stage(remote, "COMPLETED")
    status = await mcp.call("job_status", job_id=job_id)
    assert status["status"] == "succeeded", status
    await mcp.read(f"tunestep://jobs/{job_id}")
    return remote


def check_hub_requests(hub, remote: str) -> None:
    """The token went to the job's secrets and the Authorization header, nowhere else."""
    (create,) = hub.requests_to("POST", f"/api/jobs/{hub_stub.USER}")
    assert create.json["secrets"] == {"HF_TOKEN": FAKE_TOKEN}
    assert FAKE_TOKEN not in json.dumps({k: v for k, v in create.json.items()
                                         if k != "secrets"})
    for rec in hub.requests:
        for name, value in rec.headers.items():
            assert FAKE_TOKEN not in value or name == "authorization", (rec.path, name)
        assert FAKE_TOKEN not in rec.path and FAKE_TOKEN not in json.dumps(rec.query)
        if rec is not create:
            assert FAKE_TOKEN.encode() not in rec.body, f"token in the body of {rec.path}"
    assert hub.jobs[remote]["secrets"] == {"HF_TOKEN": FAKE_TOKEN}  # the stub echoes it back
    for repo in hub.repos.values():
        for name, data in repo.files.items():
            assert FAKE_TOKEN.encode() not in data, f"token in the uploaded {name}"


def dump_ledger(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def run_cli(*argv: str) -> str:
    """The console command in its own process, as a person runs it (HF_TOKEN inherited)."""
    done = subprocess.run([sys.executable, "-m", "tunestep.server.cli", *argv],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    return done.stdout + done.stderr


async def test_the_token_goes_to_the_job_secret_and_nowhere_else(
        fake_hub, tmp_path, tiny_model_dir, monkeypatch, capfd):
    from tunestep.tools.signing.operator_keys import create_operator_key

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # after fake_hub, which hides any token
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASSPHRASE)
    captured = Captured(capfd)
    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    ws = build_sample_workspace(tmp_path / "ws", store=store, with_model=True,
                                plan_overrides=PLAN).root
    keys = tmp_path / "operator-keys"
    key = create_operator_key("secrets-op", PASSPHRASE.encode(), keys)

    server = build_server(ServerConfig(workspace=ws, operator_keys=[key.public_key_path]))
    with anyio.fail_after(170):
        async with Client(server) as client:
            mcp = Recorder(client)
            first = await local_step(mcp, captured, ws, key.private_key_path, "batch_100_01")
            second = await local_step(mcp, captured, ws, key.private_key_path, "batch_100_02")
            remote = await hf_step(mcp, captured, ws, key.private_key_path, fake_hub)
            await mcp.call("list_jobs")
            await mcp.read("tunestep://steps")
    assert first["result"]["model_path"] != second["result"]["model_path"]

    check_hub_requests(fake_hub, remote)
    cli_output = [run_cli("check", "--json", "-w", str(ws)), run_cli("status", "-w", str(ws)),
                  run_cli("status", "-w", str(ws), "--json"),
                  run_cli("logs", first["job_id"], "-w", str(ws))]
    assert json.loads(cli_output[0])["hf_token_available"] is True
    captured.drain()

    needle = FAKE_TOKEN.encode()
    assert all(FAKE_TOKEN not in text for text in captured.text), "token in stdout/stderr"
    assert all(FAKE_TOKEN not in answer for answer in mcp.answers), "token in an MCP result"
    assert all(FAKE_TOKEN not in text for text in cli_output), "token in the CLI's output"
    db = ws / ".tunestep" / "state.sqlite"
    assert db.is_file() and FAKE_TOKEN not in dump_ledger(db), "token in a ledger row"
    homes = {Path(os.environ["TRACKIO_DIR"]).parent, Path(os.environ["HF_HOME"])}
    roots = [ws, store, keys, *homes]
    assert scan_for(FAKE_TOKEN, *roots) == [], "token in a file"
    # The scan looked where the flow wrote: job logs, metrics, trackio, the ledger.
    scanned = {p for root in roots for p in root.rglob("*") if p.is_file()}
    assert any(p.name == "output.log" for p in scanned)
    assert any(p.name.startswith("state.sqlite") for p in scanned)
    assert any(p.name.startswith("metrics_step_batch_100_03") for p in scanned)
    assert any("trackio" in p.parts for p in scanned)
    assert needle not in b"".join(p.read_bytes() for p in (ws / "logs").iterdir())
    # And the scan would have seen it: the same search finds a planted copy.
    planted = tmp_path / "control" / "planted.bin"
    planted.parent.mkdir()
    planted.write_bytes(b"\x00prefix" + needle + b"suffix")
    assert scan_for(FAKE_TOKEN, tmp_path) == [planted]
