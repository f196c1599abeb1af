"""A job ends once in the ledger: callers that race to record its end (two job_status
calls that both find its supervisor dead, a cancel beside them) leave one outcome and
one ``job.end`` event, the first one recorded."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tunestep.tools.core import ledger
from tunestep.tools.runs import local_backend as local
from tunestep.tools.runs.job_control import job_status

JOB = "job-000000000001"


def _ends(ws) -> list[tuple[str, str]]:
    with ledger.open_ledger(ws) as conn:
        rows = conn.execute("SELECT action, outcome FROM audit WHERE action = 'job.end'"
                            " AND target = ?", (JOB,)).fetchall()
    return [tuple(r) for r in rows]


def _status(ws) -> str:
    with ledger.open_ledger(ws) as conn:
        return conn.execute("SELECT status FROM jobs WHERE job_id = ?", (JOB,)).fetchone()[0]


@pytest.fixture
def orphaned(sample_ws):
    """A running local job whose supervisor is gone without recording an end."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, created_at)"
                     " VALUES ('draft-x', 'd', 'train', 'batch_100_01', '{}', 0)")
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at, pid,"
                     " started_at) VALUES (?, 'draft-x', 'local', 'running', 0, ?, 0)",
                     (JOB, gone.pid))
    return sample_ws


def _race(calls: list, monkeypatch, direct: tuple[int, ...] = ()) -> list:
    """Run ``calls`` in threads that all pass their "is it still running?" look before
    any of them writes: each waits at a barrier where the lost path stops what the job
    left (after its look, before its write); the calls in ``direct``, which record an end
    themselves, wait at it first."""
    barrier = threading.Barrier(len(calls), timeout=30)

    def stop_leftovers(*args, **kwargs) -> int:
        barrier.wait()
        return 0

    monkeypatch.setattr(local, "stop_leftovers", stop_leftovers)
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            if i in direct:
                barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_two_status_calls_on_a_lost_job_record_one_end(orphaned, monkeypatch):
    first, second = _race([lambda: job_status(orphaned, JOB)] * 2, monkeypatch)
    assert first.status == second.status == "lost"
    assert _ends(orphaned) == [("job.end", "lost")]
    assert "supervisor" in first.result["error"] and first.result == second.result


def test_the_first_end_recorded_stands(orphaned, monkeypatch):
    recorded = _race([lambda: job_status(orphaned, JOB),
                      lambda: local.record_outcome(orphaned, JOB, "cancelled", None,
                                                   {"note": "was not running"})],
                     monkeypatch, direct=(1,))
    assert _ends(orphaned) in ([("job.end", "lost")], [("job.end", "cancelled")])
    assert _status(orphaned) == _ends(orphaned)[0][1]
    assert recorded[1] is (_status(orphaned) == "cancelled")
    # Later writers find it ended: nothing changes, nothing more is audited.
    assert local.record_outcome(orphaned, JOB, "succeeded", 0, {"ok": True}) is False
    assert len(_ends(orphaned)) == 1 and _status(orphaned) in ("lost", "cancelled")


@pytest.fixture
def settled(orphaned):
    """A job job_status already settled as lost, its folder there as submit left it."""
    with ledger.open_ledger(orphaned) as conn, ledger.transaction(conn):
        conn.execute("UPDATE jobs SET status = 'lost', pid = NULL WHERE job_id = ?", (JOB,))
    local.job_dir(orphaned, JOB).mkdir(parents=True)
    return orphaned


def test_a_start_that_comes_after_the_job_was_settled_stops_what_it_started(
        settled, monkeypatch):
    # The start grace ran out before the supervisor was launched (a stalled machine):
    # the row keeps its end, and the process just launched is stopped, not left running.
    from tunestep.tools.core.errors import TunestepError

    started: list[subprocess.Popen] = []
    real = local.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    with pytest.raises(TunestepError) as refused:
        local.start(settled, JOB, digest="0" * 64, config_sha256="0" * 64)
    assert refused.value.code == "job_settled"
    assert _status(settled) == "lost"
    (proc,) = started
    assert proc.wait(timeout=30) is not None  # stopped: nothing of it keeps running


def test_a_failed_start_does_not_overwrite_an_end_already_recorded(settled, monkeypatch):
    from types import SimpleNamespace

    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.runs import submit

    def broken(*args):
        raise RuntimeError("the backend fell over")

    monkeypatch.setattr(submit, "_start_local", broken)
    with pytest.raises(TunestepError) as refused:
        submit._start(settled, SimpleNamespace(backend="local"), JOB)
    assert refused.value.code == "backend_failed"
    assert _status(settled) == "lost"
