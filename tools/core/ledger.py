"""The ledger: every fact that must survive, in one SQLite file.

``.tunestep/state.sqlite`` in WAL mode. Steps, hold-out pins (and their signed
re-pins), drafts, used approval nonces, jobs, cached inspections and an audit trail.
Files that people read (plan, CSV, Markdown, PNG) are views written from it. Each
migration (``ledger_schema``) runs once, in order, inside a transaction; ``PRAGMA
user_version`` records how far a file has come.
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
from tunestep.tools.core.ledger_schema import MIGRATIONS, SCHEMA_VERSION
from tunestep.tools.core.workspace import Workspace

LEDGER_FILE = "state.sqlite"
# A job in one of these has ended: its row is written once more by nobody (record_outcome
# in tools/runs/local_backend.py updates only a row not in them).
JOB_ENDED = ("succeeded", "failed", "cancelled", "lost")


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
