"""The step's sources, and each one READY per the inspector before a row is read.

A step's sources are the base training set, then every batch up to the current one in
step order, each from its mapped folder when apply_mapping wrote one, else from the
batch folder itself. ``ReadyMemo`` remembers READY verdicts so that step 50 does not
ask the inspector about all fifty sources again.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from tunestep.tools.core.atomic import atomic_write_bytes
from tunestep.tools.core.datafiles import check_batch_name, list_data_files
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file, sha256_json
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.batch_folders import BatchInfo

BASE_PART = "base"  # the part name of the base training set (batch names match a pattern)
MAPPING_MANIFEST = "manifest.json"  # apply_mapping's own record, not data


class Source(BaseModel):
    part: str
    step: int
    origin: Literal["base", "original", "mapped"]
    inspect: str  # what the inspector is asked about (a folder or the base file)
    files: list[str]


def choose_batch(batches: list[BatchInfo], named: str | None, incremental: str) -> BatchInfo:
    if named is not None:
        check_batch_name(named)
        chosen = next((b for b in batches if b.name == named), None)
        if chosen is None:
            raise TunestepError("batch_missing", "no such batch folder (or its name does not "
                                "match data.batch_pattern)", path=f"{incremental}/{named}")
        return chosen
    chosen = next((b for b in batches if not b.trained), None)
    if chosen is None:
        raise TunestepError("batch_missing", "no untrained batch folder: name a batch, or drop "
                            f"the next one into {incremental}/", path=incremental)
    return chosen


def find_sources(ws: Workspace, plan: Plan, batches: list[BatchInfo],
                 chosen: BatchInfo) -> list[Source]:
    base = plan.paths.train
    if not ws.resolve(base).is_file():
        raise TunestepError("train_missing", "the base training set is missing", path=base)
    found = [Source(part=BASE_PART, step=0, origin="base", inspect=base, files=[base])]
    order = (chosen.step, chosen.name)
    for info in batches:
        if (info.step, info.name) > order:
            continue
        mapped = f"{plan.paths.mapped}/{info.name}"
        mapped_dir = ws.resolve(mapped)
        origin: Literal["original", "mapped"] = "mapped" if mapped_dir.is_dir() else "original"
        folder_rel = mapped if origin == "mapped" else info.path
        folder = ws.resolve(folder_rel)
        files = [f"{folder_rel}/{p.name}" for p in list_data_files(folder, ws.root)
                 if not (origin == "mapped" and p.name == MAPPING_MANIFEST)]
        if not files:
            raise TunestepError("batch_empty", "the folder holds no .jsonl, .json or .parquet "
                                "file", path=folder_rel)
        found.append(Source(part=info.name, step=info.step, origin=origin,
                             inspect=folder_rel, files=files))
    return found


READY_MEMO = "ready_memo.json"  # under .tunestep/: READY verdicts by everything they depend on
READY_MEMO_SIZE = 2000


def _folder_hashes(ws: Workspace, rel: str) -> list[list[str]]:
    """(name, sha256) of every visible file in a folder (or of the file itself)."""
    path = ws.resolve(rel)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [[p.name, sha256_file(p, ws.call)] for p in files]


class ReadyMemo:
    """Skips the inspector for a source it already found READY with the same inputs.

    The inspector's own cache keys each batch by every earlier batch too (its cross-batch
    duplicate check), so asking it about all fifty sources of step 50 hashes ~1,300 files.
    Here each file is hashed once per call, and the key covers what the verdict depends
    on: the source's files (and, when mapped, the original batch), every earlier source,
    the hold-out set, the plan and the inspector's version. Only READY is remembered:
    a refusal always carries the inspector's fresh findings.
    """

    def __init__(self, ws: Workspace, plan_sha256: str, holdout_sha256: str) -> None:
        self.path = ws.state_dir / READY_MEMO
        try:
            from tunestep.tools.inspector import INSPECTOR_VERSION
        except ImportError:
            INSPECTOR_VERSION = None
        self.base = {"inspector": INSPECTOR_VERSION, "plan": plan_sha256,
                     "holdout": holdout_sha256}
        self.entries: dict[str, float] = {}
        with contextlib.suppress(OSError, orjson.JSONDecodeError, AttributeError):
            self.entries = dict(orjson.loads(self.path.read_bytes()))
        self.chain: list[str] = []
        self.changed = False

    def key(self, ws: Workspace, source: Source, original: str | None) -> str:
        own = _folder_hashes(ws, source.inspect)
        folder = ws.resolve(source.inspect).is_dir()
        # The shas this key stands for, by workspace path: what a hit vouches READY.
        self.own = {f"{source.inspect}/{name}" if folder else source.inspect: sha
                    for name, sha in own}
        if original is not None:
            own.append(["original", sha256_json(_folder_hashes(ws, original))])
        key = sha256_json({**self.base, "path": source.inspect, "files": own,
                           "earlier": self.chain})
        self.chain.append(key)
        return key

    def add(self, key: str) -> None:
        self.entries[key] = time.time()
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        newest = sorted(self.entries.items(), key=lambda kv: kv[1])[-READY_MEMO_SIZE:]
        with contextlib.suppress(OSError):  # a cache: failing to keep it costs time only
            atomic_write_bytes(self.path, orjson.dumps(dict(newest)))


def _inspect(ws: Workspace, path: str) -> Any:
    """The inspector's report on a folder or file (a seam the tests replace)."""
    from tunestep.tools.inspector import run_inspector

    return run_inspector(ws, path)


def require_ready(ws: Workspace, source: Source, mapped_root: str) -> Any:
    report = _inspect(ws, source.inspect)
    status = getattr(report, "status", None)
    if status == "READY":
        return report
    errors = list(getattr(report, "errors", []) or [])
    count = getattr(report, "error_count", len(errors))
    listed = "; ".join(
        f"{getattr(e, 'file', None) or source.inspect}:{getattr(e, 'line', None) or '-'} "
        f"{getattr(e, 'code', '')} {getattr(e, 'message', e)}".strip() for e in errors[:5])
    hint = ""
    if status == "NEEDS_MAPPING":
        hint = (f" Apply the inspector's mapping so that {mapped_root}/{source.part}/ holds "
                "canonical rows; the step then reads that folder.")
    first = errors[0] if errors else None
    raise TunestepError(
        "batch_not_ready",
        f"{source.inspect} is {status} per the inspector ({count} finding(s))"
        + (f": {listed}" if listed else "") + "." + hint,
        path=getattr(first, "file", None) or source.inspect,
        line=getattr(first, "line", None))
