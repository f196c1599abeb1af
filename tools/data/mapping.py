"""apply_mapping: foreign-format rows become canonical chat in a separate folder.

The source is never written. The output is ``<paths.mapped>/<source folder or file stem>/``
with one JSONL per source file and ``manifest.json`` (source and output sha256, the spec,
rows in and out, every dropped row with its line and reason). The whole folder is built
under a temp name and renamed into place, so a killed run leaves the previous output (or
none), never half of one. Running the same spec on the same input again is a no-op that
returns the recorded result with ``unchanged=True``.

Which rows are dropped is decided by the same scan the inspector runs (mode "map"): a row
the spec cannot convert, a row still wrong after conversion (unless ``on_invalid="fail"``
refuses the whole mapping), a duplicate (inside the source, or of the base train set or
an earlier batch), an exact copy of a hold-out row, and rows matched by ``drop_where``.

The checks that refuse before anything is written (the source, the output, the spec's
fit) are in ``mapping_guards``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_directory
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file, sha256_json
from tunestep.tools.core.next_step import NextAction
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.mapping_guards import (
    fit_spec,
    refuse_invalid,
    refuse_output,
    refuse_source,
    refuse_unreadable,
)
from tunestep.tools.inspector import conversion, leakage
from tunestep.tools.inspector.engine import Engine
from tunestep.tools.inspector.reader import ReadIssue, iter_rows
from tunestep.tools.inspector.refs import reference_set
from tunestep.tools.inspector.report import INSPECTOR_VERSION, MappingPreview
from tunestep.tools.inspector.run import _output_name, run_inspector
from tunestep.tools.inspector.scan_state import Source
from tunestep.tools.inspector.sources import (
    MAPPING_MANIFEST,
    Context,
    comparison_context,
    data_sources,
    resolve_data_path,
)
from tunestep.tools.inspector.spec import DropRule, MappingSpec

__all__ = ["MANIFEST_NAME", "DropRule", "DroppedRow", "MappedFile", "MappingResult",
           "MappingSpec", "MappingSuggestion", "apply_mapping", "read_manifest",
           "suggest_mapping"]

MANIFEST_NAME = MAPPING_MANIFEST
SHOWN_DROPPED = 50  # dropped rows listed in a result; the manifest lists every one
Progress = Callable[[int, int | None, str], None]


class DroppedRow(BaseModel):
    file: str
    line: int
    reason: str


class MappedFile(BaseModel):
    source: str
    source_sha256: str
    output: str  # workspace-relative
    output_sha256: str
    rows_in: int
    rows_out: int
    mapping: str  # "spec", or "pass-through" for a file already in canonical chat


class MappingResult(BaseModel):
    source: str
    output: str  # the output folder, workspace-relative
    manifest: str
    spec_sha256: str
    files: list[MappedFile]
    rows_in: int
    rows_out: int
    rows_dropped: int
    rows_changed: int  # rows kept after a repair (an empty exchange, trailing turns cut)
    drop_reasons: dict[str, int]
    dropped: list[DroppedRow] = Field(default_factory=list)  # the first few; manifest: all
    unchanged: bool = False
    next_actions: list[str] = Field(default_factory=list)
    next_steps: list[NextAction] = Field(default_factory=list)  # next_actions, structured


def _inspect_output(out_rel: str, note: str) -> dict:
    step = NextAction(tool="run_inspector", args={"path": out_rel}, note=note)
    return {"next_steps": [step], "next_actions": [step.mcp()]}


class MappingSuggestion(BaseModel):
    path: str
    status: str
    formats: list[str]
    mapping: MappingSpec | None
    preview: MappingPreview | None
    reason: str


def suggest_mapping(ws: Workspace, path: str, progress: Progress | None = None
                    ) -> MappingSuggestion:
    """The inspector's suggested mapping for ``path`` (from its cached report when fresh)."""
    report = run_inspector(ws, path, progress=progress)
    if report.suggested_mapping is not None:
        reason = report.next_actions[0] if report.next_actions else report.summary
    elif report.status == "READY":
        reason = "the data is already canonical chat: nothing to map"
    else:
        reason = next((a for a in report.next_actions if a.startswith("no mapping")),
                      "no mapping can fix the errors found; see run_inspector")
    return MappingSuggestion(path=report.path, status=report.status,
                             formats=sorted({f.format for f in report.files}),
                             mapping=report.suggested_mapping, preview=report.mapping_preview,
                             reason=reason)


