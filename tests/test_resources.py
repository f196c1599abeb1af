"""The MCP resources: read-only JSON views of the plan, the ledger, drafts and jobs."""

from __future__ import annotations

import json
import time

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tunestep.server.app import ServerConfig, build_server
from tunestep.server.assistant import register_resources
from tunestep.tools.core import ledger
from tunestep.tools.core.plan import load_plan
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.drafts.draft import DraftRequest, FileRef, JobDraft, load_draft
from tunestep.tools.drafts.estimate import Estimate

pytestmark = pytest.mark.anyio

JOB_ID = "job-0123456789ab"
INVALID_PARAMS = -32602


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def resource_server(ws: Workspace):
    """The server with its resources (registered here until build_server does it)."""
    server = build_server(ServerConfig(workspace=ws.root))
    if not await server.list_resources():
        register_resources(server, lambda: open_workspace(ws.root))
    return server


async def read_json(ws: Workspace, uri: str):
    async with Client(await resource_server(ws)) as client:
        result = await client.read_resource(uri)
    (content,) = result.contents
    assert content.mime_type == "application/json"
    return json.loads(content.text)


async def read_error(ws: Workspace, uri: str) -> MCPError:
    async with Client(await resource_server(ws)) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource(uri)
    return exc.value


def store_draft(ws: Workspace) -> JobDraft:
    """A stored draft row, as draft_job writes it (built by hand: no training needed): the
    signed manifest's bytes, and apart from them the view (estimate, warnings)."""
    from tunestep.tools.drafts.draft import DraftManifest, signed_draft
    from tunestep.tools.drafts.draft import store_draft as store

    estimate = Estimate(flavor="local", params=6e8, train_tokens=50_000, epochs=3,
                        total_tokens=150_000, optimizer_steps=450, tokens_per_second=900.0,
                        minutes=3.0, usd=0.0, usd_per_hour=0.0, suggested_timeout="30m",
                        timeout_seconds=1800, memory_needed_gb=6.5, method="test",
                        warnings=[])
    manifest = DraftManifest(
        kind="train", workspace=str(ws.root), batch="batch_100_01", step=1,
        backend="local", flavor="local", processes=1, timeout_seconds=1800,
        request=DraftRequest(batch="batch_100_01"),
        job_config={"draft_id": None, "step": 1, "batch": "batch_100_01", "mode": "full",
                    "train_files": [{"path": "datasets/incremental/batch_100_01/"
                                     "examples.jsonl", "sha256": "cd" * 32}],
                    "eval_file": {"path": "datasets/processed_webdev_coding/validation.jsonl",
                                  "sha256": "ef" * 32}},
        files=[FileRef(role="train", path="datasets/incremental/batch_100_01/examples.jsonl",
                       sha256="cd" * 32, rows=100)],
        submission=None)
    draft = signed_draft(ws, manifest, estimate=estimate, warnings=["a test warning"],
                         run_plan=".specs/training/run_plan_preparation.md")
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        store(conn, draft)
    return draft


def store_job(ws: Workspace, status: str = "succeeded", log_lines: int = 80) -> str:
    """A finished job of a stored draft; returns the draft's id."""
    draft_id = store_draft(ws).draft_id
    log = ws.root / "logs" / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # The job's own lines carry its UTC stamp; a progress bar in between is left out.
    log.write_text("".join(f"2026-01-01T00:00:00Z line {i}\nMap: {i}%|###|\n"
                           for i in range(1, log_lines + 1)))
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, log_path, created_at,"
                     " started_at, ended_at, exit_code, result)"
                     " VALUES (?, ?, 'local', ?, 'logs/train.log', ?, ?, ?, 0, ?)",
                     (JOB_ID, draft_id, status, time.time(), time.time(), time.time(),
                      ledger.dumps({"final_eval_loss": 1.25})))
    return draft_id


# --------------------------------------------------------------------------- listing


async def test_resources_and_templates_are_listed(sample_ws):
    async with Client(await resource_server(sample_ws)) as client:
        static = {str(r.uri): r for r in (await client.list_resources()).resources}
        templates = {t.uri_template: t
                     for t in (await client.list_resource_templates()).resource_templates}
    cards = {u for u in static if u.startswith("ui://")}  # MCP Apps cards: test_cards.py
    assert cards == {"ui://tunestep/review-card.html", "ui://tunestep/results-card.html"}
    static = {u: r for u, r in static.items() if u not in cards}
    assert set(static) == {"tunestep://plan", "tunestep://steps",
                           "tunestep://inspections/latest"}
    assert set(templates) == {"tunestep://drafts/{draft_id}", "tunestep://jobs/{job_id}"}
    for item in [*static.values(), *templates.values()]:
        assert item.mime_type == "application/json"
        assert item.title and item.description


# ------------------------------------------------------------------------ each one


async def test_plan_resource_is_the_loaded_plan(sample_ws):
    data = await read_json(sample_ws, "tunestep://plan")
    loaded = load_plan(sample_ws)
    assert data["source"] == ".specs/training/plan.md"
    assert data["sha256"] == loaded.sha256
    assert data["plan"] == loaded.plan.model_dump(mode="json")
    assert data["plan"]["training"]["learning_rate"] == 2e-5


