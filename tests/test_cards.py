"""MCP Apps cards: declared with the SDK, rendered in headless Chromium as a person sees them.

The review card is rendered from a real hf-jobs draft whose batch files carry hostile
names; the results card from two real tiny local steps (the second held back by its
gate, so it is a branch and the card offers `tunestep promote`). The host page
(tests/card_host.py) speaks the Apps postMessage protocol; the tool results and the
answers to the card's own tool calls come from the real server over an in-memory client
that advertises Apps support.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from card_host import answer_key, chromium, render, screenshot
from chain_helpers import local_base_workspace
from conftest import REPO_ROOT
from mcp import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from tunestep.server import cards
from tunestep.server.app import MAX_WAIT_S, ServerConfig, build_server
from tunestep.server.mcp_tools import error_code
from tunestep.tools.core import ledger
from tunestep.tools.runs.job_progress import LOCAL_POLL_S, ask_again_after, read_progress

pytestmark = pytest.mark.anyio
APPS = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
HOSTILE = ["<img src=x onerror=alert(1)>.jsonl", "x\u202elnosj.jsonl", "[conceal]a.jsonl"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def wire(result) -> dict:
    """A CallToolResult as it travels (camelCase), as the host hands it to the card."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def card_page(client, uri: str) -> str:
    (content,) = (await client.read_resource(uri)).contents
    assert content.mime_type == APP_MIME_TYPE
    return content.text


# --- declared with the SDK ------------------------------------------------------------------

async def test_the_cards_and_guards_are_declared(sample_ws):
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        resources = {str(r.uri): r for r in (await client.list_resources()).resources}
        review = await card_page(client, cards.REVIEW_URI)
    assert tools["draft_job"].meta["ui"] == {"resourceUri": cards.REVIEW_URI}
    assert tools["job_status"].meta["ui"] == {"resourceUri": cards.RESULTS_URI}
    for name in ("review_card", "results_card"):  # hidden from the model
        assert tools[name].meta["ui"]["visibility"] == ["app"]
        assert tools[name].annotations.read_only_hint is True
    for uri in (cards.REVIEW_URI, cards.RESULTS_URI):
        ui = resources[uri].meta["ui"]
        assert resources[uri].mime_type == APP_MIME_TYPE
        assert ui["csp"] == {} and ui["permissions"] == {"clipboardWrite": {}}
    for name in ("submit_job", "promote_version"):
        assert tools[name].meta == {"anthropic/requiresUserInteraction": True}
        assert tools[name].annotations.read_only_hint is False
    assert tools["submit_job"].annotations.open_world_hint is True
    assert tools["promote_version"].annotations.destructive_hint is True
    assert "wait_s" in tools["job_status"].input_schema["properties"]
    # Self-contained: no URL to fetch, no external script, no parsed markup from data.
    assert not re.search(r"https?://|<script[^>]+src=|<link\b|@import", review)
    assets = (REPO_ROOT / "server" / "cards" / "assets")
    for script in assets.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                             text), script.name
    assert "approve" not in {b.lower() for b in re.findall(r">([^<]*)</button>", review)}


async def test_the_text_is_complete_and_apps_only_adds_a_line(model_ws):
    args = {"batch": "batch_100_01"}
    async with Client(build_server(ServerConfig(workspace=model_ws.root))) as plain:
        without = await plain.call_tool("draft_job", args)
    async with Client(build_server(ServerConfig(workspace=model_ws.root)),
                      extensions=[APPS]) as apps:
        with_apps = await apps.call_tool("draft_job", args)
    assert not without.is_error and len(without.content) == 1
    assert json.loads(without.content[0].text) == without.structured_content
    assert with_apps.structured_content == without.structured_content
    assert with_apps.content[0].text == without.content[0].text
    assert len(with_apps.content) == 2 and "review card" in with_apps.content[1].text


