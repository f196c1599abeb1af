"""What a training job is given: its config (the job script's contract), its
hyperparameters, and on HF Jobs its submission (image, command, bundle, labels).

Pure functions of the plan, the request, the preflight report and the files as hashed:
``draft.build_draft`` calls them and signs what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunestep.tools import jobs
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan
from tunestep.tools.data.preflight import PreflightReport
from tunestep.tools.drafts.draft_model import DraftRequest, FileRef, HfSubmission
from tunestep.tools.drafts.estimate import parse_duration, processes_for
from tunestep.tools.jobs import JOB_FILES, JOB_SCRIPT
from tunestep.tools.lineage.chain import START_DIR, StartPoint, checkpoint_files

JOBS_DIR = Path(jobs.__file__).resolve().parent
HF_MOUNT = "/tunestep/step"
HF_OUTPUT_ROOT = "/tmp/tunestep"


def check_draft_overrides(overrides: dict[str, Any], timeout: str | None = None) -> None:
    """Each override (and the draft's own timeout) by its plan key's type and range."""
    from tunestep.tools.core.plan_values import check_overrides, check_request_timeout

    check_overrides(overrides)
    if timeout is not None:
        check_request_timeout(timeout)


def hyperparameters(plan: Plan, request: DraftRequest, mode: str, resuming: bool) -> dict:
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


def job_config(plan: Plan, request: DraftRequest, report: PreflightReport,
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
        "hyperparameters": hyperparameters(plan, request, mode,
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


def hf_submission(plan: Plan, request: DraftRequest, report: PreflightReport,
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
    installed. Either way the job's environment sets ``PYTHONSAFEPATH`` (hub/jobs_api.py).
    """
    return ["uv", "run", "--locked"] if plan.job.install == "locked" else ["python3", "-I"]


def bundle_name(ref: FileRef, files: list[FileRef]) -> str:
    """A data file's name in an HF Jobs bundle: its position keeps same-named files apart."""
    if ref.role == "eval":
        return "data/validation.jsonl"
    index = [f for f in files if f.role == "train"].index(ref)
    return f"data/train_{index:03d}_{Path(ref.path).name}"
