"""A model version's files: recorded with sha256 and size when the version is made, and
every later read of the version checked against that record.

A version is made by its own local job (the job hashes the folder it just wrote and
reports ``version_files``), by ``sync_model`` (the download is hashed before it is renamed
into place) or, for a folder put in the store by hand, by the operator's signed promotion
(the signed request names the content it found). The record lives in the ledger
(``model_versions.files``: ``[[path, sha256, size], ...]``, sorted by path), never beside
the files, which anyone who reaches the store through its link can edit.

Reading a version follows no symlink: a link anywhere inside it (a file or a folder) is
refused with ``version_symlink``, before anything is hashed, so nothing outside the
version can be slipped in (an ``adapter_config.json`` linked in after signing turns a
full model into a LoRA). With a record, the names and sizes are compared first (from
``lstat``, no byte read) and each file is hashed over at most its recorded size, so an
8 GiB sparse file costs one ``stat``. Without one (a hand-put folder being promoted), a
sparse file is refused (``version_file_sparse``) and the whole is capped at
``UNRECORDED_MAX_BYTES`` (``version_too_large``). Epoch checkpoints (``checkpoints/``)
are no part of what a version serves and are skipped.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import orjson

from tunestep.tools.core.errors import TunestepError

SKIPPED = ("checkpoints",)  # epoch checkpoints: not part of what a version serves
CHUNK = 1 << 20
UNRECORDED_MAX_BYTES = 64 << 30  # a version nobody recorded: the most promotion hashes
SPARSE_MIN_BYTES = 1 << 20  # below this, block rounding says nothing about holes

Entry = tuple[str, str, int]  # (relative path, sha256, size)


def _walk(folder: Path, shown: str) -> list[tuple[str, Path, os.stat_result]]:
    """Every regular file under ``folder`` (sorted, epoch checkpoints skipped), by lstat:
    a symlink or a special file anywhere is refused."""
    found: list[tuple[str, Path, os.stat_result]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                path = Path(entry.path)
                rel = path.relative_to(folder).as_posix()
                if rel.split("/", 1)[0] in SKIPPED:
                    continue
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    raise TunestepError(
                        "version_symlink", f"{shown}/{rel} is a symbolic link; a version's "
                        "files are hashed where they are and a link is followed nowhere: "
                        "remove it (or copy the real file in) and request again",
                        path=f"{shown}/{rel}")
                if stat.S_ISDIR(info.st_mode):
                    pending.append(path)
                elif stat.S_ISREG(info.st_mode):
                    found.append((rel, path, info))
                else:
                    raise TunestepError("version_symlink", f"{shown}/{rel} is not a regular "
                                        "file", path=f"{shown}/{rel}")
    return sorted(found, key=lambda item: item[0])


def _hash_bounded(path: Path, size: int, shown: str) -> str:
    """sha256 over exactly ``size`` bytes of ``path``, opened without following a link; a
    file that is not that long (or is longer) now is a changed file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise TunestepError("version_files_changed", f"{shown} cannot be read now: "
                            f"{exc.strerror}", path=shown) from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size != size:
            raise TunestepError("version_files_changed", f"{shown} changed size while it was "
                                "read", path=shown)
        left = size
        while left:
            block = handle.read(min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
        if left or handle.read(1):
            raise TunestepError("version_files_changed", f"{shown} changed size while it "
                                "was read", path=shown)
    return digest.hexdigest()


def scan_version(folder: Path, shown: str,
                 recorded: list[Entry] | None = None) -> list[Entry]:
    """The version's files as ``(path, sha256, size)``, sorted; checked against
    ``recorded`` when given (``version_files_changed`` naming the first difference)."""
    files = _walk(folder, shown)
    if recorded is not None:
        want = {path: (sha, size) for path, sha, size in recorded}
        have = {rel: info.st_size for rel, _, info in files}
        for rel in sorted(set(want) | set(have)):
            if rel not in have:
                raise _changed(shown, rel, "is missing")
            if rel not in want:
                raise _changed(shown, rel, "was added after the version was recorded")
            if have[rel] != want[rel][1]:
                raise _changed(shown, rel, f"is {have[rel]} bytes, recorded {want[rel][1]}")
        out = []
        for rel, path, info in files:
            sha = _hash_bounded(path, want[rel][1], f"{shown}/{rel}")
            if sha != want[rel][0]:
                raise _changed(shown, rel, f"has sha256 {sha[:12]}, recorded "
                                           f"{want[rel][0][:12]}")
            out.append((rel, sha, info.st_size))
        return out
    total = sum(info.st_size for _, _, info in files)
    if total > UNRECORDED_MAX_BYTES:
        raise TunestepError("version_too_large", f"{shown} holds {total} bytes, more than "
                            f"the {UNRECORDED_MAX_BYTES} a version nobody recorded may hold",
                            path=shown)
    for rel, _, info in files:
        allocated = getattr(info, "st_blocks", None)
        if (allocated is not None and info.st_size >= SPARSE_MIN_BYTES
                and allocated * 512 < info.st_size // 2):
            raise TunestepError(
                "version_file_sparse", f"{shown}/{rel} claims {info.st_size} bytes but holds "
                f"{allocated * 512} on disk (a sparse file): no model writes one; remove it",
                path=f"{shown}/{rel}")
    return [(rel, _hash_bounded(path, info.st_size, f"{shown}/{rel}"), info.st_size)
            for rel, path, info in files]


def _changed(shown: str, rel: str, how: str) -> TunestepError:
    return TunestepError("version_files_changed", f"{shown}/{rel} {how}: the version is not "
                         "the one its record names; restore it (or sync it again)",
                         path=f"{shown}/{rel}")


def identity(entries: list[Entry]) -> str:
    """sha256 over [[path, sha256], ...] (sorted): what a promotion request signs."""
    pairs = [[path, sha] for path, sha, _ in sorted(entries)]
    return hashlib.sha256(orjson.dumps(pairs, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_entries(raw: object) -> list[Entry] | None:
    """``[[path, sha256, size], ...]`` as a job reports it or the ledger holds it, or None
    when it is not that shape (then the version counts as unrecorded)."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(raw, list):
        return None
    out: list[Entry] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and len(item[1]) == 64
                and type(item[2]) is int and item[2] >= 0):
            return None
        out.append((item[0], item[1], item[2]))
    return sorted(out)


def recorded_files(conn: sqlite3.Connection, store: str, version: str) -> list[Entry] | None:
    row = conn.execute("SELECT files FROM model_versions WHERE store = ? AND version = ?",
                       (store, version)).fetchone()
    return parse_entries(row["files"]) if row is not None and row["files"] else None


def record_files(conn: sqlite3.Connection, store: str, version: str,
                 entries: list[Entry], source: str = "operator") -> None:
    """Keep ``entries`` as the version's record (inside the caller's write transaction); a
    version with no row yet (a hand-put folder) gets one of ``source``."""
    text = orjson.dumps([list(e) for e in sorted(entries)]).decode()
    updated = conn.execute("UPDATE model_versions SET files = ? WHERE store = ? AND version = ?",
                           (text, store, version)).rowcount
    if not updated:
        conn.execute("INSERT INTO model_versions(store, version, source, promoted, recorded_at,"
                     " files) VALUES (?, ?, ?, 0, ?, ?)",
                     (store, version, source, time.time(), text))


def made_files(result: dict) -> list[Entry] | None:
    """A local job's version files: as the job reported them (``version_files``, hashed
    before it committed the folder), else hashed here from the folder it names; None when
    neither is possible (the version stays unrecorded: a signed promotion records it)."""
    reported = parse_entries(result.get("version_files"))
    if reported is not None:
        return reported
    folder = result.get("model_path")
    if not isinstance(folder, str) or not Path(folder).is_dir():
        return None
    try:
        return scan_version(Path(folder), Path(folder).name)
    except (TunestepError, OSError):
        return None