async def test_the_card_tools_refuse_by_name(sample_ws):
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        draft = await client.call_tool("review_card", {"draft_id": "draft-000000000000"})
        job = await client.call_tool("results_card", {"job_id": "job-missing"})
        wait = await client.call_tool("job_status", {"job_id": "x", "wait_s": MAX_WAIT_S + 1})
    assert (error_code(draft), error_code(job), error_code(wait)) == (
        "draft_unknown", "job_unknown", "bad_argument")


# --- progress from the job's own output -------------------------------------------------------

LOG = [
    "2026-12-06T04:01:56Z [step 0001_b] start: draft=draft-x step=1",
    "2026-12-06T04:01:57Z [step 0001_b] train rows: 16 of 16 (0 dropped), eval rows: 4",
    "Tokenizing train dataset: 100%",
    "2026-12-06T04:01:57Z [step 0001_b] evaluated the previous version on 4 hold-out rows in 0.5s",
    "2026-12-06T04:01:58Z [step 0001_b] training (started 9.18s after the process)",
    '2026-12-06T04:01:59Z [step 0001_b] log {"loss": 5.97, "epoch": 1.0}',
    '2026-12-06T04:01:59Z [step 0001_b] log {"eval_loss": 5.3, "epoch": 1.0}',
    '2026-12-06T04:01:59Z [step 0001_b] log {"loss": 4.79, "epoch": 2.0}',
]


def test_progress_reads_stage_epoch_and_rows_from_the_output():
    running = read_progress(LOG, epochs=3.0)
    assert (running.stage, running.epoch, running.epochs) == ("training", 2.0, 3.0)
    assert (running.eval_rows_total, running.eval_rows_done) == (4, 4)
    ended = read_progress([*LOG, '2026-12-06T04:02:00Z [s] log {"train_runtime": 1.7}',
                           "2026-12-06T04:02:00Z [s] evaluated the new version on 4 hold-out"
                           " rows"])
    assert ended.stage == "deciding promotion" and ended.eval_rows_done == 8
    assert read_progress(["noise", "more noise"]).stage is None


