"""The scan: every row of every file through every check, in one streaming pass.

Used by ``run_inspector`` (mode "inspect": each row converted with the suggested spec of
its format, nothing written) and by ``apply_mapping`` (mode "map": each row converted with
the given spec; the scan decides which rows are dropped and why, a second pass writes).

Speed: canonical chat rows of a JSONL file take a fast path that checks them with C-level
builtins (``map``/``itemgetter``/``all``) and a per-role-sequence cache, with no Python
loop over messages and no pydantic; anything unusual falls to the slow path, which names
every problem. Per-row state is a few array slots: 8 bytes of duplicate key, 4 of line,
4 per message of length, 4 of sequence id. Duplicates are resolved at the end with numpy.

Here: the driving, the JSONL fast path and the accepted row's way in. The slow path is in
``slow_path.py``, the per-row checks and the resolution after the last row in
``row_checks.py`` (both base classes of ``Engine``), the per-file state in
``scan_state.py``, the grade pattern in ``grade.py``.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.readfile import (
    DEFAULT_MAX_ROW_BYTES,
    Overlong,
    bounded_lines,
    drain,
    open_regular,
)
from tunestep.tools.inspector.findings import Findings
from tunestep.tools.inspector.grade import GradeCheck
from tunestep.tools.inspector.leakage import HoldoutIndex, OverlapHits
from tunestep.tools.inspector.reader import (
    BOM,
    ReadIssue,
    array_issue,
    is_blank,
    iter_hub,
    iter_rows,
    line_issue,
    too_large,
    universal_lines,
)
from tunestep.tools.inspector.refs import ReferenceSet
from tunestep.tools.inspector.row_checks import RowChecks
from tunestep.tools.inspector.rules import CANONICAL_ROLES, check_roles
from tunestep.tools.inspector.scan_state import FileState, Source
from tunestep.tools.inspector.slow_path import SlowPath
from tunestep.tools.inspector.spec import MappingSpec
from tunestep.tools.inspector.stats import StatsCollector
from tunestep.tools.inspector.tokens import TokenCounter

Progress = Callable[[int, int | None, str], None]
PROGRESS_EVERY = 1 << 14  # rows between progress calls (a power of two: a cheap mask)


class Engine(SlowPath, RowChecks):
    def __init__(self, *, mode: str = "inspect", max_errors: int = 100,
                 grade_pattern: str | None = None, holdout: HoldoutIndex | None = None,
                 references: list[ReferenceSet] | None = None,
                 tokens: TokenCounter | None = None, progress: Progress | None = None,
                 max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> None:
        self.mode = mode
        self.max_row_bytes = max_row_bytes
        self.findings = Findings(max_errors)
        self.stats = StatsCollector()
        self.grade = GradeCheck(grade_pattern) if grade_pattern else None
        self.holdout = holdout if holdout is not None and holdout.rows else None
        self.references = references or []
        self.tokens = tokens
        self.progress = progress
        self.files: list[FileState] = []
        self.keys = array("q")
        self.lines = array("I")
        self.file_starts: list[int] = []
        self.overlaps = OverlapHits()
        # (file index, line, hold-out line, containment): the first NEAR_LISTED near
        # matches (the findings count every one)
        self.near_matches: list[tuple[int, int, int, float]] = []
        self.near_match_rows = 0
        self.drops: dict[tuple[int, int], str] = {}  # mode "map": rows the writer skips
        self.holdout_exact = 0
        self.done_before = 0  # rows of the files already scanned
        # role sequence -> sequence id (or -1 when the order is invalid)
        self._sequences: dict[tuple, int] = {}
        self._users: list[tuple[int, ...]] = []
        self._answers: list[tuple[int, ...]] = []
        self.over_length: list[tuple[int, int, int]] = []
        self._repair_specs: dict[int, MappingSpec] = {}

    # --- driving ------------------------------------------------------------------------

    def run(self, sources: list[Source]) -> None:
        for source in sources:
            state = FileState(index=len(self.files), source=source)
            self.files.append(state)
            self.file_starts.append(len(self.keys))
            # Every byte read is hashed as it is read, and must be the bytes whose sha256
            # the caller keys the result by: else the file changed during the call.
            digest = hashlib.sha256() if source.path and source.sha256 else None
            if self.mode == "inspect" and source.container == "jsonl" and source.path:
                self._scan_jsonl(state, digest)
            else:
                self._scan_rows(state, self._rows_of(source, digest))
            if digest is not None and digest.hexdigest() != source.sha256:
                raise TunestepError("data_changed", "the file changed while it was read "
                                    "(its bytes no longer match the sha256 taken at the "
                                    "start of the call); run the call again",
                                    path=source.shown)
            state.accepted = len(self.keys) - self.file_starts[-1]
            self.done_before += state.rows
            self._flush_tokens()
            self._tick(state, final=True)
        self.file_starts.append(len(self.keys))

    def _rows_of(self, source: Source, digest: Any = None) -> Iterator[tuple[int, Any]]:
        if source.hub is not None:
            return iter_hub(*source.hub)
        return iter_rows(source.path, max_row_bytes=self.max_row_bytes, digest=digest)

    def _tick(self, state: FileState, final: bool = False) -> None:
        if self.progress is None:
            return
        done = self.done_before + (0 if final else state.rows)
        verb = "checked" if final else "checking"
        try:
            self.progress(done, None, f"{verb} {state.source.shown}: {state.rows:,} rows")
        except Exception:  # a failing progress sink must not fail the inspection
            self.progress = None

    def _scan_rows(self, state: FileState, rows: Iterator[tuple[int, Any]]) -> None:
        for line, row in rows:
            self._row(state, line, row)
            if not state.rows & (PROGRESS_EVERY - 1):
                self._tick(state)

    def _scan_jsonl(self, state: FileState, digest: Any) -> None:
        """The JSONL loop, with the canonical-chat fast path inlined (see module doc)."""
        try:
            handle = open_regular(state.source.path, state.source.shown)
        except TunestepError as exc:  # a FIFO, a device, gone: named, never blocking
            code = exc.code if exc.code == "file_not_regular" else "file_unreadable"
            self._file_issue(state, ReadIssue(code, exc.message, row=False), 0)
            return
        with handle:
            lines = bounded_lines(handle, self.max_row_bytes, digest)
            first = next(lines, b"")
            if first.__class__ is bytes and first.startswith(BOM):
                first = first[len(BOM):]
                self._file_issue(state, ReadIssue("bom", "the file starts with a UTF-8 byte "
                                                         "order mark; it is ignored",
                                                  row=False), 1)
            if first.__class__ is bytes and first.lstrip().startswith(b"["):
                self._file_issue(state, array_issue()._replace(row=False), 1)
            elif first:
                self._fast_loop(state, handle, lines, first)
            if digest is not None:
                drain(handle, digest)

    def _fast_loop(self, state: FileState, handle, lines, first: bytes) -> None:
        # Everything the loop touches per row is a local name: attribute lookups and
        # method calls are most of what a row costs once orjson has parsed it.
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        role_of = itemgetter("role")
        content_of = itemgetter("content")
        strip = str.strip
        sequences = self._sequences
        answers_of = self._answers
        keys_append = self.keys.append
        lines_append = self.lines.append
        sids_append = self.stats.sids.append
        lengths_extend = self.stats.lengths.extend
        grades = self.stats.grades
        grade_find = self.grade.find if self.grade is not None else None
        leak = self._leak if self.holdout is not None else None
        tokens = self.tokens
        slow = self._row
        mask = PROGRESS_EVERY - 1
        blank = 0
        first_chat = 0
        shift = 0  # lines that lone carriage returns added before this one
        limit = self.max_row_bytes
        for number, raw in chain(((1, first),), enumerate(lines, 2)):
            if raw.__class__ is Overlong:  # skipped to its newline, never held whole
                slow(state, number + shift, too_large(raw.size, limit))
                continue
            cr = raw.find(b"\r")
            if cr >= 0 and cr != len(raw) - 1 and (cr != len(raw) - 2 or raw[-1] != 10):
                # A lone \r ends a line for the job's loader (text mode): so here too.
                added, blanks = self._cut_line(state, number + shift, raw,
                                               handle.peek(1) == b"")
                shift += added
                blank += blanks
                continue
            number += shift
            try:
                row = loads(raw)
            except decode_error:
                if is_blank(raw):
                    blank += 1
                else:
                    slow(state, number, line_issue(raw, handle.peek(1) == b""))
                continue
            try:
                messages = row["messages"]
                roles = tuple(map(role_of, messages))
                contents = tuple(map(content_of, messages))
                filled = all(map(strip, contents))
                sid = sequences.get(roles)
            except Exception:  # not canonical chat: the slow path says why
                slow(state, number, row)
                continue
            if sid is None:
                sid = self._sequence(roles)
            if sid < 0 or not filled or len(row) != 1 \
                    or sum(map(len, messages)) != 2 * len(messages):
                slow(state, number, row)
                continue
            state.rows += 1
            if not first_chat:
                first_chat = number
            if leak is not None and leak(state, number, sid, roles, contents):
                continue
            keys_append(hash((roles, contents)))
            lines_append(number)
            sids_append(sid)
            lengths_extend(map(len, contents))
            answers = answers_of[sid]
            last = contents[answers[-1]]
            if grade_find is not None:
                grade = grade_find(last)
                if grade is None:
                    self._no_grade(state, number)
                else:
                    grades[grade] = grades.get(grade, 0) + 1
            if "{{" in last or len(answers) > 1:
                self._placeholders(state, number, answers, contents)
            if tokens is not None:
                self._count_tokens(state, number, messages, roles, contents, None)
            if not number & mask:
                self._tick(state)
        if first_chat:
            state.first_lines.setdefault("chat", first_chat)
        if blank:
            self._file_issue(state, ReadIssue("blank_lines", f"{blank} blank line(s) "
                                                             "skipped", row=False), 0)

    def _cut_line(self, state: FileState, number: int, raw: bytes,
                  at_end: bool) -> tuple[int, int]:
        """The lines a lone \\r cuts ``raw`` into, each down the slow path.

        Returns (lines added, blank lines skipped).
        """
        lines = universal_lines(raw)
        blank = 0
        for index, piece in enumerate(lines):
            try:
                row = orjson.loads(piece)
            except orjson.JSONDecodeError:
                if is_blank(piece):
                    blank += 1
                else:
                    last = at_end and index == len(lines) - 1
                    self._row(state, number + index, line_issue(piece, last))
                continue
            self._row(state, number + index, row)
        return len(lines) - 1, blank

    # --- an accepted row ----------------------------------------------------------------

    def _sequence(self, roles: tuple) -> int:
        """The id of a valid role sequence, or -1 (cached either way)."""
        sid = self._sequences.get(roles)
        if sid is not None:
            return sid
        valid = all(isinstance(r, str) and r in CANONICAL_ROLES for r in roles) \
            and not check_roles(roles)
        sid = self.stats.sequence_id(roles) if valid else -1
        if valid and sid == len(self._users):
            self._users.append(tuple(i for i, r in enumerate(roles) if r == "user"))
            self._answers.append(tuple(i for i, r in enumerate(roles) if r == "assistant"))
        self._sequences[roles] = sid
        return sid

    def _accept(self, state: FileState, line: int, sid: int, roles: tuple,
                contents: tuple, messages: list, tools: Any) -> None:
        """A row that passed the structural checks (the slow path's way in)."""
        if self.holdout is not None and self._leak(state, line, sid, roles, contents):
            return
        self.keys.append(hash((roles, contents)))
        self.lines.append(line)
        self.stats.add(sid, contents)
        answers = self._answers[sid]
        if self.grade is not None:
            grade = self.grade.find(contents[answers[-1]])
            if grade is None:
                self._no_grade(state, line)
            else:
                self.stats.grades[grade] = self.stats.grades.get(grade, 0) + 1
        self._placeholders(state, line, answers, contents)
        if self.tokens is not None:
            self._count_tokens(state, line, messages, roles, contents, tools)
