"""One tool call's view of the workspace: the plan read once, each file hashed once.

A draft asks for the plan and for file hashes from many helpers (preflight, merge,
lengths, chain, the draft itself), and each used to read the plan and hash the data
files again: nine plan reads and up to ten hashes of the base training set per
``draft_job``. Inside ``with step_context(ws):`` the first ``load_plan`` and the first
``sha256_file`` of a file are remembered for the rest of the call, so the helpers keep
their signatures and the call reads the plan once and hashes each file once.

The memo is ambient (a ``ContextVar``), not a parameter handed down: threading it
through every helper would reshuffle modules that change every day; the context is
entered once per tool call (``draft_job``, ``recompute``) and ends with it, so nothing
is remembered between calls. A file is known by (path, size, mtime_ns, inode, device):
any write through ``atomic.py`` is a new inode, an in-place write a new mtime, so a
changed file is hashed again. A hash is kept only when the file's stat is the same
before and after reading it. Only regular files are remembered (a FIFO is refused by
the hasher, never stat-keyed here). ``tests/test_call_context.py`` counts the reads.

This module is the bottom floor: standard library only (plan.py and hashing.py import
it lazily), so it can never close an import circle.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FileKey = tuple[str, int, int, int, int]  # path, size, mtime_ns, inode, device


@dataclass
class StepContext:
    """What one tool call has read so far (never shared between calls or threads)."""

    root: Path
    plans: dict[Any, Any] = field(default_factory=dict)  # plan file key -> LoadedPlan
    hashes: dict[FileKey, str] = field(default_factory=dict)


_current: ContextVar[StepContext | None] = ContextVar("tunestep_step_context", default=None)


@contextlib.contextmanager
def step_context(ws: Any) -> Iterator[StepContext]:
    """The call's context; a nested call for the same workspace shares the outer one."""
    outer = _current.get()
    if outer is not None and outer.root == ws.root:
        yield outer
        return
    token = _current.set(StepContext(root=ws.root))
    try:
        yield _current.get()  # type: ignore[misc]
    finally:
        _current.reset(token)


def _key(path: Path) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def memo_hash(path: Path, compute: Callable[[Path], str]) -> str:
    """``compute(path)``, once per unchanged file inside a step context."""
    ctx = _current.get()
    if ctx is None:
        return compute(path)
    before = _key(path)
    if before is not None and before in ctx.hashes:
        return ctx.hashes[before]
    digest = compute(path)
    if before is not None and _key(path) == before:
        ctx.hashes[before] = digest
    return digest


def memo_plan(ws: Any, plan_file: Path, load: Callable[[Any], Any]) -> Any:
    """``load(ws)``, once per unchanged plan file inside a step context (a deep copy each
    time, so a caller that edits its plan cannot change what the next one reads)."""
    ctx = _current.get()
    if ctx is None or ctx.root != ws.root:
        return load(ws)
    key = _key(plan_file) if plan_file.exists() else ("missing", str(plan_file))
    if key is None:  # not a regular file: the loader names the problem
        return load(ws)
    if key not in ctx.plans:
        ctx.plans[key] = load(ws)
    return ctx.plans[key].model_copy(deep=True)