async def test_a_waiting_job_status_reports_progress_from_the_job_output(sample_ws):
    """A running local job (a live child process, its log in the workspace, rows written
    into the ledger as submit leaves them): job_status(wait_s=3) polls, sends progress
    notifications naming the stage and epoch, and says when to ask again."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        log = sample_ws.root / ".tunestep/jobs/job-wait/output.log"
        log.parent.mkdir(parents=True)
        log.write_text("\n".join(LOG) + "\n", encoding="utf-8")
        payload = json.dumps({"job_config": {"hyperparameters": {"num_train_epochs": 3}}})
        now = time.time()
        with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
            conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, created_at)"
                         " VALUES ('draft-wait', 'x', 'train', 'b', ?, ?)", (payload, now))
            conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, pid, log_path,"
                         " created_at, started_at) VALUES ('job-wait', 'draft-wait', 'local',"
                         " 'running', ?, '.tunestep/jobs/job-wait/output.log', ?, ?)",
                         (sleeper.pid, now, now))
        seen: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None):
            seen.append((progress, message))

        async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
            result = await client.call_tool("job_status", {"job_id": "job-wait", "wait_s": 3},
                                            progress_callback=on_progress)
    finally:
        sleeper.kill()
        sleeper.wait()
    status = result.structured_content
    assert status["status"] == "running" and status["ask_again_after_s"] == LOCAL_POLL_S
    assert status["progress"]["stage"] == "training"
    assert (status["progress"]["epoch"], status["progress"]["epochs"]) == (2.0, 3.0)
    assert len(seen) >= 2 and [p for p, _ in seen] == sorted({p for p, _ in seen})
    assert all(m == "running: training, epoch 2" for _, m in seen)


def test_ask_again_follows_the_hub_poll_floor():
    from tunestep.tools.hub import poll as hf_poll

    assert ask_again_after("hf-jobs", False, hub_next_at=1030.0, now=1000.0) == 30.0
    assert ask_again_after("hf-jobs", False, hub_next_at=0.0, now=1000.0) == max(
        hf_poll.MIN_INTERVAL_S, 1.0)
    assert ask_again_after("local", True, None, 1000.0) is None


# --- rendered in Chromium -------------------------------------------------------------------

def hostile_hf_draft_workspace(tmp_path, tiny_model_dir):
    ws = local_base_workspace(tmp_path, tiny_model_dir, base_rows=8, holdout_rows=4,
                              batch_rows=8)
    batch = ws.root / "datasets/incremental/batch_8_01"
    original = next(batch.glob("*.jsonl"))
    rows = original.read_bytes().splitlines(keepends=True)
    original.unlink()
    for i, name in enumerate(HOSTILE):
        (batch / name).write_bytes(b"".join(rows[i::len(HOSTILE)]))
    return ws


@pytest.mark.e2e
async def test_the_review_card_shows_the_signed_draft(tmp_path, tiny_model_dir):
    chromium()
    ws = hostile_hf_draft_workspace(tmp_path, tiny_model_dir)
    async with Client(build_server(ServerConfig(workspace=ws.root)),
                      extensions=[APPS]) as client:
        page = await card_page(client, cards.REVIEW_URI)
        drafted = await client.call_tool(
            "draft_job", {"batch": "batch_8_01", "backend": "hf-jobs", "flavor": "t4-medium"})
        assert not drafted.is_error, drafted.content[0].text
        draft_id = drafted.structured_content["draft_id"]
        stored = await client.call_tool("review_card", {"draft_id": draft_id})
    answers = {answer_key("review_card", {"draft_id": draft_id}): wire(stored)}
    seen = render(tmp_path, page, wire(drafted), answers)
    draft = stored.structured_content["draft"]
    cfg, sub = draft["job_config"], draft["submission"]

    assert seen.state == "rendered"
    assert seen.calls == [{"name": "review_card", "arguments": {"draft_id": draft_id}}]
    assert seen.field("draft_id") == draft_id and seen.field("digest") == draft["digest"]
    assert seen.field("backend").endswith("hf-jobs") and seen.field("flavor").endswith("t4-medium")
    assert f"({sub['timeout_seconds']} s)" in seen.field("timeout")
    review = stored.structured_content["review"]  # what `tunestep approve` shows too
    worst = max(draft["estimate"]["usd_per_hour"], review["usd_per_hour"]) \
        * sub["timeout_seconds"] / 3600
    assert review["worst_case_usd"] == pytest.approx(worst, abs=1e-4)
    assert seen.field("worst_case_usd") == f"worst case (whole timeout billed)${worst:.2f}"
    assert review["resume"]["identity"] in seen.field("resume_pinned")
    assert cfg["hub"]["model_id"] in seen.field("hub_model_id")
    assert seen.field("hub_visibility").endswith("private" if cfg["hub"]["private"] else "PUBLIC")
    assert sub["dataset_repo"] in seen.field("dataset_repo")
    assert seen.field("secrets").endswith("HF_TOKEN")
    assert seen.field("base_model").endswith(cfg["base_model"])
    for f in draft["files"]:
        shown = f["path"].replace("\u202e", "\\u202e")
        where = {"checkpoint": "checkpoint_files", "script": "scripts"}.get(f["role"], "files")
        assert shown in seen.field(where) and f["sha256"] in seen.field(where)
        if f["rows"] is not None and where == "files":
            assert re.search(rf"{re.escape(shown)}\s*{f['rows']}\s*{f['sha256']}",
                             seen.field("files")), f["path"]
    assert seen.field("regime").endswith(draft["regime"])
    for key, value in cfg["gate"].items():
        assert seen.field(f"gate_{key}") == f"{key}{value}", key
    for key, value in cfg["hyperparameters"].items():
        written = (str(value).lower() if isinstance(value, bool) else
                   str(int(value)) if isinstance(value, float) and value.is_integer() else
                   str(value))  # JavaScript's String(): shortest exact form
        assert seen.field(f"hp_{key}") == f"{key}{written}", key
    assert "not signed" in seen.field("section:estimate")
    assert "not signed" not in seen.field("section:files")
    assert seen.field("approve-command") == draft["approve_command"]
    # Hostile names are text: no element made from them, the bidi override shown visibly.
    assert "img" not in seen.tags
    assert "<img src=x onerror=alert(1)>.jsonl" in seen.field("files")
    assert "x\\u202elnosj.jsonl" in seen.field("files") and "\u202e" not in seen.html
    assert "[conceal]a.jsonl" in seen.field("files")

    shot = screenshot(tmp_path, page, wire(drafted), answers, tmp_path / "review-card.png",
                      size="900,2450")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same batch drafted locally: no submission, no Hub bill, the estimate's timeout.
    async with Client(build_server(ServerConfig(workspace=ws.root)),
                      extensions=[APPS]) as client:
        local = await client.call_tool("draft_job", {"batch": "batch_8_01"})
        local_id = local.structured_content["draft_id"]
        stored = await client.call_tool("review_card", {"draft_id": local_id})
    (tmp_path / "local").mkdir()
    seen = render(tmp_path / "local", page, wire(local),
                  {answer_key("review_card", {"draft_id": local_id}): wire(stored)})
    assert seen.state == "rendered" and seen.field("flavor") == "flavorlocal"
    assert "A local job" in seen.field("section:limits")
    assert seen.field("approve-command") == stored.structured_content["draft"]["approve_command"]


def js_interval(m: dict) -> str:
    """A measure as the card's interval() writes it: value [low, high], an undefined
    metric as a dash, a missing interval left out."""
    if m["value"] is None:
        return "\u2014"
    both = m["low"] is not None and m["high"] is not None
    return js(m["value"]) + (f" [{js(m['low'])}, {js(m['high'])}]" if both else "")


def js(value) -> str:
    """A number as the card's fmt() writes it (an integer plainly, else 4 decimals)."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def run_step(ws, operator, gate, batch=None):
    from tunestep.tools.core.plan import load_plan, render_plan_document
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.runs.job_control import job_logs, wait_for_job
    from tunestep.tools.runs.submit import submit_job

    plan = load_plan(ws).plan
    plan = plan.model_copy(update={"gate": gate, "training": plan.training.model_copy(
        update={"num_train_epochs": 1})})
    (ws.root / ".specs/training/plan.md").write_text(render_plan_document(plan))
    draft = draft_job(ws, DraftRequest(batch=batch))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    status = wait_for_job(ws, handle.job_id, timeout=900)
    assert status.status == "succeeded", job_logs(ws, handle.job_id, 40).lines
    return handle.job_id


