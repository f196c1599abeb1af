"""One token, one paid job on HF Jobs, against a Hub that fails at the worst moments.

Each test submits an approved remote inspection (the cheapest hf-jobs draft) through
``submit_job`` to the loopback Hub, injects a fault, and checks what the ledger and the
Hub hold afterwards: never two jobs for one token, never a paid job the ledger lost.
"""

from __future__ import annotations

import hub_stub
import pytest
from conftest import FAKE_TOKEN, Operator
from huggingface_hub.utils import _http

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.hub import poll as hf_poll
from tunestep.tools.runs.hf_submit import NONCE_LABEL
from tunestep.tools.runs.job_control import cancel_job, job_status
from tunestep.tools.runs.submit import submit_job

fake_hub = hub_stub.fake_hub
REPO = f"{hub_stub.USER}/steps"
JOBS = f"/api/jobs/{hub_stub.USER}"


@pytest.fixture
def ws(tmp_path, fake_hub, monkeypatch) -> Workspace:
    build_sample_workspace(tmp_path / "ws", plan_overrides={"hub": {"dataset_repo": REPO}})
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TUNESTEP_HUB_TIMEOUT", "0.5")
    import types

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _s: None))
    return open_workspace(tmp_path / "ws")


@pytest.fixture
def approved(ws, tmp_path):
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(kind="inspect", batch="batch_100_01",
                                       backend="hf-jobs"))
    return draft, operator.approve(ws, draft.draft_id), operator.trusted


def _rows(ws):
    with ledger.open_ledger(ws) as conn:
        jobs = [dict(r) for r in conn.execute("SELECT * FROM jobs")]
        nonces = conn.execute("SELECT count(*) FROM approvals").fetchone()[0]
    return jobs, nonces


def _code(call, *args) -> TunestepError:
    with pytest.raises(TunestepError) as err:
        call(*args)
    return err.value


@pytest.mark.parametrize("fault", ["500", "drop", "bad_json"])
def test_a_lost_creation_answer_is_found_by_its_label(ws, approved, fake_hub, fault):
    draft, token, trusted = approved
    fake_hub.inject("POST", JOBS, fault, after_effect=True)
    handle = submit_job(ws, draft.draft_id, token, trusted)
    (hub_job,) = fake_hub.jobs.values()
    assert handle.external_id == hub_job["id"] and handle.status == "running"
    assert hub_job["labels"][NONCE_LABEL] and hub_job["labels"]["tunestep-draft"] == \
        draft.draft_id
    (row,), nonces = _rows(ws)
    assert row["status"] == "running" and row["external_id"].endswith(hub_job["id"])
    assert ledger.loads(row["result"])["adopted"] is True and nonces == 1


def test_a_submit_that_failed_before_the_hub_made_a_job_resumes_with_the_same_token(
        ws, approved, fake_hub):
    draft, token, trusted = approved
    fake_hub.inject("POST", JOBS, "503", times=1)
    err = _code(submit_job, ws, draft.draft_id, token, trusted)
    assert err.code == "hub_unavailable" and "same approval token" in err.message
    assert FAKE_TOKEN not in str(err)
    (row,), nonces = _rows(ws)
    assert row["status"] == "submitting" and nonces == 1 and fake_hub.jobs == {}
    assert job_status(ws, row["job_id"]).status == "submitting"  # asked the Hub: none yet

    handle = submit_job(ws, draft.draft_id, token, trusted)
    assert handle.job_id == row["job_id"] and len(fake_hub.jobs) == 1
    (row,), nonces = _rows(ws)
    assert row["status"] == "running" and nonces == 1
    assert ledger.loads(row["result"])["submit"]["attempts"] == 2
    # The token has done its one job now.
    assert _code(submit_job, ws, draft.draft_id, token, trusted).code == "approval_replayed"
    assert len(fake_hub.jobs) == 1


def test_a_hung_commit_times_out_and_the_retry_starts_one_job(ws, approved, fake_hub):
    draft, token, trusted = approved
    fake_hub.inject("POST", f"/api/datasets/{REPO}/commit/*", "hang", times=None,
                    hang_seconds=5)
    assert _code(submit_job, ws, draft.draft_id, token, trusted).code == "hub_timeout"
    assert fake_hub.jobs == {} and _rows(ws)[0][0]["status"] == "submitting"
    fake_hub.faults.clear()
    submit_job(ws, draft.draft_id, token, trusted)
    assert len(fake_hub.jobs) == 1


def test_a_job_created_while_nobody_could_look_is_tracked_by_job_status(
        ws, approved, fake_hub):
    draft, token, trusted = approved
    fake_hub.inject("POST", JOBS, "drop", after_effect=True)
    # list_jobs answers the first lookup (nothing yet), then fails: the look after the
    # dropped creation cannot see the job the Hub made.
    fake_hub.inject("GET", JOBS, "503", times=None, skip=1)
    err = _code(submit_job, ws, draft.draft_id, token, trusted)
    assert err.code == "hub_connection_lost"
    (hub_job,) = fake_hub.jobs.values()  # the paid job runs; the ledger has no id yet
    (row,), _ = _rows(ws)
    assert row["status"] == "submitting" and row["external_id"] is None
    # The Hub still fails: job_status says so and changes nothing.
    assert _code(job_status, ws, row["job_id"]).code == "hub_unavailable"
    assert _rows(ws)[0][0]["status"] == "submitting"
    fake_hub.faults.clear()
    status = job_status(ws, row["job_id"])
    assert status.status == "running" and status.external_id.endswith(hub_job["id"])
    # ... and the same token cannot start a second one.
    assert _code(submit_job, ws, draft.draft_id, token, trusted).code == "approval_replayed"
    assert len(fake_hub.jobs) == 1


