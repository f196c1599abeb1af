"""One tool call's context: built once by the view, handed down as a parameter.

The view (an MCP tool, a CLI command) opens the workspace for the call with
``find_workspace(path, trusted_keys=...)``; the ``Workspace`` it gets carries a fresh
``CallContext`` (``ws.call``), and every domain function already takes that ``ws``. Nothing
is ambient: a function sees the context only through the parameter it was handed, and a
new call gets a new context, so nothing is remembered between calls. A workspace opened
without one (``open_workspace``: tests, the demo's builders) reads and hashes every time.

What the context holds:

- the operator keys this call trusts (the server's keys pinned at launch, the CLI's
  ``--operator-key`` / ``$TUNESTEP_OPERATOR_KEYS`` / key folder): every read of the
  ledger's line verifies signed promotion records with them. A ledger connection opened
  from the workspace (``ledger.open_ledger(ws)``) carries the same context, so a reader
  that holds only the connection verifies with the call's keys too;
- the plan as loaded: the first ``load_plan(ws)`` of a call reads the file, later ones get
  a copy (a caller that edits its plan cannot change what the next one reads);
- the hash memo: ``sha256_file(path, ws.call)`` hashes an unchanged file once per call.

A draft asks for the plan and for file hashes from many helpers (preflight, merge,
lengths, chain, the draft itself): before the memo that was nine plan reads and up to ten
hashes of the base training set per ``draft_job`` (``tests/test_call_context.py`` counts).

A file is known by (path, size, mtime_ns, ctime_ns, inode, device): a write through
``atomic.py`` is a new inode, an in-place write a new mtime and ctime. ctime is there
because mtime can be set back by whoever writes the file (``os.utime``) and ctime cannot.
A hash is kept only when the stat is the same before and after reading, and only regular
files are remembered (the hasher refuses a FIFO before this is consulted).

Why the context does not hold one ledger connection for the whole call: each ledger
operation opens its own short connection on purpose. A connection kept open across a
draft would hold SQLite's write lock, or a read snapshot, across hashing, tokenizing and
Hub calls (``ledger_busy`` for every other caller, stale reads for this one).

Standard library only: the bottom of ``core``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FileKey = tuple[str, int, int, int, int, int]  # path, size, mtime_ns, ctime_ns, inode, device


@dataclass(eq=False)
class CallContext:
    """What one tool call trusts and has read so far (never shared between calls)."""

    trusted_keys: Mapping[str, Any] | None = None  # key id -> Ed25519PublicKey
    # False: trust the keys but remember nothing (a workspace object kept across calls,
    # as a test keeps one for many calls: each call must see the files as they are then)
    remember: bool = True
    plans: dict[Any, Any] = field(default_factory=dict)  # plan file key -> LoadedPlan
    hashes: dict[FileKey, str] = field(default_factory=dict)

    def hash_file(self, path: Path, compute: Callable[[Path], str]) -> str:
        """``compute(path)``, once per unchanged regular file in this call."""
        if not self.remember:
            return compute(path)
        before = file_key(path)
        if before is not None and before in self.hashes:
            return self.hashes[before]
        digest = compute(path)
        if before is not None and file_key(path) == before:
            self.hashes[before] = digest
        return digest

    def plan(self, plan_file: Path, load: Callable[[], Any]) -> Any:
        """``load()``, once per unchanged plan file in this call (a deep copy each time)."""
        if not self.remember:
            return load()
        key: Any = file_key(plan_file) if plan_file.exists() else ("missing", str(plan_file))
        if key is None:  # not a regular file: the loader names the problem
            return load()
        if key not in self.plans:
            self.plans[key] = load()
        return self.plans[key].model_copy(deep=True)


def file_key(path: Path) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
            st.st_dev)