@pytest.mark.e2e
async def test_the_results_card_shows_the_gate_metrics_and_the_branch(
        tmp_path, tiny_model_dir, operator):
    from tunestep.tools.core.plan import Gate
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping

    chromium()
    ws = local_base_workspace(tmp_path, tiny_model_dir, base_rows=8, holdout_rows=4,
                              batch_rows=8)
    run_step(ws, operator, None, "batch_8_01")
    source = "datasets/incremental/batch_8_02"
    if (mapping := suggest_mapping(ws, source).mapping) is not None:
        apply_mapping(ws, source, mapping)
    job_id = run_step(ws, operator, Gate(margin=-0.99))  # needs +0.99: held back
    async with Client(build_server(ServerConfig(workspace=ws.root)),
                      extensions=[APPS]) as client:
        page = await card_page(client, cards.RESULTS_URI)
        status = await client.call_tool("job_status", {"job_id": job_id})
        outcome = await client.call_tool("results_card", {"job_id": job_id})
    assert status.structured_content["ask_again_after_s"] is None
    assert status.structured_content["progress"]["stage"] == "done"
    assert "results card" in status.content[-1].text
    answers = {answer_key("results_card", {"job_id": job_id}): wire(outcome)}
    seen = render(tmp_path, page, wire(status), answers)
    o = outcome.structured_content

    assert seen.state == "rendered" and seen.calls[0]["name"] == "results_card"
    assert o["promoted"] is False and "held back" in seen.field("decision")
    assert seen.field("reason") == o["reason"]
    assert o["gate"]["margin"] == -0.99 and seen.field("gate_margin") == "margin-0.99"
    assert seen.field("gate_metric") == f"metric{o['gate']['metric']}"
    for m in o["metrics"]:  # every metric with its 95 % interval, before and after
        for side in ("before", "after", "change"):
            assert js_interval(m[side]) in seen.field("metrics"), (m["name"], side)
    assert re.search(r"\d \[-?\d", seen.field("metrics")), "no interval shown at all"
    one, two = "0001_batch_8_01", "0002_batch_8_02"
    assert "latest" in seen.field(one) and "held back by its gate" in seen.field(two)
    assert f"from {one}" in seen.field(two)
    assert seen.field("promote-command") == f"tunestep promote {two} --workspace {ws.root}"
    with ledger.open_ledger(ws) as conn:  # what the card says is the ledger's record
        assert conn.execute("SELECT promoted FROM steps WHERE version = ?",
                            (two,)).fetchone()[0] == 0

    shot = screenshot(tmp_path, page, wire(status), answers, tmp_path / "results-card.png",
                      size="900,1100")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the outcome behind the results card, from the ledger -------------------------------------

