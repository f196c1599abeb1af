"""Crash harness: run one domain operation in a child process and SIGKILL it mid-way.

Two sides in one module.

The child side runs a real tunestep function (``OPS``) on a workspace. Before it starts
it wraps the calls that mark the steps of an atomic write (``tempfile.mkstemp``/``mkdtemp``,
``os.fsync``, ``os.replace``, the folder exchange, ``os.link``) and every ``execute`` on a
ledger connection. The wrappers count and time the calls, and kill the process with
SIGKILL at a chosen point: before or after the Nth call of a kind (deterministic:
"between the temp write and the rename", "between INSERT and COMMIT"), or a seeded delay
after the Nth call (a timer thread: lands inside a write or inside SQLite's commit).
Nothing else is changed.

The parent side (``Harness``) starts a zygote with ``sys.executable -c`` that imports the
heavy modules once and forks one child per trial, so a trial costs the operation, not the
interpreter start (``fresh=True`` runs a trial in its own ``sys.executable -c`` process
instead). The parent can also kill the child itself after a delay measured from the
moment the operation starts. Helpers at the end hash trees, snapshot and restore a
workspace, and check a ledger file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOOKS = ("mkstemp", "mkdtemp", "fsync", "replace", "exchange", "link", "execute")

# ---------------------------------------------------------------------------------------
# Child side: the operations


def _ws(root: str):
    from tunestep.tools.core.workspace import open_workspace

    return open_workspace(root)


def op_apply_mapping(root: str, args: dict) -> dict:
    from tunestep.tools.data.mapping import MappingSpec, apply_mapping

    spec = MappingSpec.model_validate(args["spec"])
    result = apply_mapping(_ws(root), args["source"], spec)
    return {"rows_out": result.rows_out, "unchanged": result.unchanged}


def op_merge(root: str, args: dict) -> dict:
    from tunestep.tools.data.merge import merge_datasets

    result = merge_datasets(_ws(root), args["batch"])
    return {"rows": result.rows, "cached": result.cached}


def op_preprocess(root: str, args: dict) -> dict:
    from tunestep.tools.data.preprocess import preprocess

    result = preprocess(_ws(root), args["batch"], max_length=args.get("max_length"))
    return {"rows": result.rows, "cached": result.cached}


def op_submit(root: str, args: dict) -> dict:
    from tunestep.tools.runs.submit import submit_job
    from tunestep.tools.signing import trusted_keys

    trusted = trusted_keys.load_trusted_keys([Path(args["public_key"])])
    # The job process itself is not under test: the local backend starts `true` instead
    # of the supervisor (same Popen, same ledger update with its pid).
    sys.executable = shutil.which("true") or "/bin/true"
    handle = submit_job(_ws(root), args["draft_id"], args["token"], trusted)
    return {"job_id": handle.job_id, "status": handle.status}


def op_record_outcome(root: str, args: dict) -> dict:
    from tunestep.tools.runs import local_backend as local

    local.record_outcome(_ws(root), args["job_id"], args["status"], args["exit_code"],
                         args["result"])
    return {}


OPS = {
    "apply_mapping": op_apply_mapping,
    "merge": op_merge,
    "preprocess": op_preprocess,
    "submit": op_submit,
    "record_outcome": op_record_outcome,
}

# ---------------------------------------------------------------------------------------
# Child side: the kill points


class _Recorder:
    """Counts and times the wrapped calls; kills the process at the planned one."""

    def __init__(self, plan: dict | None) -> None:
        self.plan = plan or {}
        self.counts = dict.fromkeys(HOOKS, 0)
        # [kind, n, seconds since start, detail: the SQL, the name written, or None]
        self.events: list[list] = []
        self.t0 = time.monotonic()
        self.armed = False

    def hit(self, kind: str, stage: str, detail: str | None = None) -> None:
        if stage == "before":
            self.counts[kind] += 1
            self.events.append([kind, self.counts[kind],
                                round(time.monotonic() - self.t0, 6), detail])
        plan = self.plan
        if plan.get("hook") != kind or plan.get("n") != self.counts[kind]:
            return
        if "timer" in plan:
            if stage == "before" and not self.armed:
                self.armed = True
                # A short switch interval lets the timer thread take the GIL within ~50 µs
                # of its deadline, even while the main thread runs Python code.
                sys.setswitchinterval(5e-5)
                timer = threading.Timer(plan["timer"], os.kill,
                                        (os.getpid(), signal.SIGKILL))
                timer.daemon = True
                timer.start()
        elif plan.get("when") == stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _install(rec: _Recorder) -> None:
    import tempfile

    from tunestep.tools.core import atomic, ledger

    def wrap(module: Any, name: str, kind: str, detail=lambda *a, **k: None) -> None:
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            rec.hit(kind, "before", detail(*args, **kwargs))
            result = real(*args, **kwargs)
            rec.hit(kind, "after")
            return result

        setattr(module, name, wrapper)

    def target(*args, **kwargs) -> str:  # the name a rename or link writes
        return Path(os.fsdecode(args[1])).name

    def prefix(*args, **kwargs) -> str | None:
        return kwargs.get("prefix")

    wrap(tempfile, "mkstemp", "mkstemp", prefix)
    wrap(tempfile, "mkdtemp", "mkdtemp", prefix)
    wrap(os, "fsync", "fsync")
    wrap(os, "replace", "replace", target)
    wrap(os, "link", "link", target)
    wrap(atomic, "_exchange", "exchange", target)  # the one-step swap of a replaced folder

    class CountedExecute:  # mixed into whatever connection class the ledger asks for
        def execute(self, sql, *args):
            rec.hit("execute", "before", " ".join(sql.split())[:60])
            cursor = super().execute(sql, *args)
            rec.hit("execute", "after")
            return cursor

    def connect(*args, factory=sqlite3.Connection, **kwargs):
        counted = type("Counted" + factory.__name__, (CountedExecute, factory), {})
        return sqlite3.connect(*args, factory=counted, **kwargs)

    shim = types.ModuleType("sqlite3")
    shim.__dict__.update(vars(sqlite3))
    shim.connect = connect
    ledger.sqlite3 = shim  # only the ledger's connections: every write tunestep makes


def _emit(message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def run_child(request: dict) -> None:
    """Run one operation in this process and end it (never returns)."""
    try:
        rec = _Recorder(request.get("kill"))
        _install(rec)
        _emit({"started": os.getpid()})
        rec.t0 = time.monotonic()
        summary = OPS[request["op"]](request["root"], request.get("args", {}))
        seconds = time.monotonic() - rec.t0
    except BaseException as exc:  # reported to the parent, which decides
        import traceback

        _emit({"error": f"{type(exc).__name__}: {exc}", "code": getattr(exc, "code", None),
               "traceback": traceback.format_exc()[-3000:]})
        os._exit(3)
    _emit({"done": summary, "seconds": seconds, "counts": rec.counts, "events": rec.events})
    os._exit(0)


def serve(preload: list[str]) -> None:
    """The zygote: import once, then fork a child per request line on stdin."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    _emit({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                run_child(request)
            finally:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        _emit({"exit": os.waitstatus_to_exitcode(status)})


