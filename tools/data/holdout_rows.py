"""The rows of two versions of the hold-out set, compared by content.

A re-pin's review (``tools/data/holdout_repin.py``) says which rows the new hold-out adds and
which it drops. Rows are compared by their *normalized content*: the row parsed and
written again as canonical JSON (keys sorted, no whitespace), so a re-indented line or
reordered keys are the same row, while any change of a value is a removed row plus an
added one. The comparison is of multisets: a row that appears twice before and once now
is one removed row. Row numbers are 1-based lines (JSONL, blank lines skipped, as the job
reads them) or array elements (JSON, Parquet).

Its own small reader, on bytes (the old version comes from the ledger's snapshot, never
from the file): no import of merge or the inspector, which import preflight.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from typing import Any

import orjson
from pydantic import BaseModel, Field

EXAMPLES = 5  # rows named in full (number, digest, preview) on each side of the diff
PREVIEW = 60  # characters of a row's canonical JSON shown as its preview


class RowRef(BaseModel):
    """One row: where it is in its file, its content digest, and how it begins."""

    row: int  # 1-based line (JSONL) or element (JSON, Parquet)
    digest: str  # 16 hex of sha256 over the row's canonical JSON
    preview: str  # its first user turn, else its JSON, cut (workspace text: shown safely)


class RowDiff(BaseModel):
    """How the new hold-out differs from the pinned one, row by row."""

    compared: bool  # False: the pinned bytes are not kept, only the new side is known
    note: str | None = None  # why not compared, in words
    old_rows: int | None = None
    new_rows: int
    added: int | None = None
    removed: int | None = None
    unchanged: int | None = None
    added_rows: list[RowRef] = Field(default_factory=list)  # the first EXAMPLES
    removed_rows: list[RowRef] = Field(default_factory=list)


class RowsUnreadable(ValueError):
    """The bytes are not rows of this format (named in the message)."""


def parse_rows(data: bytes, suffix: str) -> list[tuple[int, Any]]:
    """(1-based number, row) for every row of a hold-out file's bytes."""
    suffix = suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as exc:  # a broken container: say so, never crash the review
            raise RowsUnreadable(f"not a readable Parquet file ({type(exc).__name__})") from None
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RowsUnreadable("not UTF-8") from None
    if suffix == ".json":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise RowsUnreadable(f"invalid JSON: {exc}") from None
        values = value if isinstance(value, list) else [value]
        return [(i + 1, row) for i, row in enumerate(values)]
    rows = []
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError:
            rows.append((number, {"__unparsed__": line.rstrip("\n")}))  # still a row
    return rows


def canonical(row: Any) -> bytes:
    """A row's normalized content: canonical JSON (values that JSON lacks as text)."""
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                        default=str)


def _preview(row: Any, data: bytes) -> str:
    """How a person recognizes the row: its first user turn (or prompt), else its JSON."""
    if isinstance(row, dict):
        for message in row.get("messages") or [] if isinstance(row.get("messages"), list) \
                else []:
            if isinstance(message, dict) and message.get("role") == "user" \
                    and isinstance(message.get("content"), str):
                return message["content"][:PREVIEW]
        if isinstance(row.get("prompt"), str):
            return row["prompt"][:PREVIEW]
    return data[:PREVIEW * 4].decode("utf-8", "replace")[:PREVIEW]


def refs(rows: list[tuple[int, Any]]) -> list[RowRef]:
    out = []
    for number, row in rows:
        data = canonical(row)
        out.append(RowRef(row=number, digest=hashlib.sha256(data).hexdigest()[:16],
                          preview=_preview(row, data)))
    return out


def _only_in(side: list[RowRef], other: list[RowRef]) -> list[RowRef]:
    """The rows of ``side`` beyond the copies of the same content in ``other``."""
    spare = Counter(r.digest for r in other)
    out = []
    for ref in side:
        if spare[ref.digest] > 0:
            spare[ref.digest] -= 1
        else:
            out.append(ref)
    return out


def diff(old: list[RowRef] | None, new: list[RowRef], note: str | None = None) -> RowDiff:
    """Rows added and removed; ``old`` None: the pinned rows are unknown (``note`` says why)."""
    if old is None:
        return RowDiff(compared=False, note=note, new_rows=len(new))
    added = _only_in(new, old)
    removed = _only_in(old, new)
    return RowDiff(compared=True, old_rows=len(old), new_rows=len(new), added=len(added),
                   removed=len(removed), unchanged=len(new) - len(added),
                   added_rows=added[:EXAMPLES], removed_rows=removed[:EXAMPLES])