def test_a_rolled_back_step_is_a_branch_and_gets_no_promote_command(
        tmp_path, tiny_model_dir, operator):
    """Two steps the gate promoted (recorded as a local job leaves them, no training), then
    the operator rolls back to the first: the second is off latest's line, marked as rolled
    back rather than held back, and the card offers no promote command (its gate passed).
    A job that recorded no step is refused by name."""
    from chain_helpers import fake_local_version, record_job_end

    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.drafts.operator import sign_promotion
    from tunestep.tools.lineage.promotion import promote, promote_version, review_request
    from tunestep.tools.runs.step_outcome import step_outcome

    ws = operator.trust(local_base_workspace(tmp_path, tiny_model_dir, base_rows=8,
                                             holdout_rows=4, batch_rows=8))
    store = ws.resolve_model_store("models/qwen3_webdev")
    jobs = []
    for batch in ("batch_8_01", "batch_8_02"):
        source = f"datasets/incremental/{batch}"
        if (mapping := suggest_mapping(ws, source).mapping) is not None:
            apply_mapping(ws, source, mapping)
        draft = draft_job(ws, DraftRequest(batch=batch))
        name = f"{draft.step:04d}_{batch}"
        fake_local_version(ws, store / "versions/0000_base", name)
        jobs.append(record_job_end(ws, draft.draft_id, "local", {
            "ok": True, "step": draft.step, "batch": batch, "version": f"versions/{name}",
            "model_path": str(store / "versions" / name),
            "promotion": {"promoted": True, "reason": "gate passed"}}))
    one, two = "0001_batch_8_01", "0002_batch_8_02"
    assert [n.on_line for n in step_outcome(ws, jobs[1]).progression] == [True, True]

    request = promote(ws, one, None, operator.trusted).request
    token = sign_promotion(ws, review_request(ws, request.request_id), name=operator.name,
                           key_path=operator.info.private_key_path,
                           passphrase=operator.passphrase, ttl="10m").token
    promote_version(ws, one, token, operator.trusted)  # roll back

    outcome = step_outcome(ws, jobs[1])
    nodes = {n.version: n for n in outcome.progression}
    assert (outcome.latest, outcome.moved_by, outcome.promoted) == (one, "operator", True)
    assert nodes[one].on_line and nodes[one].latest
    assert not nodes[two].on_line and nodes[two].gate_promoted is True
    assert nodes[two].parent == one and outcome.promote_command is None

    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES ('job-nostep', ?, 'local', 'failed', 0)",
                     (draft.draft_id,))
    with pytest.raises(TunestepError) as err:
        step_outcome(ws, "job-nostep")
    assert err.value.code == "step_not_recorded"


