"""The ledger: every fact that must survive, in one SQLite file.

``.tunestep/state.sqlite`` in WAL mode. Steps, hold-out pins (and their signed
re-pins), drafts, used approval nonces, jobs, cached inspections and an audit trail.
Files that people read (plan, CSV, Markdown, PNG) are views written from it. Each
migration below runs once, in order, inside a transaction; ``PRAGMA user_version``
records how far a file has come.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tunestep.tools.core.call_context import CallContext
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace

LEDGER_FILE = "state.sqlite"
# A job in one of these has ended: its row is written once more by nobody (record_outcome
# in tools/runs/local_backend.py updates only a row not in them).
JOB_ENDED = ("succeeded", "failed", "cancelled", "lost")

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
    # 5: lineage that a running job or a clock jump cannot bend (tools/lineage/line.py): each
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
    # migration: branch evidence
    # latest moves only on evidence (issue 17): each signed move of latest keeps the token
    # it was made with (verified whenever the ledger's line is read: a forged row is
    # ignored), and each model version its files as [[path, sha256, size], ...] recorded
    # when the version was made (job commit, sync, or a signed promotion of a hand-put
    # folder): the resume point and promotion hashing check a version against them.
    """
    ALTER TABLE promotions ADD COLUMN token TEXT;
    ALTER TABLE model_versions ADD COLUMN files TEXT;
    """,
    # migration: branch manifest
    # 7: what is signed is what runs (issue 17): each draft's canonical manifest bytes,
    # the digest is sha256 over exactly them; ``payload`` keeps only what is shown and never
    # executed (estimate, warnings, run plan path). NULL: drafted before, never submitted.
    """
    ALTER TABLE drafts ADD COLUMN manifest BLOB;
    """,
    # migration: branch holdout_repin
    # 8: re-pinning the hold-out set is the operator's signed act (tools/data/holdout_repin.py):
    # the re-pin requests (their canonical bytes, what the token's digest is over), the
    # signed re-pins (one row per token, the token kept and verified on every read), and
    # a copy of each pinned hold-out's bytes, so a later re-pin can say which rows changed.
    """
    CREATE TABLE holdout_repin_requests (
        request_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        path TEXT NOT NULL,
        old_sha256 TEXT NOT NULL,
        new_sha256 TEXT NOT NULL,
        subject BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE holdout_repins (
        nonce TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        path TEXT NOT NULL,
        old_sha256 TEXT NOT NULL,
        new_sha256 TEXT NOT NULL,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        at REAL NOT NULL,
        seq INTEGER,
        token TEXT
    );
    CREATE TABLE holdout_snapshots (
        sha256 TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        content BLOB NOT NULL,
        kept_at REAL NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


# How long a process waits for another one's write before it gives up with ledger_busy.
# Writes are short (one BEGIN IMMEDIATE each, nothing slow inside), so a wait this long
# means something holds the ledger on purpose or hangs: say so instead of waiting forever.
WAIT_S = 30.0
WAIT_ENV = "TUNESTEP_LEDGER_WAIT"  # seconds; the operator's (and the load tests') override
FIRST_USE_LOCK = "state.sqlite.lock"  # beside the ledger: who sets up a new file


class LedgerBusy(TunestepError):
    """Another process held the ledger longer than this one would wait."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(
            "ledger_busy",
            f"another tunestep process (a server, a command or a job recording its result) "
            f"holds this workspace's ledger, and this one waits up to {waited_s:g} s; let it "
            f"finish and try again (`fuser .tunestep/{LEDGER_FILE}` names it; "
            f"{WAIT_ENV}=SECONDS waits longer)", path=f".tunestep/{LEDGER_FILE}")


def wait_s() -> float:
    """The busy wait in seconds: ``TUNESTEP_LEDGER_WAIT`` when set to a positive number."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    try:
        value = float(raw) if raw else WAIT_S
    except ValueError:
        value = WAIT_S
    return value if value > 0 else WAIT_S


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY (and its extended codes): another connection holds a lock we need."""
    return (isinstance(exc, sqlite3.OperationalError)
            and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY)


class LedgerConnection(sqlite3.Connection):
    """A ledger connection that knows the call it was opened for (``open_ledger(ws)``):
    readers holding only the connection verify signed records with the call's keys."""

    call: CallContext | None = None

    @property
    def trusted_keys(self) -> Any:
        return self.call.trusted_keys if self.call is not None else None


def _connect(path: str, wait: float) -> LedgerConnection:
    # isolation_level=None: we open transactions ourselves with BEGIN IMMEDIATE, so a
    # writer takes the lock up front (where SQLite waits for it) instead of upgrading a
    # read to a write half-way (where SQLite answers busy at once, to avoid deadlock).
    conn = sqlite3.connect(path, timeout=wait, isolation_level=None, check_same_thread=False,
                           factory=LedgerConnection)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _ensure_wal(conn: sqlite3.Connection, lock_path: Path, wait: float) -> None:
    """Switch a new ledger file to WAL once, whoever else is opening it right now.

    WAL is a property of the file: once set, every later connection finds it (the query
    below reads the header, waiting for locks as any read does). The switch itself reads
    the header and then upgrades to a write, and SQLite does not wait on that upgrade:
    20 processes opening a fresh workspace at once used to see "database is locked" here.
    So the switch happens under a file lock that tunestep processes queue on, and is
    retried until the deadline against anything else (an sqlite3 shell) holding the file.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return  # the usual case: no lock, no write
    deadline = time.monotonic() + wait
    with _first_use_lock(lock_path, deadline, wait):
        pause = 0.005
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


@contextlib.contextmanager
def _first_use_lock(path: Path, deadline: float, wait: float) -> Iterator[None]:
    """An exclusive flock on ``.tunestep/state.sqlite.lock`` while a new file is set up."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the retry in _ensure_wal still gets there
        yield
        return
    with open(path, "a+b") as handle:
        pause = 0.005
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerBusy(wait) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
    """One write transaction: all of it lands, or none of it.

    BEGIN IMMEDIATE takes the write lock first, waiting its turn (the busy timeout); keep
    what runs inside short (no hashing, no model loading): every other writer waits on it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a failed COMMIT)
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def open_ledger(ws: Workspace, *, wait: float | None = None) -> Iterator[LedgerConnection]:
    """The workspace's ledger, created and migrated on first use.

    Every lock it or its caller needs is waited for, up to ``wait`` seconds (default
    ``wait_s()``); a longer wait ends in ``ledger_busy``, never in sqlite's own "database
    is locked".
    """
    wait = wait if wait is not None else wait_s()
    try:
        ws.state_dir.mkdir(exist_ok=True)
        conn = _connect(str(ws.state_dir / LEDGER_FILE), wait)
        conn.call = ws.call
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise LedgerBusy(wait) from None
        raise
    try:
        _ensure_wal(conn, ws.state_dir / FIRST_USE_LOCK, wait)
        migrate(conn)
        yield conn
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise LedgerBusy(wait) from None
        raise
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
