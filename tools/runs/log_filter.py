"""The readable view of a job's log: its own lines and its last error, nothing else.

``job_logs`` without ``raw`` streams a local log or the Hub's last lines through it.
"""

from __future__ import annotations

import re
from collections import deque

# The job's own lines (train_sft.py's log(): what train.log holds) start with a UTC stamp;
# the supervisor's start with "tunestep:".
_OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ |^tunestep: ")
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")
MAX_ERROR_LINES = 60


class LogFilter:
    """The readable view of a job log, kept in bounded memory while it streams by.

    Keeps the job's own stamped lines (the last ``tail``) and the last Python traceback
    (its last ``MAX_ERROR_LINES`` lines), escape codes removed; counts what it leaves out.
    """

    def __init__(self, tail: int) -> None:
        self.own: deque[str] = deque(maxlen=tail)
        self.error: deque[str] = deque(maxlen=MAX_ERROR_LINES)
        self._in_traceback = False
        self._error_at = -1  # how many own lines came before the last error
        self._own_seen = 0
        self.left_out = 0

    def add(self, raw_line: str) -> None:
        # A progress bar redraws with \r: only what follows the last one was the line.
        line = _ESCAPE.sub("", raw_line.rstrip("\n").rsplit("\r", 1)[-1]).rstrip()
        if line.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
            self.error.clear()
            self._error_at = self._own_seen
        if self._in_traceback:
            self.error.append(line)
            if _ERROR_LINE.match(line):  # the exception itself closes the traceback
                self._in_traceback = False
            return
        if _OWN_LINE.match(line):
            self.own.append(line)
            self._own_seen += 1
        else:
            self.left_out += 1

    def lines(self) -> list[str]:
        own = list(self.own)
        if not self.error:
            return own
        # The error where it happened among the job's lines (when they still show it).
        cut = max(0, len(own) - (self._own_seen - self._error_at))
        return [*own[:cut], *self.error, *own[cut:]]
