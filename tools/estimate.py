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

from tunestep.tools.errors import TunestepError


class Flavor(BaseModel):
    name: str
    usd_per_hour: float
    tflops: float  # dense fp16/bf16 tensor peak for GPUs; a rough fp32 figure for CPUs
    memory_gb: float
    bf16: bool
    fp16: bool
    gpus: int = 1


FLAVORS: dict[str, Flavor] = {f.name: f for f in [
    Flavor(name="cpu-basic", usd_per_hour=0.01, tflops=0.05, memory_gb=16, bf16=False,
           fp16=False, gpus=0),
    Flavor(name="cpu-upgrade", usd_per_hour=0.03, tflops=0.2, memory_gb=32, bf16=False,
           fp16=False, gpus=0),
    Flavor(name="t4-small", usd_per_hour=0.40, tflops=65, memory_gb=16, bf16=False, fp16=True),
    Flavor(name="t4-medium", usd_per_hour=0.60, tflops=65, memory_gb=16, bf16=False, fp16=True),
    Flavor(name="l4x1", usd_per_hour=0.80, tflops=121, memory_gb=24, bf16=True, fp16=True),
    Flavor(name="a10g-small", usd_per_hour=1.00, tflops=125, memory_gb=24, bf16=True, fp16=True),
    Flavor(name="a10g-large", usd_per_hour=1.50, tflops=125, memory_gb=24, bf16=True, fp16=True),
    Flavor(name="l40sx1", usd_per_hour=1.80, tflops=362, memory_gb=48, bf16=True, fp16=True),
    Flavor(name="a100-large", usd_per_hour=2.50, tflops=312, memory_gb=80, bf16=True, fp16=True),
    Flavor(name="h200", usd_per_hour=5.00, tflops=989, memory_gb=141, bf16=True, fp16=True),
]}

MFU = 0.15
CPU_MFU = 0.3
STARTUP_MINUTES = 5.0  # image pull, uv install of the job's dependencies, model download
LOCAL_STARTUP_MINUTES = 0.3
TIMEOUT_MARGIN = 1.3
# Parameter counts of models we know by name; local folders are read from config.json.
KNOWN_PARAMS = {"Qwen/Qwen3-0.6B": 0.6e9, "Qwen/Qwen3-1.7B": 1.7e9, "Qwen/Qwen3-4B": 4.0e9,
                "Qwen/Qwen3-8B": 8.2e9}
BYTES_PER_PARAM = {"full": 16.0, "lora": 2.5}  # fp32 master+grads+Adam vs frozen half base


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


def parse_duration(text: str) -> int:
    """'2h', '90m', '45s', '1h30m' or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or parts is None or not any(parts.groups()):
        raise TunestepError("bad_duration", f"'{text}' is not a duration like 2h, 90m or 1h30m")
    d, h, m, s = (int(g or 0) for g in parts.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


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


def local_flavor() -> Flavor:
    cores = os.cpu_count() or 1
    return Flavor(name="local", usd_per_hour=0.0, tflops=0.05 * cores, memory_gb=0,
                  bf16=False, fp16=False, gpus=0)


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
) -> Estimate:
    """Minutes, dollars, memory and warnings for one training job."""
    hw = local_flavor() if flavor == "local" else FLAVORS.get(flavor)
    if hw is None:
        raise TunestepError("unknown_flavor", f"unknown hardware flavor '{flavor}'; known: "
                            f"{', '.join(sorted(FLAVORS))}, or the local backend")
    if prices and flavor in prices:
        hw = hw.model_copy(update={"usd_per_hour": prices[flavor]})
    params = model_params(model)
    flops_per_token = (4.0 if mode == "lora" else 6.0) * params
    mfu = CPU_MFU if hw.gpus == 0 else MFU
    tokens_per_second = hw.tflops * 1e12 * mfu / flops_per_token
    total_tokens = int(train_tokens * epochs)
    startup = LOCAL_STARTUP_MINUTES if flavor == "local" else STARTUP_MINUTES
    minutes = startup + total_tokens / tokens_per_second / 60
    timeout_seconds = parse_duration(timeout)
    suggested = max(300, math.ceil(minutes * 60 * TIMEOUT_MARGIN / 300) * 300)
    memory = params * BYTES_PER_PARAM["lora" if mode == "lora" else "full"] / 1e9 + 2.0
    warnings = _warnings(hw, precision, memory, minutes, timeout_seconds)
    return Estimate(
        flavor=flavor, params=params, train_tokens=train_tokens, epochs=epochs,
        total_tokens=total_tokens,
        optimizer_steps=math.ceil(rows / (batch_size * grad_accum)) * math.ceil(epochs),
        tokens_per_second=round(tokens_per_second, 1), minutes=round(minutes, 1),
        usd=round(hw.usd_per_hour * math.ceil(minutes) / 60, 2),
        usd_per_hour=hw.usd_per_hour, suggested_timeout=format_duration(suggested),
        timeout_seconds=timeout_seconds, memory_needed_gb=round(memory, 1),
        method=f"{flops_per_token / params:g} x {params:.3g} params FLOPs/token at {mfu:.0%} "
               f"of {hw.tflops:g} TFLOP/s, +{startup:g} min start-up", warnings=warnings)


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
        out.append(f"the model needs about {memory:.0f} GB to train this way; {hw.name} has "
                   f"{hw.memory_gb:g} GB: choose a larger flavor or LoRA")
    return out