def apply_mapping(ws: Workspace, source: str, mapping: MappingSpec,
                  progress: Progress | None = None) -> MappingResult:
    """Write ``source`` mapped by ``mapping`` as canonical chat JSONL under paths.mapped."""
    plan = load_plan(ws).plan
    target = resolve_data_path(ws, plan, source)
    shown = ws.relative(target) or "."
    refuse_source(ws, plan, target, shown)
    sources = data_sources(ws, plan, target)
    if not sources:
        raise TunestepError("mapping_source_invalid", "the source holds no .jsonl, .json or "
                                                      ".parquet file", path=shown)
    out_rel = f"{plan.paths.mapped.rstrip('/')}/{_output_name(shown)}"
    out = ws.resolve(out_rel)
    refuse_output(ws, plan, out, out_rel, sources)
    spec_sha = sha256_json(mapping.model_dump(mode="json"))
    context = comparison_context(ws, plan, target, sources)
    context_key = _context_key(context)
    # One writer of this output at a time (other processes included): the result then
    # names what is on disk when it returns, not what a concurrent call replaced.
    with output_lock(ws, out_rel):
        recorded = _recorded_result(ws, out, out_rel, shown, sources, spec_sha, context_key)
        if recorded is not None:
            _audit(ws, out_rel, recorded, "unchanged")
            return recorded
        kinds = [fit_spec(s, mapping) for s in sources]
        _remove_stale_leftovers(out)
        engine = _scan(plan, sources, context, progress)
        refuse_unreadable(engine)
        if mapping.on_invalid == "fail":
            refuse_invalid(engine)
        result = _write(ws, out, out_rel, shown, sources, kinds, engine, mapping, spec_sha,
                        context_key, progress)
        _audit(ws, out_rel, result, "ok")
    return result