def child_main() -> None:
    """A fresh interpreter running one request (``fresh=True``)."""
    import importlib

    request = json.loads(sys.argv[1])
    for name in request.get("preload", []):
        importlib.import_module(name)
    run_child(request)


# ---------------------------------------------------------------------------------------
# Parent side


@dataclass
class Outcome:
    exit_code: int  # 0 done, 3 the operation raised, -9 killed
    killed_by: str | None  # "hook", "timer", "parent" or None
    seconds: float | None = None  # the operation's own duration when it finished
    counts: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    error: str | None = None
    code: str | None = None
    result: dict | None = None

    @property
    def killed(self) -> bool:
        return self.exit_code == -signal.SIGKILL


class _Lines:
    """Line reader on a pipe with a timeout (select), no hidden buffering."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self, timeout: float | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _bootstrap(code: str) -> list[str]:
    return [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import crash_harness as h; {code}"]


class Harness:
    """A zygote process that forks one child per trial."""

    def __init__(self, preload: tuple[str, ...] = (), timeout: float = 120) -> None:
        self.preload = ["tunestep.tools.core.ledger", *preload]
        self.timeout = timeout
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                        HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(_bootstrap(f"h.serve({self.preload!r})"),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=self.env)
        self.lines = _Lines(self.proc.stdout.fileno())
        ready = self._message(self.lines)
        assert ready == {"ready": True}, ready

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _message(self, lines: _Lines, timeout: float | None = None) -> dict | None:
        raw = lines.readline(self.timeout if timeout is None else timeout)
        if raw is None:
            return None
        assert raw, "the harness process ended unexpectedly"
        return json.loads(raw)

    def run(self, op: str, root: Path, args: dict | None = None, *, kill: dict | None = None,
            delay: float | None = None, fresh: bool = False) -> Outcome:
        """Run ``op`` on ``root``; ``kill`` is a hook plan, ``delay`` a kill from here."""
        request = {"op": op, "root": str(root), "args": args or {}, "kill": kill,
                   "preload": self.preload}
        if fresh:
            child = subprocess.Popen([*_bootstrap("h.child_main()"), json.dumps(request)],
                                     stdout=subprocess.PIPE, env=self.env)
            lines = _Lines(child.stdout.fileno())
        else:
            child = None
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            lines = self.lines
        try:
            return self._follow(lines, child, kill, delay)
        finally:
            if child is not None:
                child.stdout.close()

    def _follow(self, lines: _Lines, child: subprocess.Popen | None, kill: dict | None,
                delay: float | None) -> Outcome:
        started = self._message(lines)
        assert started and "started" in started, started
        pid = started["started"]
        info: dict = {}
        exit_code = None
        killed_here = False
        deadline = None if delay is None else time.monotonic() + delay
        while True:
            if deadline is not None:
                raw = lines.readline(max(0.0, deadline - time.monotonic()))
                if raw is None:  # the delay is up and the operation still runs
                    with contextlib.suppress(ProcessLookupError):  # ended just now
                        os.kill(pid, signal.SIGKILL)
                    killed_here, deadline = True, None
                    continue
            else:
                raw = lines.readline(self.timeout)
                assert raw is not None, "the operation did not end in time"
            if not raw:  # end of a fresh child's output
                break
            message = json.loads(raw)
            if "exit" in message:  # the zygote reaped the child
                exit_code = message["exit"]
                break
            info.update(message)
            deadline = None  # done or failed: it ends on its own
        if child is not None:
            exit_code = child.wait(timeout=self.timeout)
        killed_by = None
        if exit_code == -signal.SIGKILL:
            killed_by = "parent" if killed_here else ("timer" if kill and "timer" in kill
                                                      else "hook")
        return Outcome(exit_code=exit_code, killed_by=killed_by, seconds=info.get("seconds"),
                       counts=info.get("counts", {}), events=info.get("events", []),
                       error=info.get("error"), code=info.get("code"), result=info.get("done"))


# ---------------------------------------------------------------------------------------
# Kill plans


def stratified(rng: random.Random, low: float, high: float, count: int) -> list[float]:
    """``count`` seeded points spread evenly over [low, high] (one per stratum)."""
    if count <= 0:
        return []
    width = (high - low) / count
    return [round(low + width * (i + rng.random()), 6) for i in range(count)]


def hook_plans(events: list, rng: random.Random, count: int, *,
               kinds: tuple[str, ...] = ("replace", "exchange", "fsync", "link", "mkstemp",
                                         "mkdtemp", "execute"),
               prefer: tuple[str, ...] = ("replace", "exchange"),
               sql_window: tuple[int, int] | None = None) -> list[dict]:
    """Deterministic kill points (before/after the Nth call), seeded.

    Half of them (or more, when there are too few others) are points of the ``prefer``
    kinds (the renames that publish a write), the rest other calls, all sampled.
    ``sql_window`` limits ``execute`` points to calls [first, last].
    """
    points = []
    for kind, n, _, _ in events:
        if kind not in kinds:
            continue
        if kind == "execute" and sql_window and not sql_window[0] <= n <= sql_window[1]:
            continue
        points += [{"hook": kind, "n": n, "when": "before"},
                   {"hook": kind, "n": n, "when": "after"}]
    first = [p for p in points if p["hook"] in prefer]
    rest = [p for p in points if p["hook"] not in prefer]
    rng.shuffle(first)
    rng.shuffle(rest)
    chosen = first[:max(count // 2, count - len(rest))]
    return chosen + rest[:count - len(chosen)]


def event_time(events: list, kind: str, n: int) -> float:
    return next(t for k, i, t, _ in events if k == kind and i == n)


def call_number(events: list, kind: str, detail: str) -> int:
    """n of the first ``kind`` call whose detail (file name, SQL) is ``detail``."""
    return next(i for k, i, _, d in events if k == kind and d == detail)


def last_event(events: list, *kinds: str) -> tuple[int, float]:
    """(n, time) of the last call of any of ``kinds``."""
    hits = [(i, t) for k, i, t, _ in events if k in kinds]
    return hits[-1]


def published(events: list) -> float:
    """When the last rename or exchange (the last publishing step) began."""
    return last_event(events, "replace", "exchange")[1]


def transaction_span(events: list, marker: str) -> tuple[int, int]:
    """(BEGIN, COMMIT) execute numbers of the transaction holding a statement with ``marker``."""
    statements = [(n, sql) for kind, n, _, sql in events if kind == "execute"]
    at = next(i for i, (_, sql) in enumerate(statements) if marker in sql)
    begin = max(i for i in range(at + 1) if statements[i][1].startswith("BEGIN"))
    commit = next(i for i in range(at, len(statements)) if statements[i][1] == "COMMIT")
    return statements[begin][0], statements[commit][0]


# ---------------------------------------------------------------------------------------
# Files and the ledger


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(root: Path, *, hidden: bool = False) -> dict[str, str] | None:
    """sha256 of every file under ``root`` (None when absent); hidden names skipped."""
    root = Path(root)
    if not root.exists():
        return None
    if root.is_file():
        return {"": sha(root)}
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not hidden and any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            out[rel.as_posix()] = sha(path)
    return out


def snapshot(root: Path, to: Path) -> Path:
    """Copy a workspace (no ledger connection may be open) to ``to``."""
    to = Path(to)
    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(root, to, symlinks=True)
    return to


def restore(saved: Path, root: Path) -> None:
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(saved, root, symlinks=True)


def hidden_entries(folder: Path, stem: str | None = None) -> list[str]:
    """Hidden names in ``folder`` (temp and set-aside entries of atomic writes)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")
                  and (stem is None or p.name.startswith(f".{stem}.")))


