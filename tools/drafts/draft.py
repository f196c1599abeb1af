"""draft_job: everything a job will do, fixed in one signed manifest with one digest.

A draft is computed from the request, the plan and the files as they are now. Its signed
part is one canonical document, the DraftManifest (``.specs/manifest.md``): the digest is
sha256 over its exact stored bytes and the id derives from the digest. It is stored in
the ledger and rendered as the run plan for the operator. Nothing in it depends on the
clock, so the same inputs give the same digest and the same id; at submit time the draft
is computed again from its stored request, only to detect staleness: any difference (a
dataset edited, the checkpoint moved, the plan changed, the job script changed) makes it
stale. What runs is parsed from the stored manifest bytes, never from the recompute.

The manifest covers what runs and what it may cost: the request, backend, flavor,
processes, timeout, the job config, every input's sha256 (the local start checkpoint's
files too) and the remote submission. The estimate (live prices), warnings and the run
plan's path are stored apart and never feed execution.

Two kinds of draft: ``train`` (a fine-tuning step, local or on HF Jobs) and ``inspect``
(the inspector run on HF Jobs, cpu-basic by default: it costs money, so it is approved
like training; ``inspect_draft``). What the job is given is built in ``job_spec``; how a
draft is stored and read back, checked against its digest, in ``draft_store``. This
module is the drafts' front door: callers import the draft's models and the store's
readers from here (``__all__``).
"""

from __future__ import annotations

from pathlib import Path

from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_write_text
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.lengths import LengthCheck, check_lengths
from tunestep.tools.data.preflight import PreflightReport, check_batch
from tunestep.tools.drafts.draft_model import (
    DraftManifest,
    DraftRequest,
    FileRef,
    InspectEstimate,
    JobDraft,
    SourceUse,
    manifest_digest,
)
from tunestep.tools.drafts.draft_store import (
    approve_command,
    draft_from_row,
    load_draft,
    signed_draft,
    store_draft,
    stored_manifest,
    what_changed,
)
from tunestep.tools.drafts.estimate import (
    LOCKED_INSTALL_SECONDS,
    before_answers_kept,
    estimate_job,
    live_prices,
    parse_duration,
    processes_for,
    require_fits_timeout,
)
from tunestep.tools.drafts.eval_estimate import (
    HoldOutLengths,
    holdout_lengths,
    reference_tokens,
    token_budget,
)
from tunestep.tools.drafts.inspect_draft import build_inspect_draft, render_inspect_plan
from tunestep.tools.drafts.job_spec import (
    HF_MOUNT,
    JOBS_DIR,
    check_draft_overrides,
    hf_submission,
    job_config,
)
from tunestep.tools.drafts.run_plan import write_run_plan
from tunestep.tools.hub.ids import resolve_hub_ids
from tunestep.tools.jobs import JOB_FILES
from tunestep.tools.lineage.adapter_merge import merge_base_files as merge_base_folder
from tunestep.tools.lineage.chain import (
    StartPoint,
    base_start,
    checkpoint_files,
    shown_path,
    starting_point,
)
from tunestep.tools.lineage.line import start_parent

__all__ = ["JOBS_DIR", "DraftManifest", "DraftRequest", "FileRef", "InspectEstimate",
           "JobDraft", "approve_command", "build_draft", "draft_from_row", "draft_job",
           "load_draft", "manifest_digest", "recompute", "signed_draft", "store_draft",
           "stored_manifest", "what_changed"]


def draft_job(ws: Workspace, request: DraftRequest) -> JobDraft:
    """Compute the draft, store it in the ledger and write the run plan for the operator.

    Derived data the step needs (a replay sample's file, the merged file of strategy
    ``file``) is written here when missing; a recompute (approve, submit) only checks it.
    The call's context (``ws.call``) makes it one plan read and one hash per unchanged file.
    """
    report = check_batch(ws, request.batch)
    draft = build_draft(ws, request, report, write=True)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        store_draft(conn, draft)
        ledger.audit(conn, "draft.create", draft.draft_id,
                     detail={"digest": draft.digest, "batch": draft.batch,
                             "backend": draft.backend, "kind": draft.kind})
    if draft.kind == "inspect":
        atomic_write_text(ws.resolve(draft.run_plan), render_inspect_plan(draft))
    else:
        write_run_plan(ws, draft, report)
    return draft


