"""Streaming row readers for .jsonl, .json and .parquet, with 1-based line numbers.

A reader never raises on bad data: a line that cannot be read becomes a ``ReadIssue`` in
the stream, in its place, so the inspector reports it with its line and goes on. Files are
opened read-only; nothing here writes.

- JSONL is read line by line in binary (a 10 MB line costs 10 MB, a 1 GB file does not
  cost 1 GB), lines ending where text mode ends them (``\n``, ``\r\n`` or a lone ``\r``),
  as the job's loader reads them. A UTF-8 BOM is skipped with a warning, blank lines are
  skipped and counted, invalid UTF-8 and invalid JSON are reported per line.
- JSON has no line structure to stream by, so a .json file is parsed whole (orjson); the
  line of each array element is found by a scan that skips strings.
- Parquet is read in record batches; its "line" is the 1-based row number.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.readfile import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_ROW_BYTES,
    Overlong,
    bounded_lines,
    drain,
    file_identity,
    open_regular,
)

BOM = b"\xef\xbb\xbf"
# Past this size a .json file's element lines are not mapped (the scan is Python-speed);
# findings then give the 1-based element number instead, as they do for an array whose
# elements share lines.
JSON_LINE_MAP_LIMIT = 128 << 20
PARQUET_BATCH = 2048


class ReadIssue(NamedTuple):
    """A problem met while reading; ``row`` says whether it stands in for a row."""

    code: str
    message: str
    row: bool = True


def container_of(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def is_blank(raw: bytes) -> bool:
    """Blank as the job's loader (``str.strip``) sees it: whitespace only, Unicode's too."""
    if not raw.strip():
        return True
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def line_issue(raw: bytes, is_last: bool) -> ReadIssue:
    """Why a JSONL line did not parse: bad UTF-8, a stray array, or bad JSON."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ReadIssue("invalid_utf8", f"byte {exc.start + 1} of the line is not UTF-8 "
                                         f"(0x{raw[exc.start]:02x})")
    # Parsed without its line end, so the parser's position is a column of this line (with
    # the newline, a row cut short is "end of data at line 2 column 1").
    body = raw.rstrip(b"\r\n")
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = f"not valid JSON: {_json_reason(exc, body.decode('utf-8'))}"
        if is_last and not raw.endswith(b"\n"):
            detail += "; the file ends without a newline, so it may be truncated"
        return ReadIssue("invalid_json", detail)
    return ReadIssue("invalid_json", "not valid JSON")  # unreachable in practice


def _json_reason(exc: orjson.JSONDecodeError, text: str) -> str:
    """What the parser found and where, in 1-based columns of ``text`` (one line)."""
    reason = str(exc).split(":", 1)[0]
    if reason.startswith("unexpected end of data"):
        end = len(text.rstrip())
        return f"the row ends after column {end} before its JSON is complete (cut off?)"
    return f"{reason} at column {exc.pos + 1}"


def array_issue() -> ReadIssue:
    return ReadIssue("jsonl_array", "this .jsonl file holds a JSON array; write one JSON "
                                    "object per line (or rename it to .json)")


def universal_lines(raw: bytes) -> list[bytes]:
    """One binary line (cut at ``\n``) cut where universal newlines cut it.

    The job's loader reads JSONL in text mode, where a lone ``\r`` ends a line too; so
    does ``data_rows.read_rows``. Cutting the same way keeps every line number the same as
    theirs, and a row that only parses when a lone ``\r`` is taken for JSON whitespace
    is not READY here when the job could not read it.
    """
    if b"\r" not in raw:
        return [raw]
    end = b"\n" if raw.endswith(b"\n") else b""
    body = raw[:len(raw) - len(end)]
    if end and body.endswith(b"\r"):
        body, end = body[:-1], b"\r\n"
    pieces = body.split(b"\r")
    lines = [piece + b"\r" for piece in pieces[:-1]]
    if pieces[-1] or end:  # "abc\r" at the end of the file is one line, not two
        lines.append(pieces[-1] + end)
    return lines


def iter_jsonl(path: Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
               digest: Any = None) -> Iterator[tuple[int, Any]]:
    """(line, row) pairs; ``row`` is a ReadIssue where the line could not be read.

    ``digest`` (a hashlib object) is fed every byte read, the whole file included when the
    reading stops early, so the caller can tell the rows came from the bytes it hashed.
    """
    with open_regular(path) as handle:
        yield from _jsonl_rows(handle, max_row_bytes, digest)
        if digest is not None:
            drain(handle, digest)


