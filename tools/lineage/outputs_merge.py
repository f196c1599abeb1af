"""One history across local and remote steps: fetched outputs are merged, never swapped in.

A remote step runs in a fresh container, so what it pushes back covers that step alone:
its ``steps_history.json`` holds one entry, its ``train.log`` one step's lines, its
progression plot one point and its Trackio store one run. Copying those over the
workspace's files would erase every earlier step. Instead:

- **history** (``logs/steps_history.json``): entries are keyed by (step, batch), as the
  job keys them; only the fetched entry of the job's own step is taken (it replaces
  that step's entry alone; anything else in the fetched file is ignored, so a remote
  step never overwrites another step's entry) and the list stays in step order. The
  progression plot is drawn again from the merged list with the job's own
  ``plot_history``.
- **train.log**: the fetched lines are appended once, between two marker lines naming
  the draft; a second fetch of the same draft finds its marker and appends nothing.
- **Trackio** (``.tunestep/trackio/<project>.db``): the runs of the fetched database
  whose ``run_id`` the workspace's lacks are copied, table by table (metrics, configs,
  system metrics, alerts, traces); runs already there are left alone. A workspace with
  no database yet gets a copy of the fetched one.

Every write is atomic (temp file, fsync, rename) or one SQLite transaction.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import quote

from tunestep.tools.core.atomic import atomic_open, atomic_write_text
from tunestep.tools.core.errors import TunestepError

# Trackio tables holding one run's rows (sqlite_storage.py of trackio 0.4x), copied by run.
TRACKIO_RUN_TABLES = ("configs", "metrics", "system_metrics", "alerts", "traces")


def _entry_key(entry: dict) -> tuple:
    return (entry.get("step", 0), str(entry.get("batch", "")))


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TunestepError("history_invalid", f"the steps history is not valid JSON: {exc}",
                            path=str(path)) from None
    if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
        raise TunestepError("history_invalid", "the steps history must be a list of objects",
                            path=str(path))
    return loaded


def merge_history(local: Path, fetched: Path, step: int, batch: str) -> list[dict]:
    """The workspace's history with the fetched step's entry added, written back.

    Only the entry of this job's own step (``step``, ``batch``) is taken; whatever else
    the fetched file holds is ignored, so a remote step never overwrites another step's
    entry. A second fetch of the same step replaces its own entry only.
    """
    key = (step, batch)
    mine = [e for e in read_history(fetched) if _entry_key(e) == key]
    if not mine:
        raise TunestepError("history_invalid", f"the fetched steps history holds no entry "
                            f"for step {step} ({batch})", path=str(fetched.name))
    kept = [e for e in read_history(local) if _entry_key(e) != key]
    history = sorted([*kept, mine[-1]], key=_sort_key)
    atomic_write_text(local, json.dumps(history, indent=2) + "\n")
    return history


def _sort_key(entry: dict) -> tuple:
    # Entries someone wrote by hand may carry a step that is not a number: last, as text.
    step = entry.get("step", 0)
    number = step if isinstance(step, int) and not isinstance(step, bool) else None
    return (number is None, number or 0, str(step), str(entry.get("batch", "")))


def redraw_progression(history: list[dict], plot: Path) -> None:
    """The validation-across-steps plot, from the whole history (the job's function)."""
    from tunestep.tools.jobs.job_report import plot_history

    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_history(history, plot)


def _markers(draft_id: str) -> tuple[str, str]:
    return (f"# ---- remote step {draft_id}: train.log from HF Jobs ----",
            f"# ---- end of remote step {draft_id} ----")


def append_log_once(local: Path, fetched: Path, draft_id: str) -> bool:
    """Append the fetched log between markers unless this draft's marker is there already.

    The file is copied and extended under a temp name, then renamed over: a killed fetch
    leaves the old log, never half a block. Lines are streamed, never held whole.
    """
    begin, end = _markers(draft_id)
    if local.is_file():
        with open(local, encoding="utf-8", errors="replace") as handle:
            if any(line.rstrip("\n") == begin for line in handle):
                return False
    local.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(local, "wb") as out:
        if local.is_file():
            with open(local, "rb") as old:
                shutil.copyfileobj(old, out)
                if old.tell() and not _ends_with_newline(local):
                    out.write(b"\n")
        out.write(begin.encode() + b"\n")
        with open(fetched, "rb") as new:
            shutil.copyfileobj(new, out)
        if fetched.stat().st_size and not _ends_with_newline(fetched):
            out.write(b"\n")
        out.write(end.encode() + b"\n")
    return True


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def _tables(conn: sqlite3.Connection, schema: str) -> dict[str, list[tuple[str, bool]]]:
    """table -> [(column, is the INTEGER PRIMARY KEY)] for one attached database."""
    names = [r[0] for r in conn.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")]
    return {name: [(c[1], bool(c[5]) and c[2].upper() == "INTEGER")
                   for c in conn.execute(f"PRAGMA {schema}.table_info('{name}')")]
            for name in names}


def _uri(path: Path, read_only: bool) -> str:
    return f"file:{quote(str(path))}" + ("?mode=ro" if read_only else "")


def merge_trackio(local_dir: Path, fetched: Path) -> list[str]:
    """Copy the fetched database's runs that ``local_dir`` lacks; the run ids copied."""
    local = local_dir / fetched.name
    local_dir.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(_uri(fetched, True), uri=True)
    try:
        runs = sorted({r[0] for r in source.execute("SELECT run_id FROM configs")}
                      | {r[0] for r in source.execute("SELECT run_id FROM metrics")})
    except sqlite3.DatabaseError as exc:
        raise TunestepError("trackio_invalid", f"the fetched Trackio store is unreadable: {exc}",
                            path=fetched.name) from None
    finally:
        source.close()
    if not local.exists():
        with atomic_open(local, "wb") as out, open(fetched, "rb") as src:
            shutil.copyfileobj(src, out)
        return runs
    conn = sqlite3.connect(_uri(local, False), uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS fetched", (_uri(fetched, True),))
        ours, theirs = _tables(conn, "main"), _tables(conn, "fetched")
        have = {r[0] for t in ("configs", "metrics") if t in ours
                for r in conn.execute(f"SELECT DISTINCT run_id FROM main.{t}")}
        new = [run for run in runs if run not in have]
        if not new:
            return []
        marks = ",".join("?" * len(new))
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in TRACKIO_RUN_TABLES:
                if table not in ours or table not in theirs:
                    continue
                mine = {name for name, _ in ours[table]}
                cols = [name for name, rowid in theirs[table] if name in mine and not rowid]
                if "run_id" not in cols:
                    continue
                listed = ", ".join(f'"{c}"' for c in cols)
                conn.execute(f"INSERT OR IGNORE INTO main.{table} ({listed}) SELECT {listed}"
                             f" FROM fetched.{table} WHERE run_id IN ({marks})", new)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return new
    finally:
        conn.close()
