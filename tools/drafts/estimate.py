"""Time and cost of a training job, before anyone pays for it.

Throughput comes from arithmetic, not folklore: training costs about 6 x params FLOPs
per token (forward + backward; Kaplan et al. 2020, "Scaling Laws", §2.1), and a GPU
sustains a fraction of its dense fp16/bf16 tensor peak, the model FLOPs utilisation
(MFU). With batch 2 and short sequences a 0.6B model reaches little of the peak, so we
assume MFU 0.15 (full) and count LoRA as 1/3 cheaper (no weight gradients for the
frozen base: about 4 x params FLOPs per token instead of 6). Peaks are the vendors'
datasheet dense tensor numbers; prices are the published Hugging Face Jobs prices
(DESIGN §4), superseded by ``list_jobs_hardware()`` when the caller has it.
A fixed start-up overhead covers the image, the dependency install and the model
download. The estimate is a planning number: the run plan says so.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import orjson
from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.drafts.eval_estimate import HoldOutLengths, estimate_evaluation
from tunestep.tools.jobs.job_train import distributed_batch


class Flavor(BaseModel):
    name: str
    usd_per_hour: float  # the whole machine, all its GPUs
    tflops: float  # per GPU: dense fp16/bf16 tensor peak; for CPUs a rough fp32 figure
    memory_gb: float  # per GPU (each process holds a whole replica); RAM for CPUs
    bf16: bool
    fp16: bool
    gpus: int = 1
    price_published: bool = True  # False: tunestep's own guess, the live list is better


def _gpu(name: str, usd: float, tflops: float, memory: float, gpus: int = 1, *,
         bf16: bool = True, published: bool = True) -> Flavor:
    return Flavor(name=name, usd_per_hour=usd, tflops=tflops, memory_gb=memory, bf16=bf16,
                  fp16=True, gpus=gpus, price_published=published)


def _cpu(name: str, usd: float, tflops: float, memory: float) -> Flavor:
    return Flavor(name=name, usd_per_hour=usd, tflops=tflops, memory_gb=memory, bf16=False,
                  fp16=False, gpus=0)


# Every flavor of huggingface_hub's JobHardware (2.4: 26). Prices marked published are
# the Hugging Face Jobs pricing page's (DESIGN §4; CPU XL and CPU Performance from the same
# page); the others are n x the single-GPU price, a guess that list_jobs_hardware()
# replaces whenever the Hub answers. TFLOP/s: vendor datasheet dense tensor peaks (T4 65,
# L4 121, A10G 125, L40S 362, A100 312, H200 989, RTX PRO 6000 Blackwell ~500).
FLAVORS: dict[str, Flavor] = {f.name: f for f in [
    _cpu("cpu-basic", 0.01, 0.05, 16),
    _cpu("cpu-upgrade", 0.03, 0.2, 32),
    _cpu("cpu-xl", 1.00, 0.4, 124),
    _cpu("cpu-performance", 1.90, 0.8, 256),
    _gpu("t4-small", 0.40, 65, 16, bf16=False),
    _gpu("t4-medium", 0.60, 65, 16, bf16=False),
    _gpu("l4x1", 0.80, 121, 24),
    _gpu("l4x4", 3.20, 121, 24, 4, published=False),
    _gpu("a10g-small", 1.00, 125, 24),
    _gpu("a10g-large", 1.50, 125, 24),
    _gpu("a10g-largex2", 3.00, 125, 24, 2, published=False),
    _gpu("a10g-largex4", 6.00, 125, 24, 4, published=False),
    _gpu("l40sx1", 1.80, 362, 48),
    _gpu("l40sx4", 7.20, 362, 48, 4, published=False),
    _gpu("l40sx8", 14.40, 362, 48, 8, published=False),
    _gpu("a100-large", 2.50, 312, 80),
    _gpu("a100x4", 10.00, 312, 80, 4, published=False),
    _gpu("a100x8", 20.00, 312, 80, 8, published=False),
    _gpu("h200", 5.00, 989, 141),
    _gpu("h200x2", 10.00, 989, 141, 2, published=False),
    _gpu("h200x4", 20.00, 989, 141, 4, published=False),
    _gpu("h200x8", 40.00, 989, 141, 8, published=False),
    _gpu("rtx-pro-6000", 2.70, 500, 96, published=False),
    _gpu("rtx-pro-6000x2", 5.40, 500, 96, 2, published=False),
    _gpu("rtx-pro-6000x4", 10.80, 500, 96, 4, published=False),
    _gpu("rtx-pro-6000x8", 21.60, 500, 96, 8, published=False),
]}

# Data parallel over N GPUs (one process each, gradients all-reduced every step): for a
# 0.6B model the all-reduce of ~1.2 GB of bf16 gradients per step costs a share of each
# step; 0.85 per GPU is a planning figure, not a measurement.
DDP_EFFICIENCY = 0.85
PRICE_CACHE_S = 3600.0
PRICE_RETRY_S = 300.0
_price_cache: dict[str, tuple[float, dict[str, float] | None]] = {}  # by endpoint


def processes_for(flavor: str) -> int:
    """How many training processes a flavor runs: one per GPU, one on CPU or locally."""
    hw = FLAVORS.get(flavor)
    return max(hw.gpus, 1) if hw else 1


def live_prices(refresh: bool = False) -> dict[str, float] | None:
    """USD/hour per flavor from the Hub's ``list_jobs_hardware()``; None offline or on error.

    Asked at most once an hour per process and endpoint (every 5 minutes while the Hub
    does not answer; the prices are advisory: they are not in the draft's digest), never
    when ``HF_HUB_OFFLINE`` is set.
    """
    import time

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    from tunestep.tools.hub.jobs_api import hub_api
    from tunestep.tools.hub.prices import hardware_prices
    from tunestep.tools.hub.token import read_token

    api = hub_api(read_token())
    cached = _price_cache.get(api.endpoint)
    # A failed ask is retried sooner than a good list is refreshed.
    keep = PRICE_CACHE_S if cached and cached[1] is not None else PRICE_RETRY_S
    if not refresh and cached and time.monotonic() - cached[0] < keep:
        return cached[1]
    prices = hardware_prices(api)
    _price_cache[api.endpoint] = (time.monotonic(), prices)
    return prices


MFU = 0.15
CPU_MFU = 0.3
STARTUP_MINUTES = 5.0  # image pull, scheduling, model download and load
# `uv run --locked` installing train_sft.py.lock (~3 GiB of wheels, torch and CUDA libraries)
# with a cold uv cache: 35-56 s measured on HF Jobs for this header (DESIGN §4). Billed GPU
# time, so the estimate counts the upper figure; job.install "image" installs nothing.
LOCKED_INSTALL_SECONDS = 56.0
LOCAL_STARTUP_MINUTES = 0.3
TIMEOUT_MARGIN = 1.3
# Parameter counts of models we know by name; local folders are read from config.json.
KNOWN_PARAMS = {"Qwen/Qwen3-0.6B": 0.6e9, "Qwen/Qwen3-1.7B": 1.7e9, "Qwen/Qwen3-4B": 4.0e9,
                "Qwen/Qwen3-8B": 8.2e9}
BYTES_PER_PARAM = {"full": 16.0, "lora": 2.5}  # fp32 master+grads+Adam vs frozen half base
# The loss upcasts the logits to fp32 and keeps their gradient: 4 + 4 bytes per position
# and vocabulary entry. For Qwen3 (151,936 entries) at 2 x 2,048 tokens that is 5 GB on
# top of the weights, the term that made a 22 GiB A10G look roomy at "16.1 GiB".
LOGIT_BYTES = 8.0
QWEN3_VOCAB = 151_936


class Estimate(BaseModel):
    flavor: str
    params: float
    train_tokens: int
    epochs: float
    total_tokens: int
    optimizer_steps: int
    tokens_per_second: float
    minutes: float
    usd: float
    usd_per_hour: float
    suggested_timeout: str
    timeout_seconds: int
    memory_needed_gb: float
    method: str
    warnings: list[str]
    gpus: int = 0
    processes: int = 1  # training processes: one per GPU (accelerate launch)
    # The global batch an optimizer step sees: the plan's per_device x accumulation, kept
    # on N GPUs by fewer accumulation steps (or a smaller per-device batch); larger only
    # where neither divides (job_train.distributed_batch, the job's own rule).
    effective_batch: int = 0
    price_source: str = "table"  # hub (live list_jobs_hardware), table, guess
    # The whole hold-out evaluation after training (two greedy passes), counted in minutes;
    # 0 in a draft made before the estimate counted it.
    eval_minutes: float = 0.0
    eval_rows: int = 0
    eval_max_new_tokens: int = 0
    eval_method: str = ""
    eval_passes: int = 2  # 1 when the previous version's kept answers are reused
    # how eval_max_new_tokens was found: the plan's number or the model's tokenizer
    # ("exact"), or characters / 4 where the tokenizer was not at hand ("estimated")
    eval_budget: str = "estimated"


def parse_duration(text: str) -> int:
    """'2h', '90m', '45s', '1h30m', '1d' or plain seconds -> seconds (every part bounded
    in digits: a 5,000-digit timeout is a bad_duration, not a traceback)."""
    from tunestep.tools.core.plan_values import duration_seconds

    seconds = duration_seconds(str(text))
    if seconds is None:
        shown = str(text) if len(str(text)) <= 40 else f"{str(text)[:37]}..."
        raise TunestepError("bad_duration", f"'{shown}' is not a duration like 2h, 90m or "
                            "1h30m")
    return seconds


def format_duration(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes = math.ceil(rest / 60)
    if minutes == 60:
        hours, minutes = hours + 1, 0
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def model_params(model: str) -> float:
    """Parameter count of a hub id we know, or of a local model folder's config."""
    if model in KNOWN_PARAMS:
        return KNOWN_PARAMS[model]
    config = Path(model) / "config.json"
    if config.is_file():
        c = orjson.loads(config.read_bytes())
        hidden, layers = c.get("hidden_size", 0), c.get("num_hidden_layers", 0)
        inter, vocab = c.get("intermediate_size", 4 * hidden), c.get("vocab_size", 0)
        per_layer = 4 * hidden * hidden + 3 * hidden * inter
        embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings", True) else 2)
        return float(layers * per_layer + embeddings)
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bm])\b", model.lower())
    if match:
        return float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6)
    return 0.6e9  # the size this tool is built around; the estimate says it guessed


