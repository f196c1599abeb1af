"""From a finished scan to a verdict: each file's format and status, the overall status, the
suggested mapping with what it would do, and what to do next.

Status rules (``.specs/inspector_rules.md``):
- READY: every file is canonical chat and no error was found.
- NEEDS_MAPPING: no error, and some file is in a known foreign format; the suggestion
  converts every row (a KTO file's undesirable rows are dropped by design).
- INVALID: an error was found. When every error belongs to single rows, the suggestion is
  a *repair*: the same mapping that cuts empty exchanges and trailing turns and drops the
  rows still wrong; its preview says at most how many rows go.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunestep.tools.inspector import formats
from tunestep.tools.inspector.engine import Engine
from tunestep.tools.inspector.report import FileReport, MappingPreview
from tunestep.tools.inspector.scan_state import FileState
from tunestep.tools.inspector.slow_path import REPAIRS
from tunestep.tools.inspector.spec import MappingSpec, default_spec

FOREIGN = {formats.CHAT_PARTS, formats.SHAREGPT, formats.ALPACA, formats.PROMPT_COMPLETION,
           formats.KTO, formats.TEXT}
KNOWN = FOREIGN | {formats.CHAT, formats.PREFERENCE}


@dataclass
class Verdict:
    status: str
    files: list[FileReport]
    spec: MappingSpec | None
    preview: MappingPreview | None
    spec_note: str | None  # why there is no suggestion, when there is none


def file_format(state: FileState) -> str:
    seen = {f for f in state.first_lines if f in KNOWN}
    if formats.CHAT in seen and formats.CHAT_PARTS in seen:
        seen.discard(formats.CHAT)  # typed parts in some rows: the file needs mapping
    if not seen:
        return "empty" if state.rows == 0 else ("unreadable" if state.blocked else "unknown")
    if len(seen) > 1:
        return "mixed"
    return seen.pop()


def file_findings(engine: Engine) -> None:
    """File-level findings that only the whole file can tell."""
    add = engine.findings.add
    for state in engine.files:
        fmt = file_format(state)
        if state.rows == 0 and not state.blocked:
            add(state.index, None, "empty_file", "the file holds no rows")
            state.blocked = True
        if fmt == "mixed":
            firsts = {f: n for f, n in state.first_lines.items() if f in KNOWN}
            listed = ", ".join(f"{formats.DESCRIPTIONS.get(f, f)} from line {n}"
                               for f, n in sorted(firsts.items(), key=lambda kv: kv[1]))
            add(state.index, min(firsts.values()), "mixed_formats",
                f"two formats in one file: {listed}")
            state.blocked = True
        if formats.PREFERENCE in state.first_lines:
            add(state.index, state.first_lines[formats.PREFERENCE], "preference_data",
                "rows with chosen/rejected answers are preference data for DPO-style "
                "training, not supervised fine-tuning conversations")
            state.blocked = True
        if "text_plain" in state.first_lines:
            add(state.index, state.first_lines["text_plain"], "text_unstructured",
                "plain 'text' rows have no user and assistant turns; write them as chat "
                "messages (ChatML-rendered text is mapped automatically)")
            state.blocked = True


def decide(engine: Engine) -> Verdict:
    errors = engine.findings.errors_by_file
    reports = []
    statuses = []
    for state in engine.files:
        fmt = file_format(state)
        if state.blocked or errors.get(state.index) or fmt not in KNOWN:
            status = "INVALID"
        elif fmt == formats.CHAT:
            status = "READY"
        else:
            status = "NEEDS_MAPPING"
        statuses.append(status)
        source = state.source
        reports.append(FileReport(
            path=source.shown, container=source.container, format=fmt, rows=state.rows,
            sha256=source.sha256, status=status,
            first_lines={f: n for f, n in state.first_lines.items() if f in KNOWN},
            line_numbers="row" if source.container in ("parquet", "hub") else "line"))
    if not statuses or "INVALID" in statuses:
        status = "INVALID"
    elif "NEEDS_MAPPING" in statuses:
        status = "NEEDS_MAPPING"
    else:
        status = "READY"
    spec, preview, note = _suggest(engine, status)
    return Verdict(status=status, files=reports, spec=spec, preview=preview, spec_note=note)


def _suggest(engine: Engine, status: str):
    if status == "READY" or not engine.files:
        return None, None, None
    blocked = [s.source.shown for s in engine.files if s.blocked]
    if blocked:
        return None, None, (f"{', '.join(blocked)} cannot be mapped as it is (see the "
                            "file-level errors)")
    spec, note = _merged_spec(engine.files)
    if spec is None:
        return None, None, note
    rows_in = sum(s.rows for s in engine.files)
    drops: dict[str, int] = {}
    for state in engine.files:
        for reason, count in state.drop_reasons.items():
            drops[reason] = drops.get(reason, 0) + count
    if status == "NEEDS_MAPPING":
        rows_out = sum(s.accepted for s in engine.files)
        return spec, MappingPreview(rows_in=rows_in, rows_out=rows_out,
                                    rows_dropped=rows_in - rows_out, drop_reasons=drops), None
    if not any(s.rows_with_errors for s in engine.files):
        # e.g. only over_max_length: a mapping cannot shorten rows; the plan can change
        return None, None, "these errors are not rows a mapping can repair or drop"
    repair = spec.model_copy(update=REPAIRS)
    duplicates = sum(s.error_reasons.get("duplicate_in_batch", 0)
                     + s.error_reasons.get("duplicate_of_earlier", 0) for s in engine.files)
    rescued = sum(s.rescued for s in engine.files)
    rows_out = sum(s.accepted for s in engine.files) - duplicates + rescued
    if rows_out <= 0:
        return None, None, "a repair would drop every row"
    for state in engine.files:
        for code, count in state.error_reasons.items():
            drops[code] = drops.get(code, 0) + count
    return repair, MappingPreview(rows_in=rows_in, rows_out=rows_out,
                                  rows_dropped=rows_in - rows_out, drop_reasons=drops,
                                  exact=False), None


def _merged_spec(states: list[FileState]) -> tuple[MappingSpec | None, str | None]:
    """One spec for every file: the foreign files' specs must agree (role maps merge)."""
    specs = []
    for state in states:
        fmt = file_format(state)
        if fmt == formats.CHAT:
            continue  # canonical files pass through any mapping unchanged
        spec = state.specs.get(fmt) if fmt != formats.CHAT_PARTS else (
            state.specs.get(formats.CHAT_PARTS) or state.specs.get(formats.CHAT))
        if spec is None:
            return None, f"{state.source.shown}: no mapping for format {fmt}"
        specs.append(_pruned(spec, state))
    if not specs:
        return default_spec("chat"), None
    first = specs[0]
    role_map: dict[str, str] = {}
    fields: dict[str, str | None] = {}
    for spec in specs:
        if _shape(spec) != _shape(first):
            return None, ("the files need different mappings; inspect and map them one "
                          "at a time")
        role_map.update(spec.role_map)
        for name in ("system_field", "tools_field", "history_field"):
            fields[name] = fields.get(name) or getattr(spec, name)
    return first.model_copy(update={"role_map": role_map, **fields}), None


def _shape(spec: MappingSpec) -> dict:
    dumped = spec.model_dump()
    for name in ("role_map", "system_field", "tools_field", "history_field"):
        dumped.pop(name)
    return dumped


def role_target(spec: MappingSpec, role: str) -> str | None:
    """What ``role`` maps to: exactly, or for ShareGPT whatever its case (``System``,
    ``Human``, ``GPT``), as the ShareGPT loaders of FastChat and LLaMA-Factory read it."""
    if role in spec.role_map:
        return spec.role_map[role]
    if spec.source_format == "sharegpt":
        folded = {k.casefold(): v for k, v in spec.role_map.items()}
        return folded.get(role.casefold())
    return None


def _pruned(spec: MappingSpec, state: FileState) -> MappingSpec:
    """The spec with only what this file uses: the roles it has, the columns it fills."""
    update: dict = {"role_map": {role: mapped for role in sorted(map(str, state.raw_roles))
                                 if (mapped := role_target(spec, role)) is not None}}
    for name in ("system_field", "tools_field", "history_field"):
        value = getattr(spec, name)
        if value and value not in state.fields_seen:
            update[name] = None
    return spec.model_copy(update=update)
