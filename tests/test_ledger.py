import sqlite3

import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError


def test_fresh_ledger_is_migrated_to_current_schema_in_wal(sample_ws):
    with ledger.open_ledger(sample_ws) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"steps", "drafts", "jobs", "approvals", "validation_pins", "audit"} <= tables


def test_a_failed_transaction_leaves_nothing(sample_ws):
    with ledger.open_ledger(sample_ws) as conn:
        with pytest.raises(RuntimeError), ledger.transaction(conn):
            ledger.audit(conn, "x.test", "t")
            raise RuntimeError("boom")
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0


def test_nonce_is_unique(sample_ws):
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, created_at)"
                     " VALUES ('d', 'g', 'train', 'b', '{}', 0)")  # columns named: later
        # migrations add columns to drafts
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES ('j1', 'd', 'local', 'queued', 0)")
        conn.execute("INSERT INTO approvals(nonce, draft_id, kid, operator, job_id, used_at)"
                     " VALUES ('n1', 'd', 'k', 'op', 'j1', 0)")
    with ledger.open_ledger(sample_ws) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO approvals(nonce, draft_id, kid, operator, job_id, used_at)"
                     " VALUES ('n1', 'd', 'k', 'op', 'j1', 0)")


def test_a_newer_ledger_is_refused(sample_ws):
    with ledger.open_ledger(sample_ws) as conn:
        conn.execute(f"PRAGMA user_version={ledger.SCHEMA_VERSION + 1}")
    with pytest.raises(TunestepError) as err, ledger.open_ledger(sample_ws):
        pass
    assert err.value.code == "ledger_too_new"
