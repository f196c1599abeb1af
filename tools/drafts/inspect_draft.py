"""Inspect drafts: the inspector run on HF Jobs (cpu-basic), approved like training.

The bundle is a mini workspace (the plan and every data file the inspection reads, at
their workspace paths), a wheel of tunestep built now (``selfwheel``; its sha256 is one
of the draft's files) and the wrapper script tools/jobs/inspect_remote.py, which runs the
wheel's inspector and pushes the report back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.preflight import PreflightReport
from tunestep.tools.drafts.draft_model import (
    DraftManifest,
    DraftRequest,
    FileRef,
    HfSubmission,
    InspectEstimate,
    JobDraft,
)
from tunestep.tools.drafts.draft_store import signed_draft
from tunestep.tools.drafts.estimate import FLAVORS, format_duration, parse_duration
from tunestep.tools.drafts.job_spec import HF_MOUNT, HF_OUTPUT_ROOT, JOBS_DIR
from tunestep.tools.hub.ids import resolve_hub_ids

INSPECT_SCRIPT = "inspect_remote.py"
INSPECT_FLAVOR = "cpu-basic"
INSPECT_TIMEOUT = "15m"
INSPECT_WORKSPACE = "workspace"  # the mini workspace's folder in an inspect bundle
INSPECT_MAX_ERRORS = 100
# The remote inspector's planning numbers: a start-up (image pull, uv installing the
# wrapper's few dependencies) and a deliberately conservative rows/s for the 2 vCPUs of
# cpu-basic (a planning figure, not a measurement there; tests/bench/bench_inspector.py
# measures the inspector on the machine it runs on). Every row the inspection reads
# counts: the inspected files, the hold-out set and the reference files compared against.
INSPECT_STARTUP_MINUTES = 3.0
INSPECT_ROWS_PER_SECOND = 5000.0


def inspect_target(ws: Workspace, plan: Plan, batch: str, batch_path: str) -> str:
    """What a remote inspection reads: the batch's mapped folder when there is one."""
    mapped = f"{plan.paths.mapped}/{batch}"
    return mapped if ws.resolve(mapped).is_dir() else batch_path


def build_inspect_draft(ws: Workspace, request: DraftRequest,
                        report: PreflightReport) -> JobDraft:
    """An inspect draft: the inspector on HF Jobs over a mini workspace (no writes but the
    cached wheel)."""
    from tunestep.tools.core.datafiles import count_rows
    from tunestep.tools.drafts.selfwheel import build_self_wheel
    from tunestep.tools.inspector.sources import comparison_context, data_sources

    if request.backend != "hf-jobs":
        from tunestep.tools.core.next_step import NextAction

        raise TunestepError("draft_kind_backend", "an inspect draft runs on hf-jobs only; "
                            "inspecting locally is free",
                            hint=NextAction(tool="run_inspector",
                                            args={"path": report.batch_path})
                            if report.batch_path else None)
    if request.mode is not None or request.overrides:
        raise TunestepError("draft_kind_option", "mode and overrides are training settings; "
                            "an inspect draft takes batch, flavor and timeout only")
    loaded = load_plan(ws)
    plan = resolve_hub_ids(loaded.plan, "hf-jobs")
    # The checkpoint is no concern of an inspection; every other preflight error is.
    errors = [p for p in report.problems
              if p.severity == "error" and not p.code.startswith("checkpoint_")]
    if errors or report.batch is None or report.batch_path is None:
        listed = "; ".join(f"{p.code}: {p.message}" for p in errors) or "no batch"
        raise TunestepError("draft_preflight_failed", f"preflight has errors: {listed}")
    if not plan.hub.dataset_repo:
        raise TunestepError("plan_missing_key", "hf-jobs needs hub.dataset_repo in the plan: "
                            "the private dataset repo that carries the inspection's bundle")
    flavor = request.flavor or INSPECT_FLAVOR
    if flavor == "local":
        raise TunestepError("draft_bad_flavor", "hf-jobs needs a hardware flavor, not 'local'")
    timeout = request.timeout or INSPECT_TIMEOUT
    timeout_seconds = parse_duration(timeout)

    path = inspect_target(ws, plan, report.batch, report.batch_path)
    target = ws.resolve(path, must_exist=True)
    sources = data_sources(ws, plan, target)
    context = comparison_context(ws, plan, target, sources)

    def ref(role: str, rel: str, sha: str) -> FileRef:
        return FileRef(role=role, path=rel, sha256=sha, rows=count_rows(ws.resolve(rel))[0])

    files = [ref("inspect", s.shown, s.sha256) for s in sources]
    if context.holdout is not None:
        files.append(ref("eval", context.holdout[1], context.holdout[2]))
    files += [ref("reference", shown, sha) for _, shown, sha in context.references]
    if loaded.source is not None:
        files.append(FileRef(role="plan", path=loaded.source, sha256=loaded.sha256))
    wheel = build_self_wheel(ws)
    wheel_sha = sha256_file(wheel)
    files += [FileRef(role="script", path=INSPECT_SCRIPT,
                      sha256=sha256_file(JOBS_DIR / INSPECT_SCRIPT)),
              FileRef(role="script", path=wheel.name, sha256=wheel_sha)]
    workspace_files = [f for f in files if f.role != "script"]
    config: dict[str, Any] = {
        "schema": 1, "kind": "inspect", "draft_id": None, "step": report.step,
        "batch": report.batch, "path": path, "workspace": INSPECT_WORKSPACE,
        "wheel": {"name": wheel.name, "sha256": wheel_sha},
        "files": [{"path": f.path, "sha256": f.sha256} for f in workspace_files],
        "max_errors": INSPECT_MAX_ERRORS,
    }
    bundle = {INSPECT_SCRIPT: f"job:{INSPECT_SCRIPT}", wheel.name: ws.relative(wheel)}
    bundle.update({f"{INSPECT_WORKSPACE}/{f.path}": f.path for f in workspace_files})
    submission = HfSubmission(
        image=plan.job.image,
        command=["uv", "run", f"{HF_MOUNT}/{INSPECT_SCRIPT}", "--config",
                 f"{HF_MOUNT}/job.json", "--root", HF_OUTPUT_ROOT],
        flavor=flavor, timeout_seconds=timeout_seconds,
        labels={"tunestep-batch": report.batch, "tunestep-step": str(report.step),
                "tunestep-kind": "inspect"},
        # The job pushes its report back with the token: HF_TOKEN is always among them.
        secrets=sorted({*plan.job.secrets, "HF_TOKEN"}), dataset_repo=plan.hub.dataset_repo,
        bundle=bundle)
    estimate = estimate_inspection(flavor, sum(f.rows or 0 for f in workspace_files),
                                   timeout_seconds)
    manifest = DraftManifest(
        kind="inspect", workspace=str(ws.root), batch=report.batch, step=report.step,
        backend="hf-jobs", flavor=flavor, processes=1, timeout_seconds=timeout_seconds,
        request=request, files=files, job_config=config, submission=submission)
    return signed_draft(ws, manifest, estimate=estimate, warnings=list(estimate.warnings),
                        run_plan=f"{Path(plan.paths.run_plan).parent.as_posix()}/"
                                 f"remote_inspection_{report.batch}.md")