def model_vocab(model: str) -> int:
    """Vocabulary size of a local model folder's config, else Qwen3's (the known models)."""
    config = Path(model) / "config.json"
    if config.is_file():
        vocab = orjson.loads(config.read_bytes()).get("vocab_size")
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
            return vocab
    return QWEN3_VOCAB


def logits_gb(model: str, per_device_batch: int, max_length: int) -> float:
    """The fp32 logits of one micro-batch and their gradient, in GB."""
    return per_device_batch * max_length * model_vocab(model) * LOGIT_BYTES / 1e9


def local_flavor() -> Flavor:
    cores = os.cpu_count() or 1
    return Flavor(name="local", usd_per_hour=0.0, tflops=0.05 * cores, memory_gb=0,
                  bf16=False, fp16=False, gpus=0)


def expected_precision(precision: str, flavor: str | None) -> str | None:
    """What the job will train in on ``flavor`` (the job resolves it the same way:
    tools/jobs/job_train.py), or None where the hardware is not known (local backend)."""
    hw = FLAVORS.get(flavor or "")
    if hw is None:
        return None
    if precision == "fp32" or not hw.gpus:
        return "fp32"
    if precision in ("auto", "bf16") and hw.bf16:
        return "bf16"
    return "fp16" if hw.fp16 else "fp32"


