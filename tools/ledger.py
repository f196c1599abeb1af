"""The ledger: every fact that must survive, in one SQLite file.

``.tunestep/state.sqlite`` in WAL mode. Steps, hold-out pins, drafts, used approval
nonces, jobs, cached inspections and an audit trail. Files that people read (plan,
CSV, Markdown, PNG) are views written from it. Each migration below runs once, in
order, inside a transaction; ``PRAGMA user_version`` records how far a file has come.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import orjson

from tunestep.tools.errors import TunestepError
from tunestep.tools.workspace import Workspace

LEDGER_FILE = "state.sqlite"

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE validation_pins (
        path TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        pinned_at REAL NOT NULL
    );
    CREATE TABLE steps (
        step INTEGER PRIMARY KEY,
        batch TEXT NOT NULL UNIQUE,
        draft_id TEXT,
        job_id TEXT,
        digest TEXT,
        mode TEXT,
        datasets TEXT NOT NULL DEFAULT '[]',
        model_path TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        recorded_at REAL NOT NULL
    );
    CREATE TABLE drafts (
        draft_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        batch TEXT,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        draft_id TEXT NOT NULL REFERENCES drafts(draft_id),
        backend TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        external_id TEXT,
        url TEXT,
        log_path TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        result TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE approvals (
        nonce TEXT PRIMARY KEY,
        draft_id TEXT NOT NULL,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        used_at REAL NOT NULL
    );
    CREATE TABLE inspections (
        cache_key TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        report TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL DEFAULT 'ok',
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_action ON audit(action);
    """,
    # 2: where each step's model went and where each local version came from (issue 11):
    # the commit a step's job pushed (the next remote step resumes from exactly it), its
    # version folder, whether the job promoted it; and one row per local model version.
    """
    ALTER TABLE steps ADD COLUMN hub_model_id TEXT;
    ALTER TABLE steps ADD COLUMN hub_revision TEXT;
    ALTER TABLE steps ADD COLUMN version TEXT;
    ALTER TABLE steps ADD COLUMN promoted INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE model_versions (
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER,
        batch TEXT,
        job_id TEXT,
        source TEXT NOT NULL,
        hub_model_id TEXT,
        hub_revision TEXT,
        promoted INTEGER NOT NULL DEFAULT 1,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (store, version)
    );
    """,
    # 3: the ledger's identity, a random id made with the ledger. Approval tokens carry
    # it, so a token signed for one ledger is refused by a ledger made afresh (deleting
    # the ledger forgets the used nonces; it must not make old tokens good again).
    """
    CREATE TABLE identity (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        ledger_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    INSERT INTO identity(one, ledger_id, created_at)
        VALUES (1, lower(hex(randomblob(16))), CAST(strftime('%s', 'now') AS REAL));
    """,
    # 4: did the step help (issue 13): each step's hold-out evaluation summary and why it
    # was or was not promoted; the operator's promotion requests and the signed moves of
    # latest they led to (one row per token: its nonce is used once).
    """
    ALTER TABLE steps ADD COLUMN evaluation TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE steps ADD COLUMN promotion_reason TEXT;
    CREATE TABLE promotion_requests (
        request_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE promotions (
        nonce TEXT PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES promotion_requests(request_id),
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        previous TEXT,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # 5: lineage that a running job or a clock jump cannot bend (tools/lineage.py): each
    # step's parent, the version its job actually trained from (resolved when the draft was
    # made; '' = the base model; NULL = recorded before schema 5), and one monotonic
    # sequence number per step record and per signed move of latest, taken from the
    # ``sequence`` table inside the writing transaction, so replay order is write order.
    """
    ALTER TABLE steps ADD COLUMN parent TEXT;
    ALTER TABLE steps ADD COLUMN seq INTEGER;
    ALTER TABLE promotions ADD COLUMN seq INTEGER;
    CREATE TABLE sequence (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL
    );
    """,
    # migration: branch manifest
    # 6: what is signed is what runs (issue 17): each draft's canonical manifest bytes,
    # the digest is sha256 over exactly them; ``payload`` keeps only what is shown and never
    # executed (estimate, warnings, run plan path). NULL: drafted before, never submitted.
    """
    ALTER TABLE drafts ADD COLUMN manifest BLOB;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we open transactions ourselves with BEGIN IMMEDIATE, so a
    # writer takes the lock up front instead of failing half-way on upgrade.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # The busy timeout first: switching a new file to WAL takes a lock that a second
    # process opening the same fresh workspace must wait for, not fail on.
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the current schema; returns the version it is at now."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the usual case: no write lock taken
    # Every migration in one immediate transaction, the version read again under the
    # lock: two processes opening a fresh workspace at once migrate it exactly once.
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TunestepError(
                "ledger_too_new",
                f"the ledger has schema {version}; this tunestep knows up to {SCHEMA_VERSION}",
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it lands, or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def open_ledger(ws: Workspace) -> Iterator[sqlite3.Connection]:
    """The workspace's ledger, created and migrated on first use."""
    ws.state_dir.mkdir(exist_ok=True)
    conn = _connect(str(ws.state_dir / LEDGER_FILE))
    try:
        migrate(conn)
        yield conn
    finally:
        conn.close()


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def next_seq(conn: sqlite3.Connection) -> int:
    """The next ledger sequence number (call inside the write transaction that uses it).

    AUTOINCREMENT never hands out a number twice or a smaller one, whatever the clock says.
    """
    return int(conn.execute("INSERT INTO sequence(at) VALUES (?)", (time.time(),)).lastrowid)


def audit(
    conn: sqlite3.Connection,
    action: str,
    target: str | None = None,
    *,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one audit event. Callers pass names and digests, never secret values."""
    conn.execute(
        "INSERT INTO audit(at, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?)",
        (time.time(), action, target, outcome, dumps(detail or {})),
    )


def ledger_id(conn: sqlite3.Connection) -> str:
    """This ledger's random identity (32 hex), made with the ledger; approvals carry it."""
    return conn.execute("SELECT ledger_id FROM identity WHERE one = 1").fetchone()[0]


def trained_batches(conn: sqlite3.Connection) -> set[str]:
    return {row["batch"] for row in conn.execute("SELECT batch FROM steps")}