def estimate_inspection(flavor: str, rows: int, timeout_seconds: int) -> InspectEstimate:
    """Minutes and dollars for a remote inspection of ``rows`` rows (all files read)."""
    hw = FLAVORS.get(flavor)
    if hw is None:
        raise TunestepError("unknown_flavor", f"unknown hardware flavor '{flavor}'; known: "
                            f"{', '.join(sorted(FLAVORS))}")
    minutes = round(INSPECT_STARTUP_MINUTES + rows / INSPECT_ROWS_PER_SECOND / 60, 2)
    warnings = []
    if timeout_seconds < minutes * 60:
        warnings.append(f"the timeout ({timeout_seconds} s) is shorter than the estimate "
                        f"({minutes:g} min): the job would be stopped before it reports")
    if hw.gpus:
        warnings.append(f"{flavor} has a GPU the inspector does not use; cpu-basic is enough")
    return InspectEstimate(
        flavor=flavor, rows=rows, rows_per_second=INSPECT_ROWS_PER_SECOND, minutes=minutes,
        usd=round(minutes / 60 * hw.usd_per_hour, 4), usd_per_hour=hw.usd_per_hour,
        max_usd=round(timeout_seconds / 3600 * hw.usd_per_hour, 4),
        suggested_timeout=format_duration(int(minutes * 60 * 1.3)),
        timeout_seconds=timeout_seconds,
        method=f"{INSPECT_STARTUP_MINUTES:g} min start-up + rows / "
               f"{INSPECT_ROWS_PER_SECOND:g} rows/s; published HF Jobs price",
        warnings=warnings)


def render_inspect_plan(draft: JobDraft) -> str:
    """The document the operator reads before approving a remote inspection."""
    est, sub, cfg = draft.estimate, draft.submission, draft.job_config
    assert sub is not None and isinstance(est, InspectEstimate)
    rows = "\n".join(f"| {f.role} | `{f.path}` | {'' if f.rows is None else f.rows} | "
                     f"`{f.sha256[:16]}` |" for f in draft.files)
    warnings = "\n".join(f"- {w}" for w in draft.warnings) or "- none"
    return f"""# Remote inspection: step {draft.step}, batch {draft.batch}

Draft `{draft.draft_id}`, digest `{draft.digest}`.
Runs tunestep's inspector on Hugging Face Jobs over `{cfg['path']}`. It costs money, so
nothing runs until the operator approves. Inspecting locally (`run_inspector`) is free.

## Files (the bundle's mini workspace, the wrapper script and tunestep's wheel)

| role | file | rows | sha256 |
|---|---|---|---|
{rows}

## Hugging Face Jobs submission

- flavor `{sub.flavor}`, timeout {sub.timeout_seconds} s, image `{sub.image}`
- command `{' '.join(sub.command)}`
- bundle: one commit to the private dataset repo `{sub.dataset_repo}` under
  `steps/{draft.draft_id}/`, mounted read-only at the exact commit
- labels {sub.labels} (plus `tunestep-draft`)
- secrets by name: {', '.join(sub.secrets)} (to push the report back)

## Estimate

- {est.rows} rows read, about **{est.minutes:g} min** and **${est.usd:.4f}**
  (${est.usd_per_hour:g}/h); at most ${est.max_usd:.4f} if it runs to the timeout.
  Method: {est.method}.

Warnings:
{warnings}

## Result

The job pushes the InspectionReport to `outputs/{draft.draft_id}/result.json`;
`job_status` fetches it into `.tunestep/jobs/<job_id>/` once the job completes. No
training step is recorded.

## How to approve

```
{draft.approve_command}
```
"""
