"""What apply_mapping checks before it writes a row, each a typed refusal.

The source (never the hold-out set, never inside the mapped root), the output folder
(its own, or one apply_mapping wrote), the spec's fit to each file, and the scan's
verdict (no unreadable source, no invalid row when ``on_invalid`` is "fail"). Apart from
mapping.py, which scans and writes: nothing here writes.
"""

from __future__ import annotations

from pathlib import Path

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.inspector import formats
from tunestep.tools.inspector.engine import Engine
from tunestep.tools.inspector.reader import ReadIssue, iter_rows
from tunestep.tools.inspector.scan_state import Source
from tunestep.tools.inspector.sources import MAPPING_MANIFEST
from tunestep.tools.inspector.spec import MappingSpec, default_spec

# File-level findings that leave a source with no rows to map: refused, not mapped empty.
UNMAPPABLE = ("column_type_unsupported", "file_too_large", "file_not_regular")


def refuse_unreadable(engine: Engine) -> None:
    for index, state in enumerate(engine.files):
        code = next((c for c in UNMAPPABLE if engine.findings.counts.get(c)), None)
        if code is None or not state.blocked:
            continue
        listed, _ = engine.findings.listed([s.source.shown for s in engine.files])
        first = next((f for f in listed if f.code == code), None)
        detail = f": {first.message}" if first else ""
        raise TunestepError("mapping_source_invalid", f"{code}{detail}",
                            path=first.file if first else engine.files[index].source.shown)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def refuse_source(ws: Workspace, plan: Plan, target: Path, shown: str) -> None:
    holdout = ws.resolve(plan.paths.validation)
    mapped = ws.resolve(plan.paths.mapped)
    if target == holdout or (target.is_dir() and _inside(holdout, target)):
        raise TunestepError("mapping_source_invalid", "the source is (or holds) the hold-out "
                                                      "set, which is never mapped or copied",
                            path=shown)
    if _inside(target, mapped) or _inside(mapped, target):
        raise TunestepError("mapping_source_invalid", f"the source is inside (or holds) the "
                                                      f"mapped output root {plan.paths.mapped}",
                            path=shown)


def refuse_output(ws: Workspace, plan: Plan, out: Path, out_rel: str,
                   sources: list[Source]) -> None:
    holdout = ws.resolve(plan.paths.validation)
    if _inside(holdout, out) or any(_inside(s.path, out) for s in sources):
        raise TunestepError("mapping_output_invalid", "the output folder would hold the "
                                                      "hold-out set or the source", path=out_rel)
    if out.exists() and not (out / MAPPING_MANIFEST).is_file() and (
            not out.is_dir() or any(out.iterdir())):
        raise TunestepError("mapping_output_exists", "the output folder exists and was not "
                                                     "written by apply_mapping; move it away "
                                                     "first", path=out_rel)


def fit_spec(source: Source, mapping: MappingSpec) -> tuple[str, MappingSpec]:
    """The spec a file is mapped with: the given one, or pass-through for canonical chat.

    The first object row decides; a file whose rows have neither the spec's fields nor the
    canonical ``messages`` is refused before anything is written.
    """
    for count, (_, row) in enumerate(iter_rows(source.path)):
        if count > 1000:
            break
        if isinstance(row, ReadIssue) or not isinstance(row, dict):
            continue
        if all(field in row for field in mapping.required_fields()):
            source.map_spec = mapping
            return "spec", mapping
        if formats.classify(row) == formats.CHAT:
            source.map_spec = default_spec(
                "chat", system_prompt=mapping.system_prompt,
                replace_system=mapping.replace_system, empty_turns=mapping.empty_turns,
                trim_trailing=mapping.trim_trailing, drop_where=mapping.drop_where,
                on_invalid=mapping.on_invalid)
            return "pass-through", source.map_spec
        keys = ", ".join(sorted(map(str, row))[:8])
        needed = ", ".join(mapping.required_fields())
        raise TunestepError("mapping_mismatch", f"the rows have keys ({keys}) but a "
                                                f"{mapping.source_format} mapping reads "
                                                f"({needed}); inspect the file for a fitting "
                                                "mapping", path=source.shown)
    source.map_spec = mapping  # no readable row: every row is dropped with its reason
    return "spec", mapping


def refuse_invalid(engine: Engine) -> None:
    bad = sum(s.rows_with_errors for s in engine.files)
    if not bad:
        return
    listed, _ = engine.findings.listed([s.source.shown for s in engine.files])
    first = next((f for f in listed if f.severity == "error"), None)
    where = f" first: {first.file}:{first.line} {first.code}: {first.message}" if first else ""
    raise TunestepError("mapping_rows_invalid", f"{bad} row(s) are still invalid after "
                                                f"mapping and on_invalid is 'fail';{where}")