def recompute(ws: Workspace, stored: JobDraft) -> JobDraft:
    """The stored draft's request drafted again now: a different digest means stale."""
    return build_draft(ws, stored.request, check_batch(ws, stored.batch))


def build_draft(ws: Workspace, request: DraftRequest, report: PreflightReport, *,
                write: bool = False) -> JobDraft:
    """The draft for the request against the workspace as it is now (no writes unless
    ``write``: then the step's derived data files are written when missing)."""
    from tunestep.tools.data.merge import step_datasets

    if request.kind == "inspect":
        return build_inspect_draft(ws, request, report)
    plan = load_plan(ws).plan
    errors = [p for p in report.problems if p.severity == "error"]
    if errors or report.batch is None:
        listed = "; ".join(f"{p.code}: {p.message}" for p in errors) or "no batch"
        from tunestep.tools.data.holdout_repin import repin_action

        raise TunestepError("draft_preflight_failed", f"preflight has errors: {listed}",
                            hint=repin_action("if the hold-out change is intended:")
                            if any(p.code in ("validation_changed", "validation_pin_unverified")
                                   for p in errors) else None)
    check_draft_overrides(request.overrides, request.timeout)
    data = step_datasets(ws, report.batch, write=write,
                         max_length=request.overrides.get("max_length"))  # type: ignore[arg-type]
    mode = request.mode or plan.mode
    backend = request.backend
    plan = resolve_hub_ids(plan, backend)  # <user>/<model_name>[-steps] when unnamed
    flavor = request.flavor or ("local" if backend == "local" else plan.job.flavor)
    if backend == "hf-jobs" and flavor == "local":
        raise TunestepError("draft_bad_flavor", "hf-jobs needs a hardware flavor, not 'local'")
    timeout = request.timeout or plan.job.timeout
    parse_duration(timeout)

    files = [FileRef(role="train", path=f.path, sha256=f.sha256, rows=f.rows)
             for f in data.train_files]
    # No row trains without its answer: every row counted with the real tokenizer now.
    max_length = int(request.overrides.get("max_length", plan.training.max_length))
    lengths = check_lengths(ws, plan, [f.path for f in files], max_length,
                            plan.data.overlong)
    length_warnings = _length_warnings(lengths)
    from tunestep.tools.inspector.holdout_guard import check_train_files  # holdout_leak
    leak_warnings = check_train_files(
        ws, [(f.path, f.sha256) for f in files],
        (plan.paths.validation, report.validation.sha256 or ""),
        next(((s.path, s.sha256) for s in data.sources if s.part == "base"), None))
    if lengths.overlong and data.tokenized_dir:
        # A tokenized dataset holds the rows cut at max_length; the job must tokenize
        # itself to shorten or drop them.
        length_warnings.append(f"the tokenized dataset {data.tokenized_dir} is not used: "
                               "the job tokenizes itself to handle the over-long rows")
        data.tokenized_dir, data.tokenized_files = None, []
    files.append(FileRef(role="eval", path=plan.paths.validation,
                         sha256=report.validation.sha256 or "", rows=report.validation.rows))
    if backend == "local":  # a remote job tokenizes itself; locally it may reuse this
        files += [FileRef(role="tokenized", path=f.path, sha256=f.sha256)
                  for f in data.tokenized_files]
    files += [FileRef(role="script", path=name, sha256=sha256_file(JOBS_DIR / name))
              for name in JOB_FILES]
    if plan.data.regime == "from_base":  # every row from the base model: nothing compounds
        start = base_start(ws, plan, mode, backend, HF_MOUNT)
        start.warnings.append(
            "regime from_base: the step retrains from the base model on every row")
    else:
        start = starting_point(ws, plan, mode, backend, HF_MOUNT)
    # A local start's every file is hashed, for a local job as for a bundle: the job loads
    # only a private copy of exactly these bytes (job_config.snapshot_inputs).
    folder = _start_folder(start, backend)
    start_files = [] if folder is None else [(p, sha256_file(p)) for p in checkpoint_files(folder)]
    files += [FileRef(role="checkpoint", path=shown_path(ws, plan, p), sha256=sha)
              for p, sha in start_files]
    # A full step on a LoRA adapter: the base it merges into, every file when local.
    base_folder = merge_base_folder(start)
    base_files = [] if base_folder is None else [
        (p, sha256_file(p)) for p in checkpoint_files(base_folder)]
    files += [FileRef(role="merge_base", path=shown_path(ws, plan, p), sha256=sha)
              for p, sha in base_files]
    config = job_config(plan, request, report, files, mode, start, backend,
                         data.tokenized_dir, flavor)
    config["merge_adapter"] = None if start.merge is None else {
        "base_files": [{"path": p.relative_to(base_folder).as_posix(), "sha256": sha}
                       for p, sha in base_files] if base_folder is not None else []}
    config["tokenized_files"] = [
        {"path": Path(f.path).relative_to(config["tokenized_dir"]).as_posix(),
         "sha256": f.sha256} for f in files if f.role == "tokenized"] \
        if config["tokenized_dir"] else []
    config["checkpoint"] = None if folder is None else {
        "of": "resume_from" if start.resume_from else "base_model",
        "files": [{"path": p.relative_to(folder).as_posix(), "sha256": sha}
                  for p, sha in start_files]}
    submission = None
    if backend == "hf-jobs":
        submission = hf_submission(plan, request, report, files, flavor, timeout, config,
                                    start)
    rows = sum(f.rows or 0 for f in files if f.role == "train")
    estimate = estimate_job(
        model=start.base_model, mode=mode, flavor=flavor,
        train_tokens=_train_tokens(ws, files), rows=rows,
        epochs=config["hyperparameters"]["num_train_epochs"],
        batch_size=config["hyperparameters"]["per_device_train_batch_size"],
        grad_accum=config["hyperparameters"]["gradient_accumulation_steps"],
        # Locally the hardware is not known here: no fp16/bf16 warning for a CPU guess.
        precision=config["hyperparameters"]["precision"] if backend == "hf-jobs" else "auto",
        timeout=timeout, prices=live_prices() if backend == "hf-jobs" else None,
        install_seconds=LOCKED_INSTALL_SECONDS
        if backend == "hf-jobs" and plan.job.install == "locked" else 0.0,
        eval_before_kept=before_answers_kept(ws, start),
        max_length=config["hyperparameters"]["max_length"],
        **_eval_estimate_args(ws, plan, config, report.validation.rows))
    if backend == "hf-jobs":  # killed at the timeout, the trained model would be lost
        require_fits_timeout(estimate)
    manifest = DraftManifest(
        kind=request.kind, workspace=str(ws.root), batch=report.batch, step=report.step,
        backend=backend, flavor=flavor, processes=processes_for(flavor) if backend ==
        "hf-jobs" else 1, timeout_seconds=parse_duration(timeout), request=request,
        regime=plan.data.regime, sources=source_uses(data), start=start,
        gate=plan.gate.model_dump(mode="json") if plan.gate else None,
        parent_version=start_parent(ws, start), files=files, job_config=config,
        submission=submission)
    return signed_draft(ws, manifest, estimate=estimate,
                        warnings=list(estimate.warnings) + leak_warnings + start.warnings
                        + length_warnings + _trained_again(report),
                        run_plan=plan.paths.run_plan, lengths=lengths)


