"""Training: precision, the model (fresh or resumed, full or LoRA), TRL's SFTConfig, and the
per-epoch metrics recorder."""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_common import EXIT_BAD_INPUT, JobError, RunLog, atomic_write_text
    from .job_config import Paths
    from .job_report import metrics_csv_text
else:  # a sibling of the job script, whose folder is on sys.path
    from job_common import EXIT_BAD_INPUT, JobError, RunLog, atomic_write_text
    from job_config import Paths
    from job_report import metrics_csv_text


def resolve_precision(requested: str, cuda: bool, bf16_ok: bool) -> tuple[str, str | None]:
    """The precision to train in, and why it differs from the request (None when it doesn't).

    "auto": bf16 where the GPU has it natively, else fp16 on a GPU, else fp32. An explicit
    fp16/bf16 falls back instead of crashing (a T4 has no bf16, a CPU has neither).
    """
    if requested == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "fp32", None
    if requested == "bf16" and not (cuda and bf16_ok):
        fallback = "fp16" if cuda else "fp32"
        why = "this GPU has no native bf16" if cuda else "no CUDA GPU is available"
        return fallback, f"bf16 requested but {why}; training in {fallback}"
    if requested == "fp16" and not cuda:
        return "fp32", "fp16 requested but no CUDA GPU is available; training in fp32"
    return requested, None


