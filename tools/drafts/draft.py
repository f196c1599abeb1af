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
like training). An inspect draft's bundle is a mini workspace (the plan and every data
file the inspection reads, at their workspace paths), a wheel of tunestep built now
(tools/drafts/selfwheel.py; its sha256 is one of the draft's files) and the wrapper script
tools/jobs/inspect_remote.py, which runs the wheel's inspector and pushes the report back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunestep.tools import jobs
from tunestep.tools.core import ledger
from tunestep.tools.core.atomic import atomic_write_text
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan, load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.lengths import LengthCheck, check_lengths
from tunestep.tools.data.preflight import PreflightReport, check_batch
from tunestep.tools.drafts.draft_model import (  # re-exported: callers import them from here
    UNSIGNED,
    DraftManifest,
    DraftRequest,
    DraftView,
    FileRef,
    HfSubmission,
    InspectEstimate,
    JobDraft,
    SourceUse,
    draft_id_for,
    job_config_of,
    manifest_bytes,
    manifest_digest,
    parse_manifest,
)
from tunestep.tools.drafts.estimate import (
    FLAVORS,
    LOCKED_INSTALL_SECONDS,
    before_answers_kept,
    estimate_job,
    format_duration,
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
from tunestep.tools.drafts.run_plan import write_run_plan
from tunestep.tools.hub.ids import resolve_hub_ids
from tunestep.tools.jobs import JOB_FILES, JOB_SCRIPT
from tunestep.tools.lineage.adapter_merge import merge_base_files as merge_base_folder
from tunestep.tools.lineage.chain import (
    START_DIR,
    StartPoint,
    base_start,
    checkpoint_files,
    shown_path,
    starting_point,
)
from tunestep.tools.lineage.line import start_parent

JOBS_DIR = Path(jobs.__file__).resolve().parent
HF_MOUNT = "/tunestep/step"
HF_OUTPUT_ROOT = "/tmp/tunestep"
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


def store_draft(conn, draft: JobDraft) -> None:
    """The manifest's exact bytes (signed) and, apart, what is shown but never executed."""
    assert draft.manifest is not None, "a stored draft carries its manifest"
    conn.execute(
        "INSERT OR IGNORE INTO drafts(draft_id, digest, kind, batch, payload, manifest,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (draft.draft_id, draft.digest, draft.kind, draft.batch,
         draft.model_dump_json(include=set(UNSIGNED)), draft.manifest.encode(), time.time()))


def load_draft(ws: Workspace, draft_id: str) -> JobDraft:
    """The stored draft, its signed fields parsed from the stored manifest bytes after
    they hash to the stored digest (``draft_tampered`` otherwise)."""
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                           (draft_id,)).fetchone()
    if row is None:
        raise TunestepError("draft_unknown", f"no draft {draft_id!r} in the ledger of the "
                            f"workspace {ws.root} (a draft belongs to the workspace it was "
                            "made in: give that one with --workspace)")
    return draft_from_row(row, draft_id)


def stored_manifest(row, draft_id: str, digest: str | None = None
                    ) -> tuple[bytes, DraftManifest]:
    """The verified manifest of a ``drafts`` row: its bytes must hash to ``digest`` (the
    token's, when given) or else to the row's stored digest."""
    data = row["manifest"]
    if data is None:
        raise TunestepError("draft_unsigned", f"{draft_id} was drafted before drafts had a "
                            "signed manifest; draft again and ask for a new approval")
    data = data.encode() if isinstance(data, str) else bytes(data)
    return data, parse_manifest(data, digest or row["digest"], draft_id)


def draft_from_row(row, draft_id: str, *, digest: str | None = None) -> JobDraft:
    data, manifest = stored_manifest(row, draft_id, digest)
    try:
        view = DraftView.model_validate_json(row["payload"] or "{}")
    except ValueError:
        raise TunestepError("draft_tampered", f"the stored view of {draft_id} (estimate, "
                            "warnings) is unreadable; draft again") from None
    return draft_from_manifest(manifest, data, manifest_digest(data),
                               **{k: getattr(view, k) for k in UNSIGNED})


def recompute(ws: Workspace, stored: JobDraft) -> JobDraft:
    """The stored draft's request drafted again now: a different digest means stale."""
    return build_draft(ws, stored.request, check_batch(ws, stored.batch))