def _length_warnings(lengths: LengthCheck) -> list[str]:
    warnings = []
    if lengths.shortened:
        warnings.append(f"{lengths.shortened} row(s) are longer than max_length "
                        f"{lengths.max_length} (the longest {lengths.longest} tokens): the job "
                        "shortens the middle of their user turn and keeps the whole answer "
                        "(data.overlong truncate_prompt)")
    if lengths.answer_too_long:
        shown = ", ".join(lengths.answer_too_long[:5])
        warnings.append(f"{lengths.dropped} row(s) cannot keep their answer within max_length "
                        f"{lengths.max_length} even with the user turn shortened, so the job "
                        f"leaves them out: {shown}; raise training.max_length to keep them")
    elif lengths.dropped:
        warnings.append(f"{lengths.dropped} row(s) are longer than max_length "
                        f"{lengths.max_length}: the job leaves them out (data.overlong drop)")
    return warnings


def source_uses(data) -> list[SourceUse]:
    """Rows trained per source, and the reason, from the step's selection."""
    uses = []
    for f in data.sources:
        trained = f.rows if f.selected is None else len(f.selected)
        if f.part == data.batch:
            why = "the new batch, in full"
        elif f.part in data.replay.held_back:
            why = ("its step was not promoted (or latest was rolled back past it), so the "
                   "weights this step starts from never learned it: in full")
        elif data.replay.mode == "sampled":
            why = f"replay sample ({data.replay.fraction:g}, by source and grade)"
        else:
            why = data.replay.reason
        if f.selected is not None and trained < f.rows and data.duplicates_dropped and \
                not (data.replay.mode == "sampled" and f.part != data.batch):
            why += f"; {f.rows - trained} duplicate(s) dropped"
        uses.append(SourceUse(part=f.part, path=f.path, rows=f.rows, trained=trained,
                              why=why))
    return uses