@contextlib.contextmanager
def output_lock(ws: Workspace, name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``.tunestep/locks/<sha of name>.lock`` while ``name`` is
    written; a second writer waits for the first to finish."""
    import fcntl

    folder = ws.state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- leftovers ------------------------------------------------------------------------

STALE_AFTER_S = 3600  # a temp folder this old belongs to a run that was killed


def _remove_stale_leftovers(out: Path) -> None:
    """Temp folders of killed runs (never the output itself: that is replaced whole)."""
    if not out.parent.is_dir():
        return
    now = time.time()
    for entry in out.parent.iterdir():
        leftover = entry.name.startswith(f".{out.name}.") and (
            entry.name.endswith(".tmp") or ".old-" in entry.name)
        try:
            if leftover and entry.is_dir() and now - entry.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


# --- the scan and the writer ----------------------------------------------------------

def _context_key(context: Context) -> str:
    return sha256_json({"holdout": list(context.holdout[1:]) if context.holdout else None,
                        "references": [list(r[1:]) for r in context.references]})


def _scan(plan: Plan, sources: list[Source], context: Context,
          progress: Progress | None) -> Engine:
    holdout_index = None
    if context.holdout is not None:
        path, shown, sha = context.holdout
        train = (context.train[0], context.train[2]) if context.train else (None, None)
        holdout_index = leakage.holdout_index(path, shown, sha, *train)
    references = [reference_set(p, s, sha) for p, s, sha in context.references]
    engine = Engine(mode="map", max_errors=SHOWN_DROPPED, holdout=holdout_index,
                    references=references, progress=progress,
                    max_row_bytes=plan.data.max_row_bytes)
    engine.run(sources)
    engine.resolve_duplicates()
    return engine


def _output_names(sources: list[Source]) -> list[str]:
    names: list[str] = []
    for source in sources:
        name = f"{Path(source.shown).stem}.jsonl"
        if name in names or name == MANIFEST_NAME:
            name = f"{Path(source.shown).name}.jsonl"
        names.append(name)
    return names


def _write(ws: Workspace, out: Path, out_rel: str, shown: str, sources: list[Source],
           kinds: list[tuple[str, MappingSpec]], engine: Engine, mapping: MappingSpec,
           spec_sha: str, context_key: str, progress: Progress | None) -> MappingResult:
    files: list[MappedFile] = []
    written = 0
    with atomic_directory(out) as tmp:
        for index, (source, name) in enumerate(zip(sources, _output_names(sources),
                                                   strict=True)):
            rows_out, digest = _write_file(source, index, engine, tmp / name)
            written += rows_out
            if progress is not None:
                progress(written, None, f"wrote {out_rel}/{name}: {rows_out:,} rows")
            files.append(MappedFile(
                source=source.shown, source_sha256=source.sha256, output=f"{out_rel}/{name}",
                output_sha256=digest, rows_in=engine.files[index].rows, rows_out=rows_out,
                mapping=kinds[index][0]))
        result = _result(shown, out_rel, files, engine, mapping, spec_sha)
        manifest = {
            "tunestep_mapping": 1,
            "inspector_version": INSPECTOR_VERSION,
            "created_at": time.time(),
            "context_sha256": context_key,
            "spec": mapping.model_dump(mode="json"),
            "result": result.model_dump(mode="json", exclude={"dropped", "unchanged",
                                                              "next_actions", "next_steps"}),
            "dropped": [_dropped(engine, key, reason).model_dump()
                        for key, reason in sorted(engine.drops.items())],
        }
        (tmp / MANIFEST_NAME).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the output is ordinary data
    return result


def _write_file(source: Source, index: int, engine: Engine, target: Path) -> tuple[int, str]:
    """Stream one source file's kept rows into ``target``; (rows written, sha256).

    The source is read a second time here; its bytes are hashed as they are read and must
    be the ones the scan judged (``data_changed`` otherwise, and nothing is published).
    """
    digest = hashlib.sha256()
    read = hashlib.sha256()
    count = 0
    drops = engine.drops
    spec = source.map_spec
    keep_tools = spec.source_format == "chat" and spec.tools_field is None
    with open(target, "wb") as handle:
        for line, row in iter_rows(source.path, max_row_bytes=engine.max_row_bytes,
                                   digest=read):
            if isinstance(row, ReadIssue) or (index, line) in drops:
                continue
            messages, dropped, _ = conversion.convert(row, spec)
            if dropped or messages is None:
                continue  # recorded by the scan already
            out = {"messages": messages}
            if keep_tools and row.get("tools"):
                out["tools"] = row["tools"]  # TRL-style chat rows keep their tools column
            data = orjson.dumps(out) + b"\n"
            handle.write(data)
            digest.update(data)
            count += 1
    if read.hexdigest() != source.sha256:
        raise TunestepError("data_changed", "the source changed between the scan and the "
                            "write; nothing was published: map it again", path=source.shown)
    return count, digest.hexdigest()


def _dropped(engine: Engine, key: tuple[int, int], reason: str) -> DroppedRow:
    index, line = key
    return DroppedRow(file=engine.files[index].source.shown, line=line, reason=reason)


def _result(shown: str, out_rel: str, files: list[MappedFile], engine: Engine,
            mapping: MappingSpec, spec_sha: str) -> MappingResult:
    reasons: dict[str, int] = {}
    for reason in engine.drops.values():
        code = reason.split(":", 1)[0] if not reason.startswith("drop_where") else reason
        reasons[code] = reasons.get(code, 0) + 1
    rows_in = sum(f.rows_in for f in files)
    rows_out = sum(f.rows_out for f in files)
    dropped = [_dropped(engine, key, reason)
               for key, reason in sorted(engine.drops.items())[:SHOWN_DROPPED]]
    return MappingResult(
        source=shown, output=out_rel, manifest=f"{out_rel}/{MANIFEST_NAME}",
        spec_sha256=spec_sha, files=files, rows_in=rows_in, rows_out=rows_out,
        rows_dropped=len(engine.drops), rows_changed=sum(s.changed for s in engine.files),
        drop_reasons=reasons, dropped=dropped,
        **_inspect_output(out_rel, "should say READY"))


# --- idempotence and audit ------------------------------------------------------------

def read_manifest(folder: Path) -> dict | None:
    """The manifest apply_mapping wrote in ``folder``, or None."""
    try:
        manifest = orjson.loads((folder / MANIFEST_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("tunestep_mapping") \
        else None


def _recorded_result(ws: Workspace, out: Path, out_rel: str, shown: str,
                     sources: list[Source], spec_sha: str, context_key: str
                     ) -> MappingResult | None:
    """The recorded result when the same spec already mapped these exact files."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("inspector_version") != INSPECTOR_VERSION \
            or manifest.get("context_sha256") != context_key:
        return None
    try:
        result = MappingResult.model_validate(manifest["result"])
    except (KeyError, ValueError):
        return None
    same_sources = [(f.source, f.source_sha256) for f in result.files] == [
        (s.shown, s.sha256) for s in sources]
    if result.source != shown or result.spec_sha256 != spec_sha or not same_sources:
        return None
    for mapped in result.files:
        path = ws.resolve(mapped.output)
        if not path.is_file() or sha256_file(path) != mapped.output_sha256:
            return None  # the output was touched: write it again
    dropped = [DroppedRow.model_validate(d) for d in manifest.get("dropped", [])]
    return result.model_copy(update={
        "unchanged": True, "dropped": dropped[:SHOWN_DROPPED],
        **_inspect_output(out_rel, "should say READY")})


def _audit(ws: Workspace, out_rel: str, result: MappingResult, outcome: str) -> None:
    detail = {"source": result.source, "spec_sha256": result.spec_sha256,
              "rows_in": result.rows_in, "rows_out": result.rows_out,
              "rows_dropped": result.rows_dropped,
              "outputs": {f.output: f.output_sha256 for f in result.files}}
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "mapping.apply", out_rel, outcome=outcome, detail=detail)