async def test_plan_resource_without_a_plan_file_says_defaults(sample_ws):
    (sample_ws.root / ".specs/training/plan.md").unlink()
    data = await read_json(sample_ws, "tunestep://plan")
    assert data["source"] is None
    assert data["notes"]


async def test_broken_plan_is_a_resource_error_with_the_code(sample_ws):
    (sample_ws.root / ".specs/training/plan.md").write_text("---\nmodle: x\n---\n")
    error = await read_error(sample_ws, "tunestep://plan")
    assert error.message.startswith("plan_unknown_key:")
    assert "modle" in error.message


async def test_steps_resource_lists_the_ledger_steps(sample_ws):
    assert await read_json(sample_ws, "tunestep://steps") == {"steps": []}
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        for step, loss in ((2, 1.1), (1, 1.5)):
            conn.execute(
                "INSERT INTO steps(step, batch, draft_id, job_id, digest, mode, datasets,"
                " model_path, metrics, recorded_at) VALUES (?, ?, ?, ?, ?, 'full', ?, ?, ?, ?)",
                (step, f"batch_100_0{step}", f"draft-{step}", f"job-{step}", "ab" * 32,
                 ledger.dumps([{"path": "v.jsonl", "sha256": "ef" * 32}]),
                 f"versions/000{step}", ledger.dumps({"final_eval_loss": loss}), time.time()))
    steps = (await read_json(sample_ws, "tunestep://steps"))["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["batch"] == "batch_100_01"
    assert steps[0]["metrics"] == {"final_eval_loss": 1.5}
    assert steps[1]["datasets"] == [{"path": "v.jsonl", "sha256": "ef" * 32}]


async def test_draft_resource_is_the_stored_draft(sample_ws):
    draft_id = store_draft(sample_ws).draft_id
    data = await read_json(sample_ws, f"tunestep://drafts/{draft_id}")
    assert data == load_draft(sample_ws, draft_id).model_dump(mode="json")
    assert data["approve_command"].startswith(f"tunestep approve {draft_id}")


async def test_unknown_draft_is_not_found(sample_ws):
    error = await read_error(sample_ws, "tunestep://drafts/draft-doesnotexist")
    assert error.code == INVALID_PARAMS
    assert error.message.startswith("draft_unknown:")


async def test_draft_id_cannot_climb_out(sample_ws):
    # The SDK's template security refuses traversal before the handler is called.
    error = await read_error(sample_ws, "tunestep://drafts/..%2F..%2Fetc")
    assert error.code == INVALID_PARAMS
    assert not error.message.startswith("draft_unknown")


async def test_latest_inspection_is_the_newest_report(sample_ws):
    error = await read_error(sample_ws, "tunestep://inspections/latest")
    assert error.code == INVALID_PARAMS
    assert error.message.startswith("inspection_none:")
    now = time.time()
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        for key, path, status, at in (("k-old", "datasets/incremental/batch_100_01", "READY",
                                       now - 60),
                                      ("k-new", "datasets/incremental/batch_100_02",
                                       "NEEDS_MAPPING", now)):
            conn.execute("INSERT INTO inspections(cache_key, path, report, created_at)"
                         " VALUES (?, ?, ?, ?)",
                         (key, path, ledger.dumps({"status": status, "rows": 100}), at))
    data = await read_json(sample_ws, "tunestep://inspections/latest")
    assert data["path"] == "datasets/incremental/batch_100_02"
    assert data["report"] == {"status": "NEEDS_MAPPING", "rows": 100}
    assert data["created_at"] == pytest.approx(now)


async def test_job_resource_has_status_and_the_last_50_log_lines(sample_ws):
    draft_id = store_job(sample_ws, log_lines=80)
    data = await read_json(sample_ws, f"tunestep://jobs/{JOB_ID}")
    status = data["status"]
    assert status["job_id"] == JOB_ID and status["draft_id"] == draft_id
    assert status["status"] == "succeeded" and status["terminal"] is True
    assert status["result"] == {"final_eval_loss": 1.25}
    assert data["logs"]["total_lines"] == 160
    assert data["logs"]["lines"] == [f"2026-01-01T00:00:00Z line {i}" for i in range(31, 81)]


async def test_unknown_job_is_not_found(sample_ws):
    error = await read_error(sample_ws, "tunestep://jobs/job-nope")
    assert error.code == INVALID_PARAMS
    assert error.message.startswith("job_unknown:")


async def test_reading_resources_changes_no_workspace_file(sample_ws):
    draft_id = store_job(sample_ws)
    before = {p: p.read_bytes() for p in sample_ws.root.rglob("*")
              if p.is_file() and ".tunestep" not in p.parts}
    for uri in ("tunestep://plan", "tunestep://steps", f"tunestep://drafts/{draft_id}",
                f"tunestep://jobs/{JOB_ID}"):
        await read_json(sample_ws, uri)
    after = {p: p.read_bytes() for p in sample_ws.root.rglob("*")
             if p.is_file() and ".tunestep" not in p.parts}
    assert after == before