def test_status_that_cannot_reach_the_hub_changes_nothing(ws, approved, fake_hub):
    draft, token, trusted = approved
    handle = submit_job(ws, draft.draft_id, token, trusted)
    before = _rows(ws)[0][0]
    for fault in ("503", "drop", "bad_json", "429"):
        fake_hub.faults.clear()
        fake_hub.inject("GET", f"{JOBS}/*", fault, times=None, retry_after=0)
        assert _code(job_status, ws, handle.job_id).code.startswith("hub_")
        after = _rows(ws)[0][0]
        assert {k: v for k, v in after.items() if k != "result"} == \
            {k: v for k, v in before.items() if k != "result"}
        strip = {k: v for k, v in ledger.loads(after["result"]).items() if k != "hub_poll"}
        assert strip == {k: v for k, v in ledger.loads(before["result"]).items()
                         if k != "hub_poll"}


def test_polling_waits_ten_seconds_and_honours_retry_after(ws, approved, fake_hub,
                                                           monkeypatch):
    draft, token, trusted = approved
    handle = submit_job(ws, draft.draft_id, token, trusted)
    now = [1_000_000.0]
    monkeypatch.setattr(hf_poll, "clock", lambda: now[0])
    monkeypatch.setattr(hf_poll, "MIN_INTERVAL_S", 10.0)
    inspected = lambda: len([r for r in fake_hub.requests  # noqa: E731
                             if r.method == "GET" and r.path.endswith(handle.external_id)])

    job_status(ws, handle.job_id)
    assert inspected() == 1
    now[0] += 5
    job_status(ws, handle.job_id)
    assert inspected() == 1  # 5 s later: the ledger answers
    now[0] += 6
    assert job_status(ws, handle.job_id).result["hub_poll"]["next_at"] == now[0] + 10
    assert inspected() == 2
    now[0] += 10
    fake_hub.inject("GET", f"{JOBS}/*", "429", retry_after=60)
    err = _code(job_status, ws, handle.job_id)
    assert err.code == "hub_rate_limited" and err.retry_after == 60
    now[0] += 30
    job_status(ws, handle.job_id)
    assert inspected() == 3  # the 429 answer counted; 30 s later nothing was asked
    now[0] += 31
    fake_hub.set_job_stage(handle.external_id, "CANCELED")
    assert job_status(ws, handle.job_id).status == "cancelled" and inspected() == 4


def test_a_second_submit_while_one_holds_the_lease_is_refused(ws, approved, fake_hub):
    draft, token, trusted = approved
    fake_hub.inject("POST", JOBS, "503", times=1)
    _code(submit_job, ws, draft.draft_id, token, trusted)
    (row,), _ = _rows(ws)
    result = ledger.loads(row["result"])
    result["submit"]["lease_until"] = 4e9  # as a live submit in another process holds it
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE jobs SET result = ? WHERE job_id = ?",
                     (ledger.dumps(result), row["job_id"]))
    assert _code(submit_job, ws, draft.draft_id, token, trusted).code == "submit_in_progress"
    assert _code(cancel_job, ws, row["job_id"]).code == "submit_in_progress"
    assert fake_hub.jobs == {}


def test_cancelling_a_submit_that_made_no_job_spends_the_token(ws, approved, fake_hub):
    draft, token, trusted = approved
    fake_hub.inject("POST", JOBS, "503", times=1)
    _code(submit_job, ws, draft.draft_id, token, trusted)
    (row,), _ = _rows(ws)
    assert cancel_job(ws, row["job_id"]).status == "cancelled"
    assert _code(submit_job, ws, draft.draft_id, token, trusted).code == "approval_replayed"
    assert fake_hub.jobs == {}


def test_over_mcp_a_hub_fault_is_a_named_tool_error(ws, approved, fake_hub):
    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    draft, token, trusted = approved
    handle = submit_job(ws, draft.draft_id, token, trusted)
    fake_hub.inject("GET", f"{JOBS}/*", "503", times=None)

    async def call(tool: str, **args):
        async with Client(build_server(ServerConfig(workspace=ws.root))) as client:
            return await client.call_tool(tool, args)

    for tool, args in (("job_status", {}), ("job_logs", {"tail": 5})):
        result = anyio.run(lambda t=tool, a=args: call(t, job_id=handle.job_id, **a))
        assert error_code(result) == "hub_unavailable", result.content[0].text
        assert "try again" in result.content[0].text
        assert FAKE_TOKEN not in result.content[0].text


def test_rows_wiped_from_the_ledger_still_give_one_job(ws, approved, fake_hub):
    """Whatever the local files say: the Hub's nonce label is the last word."""
    draft, token, trusted = approved
    first = submit_job(ws, draft.draft_id, token, trusted)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("DELETE FROM approvals")
        conn.execute("DELETE FROM jobs")
    again = submit_job(ws, draft.draft_id, token, trusted)
    assert again.external_id == first.external_id and len(fake_hub.jobs) == 1
    (row,), _ = _rows(ws)
    assert ledger.loads(row["result"])["adopted"] is True
