"""Time of the job's whole hold-out evaluation, before anyone pays for it.

The job (``tools/jobs/job_evaluate.py``) answers every hold-out row twice, with the
previous version and the new one: batched greedy generation (``evaluation.batch_size``
prompts a batch) with a token budget of the longest reference answer + ``BUDGET_MARGIN``,
never below ``samples.max_new_tokens``. Here the host counts that budget cheaply: the
longest reference answer in characters / ``CHARS_PER_TOKEN`` (the job counts it with the
real tokenizer), read line by line from the hold-out file.

Each batch costs a prefill (2 x params FLOPs per prompt token at the flavor's MFU) and
``budget`` decode steps. The estimate assumes every batch runs its whole budget (a batch
stops early only when all its answers have ended): an upper figure, on purpose.
A decode step of a 0.6B model in transformers' eager ``generate`` is bound by per-step
overhead (kernel launches, Python), not by the GPU's FLOPs or bandwidth, so on a GPU the
step rate is a per-flavor figure (``DECODE_STEPS_PER_S``); on a CPU the step's arithmetic
(2 x params FLOPs per sequence in the batch) dominates and is computed like training's.
All of it is an estimate, not a measurement on HF Jobs (.specs/job_config.md says what
was measured).
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
from pydantic import BaseModel

from tunestep.tools.core.readfile import (
    DEFAULT_MAX_ROW_BYTES,
    Overlong,
    bounded_lines,
    open_regular,
)

# The job's margin over the longest reference (tools/jobs/job_evaluate.BUDGET_MARGIN;
# tests/test_eval_estimate.py checks they agree).
BUDGET_MARGIN = 8
# Qwen3's tokenizer on English prose and code: about 4 characters a token (3-4.5 in
# practice); a planning figure, the job counts exactly.
CHARS_PER_TOKEN = 4.0
# Decode steps per second (one token for every sequence in the batch) of Qwen3-0.6B in
# transformers' eager generate, bf16, batch <= 32, short context: tunestep's estimate from
# the ~20-30 ms per step HF generate spends on launch overhead for a 28-layer model, a
# little slower on older GPUs. Not measured on HF Jobs; .specs/job_config.md says what was.
DECODE_STEPS_PER_S = {"t4": 25.0, "l4": 30.0, "a10g": 30.0, "l40s": 35.0, "a100": 35.0,
                      "h200": 40.0, "rtx-pro-6000": 35.0}
DEFAULT_GPU_STEPS_PER_S = 25.0
CPU_STEP_OVERHEAD_S = 0.05  # per decode step on a CPU, beside the arithmetic
# The previous version is loaded from disk (or the Hub mount) for its pass; the new one is
# already in memory. Billed time outside training, beside the job's start-up.
PREVIOUS_LOAD_SECONDS = 20.0
PASSES = 2  # previous version and new one; 1 when the previous version's answers are kept


class HoldOutLengths(BaseModel):
    """What the host knows of the hold-out's lengths, in characters."""

    rows: int
    longest_reference_chars: int
    prompt_chars: int  # all prompts together


class EvalEstimate(BaseModel):
    rows: int
    max_new_tokens: int
    batch_size: int
    minutes: float
    method: str


def holdout_lengths(path: Path, shown: str | None = None) -> HoldOutLengths:
    """Rows, longest last-assistant answer and prompt characters of a JSONL hold-out,
    streamed (one bounded line in memory). A line that is not a chat row counts as a row
    without a reference: the preflight, not the estimate, judges the file."""
    rows = longest = prompts = 0
    with open_regular(path, shown) as handle:
        for line in bounded_lines(handle, DEFAULT_MAX_ROW_BYTES):
            if isinstance(line, Overlong):
                rows += 1
                continue
            if not line.strip():
                continue
            rows += 1
            try:
                messages = orjson.loads(line).get("messages") or []
            except (orjson.JSONDecodeError, AttributeError):
                continue
            texts = [(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict)]
            texts = [(r, c if isinstance(c, str) else "") for r, c in texts]
            last = max((i for i, (r, _) in enumerate(texts) if r == "assistant"), default=None)
            if last is not None:
                longest = max(longest, len(texts[last][1]))
                prompts += sum(len(c) for _, c in texts[:last])
            else:
                prompts += sum(len(c) for _, c in texts)
    return HoldOutLengths(rows=rows, longest_reference_chars=longest, prompt_chars=prompts)