def estimate_job(
    *,
    model: str,
    mode: str,
    flavor: str,
    train_tokens: int,
    rows: int,
    epochs: float,
    batch_size: int,
    grad_accum: int,
    precision: str,
    timeout: str,
    prices: dict[str, float] | None = None,
    install_seconds: float = 0.0,
    holdout: HoldOutLengths | None = None,
    eval_max_new_tokens: int = 0,
    eval_batch_size: int = 8,
    eval_before_kept: bool = False,
    eval_budget_counted: bool = False,
    max_length: int = 0,
) -> Estimate:
    """Minutes, dollars, memory and warnings for one training job; ``install_seconds`` is
    the dependency install before training (billed on HF Jobs); ``holdout`` the hold-out's
    lengths, whose evaluation (``eval_max_new_tokens`` a row, ``eval_batch_size`` a batch)
    the job runs after training."""
    hw = local_flavor() if flavor == "local" else FLAVORS.get(flavor)
    if hw is None:
        raise TunestepError("unknown_flavor", f"unknown hardware flavor '{flavor}'; known: "
                            f"{', '.join(sorted(FLAVORS))}, or the local backend")
    price_source = "table" if hw.price_published else "guess"
    if prices and flavor in prices:
        hw = hw.model_copy(update={"usd_per_hour": prices[flavor]})
        price_source = "hub"
    params = model_params(model)
    flops_per_token = (4.0 if mode == "lora" else 6.0) * params
    mfu = CPU_MFU if hw.gpus == 0 else MFU
    processes = max(hw.gpus, 1)
    scaling = 1.0 if processes == 1 else processes * DDP_EFFICIENCY
    per_device, accumulation, batch_note = distributed_batch(batch_size, grad_accum, processes)
    effective_batch = per_device * accumulation * processes
    tokens_per_second = hw.tflops * 1e12 * mfu * scaling / flops_per_token
    total_tokens = int(train_tokens * epochs)
    startup = LOCAL_STARTUP_MINUTES if flavor == "local" else STARTUP_MINUTES
    evaluation = estimate_evaluation(
        flavor=flavor, gpus=hw.gpus, flops_per_s=hw.tflops * 1e12 * mfu, params=params,
        lengths=holdout, max_new_tokens=eval_max_new_tokens, batch_size=eval_batch_size,
        local=flavor == "local", before_kept=eval_before_kept) if holdout is not None else None
    eval_minutes = evaluation.minutes if evaluation else 0.0
    minutes = (startup + install_seconds / 60 + total_tokens / tokens_per_second / 60
               + eval_minutes)
    timeout_seconds = parse_duration(timeout)
    suggested = max(300, math.ceil(minutes * 60 * TIMEOUT_MARGIN / 300) * 300)
    memory = (params * BYTES_PER_PARAM["lora" if mode == "lora" else "full"] / 1e9 + 2.0
              + logits_gb(model, per_device, max_length))
    warnings = _warnings(hw, precision, memory, minutes, timeout_seconds)
    if batch_note:
        warnings.append(batch_note)
    if price_source == "guess":
        warnings.append(f"no published price for {flavor} in tunestep's table and the Hub's "
                        f"live list was not available: ${hw.usd_per_hour:g}/h is a guess")
    return Estimate(
        flavor=flavor, params=params, train_tokens=train_tokens, epochs=epochs,
        total_tokens=total_tokens,
        # One batch per process per micro-step: N GPUs take N times fewer optimizer steps.
        optimizer_steps=math.ceil(rows / effective_batch) * math.ceil(epochs),
        effective_batch=effective_batch,
        tokens_per_second=round(tokens_per_second, 1), minutes=round(minutes, 1),
        usd=round(hw.usd_per_hour * math.ceil(minutes) / 60, 2),
        usd_per_hour=hw.usd_per_hour, suggested_timeout=format_duration(suggested),
        timeout_seconds=timeout_seconds, memory_needed_gb=round(memory, 1),
        method=f"{flops_per_token / params:g} x {params:.3g} params FLOPs/token at {mfu:.0%} "
               f"of {hw.tflops:g} TFLOP/s"
               + (f" x {processes} GPUs ({DDP_EFFICIENCY:.0%} data-parallel scaling, one "
                  "process per GPU)" if processes > 1 else "")
               + f", +{startup:g} min start-up"
               + (f", +{install_seconds:g} s dependency install (billed)" if install_seconds
                  else ""), warnings=warnings,
        gpus=hw.gpus, processes=processes, price_source=price_source,
        eval_minutes=eval_minutes, eval_rows=evaluation.rows if evaluation else 0,
        eval_max_new_tokens=evaluation.max_new_tokens if evaluation else 0,
        eval_method=evaluation.method if evaluation else "",
        eval_passes=1 if eval_before_kept else 2,
        eval_budget="exact" if eval_budget_counted else "estimated")