def bf16_supported(torch) -> bool:
    """Native bf16 only: torch's default also counts emulation, which says True on a T4."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch releases before the keyword: they checked natively anyway
        return bool(torch.cuda.is_bf16_supported())


def expects_gpu(cfg: dict, environ=os.environ) -> str | None:
    """Why this job must have a GPU (the config, or HF Jobs' ``ACCELERATOR``), or None."""
    if cfg["expect_gpu"]:
        return "the job config says a GPU is expected (expect_gpu: true)"
    accelerator = environ.get("ACCELERATOR", "").strip()
    if accelerator and accelerator.lower() not in ("none", "cpu"):
        return f"ACCELERATOR={accelerator} (a GPU flavor)"
    return None


def check_gpu(cfg: dict, torch, environ=os.environ) -> None:
    """On a GPU flavor without usable CUDA, stop now: training on CPU would bill the GPU
    until the timeout and end with nothing."""
    reason = expects_gpu(cfg, environ)
    if reason is None or torch.cuda.is_available():
        return
    built = torch.version.cuda or "none (a CPU-only build)"
    raise JobError(f"{reason}, but CUDA is not usable (torch {torch.__version__}, CUDA "
                   f"{built}, torch.cuda.is_available() is False): stopping before training "
                   "instead of training on CPU", EXIT_BAD_INPUT)


def memory_estimate(model, hp: dict, precision: str, torch) -> dict:
    """Peak training memory, roughly, and whether activation checkpointing is needed.

    Weights in fp32 (4 B/parameter) plus, for trainable ones, a gradient (4 B) and AdamW's
    two moments (8 B); activations per layer about 34 x sequence x batch x hidden bytes at
    half precision (Korthikanti et al. 2022, with fused attention: no sequence² term),
    doubled in fp32; logits batch x sequence x vocabulary: the fp32 logits the loss is
    computed on (4 B), their fp32 gradient in the backward pass (4 B), and under mixed
    precision the half-precision copy the lm_head wrote (2 B): at 2 x 2048 tokens and
    Qwen3's 151,936-token vocabulary 5.8 GiB in bf16, which an estimate without the
    gradient put 2.3 GiB lower. Checkpointing recomputes the activations instead of
    keeping them (about a third more compute), so it is turned on only on a GPU where this
    would pass 85 % of memory.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    seq = hp["max_length"] or getattr(config, "max_position_embeddings", 2048) or 2048
    batch = hp["per_device_train_batch_size"]
    half = precision in ("bf16", "fp16")
    static = params * 4 + trainable * 12
    activations = layers * 34 * seq * batch * hidden * (1 if half else 2)
    logits = batch * seq * vocab * (4 + 4 + (2 if half else 0))
    need = static + activations + logits
    out = {"estimate_bytes": int(need), "device_bytes": None, "checkpointing": False}
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        out["device_bytes"] = int(total)
        out["checkpointing"] = need > 0.85 * total
    gib = 2 ** 30
    where = (f"{out['device_bytes'] / gib:.1f} GiB on the GPU" if out["device_bytes"]
             else "CPU memory")
    out["reason"] = (f"estimated peak {need / gib:.2f} GiB (batch {batch} x {seq} tokens) "
                     f"against {where}: activation checkpointing "
                     + ("on" if out["checkpointing"] else "off"))
    return out


def torch_dtype(torch, precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _hub_download(spec: str, log: RunLog) -> Path:
    """Fetch 'owner/name[@revision]' from the Hub (token from HF_TOKEN) into a temp dir."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    log(f"downloading checkpoint {repo_id}@{revision or 'main'} from the Hub")
    target = Path(tempfile.mkdtemp(prefix="tunestep-resume-"))
    atexit.register(shutil.rmtree, target, True)  # a model-sized download: never left behind
    snapshot_download(repo_id, revision=revision or None, local_dir=target,
                      token=os.environ.get("HF_TOKEN") or None)
    return target


def load_model_and_tokenizer(cfg: dict, paths: Paths, log: RunLog):
    """(model, tokenizer, what it resumed from, its local folder or None) for fresh/resumed,
    full/LoRA training (the folder holds the previous version's kept hold-out answers).

    The model is loaded in fp32: mixed precision (fp16/bf16 autocast) keeps fp32 master
    weights, which fp16 gradient scaling requires and which keep small updates from
    vanishing; a 0.6B model in fp32 fits every GPU flavor we use.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resume = paths.resume_from
    label = str(resume) if resume is not None else None
    if paths.resume_hub:
        resume = _hub_download(paths.resume_hub, log)
        label = f"hf://{paths.resume_hub}"
    mode = cfg["mode"]
    is_adapter = resume is not None and (resume / "adapter_config.json").is_file()
    merge = cfg["merge_adapter"] is not None
    if resume is not None and mode == "full" and is_adapter and not merge:
        raise JobError("resume_from holds a LoRA adapter but mode is 'full' and the config "
                       "asks for no merge (merge_adapter)", EXIT_BAD_INPUT)
    if merge and not is_adapter:
        raise JobError("merge_adapter: resume_from holds no LoRA adapter "
                       "(adapter_config.json)", EXIT_BAD_INPUT)
    if resume is not None and mode == "lora" and not is_adapter:
        raise JobError("mode 'lora' resumes from an adapter dir (adapter_config.json)",
                       EXIT_BAD_INPUT)

    # The tokenizer travels with every version, so a resumed step uses the one it trained with.
    has_tokenizer = resume is not None and (resume / "tokenizer_config.json").is_file()
    tok_source = str(resume) if has_tokenizer else paths.base_model
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    model_source = (str(resume) if (resume is not None and mode == "full" and not merge)
                    else paths.base_model)
    log(f"loading model from {model_source}")
    model = AutoModelForCausalLM.from_pretrained(model_source, dtype=torch.float32)
    if merge:
        model = merge_adapter(model, resume, log)

    if mode == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume is not None:
            log(f"loading LoRA adapter from {resume} (trainable)")
            model = PeftModel.from_pretrained(model, str(resume), is_trainable=True)
        else:
            lora = cfg["lora"]
            model = get_peft_model(model, LoraConfig(
                r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"], task_type="CAUSAL_LM",
            ))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"LoRA trainable parameters: {trainable}")
    return model, tokenizer, label, resume


def merge_adapter(model, adapter: Path, log: RunLog):
    """``model`` (the adapter's base, fp32) with the LoRA adapter in ``adapter`` applied and
    merged into its weights: a plain model again, trained in full from here. In place: the
    peak is the base plus the adapter's small matrices."""
    from peft import PeftModel

    log(f"merging the LoRA adapter {adapter} into its base (merge_and_unload)")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    # PEFT froze the base's weights for the adapter; a full step trains every one.
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    return merged


def _clean(value: Any) -> Any:
    """Floats that JSON can carry (NaN/inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EpochRecorder:
    """Trainer callback: one metrics row per epoch, log lines, progressive CSV rewrites."""

    def __init__(self, log: RunLog, csv_path: Path | None, t0: float):
        from transformers import TrainerCallback

        recorder = self
        self.rows: list[dict] = []
        self.eval_loss_before: float | None = None
        self.training = False
        self.log, self.csv_path, self.t0 = log, csv_path, t0

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                recorder.training = True
                recorder.t0 = time.monotonic()

            def on_log(self, args, state, control, logs=None, **kwargs):
                recorder.on_log(state, logs or {})

        self.callback = _Callback()

    def on_log(self, state, logs: dict) -> None:
        scalars = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        self.log("log " + json.dumps({k: _clean(round(v, 6) if isinstance(v, float) else v)
                                      for k, v in scalars.items()}))
        seconds = round(time.monotonic() - self.t0, 2)
        if not self.training:  # the baseline evaluation before the first step
            if "eval_loss" in logs:
                self.eval_loss_before = _clean(float(logs["eval_loss"]))
            return
        if "loss" in logs:  # a per-epoch training log (the end-of-run summary uses train_loss)
            self.rows.append({
                "epoch": round(float(logs.get("epoch", state.epoch or 0)), 4),
                "step": state.global_step,
                "train_loss": _clean(float(logs["loss"])),
                "learning_rate": logs.get("learning_rate"),
                "tokens": int(logs["num_tokens"]) if "num_tokens" in logs else None,
                "seconds": seconds,
            })
        elif "eval_loss" in logs:
            if not self.rows:
                self.rows.append({"epoch": round(float(logs.get("epoch", 0)), 4),
                                  "step": state.global_step, "seconds": seconds})
            self.rows[-1]["eval_loss"] = _clean(float(logs["eval_loss"]))
        else:
            return
        if self.csv_path is not None and state.is_world_process_zero:
            atomic_write_text(self.csv_path, metrics_csv_text(self.rows))

def configure_trackio_env(cfg: dict, paths: Paths) -> None:
    """Offline Trackio under trackio.dir; a Space only when the config names one.

    Must run before trackio is imported: it reads TRACKIO_DIR at import time, and an
    inherited TRACKIO_SPACE_ID / TRACKIO_SERVER_URL would send metrics somewhere the plan
    never asked for.
    """
    if paths.trackio_dir is not None:
        paths.trackio_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TRACKIO_DIR"] = str(paths.trackio_dir)
    if not cfg["trackio"]["space_id"]:
        for var in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
            os.environ.pop(var, None)


# On several GPUs only rank 0 answers the hold-out, before training (the previous version)
# while the other ranks already wait in the process group's rendezvous and first
# collectives. Their wait must outlast that pass, or they die at transformers' default
# ddp_timeout (1800 s). A pass costs at most batches x budget decode steps; 0.25 s a step
# is ~6-10x the estimate's per-flavor figure (tools/drafts/eval_estimate.py), so a slow GPU still
# fits; 120 s a batch covers its prefill; 600 s the model moves and the start of training.
WAIT_SECONDS_PER_STEP = 0.25
WAIT_SECONDS_PER_BATCH = 120.0
WAIT_SLACK_SECONDS = 600.0
DEFAULT_DDP_TIMEOUT = 1800


def ddp_timeout_seconds(rows: int, budget: int, batch_size: int) -> int:
    """The collective timeout that lets the other ranks wait out rank 0's hold-out pass:
    never below transformers' default."""
    batches = math.ceil(rows / max(batch_size, 1))
    wait = batches * (budget * WAIT_SECONDS_PER_STEP + WAIT_SECONDS_PER_BATCH)
    return max(DEFAULT_DDP_TIMEOUT, math.ceil(wait + WAIT_SLACK_SECONDS))


def distributed_batch(per_device: int, accumulation: int, processes: int
                      ) -> tuple[int, int, str | None]:
    """(per-device batch, accumulation steps, note) that keep the plan's global batch,
    per_device x accumulation, on ``processes`` GPUs (each process takes its own batch).

    Fewer accumulation steps first, then a smaller per-device batch; where neither divides,
    the global batch grows to per_device x accumulation x processes and the note says so
    (tools/drafts/estimate.py applies the same rule for the review screen).
    """
    if processes <= 1:
        return per_device, accumulation, None
    if accumulation % processes == 0:
        return per_device, accumulation // processes, None
    if per_device % processes == 0:
        return per_device // processes, accumulation, None
    effective = per_device * accumulation * processes
    return per_device, accumulation, (
        f"the plan's global batch {per_device * accumulation} cannot be split over "
        f"{processes} GPUs: the effective batch is {effective}")


def build_sft_config(cfg: dict, precision: str, output_dir: Path, pretokenized: bool,
                     checkpointing: bool, ddp_timeout: int = DEFAULT_DDP_TIMEOUT):
    from trl import SFTConfig

    hp = cfg["hyperparameters"]
    tr = cfg["trackio"]
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # accelerate launch sets WORLD_SIZE: the plan's global batch is kept across the GPUs.
    per_device, accumulation, _ = distributed_batch(
        hp["per_device_train_batch_size"], hp["gradient_accumulation_steps"],
        int(os.environ.get("WORLD_SIZE", "1") or 1))
    # Fields that newer transformers releases added or renamed; tunestep's own environment
    # may hold any version in its supported range, so only pass what this one knows.
    optional = {
        # the process group's timeout (ddp_timeout_seconds): ranks waiting on rank 0
        "ddp_timeout": ddp_timeout,
        # transformers would otherwise create a static Trackio Space on a Hub push, and
        # Spaces/repos are public unless hub_private_repo=True (DESIGN §4). Releases
        # without this field never create one.
        "trackio_static_space_id": False,
        "project": tr["project"],
    }
    # Recomputing activations costs about a third more compute: only when the memory
    # estimate says they would not fit (see memory_estimate). transformers 5.2x renamed
    # gradient_checkpointing (TRL turns it on by default) activation_checkpointing.
    if "activation_checkpointing" in names:
        optional["activation_checkpointing"] = checkpointing
    else:
        optional["gradient_checkpointing"] = checkpointing
    # Batches of similar lengths pad little (transformers 5: train_sampling_strategy;
    # earlier releases: group_by_length).
    if "train_sampling_strategy" in names:
        optional["train_sampling_strategy"] = "group_by_length"
    else:
        optional["group_by_length"] = True
    # transformers 5 takes a ratio as a float warmup_steps; earlier releases warmup_ratio.
    if "warmup_ratio" in names:
        optional["warmup_ratio"] = float(hp["warmup_ratio"])
    else:
        optional["warmup_steps"] = float(hp["warmup_ratio"])
    if tr["space_id"]:
        if "trackio_space_id" not in names:
            raise JobError("trackio.space_id needs a transformers release with trackio_space_id",
                           EXIT_BAD_INPUT)
        optional["trackio_space_id"] = tr["space_id"]
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=float(hp["learning_rate"]),
        num_train_epochs=float(hp["num_train_epochs"]),
        max_steps=hp["max_steps"],
        seed=hp["seed"],
        data_seed=hp["seed"],
        max_length=hp["max_length"],
        logging_strategy="epoch",
        eval_strategy="epoch",
        # Epoch checkpoints only when the config asks ("epoch"): nothing reads them, and
        # the final weights are saved into the version folder anyway. A step restarts from
        # the last committed version, never mid-run, so no optimizer state either.
        save_strategy=hp["save_strategy"],
        save_total_limit=hp["save_total_limit"],
        save_only_model=True,
        # TRL refuses assistant_only_loss on pre-tokenized rows; their labels already
        # carry the same assistant mask (sft_data.tokenize_chat).
        assistant_only_loss=not pretokenized,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=["trackio"],
        run_name=f"{cfg['draft_id']}-step{cfg['step']:04d}-{cfg['batch']}",
        hub_private_repo=True,  # a configured Trackio Space is private too
        push_to_hub=False,  # pushing is ours (push_version), after the samples are in
        disable_tqdm=True,
        dataloader_num_workers=0,
        **{k: v for k, v in optional.items() if k in names},
    )

