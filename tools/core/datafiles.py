"""Finding data files and counting their rows, without judging their contents.

The inspector decides whether rows are good; this module only answers "which files,
how many rows, what hash" quickly enough for a preflight on every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file

if TYPE_CHECKING:
    from tunestep.tools.core.call_context import CallContext

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataFile(BaseModel):
    path: str  # workspace-relative
    format: str  # jsonl | json | parquet
    rows: int | None  # None when the file cannot be counted (the inspector says why)
    size: int
    sha256: str
    note: str | None = None


def list_data_files(folder: Path, root: Path | None = None) -> list[Path]:
    """Data files directly in ``folder``, sorted by name; hidden files are skipped.

    With ``root`` (the workspace root), a listed file that is a link resolving outside it
    is refused (``path_escape``): naming the folder must not read what the link points at.
    """
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".")
    )
    if root is not None:
        for path in files:
            if not path.resolve().is_relative_to(root):
                shown = path.relative_to(root) if path.is_relative_to(root) else path.name
                raise TunestepError("path_escape", "a data file in the folder is a link "
                                    "leading outside the workspace", path=str(shown))
    return files


def count_rows(path: Path) -> tuple[int | None, str | None]:
    """Rows in a data file, or None and why when it cannot be counted cheaply."""
    from tunestep.tools.core.readfile import (
        DEFAULT_MAX_JSON_BYTES,
        DEFAULT_MAX_ROW_BYTES,
        bounded_lines,
        open_regular,
    )

    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":  # a huge line is counted, never held
            with open_regular(path) as handle:
                return sum(1 for line in bounded_lines(handle, DEFAULT_MAX_ROW_BYTES)
                           if not isinstance(line, bytes) or line.strip()), None
        if suffix == ".json":
            import orjson

            with open_regular(path) as handle:
                raw = handle.read(DEFAULT_MAX_JSON_BYTES + 1)
            if len(raw) > DEFAULT_MAX_JSON_BYTES:
                return None, f"over {DEFAULT_MAX_JSON_BYTES >> 20} MiB: too large to parse"
            data = orjson.loads(raw)
            if isinstance(data, list):
                return len(data), None
            if isinstance(data, dict):
                return 1, None
            return None, "not a JSON array or object"
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows, None
    except Exception as exc:  # any unreadable file is a finding, not a crash
        return None, f"unreadable: {type(exc).__name__}"
    raise TunestepError("data_format", f"unsupported data file type '{suffix}'", path=str(path))


def describe(path: Path, shown: str, call: CallContext | None = None) -> DataFile:
    rows, note = count_rows(path)
    return DataFile(
        path=shown,
        format=path.suffix.lower().lstrip("."),
        rows=rows,
        size=path.stat().st_size,
        sha256=sha256_file(path, call),
        note=note,
    )


def check_batch_name(name: str) -> None:
    """A batch is named by its folder name: never a path, never anything outside."""
    from tunestep.tools.core.workspace import check_relative

    check_relative(name)
    if "/" in name.strip("/") or "\\" in name:
        raise TunestepError("batch_name", "give the batch folder's name, not a path", path=name)


def batch_step(name: str, pattern: str) -> int | None:
    """The step number a batch folder name encodes, or None when it is not a batch."""
    from tunestep.tools.core.patterns import compile_pattern

    match = compile_pattern(pattern).match(name)  # RE2: linear time, whatever the plan says
    return int(match.group(1)) if match else None