def _warnings(hw: Flavor, precision: str, memory: float, minutes: float,
              timeout_seconds: int) -> list[str]:
    out = []
    if timeout_seconds < minutes * 60:
        out.append(f"timeout {format_duration(timeout_seconds)} is shorter than the estimated "
                   f"{minutes:.0f} min: the job would be killed before it ends")
    if precision == "bf16" and not hw.bf16:
        out.append(f"{hw.name} has no bf16: the job falls back to "
                   f"{'fp16' if hw.fp16 else 'fp32'}")
    if precision == "fp16" and not hw.fp16:
        out.append(f"{hw.name} has no fp16 GPU: the job trains in fp32")
    if hw.memory_gb and memory > hw.memory_gb * 0.9:
        # Data parallel: every GPU holds a whole replica, so more GPUs do not add room.
        per = " per GPU" if hw.gpus > 1 else ""
        out.append(f"the model needs about {memory:.0f} GB to train this way; {hw.name} has "
                   f"{hw.memory_gb:g} GB{per}: choose a larger flavor or LoRA")
    return out


def require_fits_timeout(estimate: Estimate) -> None:
    """Refuse a draft whose estimated training plus evaluation outlasts its timeout.

    A job killed at the timeout loses the trained model (it is saved only at the end), so
    this is a refusal before anyone signs, not a warning: raise ``job.timeout`` (the
    suggestion covers the estimate with a margin) or shorten the evaluation.
    """
    needed = estimate.minutes * 60
    if estimate.timeout_seconds >= needed:
        return
    train = estimate.minutes - estimate.eval_minutes
    raise TunestepError(
        "draft_exceeds_timeout",
        f"the job is estimated at {estimate.minutes:.0f} min ({train:.0f} min start-up and "
        f"training, {estimate.eval_minutes:.0f} min evaluating {estimate.eval_rows} hold-out "
        f"rows at up to {estimate.eval_max_new_tokens} new tokens) but the timeout is "
        f"{format_duration(estimate.timeout_seconds)}: it would be killed and the trained "
        f"model lost. Raise job.timeout to {estimate.suggested_timeout} or shorten the "
        "evaluation (evaluation.max_new_tokens, a smaller hold-out set)")


def before_answers_kept(ws, start) -> bool:
    """Whether the version a draft resumes from carries its hold-out answers, which the
    job reuses instead of generating them (tools/jobs/job_answers.py): one pass, not two.
    Only a local folder can be looked at; a Hub start counts both passes."""
    folder = start.checkpoint or (start.resume_from if start.source == "local" else None)
    if not folder:
        return False
    try:
        path = Path(folder) if Path(folder).is_absolute() else ws.resolve(folder)
    except TunestepError:
        return False
    return (path / "holdout_answers.json").is_file()
