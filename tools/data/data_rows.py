"""A data file's rows: read as the job's loader reads them, and what makes two the same.

Everything that reads a step's data goes through ``read_rows`` (the selection, the
merged file, the replay sample, the length count), so row *i* is the same row
everywhere, and through ``row_key`` / ``row_sha256`` to compare rows.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import orjson

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import canonical_json


def read_rows(path: Path, shown: str, data: bytes | None = None) -> list[tuple[int, Any]]:
    """(1-based line or element, parsed row) for every row of a data file.

    JSONL lines are split as Python's text mode splits them (universal newlines) and blank
    lines skipped, exactly as the job's loader does, so row *i* here is row *i* there.
    """
    raw = read_regular(path, shown) if data is None else data
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(raw))
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TunestepError("data_encoding", "the data file is not UTF-8", path=shown) from None
    if suffix == ".json":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TunestepError("data_json", f"invalid JSON: {exc}", path=shown) from None
        if isinstance(value, dict):
            return [(1, value)]
        if not isinstance(value, list):
            raise TunestepError("data_json", "a .json data file must hold an array or object",
                                path=shown)
        return [(i + 1, row) for i, row in enumerate(value)]
    rows = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise TunestepError("data_json", f"invalid JSON: {exc}", path=shown,
                                line=number) from None
    return rows


def read_regular(path: Path, shown: str) -> bytes:
    """The whole file, opened non-blocking and checked regular (never a FIFO or device).

    Merge holds one source file in memory at a time; the inspector has already refused
    every row over data.max_row_bytes and every .json over 64 MiB before this reads.
    """
    from tunestep.tools.core.readfile import open_regular

    with open_regular(path, shown) as handle:
        return handle.read()


def _text(value: Any, normalize: bool) -> Any:
    if isinstance(value, str):
        return " ".join(value.split()) if normalize else value
    return canonical_json(value)


def row_sha256(row: Any) -> str:
    """A row's content hash (canonical JSON): what the replay records identify it by."""
    return hashlib.sha256(canonical_json(row)).hexdigest()


def row_key(row: Any, *, normalize: bool) -> Any:
    """What makes two rows the same training example: roles and contents, nothing else.

    Other keys (ids, metadata) are left out because the job's loader drops them too. With
    ``normalize`` runs of whitespace count as one space (the hold-out comparison).
    """
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, list):
        # A tuple of strings: hashable, exact, and far cheaper than serialising each row.
        return tuple((m.get("role"), _text(m.get("content"), normalize))
                     if isinstance(m, dict) else _text(m, normalize) for m in messages)
    return _text(row, normalize)
