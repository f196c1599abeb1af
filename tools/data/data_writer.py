"""What tunestep's data writers share (the merged file, the replay sample, preprocess).

One writer at a time per workspace (``data_lock``), the leftovers a killed writer
leaves (``remove_leftovers``), and the manifest written beside a derived file
(``manifest_path``, ``MANIFEST_VERSION``). Apart so that each writer can import it
without importing the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tunestep.tools.core.workspace import Workspace

MANIFEST_VERSION = 1


def manifest_path(merged: Path) -> Path:
    """``merged_train.jsonl`` -> ``merged_train.manifest.json`` beside it."""
    return merged.with_name(f"{merged.stem}.manifest.json")


@contextlib.contextmanager
def data_lock(ws: Workspace) -> Iterator[None]:
    """One tunestep data writer at a time per workspace (merge, preprocess).

    Under it, leftovers of a killed writer (hidden temp names) are known to be stale and
    can be removed.
    """
    ws.state_dir.mkdir(exist_ok=True)
    with open(ws.state_dir / "data.lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): single-writer is then the caller's duty
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_leftovers(folder: Path, name: str) -> list[str]:
    """Temp files/folders a killed atomic write of ``name`` left in ``folder``."""
    import shutil

    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        stale = (entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp")) or \
            entry.name.startswith(f".{name}.old-")
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
