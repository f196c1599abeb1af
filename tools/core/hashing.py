"""Content hashes and the canonical JSON that digests are taken over."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

if TYPE_CHECKING:
    from tunestep.tools.core.call_context import CallContext

CHUNK = 1 << 20


def sha256_file(path: Path, call: CallContext | None = None) -> str:
    """sha256 of a regular file, read in chunks; a FIFO or device is refused, never read.

    Given the call's context (``ws.call``), an unchanged file is hashed once per call.
    """
    if call is None:
        return _sha256_file(path)
    return call.hash_file(path, _sha256_file)


def _sha256_file(path: Path) -> str:
    from tunestep.tools.core.readfile import open_regular

    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_hashing(source: Path, writer: BinaryIO) -> str:
    """Copy ``source`` into the open ``writer`` and return the sha256 of the bytes copied:
    the copy is exactly what was hashed, whatever happens to ``source`` afterwards."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same value always gives the same bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()
