"""Opening data files the assistant may have replaced with anything, and reading them
in bounded pieces.

``open_regular`` never blocks and never follows a FIFO, socket or device: it opens with
``O_NONBLOCK`` (a FIFO without a writer would otherwise hang the caller, and with it the
MCP server), then checks with ``fstat`` on the open descriptor that it is a regular file,
so a swap between a check and the open cannot slip one in. ``bounded_lines`` reads JSONL
lines of at most ``limit`` bytes; a longer line is skipped in chunks to its newline and
reported as ``Overlong`` instead of being held in memory. Both feed a sha256 of every byte
they read when given one, so what is validated is what is hashed (one pass).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from tunestep.tools.core.errors import TunestepError

CHUNK = 1 << 20
DEFAULT_MAX_ROW_BYTES = 4 << 20  # data.max_row_bytes' default
DEFAULT_MAX_JSON_BYTES = 64 << 20  # a .json file is parsed whole: its own bound

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a folder"))


class Overlong(NamedTuple):
    """A line longer than the limit: its size in bytes (newline excluded); never its bytes."""

    size: int


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, shown: str | None = None) -> IO[bytes]:
    """``path`` opened for binary reading, or ``file_not_regular`` / ``file_unreadable``."""
    shown = shown or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TunestepError("path_link_loop", "the path is a loop of symbolic links",
                                path=shown) from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO in a mode that cannot open
            raise TunestepError("file_not_regular", "not a regular file (a socket or "
                                "similar); give a data file", path=shown) from None
        raise TunestepError("file_unreadable", f"the file cannot be read: "
                            f"{exc.strerror or exc}", path=shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise TunestepError("file_not_regular", f"the path is {kind_of(mode)}, not a "
                                "regular file; nothing was read from it", path=shown)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_identity(handle: IO[bytes]) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime_ns) of an open file: what changes when it is rewritten."""
    st = os.fstat(handle.fileno())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def bounded_lines(handle: IO[bytes], limit: int, digest: Any = None
                  ) -> Iterator[bytes | Overlong]:
    """The lines of ``handle`` (``\\n``-terminated, as iterating a binary file gives them),
    each at most ``limit`` bytes plus its newline; a longer one comes as ``Overlong``."""
    readline = handle.readline
    update = digest.update if digest is not None else None
    while True:
        line = readline(limit + 1)
        if not line:
            return
        if update is not None:
            update(line)
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while True:  # skip the rest of the line, a chunk at a time
            piece = readline(CHUNK)
            if update is not None:
                update(piece)
            if not piece:
                break
            if piece.endswith(b"\n"):
                size += len(piece) - 1
                break
            size += len(piece)
        yield Overlong(size)


def drain(handle: IO[bytes], digest: Any) -> None:
    """Hash the rest of ``handle`` (a reader that stopped early still hashes all of it)."""
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