def too_large(size: int, limit: int) -> ReadIssue:
    return ReadIssue("row_too_large", f"the row is {size:,} bytes, over data.max_row_bytes "
                                      f"({limit:,}); it was skipped, not read")


def _jsonl_rows(handle, max_row_bytes: int, digest: Any) -> Iterator[tuple[int, Any]]:
    blank = 0
    number = 0
    first = True
    for chunk in bounded_lines(handle, max_row_bytes, digest):
        if chunk.__class__ is Overlong:
            number += 1
            first = False
            yield number, too_large(chunk.size, max_row_bytes)
            continue
        lines = universal_lines(chunk)
        for index, raw in enumerate(lines):
            number += 1
            if first:
                first = False
                if raw.startswith(BOM):
                    raw = raw[len(BOM):]
                    yield number, ReadIssue("bom", "the file starts with a UTF-8 byte "
                                                   "order mark; it is ignored", row=False)
                if raw.lstrip().startswith(b"["):
                    yield number, array_issue()
                    return
            try:
                yield number, orjson.loads(raw)
            except orjson.JSONDecodeError:
                if is_blank(raw):
                    blank += 1
                    continue
                is_last = index == len(lines) - 1 and handle.peek(1) == b""
                yield number, line_issue(raw, is_last)
    if blank:
        yield 0, ReadIssue("blank_lines", f"{blank} blank line(s) skipped", row=False)


def iter_json(path: Path, *, max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
              digest: Any = None, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
              ) -> Iterator[tuple[int, Any]]:
    """Rows of a .json file: an array of rows, or one object (one row).

    A .json is parsed whole, so one over ``max_json_bytes`` is a ``file_too_large``
    finding and is only hashed (in chunks), never loaded.
    """
    with open_regular(path) as handle:
        data = handle.read(max_json_bytes + 1)
        if digest is not None:
            digest.update(data)
        if len(data) > max_json_bytes:
            del data
            if digest is not None:
                drain(handle, digest)
            yield 1, ReadIssue("file_too_large", f"the .json file is over "
                                                 f"{max_json_bytes:,} bytes, and a .json is "
                                                 "parsed whole: write it as JSON Lines "
                                                 "(.jsonl), read row by row", row=False)
            return
    yield from _json_rows(data, max_row_bytes)


def _json_rows(data: bytes, max_row_bytes: int) -> Iterator[tuple[int, Any]]:
    if data.startswith(BOM):
        data = data[len(BOM):]
        yield 1, ReadIssue("bom", "the file starts with a UTF-8 byte order mark; it is "
                                  "ignored", row=False)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield from _json_failure(data, exc, max_row_bytes)
        return
    if isinstance(value, list):
        lines = element_lines(data) if len(data) <= JSON_LINE_MAP_LIMIT else None
        # A line names one row only when no two rows start on it; a compact array (all of
        # it on one line) is numbered by element instead. apply_mapping drops rows by this
        # number: one shared by two rows would drop both.
        if lines is None or len(lines) != len(value) or any(
                later <= earlier for earlier, later in pairwise(lines)):
            lines = list(range(1, len(value) + 1))
        yield from zip(lines, value, strict=True)
    else:
        yield 1, value