def token_budget(longest_reference_chars: int, samples_max_new_tokens: int,
                 chosen: int | None = None, longest_reference_tokens: int | None = None
                 ) -> int:
    """The job's ``max_new_tokens`` for the evaluation (job_evaluate.answer_budget):
    ``evaluation.max_new_tokens`` when set, else the longest reference + margin, never
    below ``samples.max_new_tokens``. The longest reference in tokens when the model's
    tokenizer counted it (``reference_tokens``), else characters / ``CHARS_PER_TOKEN``."""
    if chosen is not None:
        return chosen
    longest = (longest_reference_tokens if longest_reference_tokens is not None
               else math.ceil(longest_reference_chars / CHARS_PER_TOKEN))
    return max(longest + BUDGET_MARGIN, samples_max_new_tokens)


def reference_tokens(ws, model: str, path: Path, shown: str | None = None,
                     candidates: int = 8) -> int | None:
    """The longest reference answer of a JSONL hold-out in the model's tokens, as the job
    counts it, so a screen states the budget the job will really use (issue 18: screens
    said "<= 64 new tokens" where every job used 145). The ``candidates`` longest answers
    by characters are tokenized; None when the tokenizer cannot be had offline."""
    import heapq

    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.inspector.tokens import load_tokenizer

    longest: list[tuple[int, int, str]] = []
    with open_regular(path, shown) as handle:
        for index, line in enumerate(bounded_lines(handle, DEFAULT_MAX_ROW_BYTES)):
            if isinstance(line, Overlong) or not line.strip():
                continue
            try:
                messages = orjson.loads(line).get("messages") or []
            except (orjson.JSONDecodeError, AttributeError):
                continue
            answers = [m.get("content") for m in messages
                       if isinstance(m, dict) and m.get("role") == "assistant"]
            if answers and isinstance(answers[-1], str):
                item = (len(answers[-1]), index, answers[-1])
                if len(longest) < candidates:
                    heapq.heappush(longest, item)
                else:
                    heapq.heappushpop(longest, item)
    if not longest:
        return None
    try:
        tokenizer, _ = load_tokenizer(ws, model)
    except (TunestepError, OSError, ValueError):
        return None
    texts = [text for _, _, text in longest]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def decode_steps_per_s(flavor: str, gpus: int, flops_per_s: float, params: float,
                       batch_size: int) -> float:
    """Decode steps a second: a per-flavor figure on a GPU; arithmetic on a CPU."""
    if gpus:
        family = next((k for k in sorted(DECODE_STEPS_PER_S, key=len, reverse=True)
                       if flavor.startswith(k)), None)
        return DECODE_STEPS_PER_S.get(family or "", DEFAULT_GPU_STEPS_PER_S)
    return 1.0 / (CPU_STEP_OVERHEAD_S + 2.0 * params * batch_size / flops_per_s)


def estimate_evaluation(*, flavor: str, gpus: int, flops_per_s: float, params: float,
                        lengths: HoldOutLengths, max_new_tokens: int, batch_size: int,
                        local: bool = False, before_kept: bool = False) -> EvalEstimate:
    """Minutes of the evaluation passes; ``flops_per_s`` is the flavor's sustained rate
    (peak x MFU of one GPU, or the CPU's). Only rank 0 evaluates, so one GPU's figures.
    ``before_kept``: the previous version carries its hold-out answers
    (``holdout_answers.json``), so the job answers only with the new version."""
    if lengths.rows == 0:
        return EvalEstimate(rows=0, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            minutes=0.0, method="no hold-out rows")
    batches = math.ceil(lengths.rows / batch_size)
    steps = decode_steps_per_s(flavor, gpus, flops_per_s, params, batch_size)
    decode_s = batches * max_new_tokens / steps
    prompt_tokens = lengths.prompt_chars / CHARS_PER_TOKEN
    prefill_s = 2.0 * params * prompt_tokens / flops_per_s
    load_s = 0.0 if local else PREVIOUS_LOAD_SECONDS
    passes = 1 if before_kept else PASSES
    seconds = passes * (decode_s + prefill_s) + load_s
    return EvalEstimate(
        rows=lengths.rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
        minutes=round(seconds / 60, 1),
        method=f"{passes} pass{'es' if passes > 1 else ''}"
               + (" (the previous version's answers are kept)" if before_kept else "")
               + f" x {lengths.rows} rows in batches of {batch_size} x "
               f"{max_new_tokens} new tokens at ~{steps:.3g} decode steps/s"
               + (f", +{load_s:g} s loading the previous version" if load_s else ""))
