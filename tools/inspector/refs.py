"""Rows of other files in canonical form: the base train set, earlier batches, the hold-out.

Duplicates are found by comparing rows in canonical form (roles and contents only, so key
order, extra keys and the source format do not matter). The keys are 64-bit hashes held
in numpy arrays (8 bytes a row); they are valid within one process, so reference sets are
cached per process by file content hash and rebuilt by a new process.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.inspector.conversion import RowProblem, convert
from tunestep.tools.inspector.formats import NOT_OBJECT, PREFERENCE, UNKNOWN, classify, spec_for
from tunestep.tools.inspector.reader import ReadIssue, iter_rows
from tunestep.tools.inspector.rules import check_messages

_CACHE_SIZE = 16


def row_key(roles: tuple, contents: tuple) -> int:
    """The duplicate key of a canonical conversation."""
    return hash((roles, contents))


def content_text(message: dict) -> str:
    """The text of a message for hashing; a bare tool call counts by its calls."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    import orjson

    return orjson.dumps(message.get("tool_calls")).decode()


def canonical_rows(path: Path, sha256: str | None = None
                   ) -> Iterator[tuple[int, tuple, tuple]]:
    """(line, roles, contents) of every row of a file that converts to valid chat.

    With ``sha256`` the bytes are hashed as they are read and must be those: an index
    cached under that sha is then an index of exactly those bytes (else ``data_changed``
    once the rows are consumed).
    """
    specs: dict[str, Any] = {}
    digest = hashlib.sha256() if sha256 else None
    yield from _canonical(path, specs, digest)
    if digest is not None and digest.hexdigest() != sha256:
        raise TunestepError("data_changed", "the file changed while it was read; run "
                            "again", path=path.name)


def _canonical(path: Path, specs: dict, digest: Any) -> Iterator[tuple[int, tuple, tuple]]:
    for line, row in iter_rows(path, digest=digest):
        if isinstance(row, ReadIssue):
            continue
        fmt = classify(row)
        if fmt in (NOT_OBJECT, PREFERENCE, UNKNOWN):
            continue
        spec = specs.get(fmt)
        if spec is None:
            spec = specs[fmt] = spec_for(fmt, row)
        if spec is None:
            continue
        try:
            messages, dropped, _ = convert(row, spec)
        except RowProblem:
            continue
        if dropped or check_messages(messages):
            continue
        yield (line, tuple(m["role"] for m in messages),
               tuple(content_text(m) for m in messages))


@dataclass
class ReferenceSet:
    """Duplicate keys of one file, sorted, with the line of each key's first row."""

    path: str
    keys: Any  # numpy int64, sorted
    lines: Any  # numpy uint32, aligned with keys
    rows: int


_cache: OrderedDict[tuple[str, str], ReferenceSet] = OrderedDict()
_lock = threading.Lock()  # the MCP server may run tools in several threads


def reference_set(path: Path, shown: str, sha256: str) -> ReferenceSet:
    """The keys of ``path``; computed once per process for a given content hash."""
    import numpy as np

    cache_key = (shown, sha256)
    with _lock:
        if cache_key in _cache:
            _cache.move_to_end(cache_key)
            return _cache[cache_key]
    keys: list[int] = []
    lines: list[int] = []
    for line, roles, contents in canonical_rows(path, sha256):
        keys.append(row_key(roles, contents))
        lines.append(line)
    key_array = np.array(keys, dtype=np.int64)
    order = np.argsort(key_array, kind="stable")
    found = ReferenceSet(path=shown, keys=key_array[order],
                         lines=np.array(lines, dtype=np.uint32)[order], rows=len(keys))
    with _lock:
        _cache[cache_key] = found
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return found