@dataclass
class LedgerState:
    integrity: list[str]
    foreign_keys: list
    user_version: int
    tables: set[str]
    jobs_without_approval: list[str]
    approvals_without_job: list[str]

    def problems(self, schema_version: int) -> list[str]:
        found = []
        if self.integrity != ["ok"]:
            found.append(f"integrity_check: {self.integrity}")
        if self.foreign_keys:
            found.append(f"foreign_key_check: {self.foreign_keys}")
        if self.user_version not in (0, schema_version):
            found.append(f"user_version {self.user_version}")
        if self.user_version == 0 and self.tables:
            found.append(f"tables without a schema version: {sorted(self.tables)}")
        if self.jobs_without_approval or self.approvals_without_job:
            found.append(f"half-recorded job: jobs without approval "
                         f"{self.jobs_without_approval}, approvals without job "
                         f"{self.approvals_without_job}")
        return found


def ledger_state(root: Path) -> LedgerState | None:
    """The ledger file's health as a crashed process left it (None: no ledger file)."""
    path = Path(root) / ".tunestep" / "state.sqlite"
    if not path.exists():
        return None
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'")}
        lonely_jobs = lonely_approvals = []
        if {"jobs", "approvals"} <= tables:
            lonely_jobs = [r[0] for r in conn.execute(
                "SELECT job_id FROM jobs WHERE job_id NOT IN (SELECT job_id FROM approvals)")]
            lonely_approvals = [r[0] for r in conn.execute(
                "SELECT nonce FROM approvals WHERE job_id NOT IN (SELECT job_id FROM jobs)")]
    finally:
        conn.close()
    return LedgerState(integrity, foreign, version, tables, lonely_jobs, lonely_approvals)


def rows(root: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(str(Path(root) / ".tunestep" / "state.sqlite"), timeout=30)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
