"""run_inspector: is this batch trainable as it is, mappable, or broken, and where exactly.

Bad data never raises: it becomes findings in the report. Only a caller's mistake raises
TunestepError (a path outside the workspace or missing, an unsupported file type, a Hub
id while offline).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tunestep.tools.core import ledger
from tunestep.tools.core.datafiles import DATA_SUFFIXES
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.next_step import NextAction, mcp_texts
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.repo_ids import repo_id_problem
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.inspector import leakage, verdict
from tunestep.tools.inspector.engine import Engine, Progress
from tunestep.tools.inspector.refs import reference_set
from tunestep.tools.inspector.report import (
    OVERLONG_LISTED,
    Duplicates,
    InspectionReport,
    Leakage,
    NearMatchRow,
    OverlongRow,
    TokenStats,
    cache_key,
    cached_report,
    store_report,
)
from tunestep.tools.inspector.scan_state import Source
from tunestep.tools.inspector.sources import (
    Context,
    comparison_context,
    data_sources,
    resolve_data_path,
)
from tunestep.tools.inspector.stats import percentiles

HUB_PREFIX = "hf://datasets/"
MAX_LISTED = 100_000  # max_errors: the most findings a report lists (all are counted)


def run_inspector(ws: Workspace, path: str, tokens: bool = False, max_errors: int = 100,
                  progress: Progress | None = None) -> InspectionReport:
    """Check every row of a data file or folder; say READY, NEEDS_MAPPING or INVALID.

    ``path`` is workspace-relative (a .jsonl/.json/.parquet file or a folder of them), or
    ``hf://datasets/<owner>/<name>[:<split>]`` to stream a Hub dataset when online. With
    ``tokens`` every row is tokenized with the plan model's tokenizer and chat template.
    ``progress(done_rows, total_or_None, message)`` is called every few thousand rows.
    """
    if not 0 <= max_errors <= MAX_LISTED:
        raise TunestepError("bad_argument", f"max_errors must be between 0 and "
                            f"{MAX_LISTED:,} (every finding is counted either way)")
    plan = load_plan(ws).plan
    if path.startswith(HUB_PREFIX):
        return _inspect_hub(ws, plan, path, tokens, max_errors, progress)
    target = resolve_data_path(ws, plan, path)
    shown = ws.relative(target) or "."
    sources = data_sources(ws, plan, target)
    context = comparison_context(ws, plan, target, sources)
    identity = None
    if tokens:
        from tunestep.tools.inspector.tokens import tokenizer_identity

        identity = tokenizer_identity(ws, plan.model)
    key = cache_key({
        "path": shown,
        "files": [[s.shown, s.sha256] for s in sources],
        "holdout": context.holdout[1:] if context.holdout else None,
        "train": context.train[1:] if context.train else None,
        "references": [list(r[1:]) for r in context.references],
        "plan": _plan_settings(plan),
        "max_errors": max_errors,
        "tokens": {"tokenizer": identity, "max_length": plan.training.max_length}
        if tokens else None,
    })
    found = _cache_lookup(ws, key)
    if found is not None:
        return found
    report = inspect_sources(ws, plan, shown, sources, context, tokens=tokens,
                             max_errors=max_errors, progress=progress)
    report.cache_key = key
    _cache_store(ws, key, report)
    return report


def _plan_settings(plan: Plan) -> dict:
    return {"grade_pattern": plan.grade_pattern, "batch_pattern": plan.data.batch_pattern,
            "max_row_bytes": plan.data.max_row_bytes,
            "train": plan.paths.train, "validation": plan.paths.validation,
            "incremental": plan.paths.incremental, "mapped": plan.paths.mapped,
            "model": plan.model, "overlong": plan.data.overlong}  # in the length findings


def _cache_lookup(ws: Workspace, key: str) -> InspectionReport | None:
    try:
        with ledger.open_ledger(ws) as conn:
            return cached_report(conn, key)
    except (sqlite3.Error, OSError, ledger.LedgerBusy):  # no usable ledger: no cache
        return None


def _cache_store(ws: Workspace, key: str, report: InspectionReport) -> None:
    try:
        with ledger.open_ledger(ws) as conn:
            store_report(conn, key, report)
    except (sqlite3.Error, OSError, ledger.LedgerBusy):
        pass  # the cache is an optimisation; the report stands without it


def inspect_sources(ws: Workspace, plan: Plan, shown: str, sources: list[Source],
                    context: Context, *, tokens: bool, max_errors: int,
                    progress: Progress | None) -> InspectionReport:
    """Scan ``sources`` and build the report (no cache involved)."""
    holdout_index = None
    if context.holdout is not None:
        path, held_shown, sha = context.holdout
        train_path, train_sha = (context.train[0], context.train[2]) if context.train \
            else (None, None)
        holdout_index = leakage.holdout_index(path, held_shown, sha, train_path, train_sha)
    references = [reference_set(p, s, sha) for p, s, sha in context.references]
    counter = None
    identity = None
    if tokens:
        from tunestep.tools.inspector.tokens import TokenCounter, load_tokenizer

        tokenizer, identity = load_tokenizer(ws, plan.model)
        counter = TokenCounter(tokenizer, plan.training.max_length)
        counter.overlong = plan.data.overlong  # what a step does with a longer row
    engine = Engine(mode="inspect", max_errors=max_errors, grade_pattern=plan.grade_pattern,
                    holdout=holdout_index, references=references, tokens=counter,
                    progress=progress, max_row_bytes=plan.data.max_row_bytes)
    engine.run(sources)
    in_input, of_earlier = engine.resolve_duplicates()
    overlap_rows, ignored = engine.resolve_overlaps() if engine.holdout else (0, 0)
    verdict.file_findings(engine)
    if not sources:
        engine.findings.add(0, None, "no_data_files",
                            "the folder holds no .jsonl, .json or .parquet file")
    decided = verdict.decide(engine)
    token_stats = _token_stats(engine, plan, identity, counter,
                               [s.shown for s in sources]) if tokens else None
    stats = engine.stats.summary(token_stats)
    listed, truncated = engine.findings.listed([s.shown for s in sources] or [shown])
    names = [s.shown for s in sources]
    near = [NearMatchRow(file=names[i], line=line, holdout_line=held,
                         containment=round(share, 3))
            for i, line, held, share in engine.near_matches]
    leak = Leakage(holdout=context.holdout[1] if context.holdout else None,
                   checked=holdout_index is not None, exact=engine.holdout_exact,
                   near_match_rows=engine.near_match_rows,
                   near_match_threshold=leakage.NEAR_MATCH, near_matches=near,
                   overlap_rows=overlap_rows, ignored_boilerplate_grams=ignored +
                   (holdout_index.ignored_grams if holdout_index else 0),
                   note=(holdout_index.note if holdout_index else context.holdout_note))
    report = InspectionReport(
        path=shown, status=decided.status, summary="", files=decided.files, errors=listed,
        error_count=engine.findings.error_count, warning_count=engine.findings.warning_count,
        counts=dict(sorted(engine.findings.counts.items())), truncated=truncated,
        lengths="checked" if tokens else "unchecked",
        stats=stats,
        duplicates=Duplicates(in_input=in_input, of_earlier=of_earlier,
                              compared_with=[r[1] for r in context.references]),
        leakage=leak, suggested_mapping=decided.spec, mapping_preview=decided.preview)
    report.summary = _summary(report)
    report.next_steps = _next_actions(report, plan, decided.spec_note, tokens)
    report.next_actions = mcp_texts(report.next_steps)
    return report


def _token_stats(engine: Engine, plan: Plan, identity: str | None, counter,
                 files: list[str]) -> TokenStats:
    stats = engine.stats
    total = sum(stats.row_tokens)
    overlong = [OverlongRow(file=files[i] if i < len(files) else "", line=line, tokens=n)
                for i, line, n in sorted(engine.over_length)[:OVERLONG_LISTED]]
    return TokenStats(
        overlong_rows=overlong,
        tokenizer=f"{plan.model} ({identity})", per_row=percentiles(stats.row_tokens),
        per_assistant_part=percentiles(stats.assistant_tokens),
        over_max_length=engine.findings.counts.get("over_max_length", 0),
        max_length=plan.training.max_length, total_tokens=total,
        trained_tokens=sum(min(n, plan.training.max_length) for n in stats.row_tokens),
        rendering=counter.note or "chat template (each role sequence rendered once)")


def _summary(report: InspectionReport) -> str:
    formats_seen = sorted({f.format for f in report.files})
    rows = sum(f.rows for f in report.files)
    tokens = report.stats.tokens
    lengths = ("lengths unchecked (tokens=false)" if tokens is None else
               f"lengths checked: {tokens.over_max_length:,} row(s) over max_length "
               f"{tokens.max_length:,}")
    return (f"{report.path}: {report.status}: {rows:,} rows in {len(report.files)} file(s) "
            f"({', '.join(formats_seen) or 'no data'}); {report.error_count:,} error(s), "
            f"{report.warning_count:,} warning(s); {lengths}")


def _next_actions(report: InspectionReport, plan: Plan, spec_note: str | None,
                  tokens: bool) -> list[NextAction]:
    actions: list[NextAction] = []
    target = f"{plan.paths.mapped}/{_output_name(report.path)}/"
    preview = report.mapping_preview
    if report.status == "READY":
        actions.append(NextAction(note="the data is READY: continue with the step (merge "
                                       "and draft the job)"))
        if not tokens:
            actions.append(NextAction(lead="lengths unchecked:", tool="run_inspector",
                                      args={"path": report.path, "tokens": True},
                                      note="counts tokens for the cost estimate and checks "
                                           "max_length (a draft checks them in any case)"))
    elif report.status == "NEEDS_MAPPING":
        dropped = f"; it drops {preview.rows_dropped} row(s)" if preview and \
            preview.rows_dropped else ""
        actions.append(NextAction(tool="apply_mapping", args={"source": report.path},
                                  from_result={"mapping": "suggested_mapping"},
                                  note=f"writes canonical chat to {target}{dropped}; then "
                                       "inspect that folder"))
    else:
        if report.suggested_mapping is not None and preview is not None:
            actions.append(NextAction(
                lead="fix the rows listed in the source, or", tool="apply_mapping",
                args={"source": report.path}, from_result={"mapping": "suggested_mapping"},
                note=f"to repair: it keeps about {preview.rows_out} of {preview.rows_in} "
                     "rows, and its manifest lists every row dropped"))
        elif spec_note:
            actions.append(NextAction(note=f"no mapping can fix this: {spec_note}"))
        if report.counts.get("preference_data"):
            actions.append(NextAction(note="preference (chosen/rejected) data belongs to "
                                           "DPO-style training; give this step SFT "
                                           "conversations instead"))
    if report.counts.get("over_max_length"):
        longest = report.stats.tokens.per_row.max if report.stats.tokens and \
            report.stats.tokens.per_row else None
        actions.append(NextAction(note=f"{report.counts['over_max_length']} row(s) are "
                                       "longer than training.max_length (the longest has "
                                       f"{longest} tokens): the step handles them per "
                                       f"data.overlong ({plan.data.overlong}); or raise "
                                       "training.max_length in the plan, or shorten those "
                                       "rows"))
    if report.counts.get("holdout_duplicate"):
        actions.append(NextAction(note="remove the rows marked holdout_duplicate from the "
                                       "training data (never edit the hold-out set): their "
                                       "prompt is a hold-out prompt, so the gate would "
                                       "measure questions the model trained on"))
    if report.counts.get("holdout_near_match") or report.counts.get("holdout_overlap"):
        actions.append(NextAction(note="review the rows marked holdout_near_match or "
                                       "holdout_overlap: they share wording with the "
                                       "hold-out set, which would inflate validation "
                                       "scores; a draft lists near matches as warnings"))
    if report.truncated:
        actions.append(NextAction(tool="run_inspector", args={"path": report.path,
                                                              "max_errors": 1000},
                                  lead="more findings exist than are listed (counts holds "
                                       "every one):", note="lists more"))
    return actions


def _output_name(shown: str) -> str:
    path = Path(shown)
    return path.stem if path.suffix.lower() in DATA_SUFFIXES else path.name


def _inspect_hub(ws: Workspace, plan: Plan, path: str, tokens: bool, max_errors: int,
                 progress: Progress | None) -> InspectionReport:
    """A Hub dataset, streamed with ``datasets``; never cached (no content hash)."""
    spec = path[len(HUB_PREFIX):]
    dataset, _, split = spec.partition(":")
    problem = repo_id_problem(dataset)
    if problem:
        raise TunestepError("hub_id", f"give hf://datasets/<owner>/<name>[:<split>]: "
                                      f"{problem}", path=path)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise TunestepError("hub_offline", f"cannot stream {dataset} from the Hub: "
                                           "HF_HUB_OFFLINE is set; download it into the "
                                           "workspace and inspect the files", path=path)
    source = Source(shown=path, path=None, container="hub", hub=(dataset, split or "train"))
    try:
        return inspect_sources(ws, plan, path, [source], Context(
            holdout_note="Hub datasets are not compared with the hold-out set"),
            tokens=tokens, max_errors=max_errors, progress=progress)
    except TunestepError:
        raise
    except Exception as exc:  # network and dataset-resolution failures
        raise TunestepError("hub_unavailable", f"cannot stream {dataset}: "
                                               f"{type(exc).__name__}: {str(exc)[:200]}",
                            path=path) from None