def _trained_again(report: PreflightReport) -> list[str]:
    if any(p.code == "batch_already_trained" for p in report.problems):
        return [f"{report.batch} was already trained (the ledger records step {report.step}): "
                "this job trains on it again"]
    return []


def _start_folder(start: StartPoint, backend: str) -> Path | None:
    """The local checkpoint folder a step starts from, or None (the base model, a Hub
    commit): a bundle's start, or a local job's resume point (LoRA on a full fine-tune:
    the new base)."""
    if start.checkpoint is not None:
        return Path(start.checkpoint)
    if backend == "local" and start.source == "local":
        return Path(start.resume_from or start.base_model)
    return None


def _eval_estimate_args(ws: Workspace, plan: Plan, config: dict, rows: int | None) -> dict:
    """The hold-out evaluation the job runs after training, as the estimate counts it:
    lengths from the hold-out file (a JSONL one; another format counts its rows with the
    samples budget), the job's token budget and batch size."""
    path = ws.resolve(plan.paths.validation)
    if path.suffix.lower() == ".jsonl":
        holdout = holdout_lengths(path, plan.paths.validation)
    else:
        holdout = HoldOutLengths(rows=rows or 0, longest_reference_chars=0, prompt_chars=0)
    evaluation = config["evaluation"]
    # The job's own count, with the plan model's tokenizer as the host sees it (the job
    # config's base_model may be a path inside the job's container).
    counted = (reference_tokens(ws, plan.model, path, plan.paths.validation)
               if path.suffix.lower() == ".jsonl" else None)
    budget = token_budget(holdout.longest_reference_chars,
                          config["samples"]["max_new_tokens"], evaluation["max_new_tokens"],
                          counted)
    return {"holdout": holdout, "eval_max_new_tokens": budget,
            "eval_batch_size": evaluation["batch_size"],
            "eval_budget_counted": counted is not None or evaluation["max_new_tokens"]
            is not None}


def _train_tokens(ws: Workspace, files: list[FileRef]) -> int:
    """The tokens training sees in the training files: each row cut at the plan's
    ``training.max_length``, as the trainer truncates it (a 200 MB row costs max_length
    tokens of compute, not millions). From the (cached) inspector."""
    from tunestep.tools.inspector import run_inspector

    total = 0
    for ref in files:
        if ref.role == "train":
            tokens = run_inspector(ws, ref.path, tokens=True).stats.tokens
            if tokens:
                total += tokens.trained_tokens if tokens.trained_tokens is not None \
                    else tokens.total_tokens
    return total