def what_changed(old: JobDraft, new: JobDraft) -> str:
    """Which of a stale draft's files changed, for the refusal (else what else did)."""
    before = {(f.role, f.path): f.sha256 for f in old.files}
    after = {(f.role, f.path): f.sha256 for f in new.files}
    files = sorted(path for key, path in {*before, *after}
                   if before.get((key, path)) != after.get((key, path)))
    if files:
        return "changed files: " + ", ".join(files)
    return "the plan, the checkpoint or the job settings changed"


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
                            if any(p.code == "validation_changed" for p in errors) else None)
    _check_overrides(request.overrides, request.timeout)
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
    config = _job_config(plan, request, report, files, mode, start, backend,
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
        submission = _hf_submission(plan, request, report, files, flavor, timeout, config,
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


def signed_draft(ws: Workspace, manifest: DraftManifest, **unsigned: Any) -> JobDraft:
    """The draft whose signed fields are exactly ``manifest``'s canonical bytes, plus the
    unsigned things (estimate, warnings, run plan path) that never feed execution."""
    data = manifest_bytes(manifest)
    digest = manifest_digest(data)
    return draft_from_manifest(parse_manifest(data, digest, draft_id_for(digest)), data,
                               digest, approve_command=approve_command(draft_id_for(digest),
                                                                       ws), **unsigned)


def draft_from_manifest(manifest: DraftManifest, data: bytes, digest: str,
                        **unsigned: Any) -> JobDraft:
    """A JobDraft whose signed fields come from the verified manifest bytes only."""
    draft_id = draft_id_for(digest)
    return JobDraft(
        draft_id=draft_id, digest=digest, kind=manifest.kind, batch=manifest.batch,
        step=manifest.step, backend=manifest.backend, request=manifest.request,
        job_config=job_config_of(manifest, draft_id), files=manifest.files,
        submission=manifest.submission, regime=manifest.regime, sources=manifest.sources,
        start=manifest.start, gate=manifest.gate, parent_version=manifest.parent_version,
        flavor=manifest.flavor, processes=manifest.processes,
        timeout_seconds=manifest.timeout_seconds, workspace=manifest.workspace,
        manifest=data.decode(), **unsigned)


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


def approve_command(draft_id: str, ws: Workspace) -> str:
    """The command the operator runs, quoted so that it works exactly as printed."""
    import shlex

    return f"tunestep approve {draft_id} --workspace {shlex.quote(str(ws.root))}"


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


def _check_overrides(overrides: dict[str, Any], timeout: str | None = None) -> None:
    """Each override (and the draft's own timeout) by its plan key's type and range."""
    from tunestep.tools.core.plan_values import check_overrides, check_request_timeout

    check_overrides(overrides)
    if timeout is not None:
        check_request_timeout(timeout)


def _hyperparameters(plan: Plan, request: DraftRequest, mode: str, resuming: bool) -> dict:
    t = plan.training
    if mode == "lora":
        lr = plan.lora.learning_rate
    else:
        lr = t.resume_learning_rate if resuming else t.learning_rate
    hp = {"per_device_train_batch_size": t.per_device_train_batch_size,
          "gradient_accumulation_steps": t.gradient_accumulation_steps,
          "learning_rate": lr, "num_train_epochs": t.num_train_epochs,
          "max_length": t.max_length, "seed": t.seed, "save_total_limit": t.save_total_limit,
          # The plan's precision, everywhere: the job falls back (and logs why) where the
          # hardware lacks it, so the approval shows what the operator asked for.
          "precision": t.precision,
          "max_steps": -1, "warmup_ratio": t.warmup_ratio,
          # final weights only; epoch checkpoints are kept only on request ("epoch")
          "save_strategy": "no"}
    hp.update({k: v for k, v in request.overrides.items() if not k.startswith("lora_")})
    return hp


def _job_config(plan: Plan, request: DraftRequest, report: PreflightReport,
                files: list[FileRef], mode: str, start: StartPoint, backend: str,
                tokenized_dir: str | None, flavor: str = "local") -> dict[str, Any]:
    """The job script's config (contract in tools/jobs/train_sft.py)."""
    remote = backend == "hf-jobs"
    batch = report.batch

    # Remotely, --root is a writable scratch folder (the job pushes what it writes there
    # back to the bundle repo) and the data is read from the read-only bundle mount.
    def data_path(ref: FileRef) -> str:
        return f"{HF_MOUNT}/{bundle_name(ref, files)}" if remote else ref.path

    lora = None
    if mode == "lora":
        lora = {"r": request.overrides.get("lora_r", plan.lora.r),
                "alpha": request.overrides.get("lora_alpha", plan.lora.alpha),
                "dropout": request.overrides.get("lora_dropout", plan.lora.dropout),
                "target_modules": plan.lora.target_modules}
    train = [f for f in files if f.role == "train"]
    evals = next(f for f in files if f.role == "eval")
    return {
        "schema": 1, "draft_id": None, "step": report.step, "batch": batch, "mode": mode,
        "base_model": start.base_model,
        "resume_from": start.resume_from,
        "train_files": [{"path": data_path(f), "sha256": f.sha256} for f in train],
        "eval_file": {"path": data_path(evals), "sha256": evals.sha256},
        "tokenized_dir": None if remote else tokenized_dir,
        "hyperparameters": _hyperparameters(plan, request, mode,
                                            resuming=start.resume_from is not None),
        "lora": lora,
        "merge_adapter": None,  # a full step on a LoRA adapter: set by draft_job
        "outputs": {
            "model_store": f"store/{plan.model_name}" if remote else plan.model_link,
            "model_name": plan.model_name,
            "metrics_csv": f"{plan.paths.logs}/metrics_step_{batch}.csv",
            "train_log": f"{plan.paths.logs}/train.log",
            "samples_md": f"{plan.paths.logs}/samples_step_{batch}.md",
            "plots_dir": plan.paths.plots,
            "history_json": f"{plan.paths.logs}/steps_history.json",
            "eval_json": f"{plan.paths.logs}/eval_step_{batch}.json",
            "eval_md": f"{plan.paths.logs}/eval_step_{batch}.md",
        },
        "samples": {"n": plan.samples.n, "max_new_tokens": plan.samples.max_new_tokens},
        "grade_pattern": plan.grade_pattern,
        "trackio": {"project": plan.trackio_project, "space_id": plan.hub.trackio_space_id,
                    # Remotely under --root, so the job pushes it back (job_store.py)
                    "dir": "trackio" if remote else ".tunestep/trackio"},
        "hub": {"model_id": plan.hub.model_id, "private": plan.hub.private,
                "push": plan.hub.push or (remote and plan.hub.model_id is not None)},
        "data": {"overlong": plan.data.overlong},
        # the whole hold-out, batched (wider on a GPU, where a batch costs about what one
        # prompt does); the budget follows the longest reference answer
        "evaluation": {"batch_size": 32 if remote and not flavor.startswith("cpu") else 8,
                       "max_new_tokens": None},
        "gate": plan.gate.model_dump(mode="json") if plan.gate is not None else None,
        # a GPU flavor stops at once when CUDA is not usable, instead of training on CPU
        "expect_gpu": remote and not flavor.startswith("cpu"),
    }


def _hf_submission(plan: Plan, request: DraftRequest, report: PreflightReport,
                   files: list[FileRef], flavor: str, timeout: str,
                   config: dict, start: StartPoint) -> HfSubmission:
    if not plan.hub.dataset_repo:
        raise TunestepError("plan_missing_key", "hf-jobs needs hub.dataset_repo in the plan: "
                            "the private dataset repo that carries each step's bundle")
    if not plan.hub.model_id:
        raise TunestepError("plan_missing_key", "hf-jobs needs hub.model_id in the plan: the "
                            "job's container is discarded, so the model must be pushed there "
                            "(privately) for the next step to resume from")
    bundle = {name: f"job:{name}" for name in JOB_FILES}
    bundle.update({bundle_name(f, files): f.path for f in files if f.role in ("train", "eval")})
    if start.checkpoint is not None:  # read at submit through its real path (not confined
        folder = Path(start.checkpoint)  # to the workspace: the store lies behind a link)
        bundle.update({f"{START_DIR}/{p.relative_to(folder).as_posix()}": f"checkpoint:{p}"
                       for p in checkpoint_files(folder)})
    return HfSubmission(
        image=plan.job.image,
        command=[*job_launcher(plan), f"{HF_MOUNT}/{JOB_SCRIPT}", "--config",
                 f"{HF_MOUNT}/job.json", "--root", HF_OUTPUT_ROOT, *_processes_args(flavor)],
        flavor=flavor, timeout_seconds=parse_duration(timeout),
        labels={"tunestep-batch": report.batch, "tunestep-step": str(report.step),
                "tunestep-kind": request.kind},
        secrets=list(plan.job.secrets), dataset_repo=plan.hub.dataset_repo, bundle=bundle)


def _processes_args(flavor: str) -> list[str]:
    """A multi-GPU flavor trains with one process per GPU (the script relaunches itself
    through ``accelerate launch --num_processes N``, see job_common.launch_argv)."""
    processes = processes_for(flavor)
    return ["--num-processes", str(processes)] if processes > 1 else []


def job_launcher(plan: Plan) -> list[str]:
    """What runs the job script on HF Jobs (plan key ``job.install``).

    ``locked``: ``uv run --locked`` installs exactly ``train_sft.py.lock`` (beside the
    script in the bundle; in the digest) and refuses to run if the script's header no
    longer matches it. ``image``: the image's own ``python3 -I`` (isolated), nothing
    installed. Either way the job's environment sets ``PYTHONSAFEPATH`` (hf_jobs.py).
    """
    return ["uv", "run", "--locked"] if plan.job.install == "locked" else ["python3", "-I"]


def bundle_name(ref: FileRef, files: list[FileRef]) -> str:
    """A data file's name in an HF Jobs bundle: its position keeps same-named files apart."""
    if ref.role == "eval":
        return "data/validation.jsonl"
    index = [f for f in files if f.role == "train"].index(ref)
    return f"data/train_{index:03d}_{Path(ref.path).name}"


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


# ---------------------------------------------------------------------------------------
# Remote inspection drafts


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
