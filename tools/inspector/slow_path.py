"""One row the slow way: classify, convert, check, and name every problem.

The engine's fast path handles canonical chat rows of a JSONL file; every other row (any
other format, any row with a problem, every row in mode "map") comes here. ``SlowPath`` is
a base class of ``Engine``: it uses the engine's state (``findings``, ``mode``,
``drops``) and its accepted-row entry points (``_sequence``, ``_accept``).
"""

from __future__ import annotations

from typing import Any

from tunestep.tools.inspector import formats
from tunestep.tools.inspector.conversion import RowProblem, convert
from tunestep.tools.inspector.formats import classify
from tunestep.tools.inspector.reader import ReadIssue
from tunestep.tools.inspector.refs import content_text
from tunestep.tools.inspector.rules import check_messages, message_key_issues, severity
from tunestep.tools.inspector.scan_state import FileState
from tunestep.tools.inspector.spec import MappingSpec

# What a repair mapping adds to a suggestion: rows stay when an empty exchange or trailing
# turns can be cut off; every row still wrong is dropped (and listed in the manifest).
REPAIRS = {"empty_turns": "drop_exchange", "trim_trailing": True, "on_invalid": "drop"}


class SlowPath:
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