def _json_failure(data: bytes, exc: orjson.JSONDecodeError, max_row_bytes: int):
    """A .json that does not parse: bad UTF-8, JSON Lines under a .json name, or bad JSON."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        yield line, ReadIssue("invalid_utf8", f"byte 0x{data[bad.start]:02x} is not UTF-8; "
                                              "the file cannot be parsed")
        return
    first_line = data.split(b"\n", 1)[0]
    if exc.lineno > 1 and _parses(first_line):
        yield 1, ReadIssue("json_lines_in_json", "the .json file holds JSON Lines (one "
                                                 "object per line); read as JSON Lines",
                           row=False)
        # The bytes already read, not the file again: it may have changed since.
        yield from _jsonl_rows(io.BufferedReader(io.BytesIO(data)), max_row_bytes, None)
        return
    reason = str(exc).split(":", 1)[0]
    line, column = exc.lineno, exc.colno
    if reason.startswith("unexpected end of data"):
        # Where the data stops, not the start of the empty line after the last newline.
        text = data.decode("utf-8").rstrip()
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1)
        reason = f"the file ends after line {line} column {column} before its JSON is " \
                 "complete (cut off?)"
        yield line, ReadIssue("invalid_json", f"the file is not valid JSON: {reason}")
        return
    yield line, ReadIssue("invalid_json", f"the file is not valid JSON: {reason} "
                                          f"at line {line} column {column}")


def _parses(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_NON_SPACE = re.compile(rb"\S")


def element_lines(data: bytes) -> list[int] | None:
    """The 1-based line where each element of a top-level JSON array starts."""
    lines: list[int] = []
    depth = 0
    line = 1
    counted = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        char = token[:1]
        if char == b'"':
            continue
        if char in b"[{":
            depth += 1
            if depth != 1:
                continue
        elif char in b"]}":
            depth -= 1
            continue
        elif depth != 1:  # a comma inside a row
            continue
        start = _NON_SPACE.search(data, match.end())
        if start is None or data[start.start():start.start() + 1] == b"]":
            continue
        line += data.count(b"\n", counted, start.start())
        counted = start.start()
        lines.append(line)
    return lines


# Arrow types the job's loader (JSON rows) cannot carry: their Python values are bytes,
# Decimal, dates and times, or pairs, which no chat template renders and orjson refuses.
def _unsupported_type(kind: Any) -> str | None:
    import pyarrow as pa

    t = pa.types
    if (t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind)
            or t.is_decimal(kind) or t.is_temporal(kind) or t.is_map(kind)
            or t.is_union(kind) or getattr(t, "is_binary_view", lambda _: False)(kind)):
        return str(kind)
    if t.is_dictionary(kind):
        return _unsupported_type(kind.value_type)
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        return _unsupported_type(kind.value_type)
    if t.is_struct(kind):
        for index in range(kind.num_fields):
            found = _unsupported_type(kind.field(index).type)
            if found:
                return found
    return None


def iter_parquet(path: Path, *, digest: Any = None) -> Iterator[tuple[int, Any]]:
    """Rows of a Parquet file, numbered from 1, a record batch at a time.

    Parquet is read by random access, so the file is hashed through the same descriptor
    first, and its identity (inode, size, mtime) compared after: a file rewritten while it
    was read can then never match the hash the caller took before.
    """
    import pyarrow.parquet as pq

    with open_regular(path) as handle:
        if digest is not None:
            drain(handle, digest)
            handle.seek(0)
        before = file_identity(handle)
        try:
            reader = pq.ParquetFile(handle)
            for field in reader.schema_arrow:
                found = _unsupported_type(field.type)
                if found:
                    yield 0, ReadIssue("column_type_unsupported", f"column '{field.name}' "
                                       f"has type {found}, which the job cannot train on "
                                       "(no rows were read)", row=False)
                    return
            number = 0
            for batch in reader.iter_batches(batch_size=PARQUET_BATCH):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except Exception as exc:  # a broken container is a finding, not a crash
            yield 0, ReadIssue("file_unreadable", f"the Parquet file cannot be read: "
                                                  f"{type(exc).__name__}: {str(exc)[:200]}")
        if digest is not None and file_identity(handle) != before:
            digest.update(b"\0changed while read")  # can never match the earlier hash


def iter_rows(path: Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
              digest: Any = None) -> Iterator[tuple[int, Any]]:
    """(line, row) for any supported data file; ``digest`` is fed the bytes read."""
    container = container_of(path)
    try:
        if container == "jsonl":
            yield from iter_jsonl(path, max_row_bytes=max_row_bytes, digest=digest)
        elif container == "json":
            yield from iter_json(path, digest=digest, max_row_bytes=max_row_bytes)
        elif container == "parquet":
            yield from iter_parquet(path, digest=digest)
        else:
            yield 0, ReadIssue("file_unreadable", f"unsupported file type '.{container}'")
    except OSError as exc:
        yield 0, ReadIssue("file_unreadable", f"the file cannot be read: {exc.strerror or exc}")
    except TunestepError as exc:  # not a regular file, a link loop: nothing was read
        yield 0, ReadIssue(exc.code if exc.code != "path_link_loop" else "file_unreadable",
                           exc.message, row=False)


def iter_hub(dataset_id: str, split: str) -> Iterator[tuple[int, Any]]:
    """Rows of a Hub dataset through ``datasets`` streaming, numbered from 1."""
    from datasets import load_dataset

    stream = load_dataset(dataset_id, split=split, streaming=True)
    yield from enumerate(stream, 1)
