"""The scan: every row of every file through every check, in one streaming pass.

Used by ``run_inspector`` (mode "inspect": each row converted with the suggested spec of
its format, nothing written) and by ``apply_mapping`` (mode "map": each row converted with
the given spec; the scan decides which rows are dropped and why, a second pass writes).

Speed: canonical chat rows of a JSONL file take a fast path that checks them with C-level
builtins (``map``/``itemgetter``/``all``) and a per-role-sequence cache, with no Python
loop over messages and no pydantic; anything unusual falls to the slow path, which names
every problem. Per-row state is a few array slots: 8 bytes of duplicate key, 4 of line,
4 per message of length, 4 of sequence id. Duplicates are resolved at the end with numpy.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
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
from tunestep.tools.inspector import formats
from tunestep.tools.inspector.findings import Findings
from tunestep.tools.inspector.formats import RowProblem, classify, convert
from tunestep.tools.inspector.leakage import (
    GRAM,
    NEAR_LISTED,
    HoldoutIndex,
    OverlapHits,
    normalize_prompt,
    prompt_text,
)
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
from tunestep.tools.inspector.refs import ReferenceSet, content_text
from tunestep.tools.inspector.rules import (
    CANONICAL_ROLES,
    check_messages,
    check_roles,
    message_key_issues,
    severity,
)
from tunestep.tools.inspector.spec import MappingSpec
from tunestep.tools.inspector.stats import StatsCollector
from tunestep.tools.inspector.tokens import TokenCounter

Progress = Callable[[int, int | None, str], None]
PROGRESS_EVERY = 1 << 14  # rows between progress calls (a power of two: a cheap mask)
# What a repair mapping adds to a suggestion: rows stay when an empty exchange or trailing
# turns can be cut off; every row still wrong is dropped (and listed in the manifest).
REPAIRS = {"empty_turns": "drop_exchange", "trim_trailing": True, "on_invalid": "drop"}
PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")


@dataclass
class Source:
    shown: str  # workspace-relative path, or hf://datasets/<id>
    path: Path | None
    container: str
    sha256: str | None = None
    hub: tuple[str, str] | None = None  # (dataset id, split)
    map_spec: MappingSpec | None = None  # mode "map": the spec for this file


@dataclass
class FileState:
    index: int
    source: Source
    rows: int = 0
    accepted: int = 0
    changed: int = 0
    rows_with_errors: int = 0
    rescued: int = 0  # rejected rows the repair mapping would keep
    blocked: bool = False  # a file-level error no mapping can fix
    first_lines: dict[str, int] = field(default_factory=dict)
    specs: dict[str, MappingSpec | None] = field(default_factory=dict)
    raw_roles: set = field(default_factory=set)
    fields_seen: set = field(default_factory=set)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)


class GradeCheck:
    """The plan's grade pattern; the last match in an answer is its grade.

    A pattern that starts with a literal (``grade`` in the default) is searched from the
    literal's last occurrence, which skips the slow case-insensitive scan of the text.
    """

    def __init__(self, pattern: str) -> None:
        from tunestep.tools.core.patterns import compile_pattern

        self.regex = compile_pattern(pattern)  # RE2: no pattern can stall the scan
        self.literal, self.fold = _leading_literal(pattern)

    def find(self, text: str) -> str | None:
        if self.literal:
            hay = text.lower() if self.fold else text
            position = hay.rfind(self.literal)
            if position < 0:
                return None
            if len(hay) == len(text):
                match = self.regex.match(text, position)
                if match is not None:
                    return match.group(1)
        last = None
        for last in self.regex.finditer(text):  # noqa: B007 - we want the last one
            pass
        return last.group(1) if last is not None else None


def _leading_literal(pattern: str) -> tuple[str, bool]:
    try:
        from re import _parser  # the stdlib's own pattern parser

        parsed = _parser.parse(pattern)
        fold = bool(parsed.state.flags & re.IGNORECASE)
        chars = []
        for op, arg in parsed:
            if op is not _parser.LITERAL:
                break
            chars.append(chr(arg))
        literal = "".join(chars)
    except Exception:  # private API changed: simply no shortcut
        return "", False
    if len(literal) < 2 or (fold and not literal.isascii()):
        return "", False
    return (literal.lower() if fold else literal), fold


# What a step does with a row over max_length, as the draft says it (data.overlong): the
# inspector and the draft must not disagree about the same row.
OVERLONG_SAYS = {
    "truncate_prompt": "the job shortens the middle of its user turn and keeps the whole "
                       "answer, or leaves the row out when the answer alone is too long; "
                       "data.overlong truncate_prompt",
    "drop": "the job leaves the row out; data.overlong drop",
    "error": "a draft of it is refused; data.overlong error",
}


class Engine:
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

    # --- one row, the slow path ---------------------------------------------------------

    def _row(self, state: FileState, line: int, row: Any) -> None:
        if isinstance(row, ReadIssue):
            if row.row:
                state.rows += 1
                self._reject(state, line, [(row.code, row.message)])
            else:
                self._file_issue(state, row, line)
            return
        state.rows += 1
        fmt = classify(row)
        state.first_lines.setdefault(fmt, line)
        spec = self._spec(state, fmt, row, line)
        if spec is None:
            return
        self._note_fields(state, fmt, spec, row, line)
        try:
            messages, dropped, repairs = convert(row, spec)
        except RowProblem as problem:
            self._reject(state, line, [(problem.code, problem.message)])
            return
        if dropped:
            self._drop(state, line, dropped)
            return
        issues = check_messages(messages, spec.messages_field)
        if issues:
            self._reject(state, line, issues)
            self._rescue(state, spec, row)
            return
        if repairs:
            state.changed += 1
        roles = tuple(m["role"] for m in messages)
        contents = tuple(content_text(m) for m in messages)
        tools = row.get("tools") if fmt in (formats.CHAT, formats.CHAT_PARTS) else None
        self._accept(state, line, self._sequence(roles), roles, contents, messages,
                     tools or None)

    def _spec(self, state: FileState, fmt: str, row: Any, line: int) -> MappingSpec | None:
        """The spec this row converts with; None when the row is done with here."""
        if self.mode == "map":
            return state.source.map_spec
        if fmt == formats.NOT_OBJECT:
            kind = "null" if row is None else type(row).__name__
            self._reject(state, line, [("row_not_object", f"the row is a {kind}, "
                                                           "not an object")])
            return None
        if fmt == formats.UNKNOWN:
            keys = ", ".join(sorted(map(str, row))[:8]) or "no keys"
            self._reject(state, line, [("format_unknown", f"the row's keys ({keys}) match "
                                                           "no known format")])
            return None
        if fmt == formats.PREFERENCE:
            return None  # reported once per file at the end
        if fmt not in state.specs:
            state.specs[fmt] = formats.spec_for(fmt, row)
        spec = state.specs[fmt]
        if spec is None:  # plain text without chat markup: reported once per file
            state.first_lines.setdefault("text_plain", line)
        return spec

    def _note_fields(self, state: FileState, fmt: str, spec: MappingSpec, row: dict,
                     line: int) -> None:
        """Unexpected keys, weights, and what the suggestion needs to know about the row."""
        allowed = formats.allowed_keys(fmt, spec)
        for key in row:
            if key not in allowed and row[key] is not None:
                self.findings.add(state.index, line, "unexpected_key",
                                  f"key '{key}' is not part of the {fmt} format; "
                                  "training ignores it (a mapping drops it)")
        for extra in (spec.system_field, spec.tools_field, spec.history_field):
            if extra and row.get(extra) not in (None, "", []):
                state.fields_seen.add(extra)
        turns = row.get(spec.messages_field) if spec.source_format in (
            "chat", "sharegpt") else None
        if isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict) and isinstance(turn.get(spec.role_key), str):
                    state.raw_roles.add(turn[spec.role_key])
            if fmt in (formats.CHAT, formats.CHAT_PARTS, formats.KTO):
                for code, message in message_key_issues(turns):
                    self.findings.add(state.index, line, code, message)

    def _file_issue(self, state: FileState, issue: ReadIssue, line: int) -> None:
        self.findings.add(state.index, line or None, issue.code, issue.message)
        if severity(issue.code) == "error":
            state.blocked = True

    def _reject(self, state: FileState, line: int, issues: list[tuple[str, str]]) -> None:
        for code, message in issues:
            self.findings.add(state.index, line, code, message)
        state.rows_with_errors += 1
        code = issues[0][0]
        state.error_reasons[code] = state.error_reasons.get(code, 0) + 1
        if self.mode == "map":
            self.drops[(state.index, line)] = f"{code}: {issues[0][1]}"

    def _rescue(self, state: FileState, spec: MappingSpec, row: dict) -> None:
        """Would the repair mapping (see ``REPAIRS``) keep this rejected row?"""
        if self.mode != "inspect":
            return
        repair = self._repair_specs.get(id(spec))
        if repair is None:
            repair = self._repair_specs[id(spec)] = spec.model_copy(update=REPAIRS)
        try:
            messages, dropped, _ = convert(row, repair)
        except RowProblem:
            return
        if not dropped and not check_messages(messages, repair.messages_field):
            state.rescued += 1

    def _drop(self, state: FileState, line: int, reason: str) -> None:
        state.drop_reasons[reason] = state.drop_reasons.get(reason, 0) + 1
        if self.mode == "map":
            self.drops[(state.index, line)] = reason

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

    def _leak(self, state: FileState, line: int, sid: int, roles: tuple,
              contents: tuple) -> bool:
        """Hold-out checks on the prompt; True when it is a hold-out prompt (rejected)."""
        holdout = self.holdout
        words, joined = normalize_prompt(prompt_text(roles, contents, self._users[sid]))
        copy = holdout.exact(joined)
        if copy is not None:
            self.holdout_exact += 1
            self._reject(state, line, [("holdout_duplicate", f"the same prompt as hold-out "
                                        f"row {holdout.path}:{copy} (compared after Unicode "
                                        "NFKC, case, whitespace, zero-width and control "
                                        "characters folded; system prompt and answer "
                                        "left out)")])
            return True
        if len(words) >= GRAM:
            found = holdout.overlaps(words)
            near = holdout.nearest(found) if found else None
            if near is not None:  # no batch-boilerplate rule: reported at once
                self.near_match_rows += 1
                if len(self.near_matches) < NEAR_LISTED:
                    self.near_matches.append((state.index, line, near.line,
                                              near.containment))
                self.findings.add(state.index, line, "holdout_near_match",
                                  f"the prompt holds {near.containment:.0%} of the "
                                  "distinctive 8-word sequences of hold-out row "
                                  f"{holdout.path}:{near.line} (a near match from 50 %): "
                                  "the gate would measure a question the model trained on")
            else:
                for gram, held_line, start in found:
                    self.overlaps.add(gram, (state.index, line, held_line,
                                             " ".join(words[start:start + GRAM])))
        return False

    def _no_grade(self, state: FileState, line: int) -> None:
        self.findings.add(state.index, line, "grade_unparseable",
                          "the plan's grade_pattern finds no grade in the last answer")

    def _placeholders(self, state: FileState, line: int, answers: tuple,
                      contents: tuple) -> None:
        for index in answers:
            if "{{" in contents[index]:
                found = PLACEHOLDER.search(contents[index])
                if found:
                    self.findings.add(state.index, line, "template_placeholder",
                                      f"message {index + 1} (assistant) holds the unfilled "
                                      f"placeholder {found.group()}")

    def _count_tokens(self, state: FileState, line: int, messages: list, roles: tuple,
                      contents: tuple, tools: Any) -> None:
        done = self.tokens.add((state.index, line), messages, roles, contents, tools)
        if done:
            self._token_results(done)

    # --- tokens -------------------------------------------------------------------------

    def _flush_tokens(self) -> None:
        if self.tokens is not None:
            self._token_results(self.tokens.flush())

    def _token_results(self, results: list) -> None:
        limit = self.tokens.max_length
        for (index, line), count, parts, error in results:
            if error is not None:
                self.findings.add(index, line, "template_error",
                                  f"the chat template cannot render the row: {error}")
                continue
            self.stats.row_tokens.append(count)
            self.stats.assistant_tokens.extend(parts)
            if count > limit:
                self.over_length.append((index, line, count))
                self.findings.add(index, line, "over_max_length",
                                  f"{count:,} tokens, over training.max_length {limit:,} "
                                  f"({OVERLONG_SAYS.get(self.tokens.overlong, '')})")

    # --- after the last row -------------------------------------------------------------

    def resolve_duplicates(self) -> tuple[int, int]:
        """Duplicate findings (inside the input, and of the reference files)."""
        import numpy as np

        if not self.keys:
            return 0, 0
        keys = np.frombuffer(self.keys, dtype=np.int64)
        lines = np.frombuffer(self.lines, dtype=np.uint32)
        starts = np.array(self.file_starts, dtype=np.int64)
        file_of = np.searchsorted(starts, np.arange(keys.size), side="right") - 1
        of_earlier = np.zeros(keys.size, dtype=bool)
        for ref in self.references:
            if not ref.rows:
                continue
            at = np.minimum(np.searchsorted(ref.keys, keys), ref.keys.size - 1)
            hit = ref.keys[at] == keys
            for row in np.nonzero(hit & ~of_earlier)[0]:
                self._duplicate(int(file_of[row]), int(lines[row]), "duplicate_of_earlier",
                                f"the same conversation as {ref.path} line "
                                f"{int(ref.lines[at[row]])}")
            of_earlier |= hit
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_of = first[inverse.reshape(-1)]
        repeated = (first_of != np.arange(keys.size)) & ~of_earlier
        for row in np.nonzero(repeated)[0]:
            original = int(first_of[row])
            where = f"line {int(lines[original])}"
            if file_of[original] != file_of[row]:
                where += f" of {self.files[int(file_of[original])].source.shown}"
            self._duplicate(int(file_of[row]), int(lines[row]), "duplicate_in_batch",
                            f"the same conversation as {where}")
        return int(repeated.sum()), int(of_earlier.sum())

    def _duplicate(self, index: int, line: int, code: str, message: str) -> None:
        state = self.files[index]
        self.findings.add(index, line, code, message)
        state.rows_with_errors += 1
        state.error_reasons[code] = state.error_reasons.get(code, 0) + 1
        if self.mode == "map":
            self.drops.setdefault((index, line), f"{code}: {message}")

    def resolve_overlaps(self) -> tuple[int, int]:
        """holdout_overlap warnings, one per row; (rows, boilerplate grams ignored)."""
        path = self.holdout.path
        rows = sum(state.accepted for state in self.files)
        hits, ignored = self.overlaps.leaks(rows)
        first: dict[tuple[int, int], tuple] = {}
        for index, line, held_line, words in hits:
            first.setdefault((index, line), (held_line, words))
        for (index, line), (held_line, words) in sorted(first.items()):
            self.findings.add(index, line, "holdout_overlap",
                              f"the prompt shares the 8-word sequence \"{words}\" with "
                              f"hold-out row {path}:{held_line}")
        return len(first), ignored