def test_an_hf_job_reports_progress_from_its_hub_log_at_most_once_per_interval(
        tmp_path, fake_hub, monkeypatch):
    """A remote inspection submitted to the loopback Hub, left running there with training
    lines in its log: job_status reads the log once, keeps the reading in the ledger, and a
    second call within the poll interval asks the Hub for neither the status nor the log."""
    import hub_stub
    from conftest import FAKE_TOKEN, Operator

    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.hub import poll as hf_poll
    from tunestep.tools.runs.job_control import job_status
    from tunestep.tools.runs.submit import submit_job

    build_sample_workspace(tmp_path / "ws",
                           plan_overrides={"hub": {"dataset_repo": f"{hub_stub.USER}/steps"}})
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    ws = open_workspace(tmp_path / "ws")
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(kind="inspect", batch="batch_100_01",
                                       backend="hf-jobs"))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    (hub_id,) = fake_hub.jobs
    fake_hub.job_logs[hub_id] = list(LOG)
    monkeypatch.setattr(hf_poll, "MIN_INTERVAL_S", 10.0)
    clock = [time.time() + 60]  # past any floor the submit set
    monkeypatch.setattr(hf_poll, "clock", lambda: clock[0])
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def hub_calls() -> int:
        return sum(1 for r in fake_hub.requests if f"/{hub_id}" in r.path)

    first = job_status(ws, handle.job_id)
    asked = hub_calls()
    again = job_status(ws, handle.job_id)  # the same instant: ledger only
    assert first.status == "running" and first.progress.stage == "training"
    assert first.progress.epoch == 2.0 and first.ask_again_after_s == 10.0
    assert again.progress == first.progress and hub_calls() == asked
    with ledger.open_ledger(ws) as conn:
        kept = json.loads(conn.execute("SELECT result FROM jobs WHERE job_id = ?",
                                       (handle.job_id,)).fetchone()[0])["hub_progress"]
    assert kept["progress"]["stage"] == "training" and kept["next_at"] == clock[0] + 10.0


async def test_the_review_card_reads_the_signed_bytes_not_an_edited_row(model_ws):
    """Through the storage: the drafts row's JSON view edited (a public repo, a cheap
    flavor) changes nothing the card shows as signed; the signed manifest bytes edited make
    the card tool refuse with draft_tampered instead of showing them."""
    async with Client(build_server(ServerConfig(workspace=model_ws.root))) as client:
        drafted = await client.call_tool("draft_job", {"batch": "batch_100_01"})
        draft_id = drafted.structured_content["draft_id"]
        with ledger.open_ledger(model_ws) as conn, ledger.transaction(conn):
            payload = json.loads(conn.execute("SELECT payload FROM drafts WHERE draft_id = ?",
                                              (draft_id,)).fetchone()[0])
            payload.setdefault("job_config", {}).setdefault("hub", {})["private"] = False
            payload["flavor"] = "cpu-basic"
            conn.execute("UPDATE drafts SET payload = ? WHERE draft_id = ?",
                         (json.dumps(payload), draft_id))
        shown = (await client.call_tool("review_card", {"draft_id": draft_id}))
        with ledger.open_ledger(model_ws) as conn, ledger.transaction(conn):
            conn.execute("UPDATE drafts SET manifest = replace(manifest, '\"local\"', "
                         "'\"cpu-basic\"') WHERE draft_id = ?", (draft_id,))
        tampered = await client.call_tool("review_card", {"draft_id": draft_id})
    card = shown.structured_content
    assert card["draft"]["flavor"] == "local" and card["review"]["flavor"] == "local"
    assert card["draft"]["job_config"]["hub"]["private"] is True
    assert "flavor" in card["signed"] and "job_config" in card["signed"]
    assert error_code(tampered) == "draft_tampered"
