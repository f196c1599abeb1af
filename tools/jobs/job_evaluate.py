"""Whole hold-out evaluation: greedy answers from the previous and the new version, graded.

Every hold-out row is answered by both versions (batched greedy generation, left padding,
prompts sorted by length so a batch pads little), with a token budget long enough for the
longest reference answer, so every grade can be reached. Metrics cover every row that has
a reference grade; an answer with no parsable grade counts as wrong (exact, within 1) and
as the largest error the scale allows (MAE, Spearman, kappa: see ``worst_prediction``).
Each metric has a 95 % interval, and the two versions are compared row by row on the same
prompts (wins/losses/ties, exact sign test, paired bootstrap interval of the difference).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import sft_data
    from .job_stats import (
        BOOTSTRAP_RESAMPLES,
        bootstrap_indices,
        percentile_interval,
        quadratic_kappa,
        sign_test,
        spearman,
        wilson,
    )
else:  # a sibling of the job script, whose folder is on sys.path
    import sft_data
    from job_stats import (
        BOOTSTRAP_RESAMPLES,
        bootstrap_indices,
        percentile_interval,
        quadratic_kappa,
        sign_test,
        spearman,
        wilson,
    )

# The metric names a gate may use (tunestep's plan.GATE_METRICS lists the same).
METRICS = ("parse_rate", "grade_exact", "grade_within_1", "grade_mae", "spearman", "kappa")
LOWER_IS_BETTER = frozenset({"grade_mae"})
PROPORTIONS = frozenset({"parse_rate", "grade_exact", "grade_within_1"})
# Tokens beyond the longest reference answer: the end-of-turn token and a little slack for
# a tokenization that differs in context (a space merged differently at the start).
BUDGET_MARGIN = 8


@dataclass
class HoldOut:
    """The hold-out set as prompts (every message before the last assistant turn) and the
    reference answers with their grades."""

    prompts: list[list[dict]]
    references: list[str | None]
    grades: list[float | None]

    @classmethod
    def from_rows(cls, rows: list[dict], pattern: str) -> HoldOut:
        split = [sft_data.split_prompt(row) for row in rows]
        refs = [r for _, r in split]
        return cls([p for p, _ in split], refs, [sft_data.parse_grade(r, pattern) for r in refs])


def answer_budget(tokenizer, references: list[str | None], evaluation: dict,
                  samples_max_new_tokens: int) -> tuple[int, int, list[str]]:
    """(max_new_tokens for the evaluation, longest reference in tokens, warnings).

    ``evaluation.max_new_tokens`` when set; else the longest reference answer (tokenized
    as the model would write it) plus ``BUDGET_MARGIN``, and never less than the plan's
    ``samples.max_new_tokens``.
    """
    texts = [r or "" for r in references]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] \
        if texts else []
    longest = max(lengths, default=0)
    warnings: list[str] = []
    short = sum(1 for n in lengths if n + 1 > samples_max_new_tokens)  # +1: the end token
    chosen = evaluation["max_new_tokens"]
    if chosen is None:
        budget = max(longest + BUDGET_MARGIN, samples_max_new_tokens)
        if short:
            warnings.append(
                f"samples.max_new_tokens={samples_max_new_tokens} is shorter than {short} of "
                f"{len(lengths)} reference answers (longest {longest} tokens): the evaluation "
                f"uses max_new_tokens={budget} so every grade can be reached")
    else:
        budget = chosen
        cut = sum(1 for n in lengths if n + 1 > chosen)
        if cut:
            warnings.append(
                f"evaluation.max_new_tokens={chosen} is shorter than {cut} of {len(lengths)} "
                f"reference answers (longest {longest} tokens): those grades may be cut off")
    return budget, longest, warnings


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     batch_size: int = 8, autocast: str | None = None) -> list[str]:
    """Greedy answers in the prompts' order, thinking disabled where the template has it.

    Batched with left padding (a decoder-only model continues from the right edge), the
    prompts taken longest first so each batch holds similar lengths (little padding) and
    an out-of-memory error shows in the first batch, not the last. ``autocast`` ("bf16" /
    "fp16") runs generation under CUDA autocast, as training does.
    """
    import contextlib

    import torch
    from transformers import GenerationConfig

    if not prompts:
        return []
    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # enable_thinking is a Qwen3 template variable; other templates ignore it.
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    answers: list[str | None] = [None] * len(texts)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
    cast = (torch.autocast("cuda", dtype=dtype) if dtype is not None and device.type == "cuda"
            else contextlib.nullcontext())
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad(), cast:
                out = model.generate(**enc, generation_config=gen_cfg)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            for i, text in zip(chunk, tokenizer.batch_decode(new_tokens,
                                                             skip_special_tokens=True),
                               strict=True):
                answers[i] = text
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [a or "" for a in answers]


def timed_answers(model, tokenizer, holdout: HoldOut, budget: int, batch_size: int,
                  autocast: str | None) -> tuple[list[str], float]:
    t0 = time.monotonic()
    answers = generate_answers(model, tokenizer, holdout.prompts, budget, batch_size, autocast)
    return answers, time.monotonic() - t0


# ---------------------------------------------------------------------------------------
# Scoring


def worst_prediction(ref: float, low: float, high: float) -> float:
    """What an unparsed answer counts as: the grade of the scale farthest from the reference.

    The scale is the range of the hold-out's reference grades; the error is at least 1
    (a one-grade scale would otherwise make a missing answer free).
    """
    up, down = high - ref, ref - low
    error = max(up, down, 1.0)
    return ref + error if up >= down else ref - error


@dataclass
class _Scored:
    """Per graded row: reference, parsed prediction (or None), and what the metrics use."""

    ref: list[float]
    pred: list[float | None]
    eff: list[float]  # pred, or worst_prediction for an unparsed answer
    parsed: list[int]
    exact: list[int]
    within1: list[int]
    err: list[float]


def _score(refs: list[float], preds: list[float | None], low: float, high: float) -> _Scored:
    eff = [p if p is not None else worst_prediction(r, low, high)
           for r, p in zip(refs, preds, strict=True)]
    return _Scored(
        ref=refs, pred=preds, eff=eff,
        parsed=[int(p is not None) for p in preds],
        exact=[int(p is not None and abs(r - p) < 1e-9) for r, p in zip(refs, preds,
                                                                         strict=True)],
        within1=[int(p is not None and abs(r - p) <= 1 + 1e-9)
                 for r, p in zip(refs, preds, strict=True)],
        err=[abs(r - e) for r, e in zip(refs, eff, strict=True)])


def _metric(s: _Scored, name: str, idx: list[int] | None = None) -> float | None:
    idx = range(len(s.ref)) if idx is None else idx
    n = len(idx)
    if n == 0:
        return None
    if name == "parse_rate":
        return sum(s.parsed[i] for i in idx) / n
    if name == "grade_exact":
        return sum(s.exact[i] for i in idx) / n
    if name == "grade_within_1":
        return sum(s.within1[i] for i in idx) / n
    if name == "grade_mae":
        return sum(s.err[i] for i in idx) / n
    ref, eff = [s.ref[i] for i in idx], [s.eff[i] for i in idx]
    return spearman(ref, eff) if name == "spearman" else quadratic_kappa(ref, eff)


def _counts(s: _Scored, name: str) -> int:
    return sum({"parse_rate": s.parsed, "grade_exact": s.exact,
                "grade_within_1": s.within1}[name])


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


def score_evaluation(holdout: HoldOut, before: list[str], after: list[str], pattern: str,
                     seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """The evaluation report (see the module docstring) as a JSON-ready dict."""
    graded = [i for i, g in enumerate(holdout.grades) if g is not None]
    refs = [holdout.grades[i] for i in graded]
    low, high = (min(refs), max(refs)) if refs else (0.0, 0.0)
    versions = {}
    for name, answers in (("before", before), ("after", after)):
        preds = [sft_data.parse_grade(answers[i], pattern) for i in graded]
        versions[name] = _score(refs, preds, low, high)
    n = len(graded)
    boots = bootstrap_indices(n, seed, resamples)
    # Both versions' statistics on the same resampled indices: the difference's interval
    # is paired.
    draws = {v: {m: [_metric(s, m, idx) for idx in boots] for m in METRICS}
             for v, s in versions.items()}

    report_versions = {}
    for v, s in versions.items():
        metrics = {}
        for m in METRICS:
            value = _metric(s, m)
            if m in PROPORTIONS:
                low_ci, high_ci = wilson(_counts(s, m), n)
                method = "wilson"
            else:
                low_ci, high_ci = percentile_interval(draws[v][m])
                method = f"bootstrap ({len(boots)} resamples, seed {seed})"
            metrics[m] = {"value": _r(value), "low": _r(low_ci), "high": _r(high_ci),
                          "method": method}
        report_versions[v] = metrics

    b, a = versions["before"], versions["after"]
    delta = {}
    for m in METRICS:
        vb, va = _metric(b, m), _metric(a, m)
        diffs = [(x - y) if x is not None and y is not None else None
                 for x, y in zip(draws["after"][m], draws["before"][m], strict=True)]
        lo, hi = percentile_interval(diffs)
        if m in PROPORTIONS:  # exact McNemar: the rows where exactly one version is right
            flags = {"parse_rate": "parsed", "grade_exact": "exact",
                     "grade_within_1": "within1"}[m]
            fb, fa = getattr(b, flags), getattr(a, flags)
            gained = sum(1 for x, y in zip(fb, fa, strict=True) if y and not x)
            lost = sum(1 for x, y in zip(fb, fa, strict=True) if x and not y)
            p, test = sign_test(gained, lost), "exact McNemar (sign test on discordant rows)"
        elif m == "grade_mae":
            gained = sum(1 for x, y in zip(b.err, a.err, strict=True) if y < x)
            lost = sum(1 for x, y in zip(b.err, a.err, strict=True) if y > x)
            p, test = sign_test(gained, lost), "exact sign test on per-row absolute error"
        else:
            valid = [d for d in diffs if d is not None]
            p = (min(1.0, 2 * min(sum(d <= 0 for d in valid), sum(d >= 0 for d in valid))
                     / len(valid)) if valid else None)
            test = "bootstrap (two-sided share of resamples on the other side of 0)"
        delta[m] = {"value": _r(va - vb) if va is not None and vb is not None else None,
                    "low": _r(lo), "high": _r(hi), "p_value": _r(p), "test": test}

    wins = sum(1 for x, y in zip(b.err, a.err, strict=True) if y < x)
    losses = sum(1 for x, y in zip(b.err, a.err, strict=True) if y > x)
    rows = []
    for k, i in enumerate(graded):
        rows.append({"row": i, "reference": refs[k], "before": b.pred[k], "after": a.pred[k]})
    return {
        "rows": len(holdout.prompts), "graded_rows": n,
        "ungraded_rows": len(holdout.prompts) - n,
        "scale": {"low": low, "high": high},
        "unparsed_rule": ("an answer with no parsable grade is wrong for parse_rate, "
                          "grade_exact and grade_within_1, and counts as the grade of the "
                          "scale farthest from the reference (error at least 1) for "
                          "grade_mae, spearman and kappa; rows without a reference grade "
                          "are not scored"),
        "before": report_versions["before"], "after": report_versions["after"],
        "delta": delta,
        "paired": {"wins": wins, "losses": losses, "ties": n - wins - losses,
                   "p_value": _r(sign_test(wins, losses)),
                   "test": "exact sign test on per-row absolute error (after vs before)"},
        "per_row": rows,
    }


def legacy_metrics(report: dict, version: str) -> dict:
    """The result's ``metrics_before``/``metrics_after`` shape, now over the whole hold-out."""
    m = report[version]
    parsed = m["parse_rate"]["value"]
    n = report["graded_rows"]
    return {"n": report["rows"], "n_reference": n,
            "n_parsed": round(parsed * n) if parsed is not None else 0,
            "grade_exact": m["grade_exact"]["value"],
            "grade_within1": m["grade_within_1"]["value"],
            "grade_mae": m["grade_mae"]["value"],
            "parse_rate": parsed, "spearman": m["spearman"]["value"],
            "kappa": m["kappa"]["value"]}


def sample_rows(holdout: HoldOut, before: list[str], after: list[str], n: int,
                pattern: str) -> list[dict]:
    """The first ``n`` hold-out rows with both answers, for the samples Markdown."""
    out = []
    for i in range(min(n, len(holdout.prompts))):
        out.append({
            "prompt": holdout.prompts[i], "reference": holdout.references[i],
            "before": before[i], "after": after[i],
            "grade_reference": holdout.grades[i],
            "grade_before": sft_data.parse_grade(before[i], pattern),
            "grade_after": sft_data.parse_grade(after[i], pattern),
        })
    return out
