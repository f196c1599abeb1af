"""Whole hold-out evaluation: greedy answers from the previous and the new version, graded.

Every hold-out row is answered by both versions (batched greedy generation, left padding,
prompts sorted by length so a batch pads little), with a token budget long enough for the
longest reference answer, so every grade can be reached. Metrics cover every row that has
a reference grade: an answer with no parsable grade is wrong for grade_exact and
grade_within_1; grade_mae, Spearman and kappa use the parsed rows only and are undefined
(absent, with the reason) when too few parsed or a side is constant; nothing is imputed.
Each metric has a 95 % interval and its parse rate, and the versions are compared row by
row on the same prompts (Tango's paired score interval for proportions, a paired bootstrap
otherwise, exact McNemar / sign tests). A version's answers are kept with it
(``holdout_answers.json``, see ``kept_answers``) so the next step reuses them as its
"before" instead of generating them again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import sft_data
    from .job_stats import (
        BOOTSTRAP_RESAMPLES,
        bootstrap_indices,
        paired_proportion_change,
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
        paired_proportion_change,
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


# ---------------------------------------------------------------------------------------
# Scoring

# MAE, Spearman and kappa are computed on the rows whose answer has a grade; with fewer
# parsed rows than this they are undefined (absent, with the reason), never imputed.
MIN_PARSED_ROWS = 5
UNPARSED_RULE = ("an answer with no parsable grade is wrong for grade_exact and "
                 "grade_within_1; grade_mae, spearman and kappa use only the rows with a "
                 f"parsed grade (undefined below {MIN_PARSED_ROWS} such rows or for a "
                 "constant predictor), so each stands next to its parse rate; rows without "
                 "a reference grade are not scored")


@dataclass
class _Scored:
    """Per graded row: reference, parsed prediction (or None), and per-row outcomes."""

    ref: list[float]
    pred: list[float | None]
    parsed: list[int]
    exact: list[int]
    within1: list[int]
    err: list[float | None]  # absolute error, None where nothing was parsed


def _score(refs: list[float], preds: list[float | None]) -> _Scored:
    pairs = list(zip(refs, preds, strict=True))
    return _Scored(
        ref=refs, pred=preds,
        parsed=[int(p is not None) for p in preds],
        exact=[int(p is not None and abs(r - p) < 1e-9) for r, p in pairs],
        within1=[int(p is not None and abs(r - p) <= 1 + 1e-9) for r, p in pairs],
        err=[abs(r - p) if p is not None else None for r, p in pairs])


def _parsed_pairs(s: _Scored, idx) -> tuple[list[float], list[float]]:
    keep = [i for i in idx if s.pred[i] is not None]
    return [s.ref[i] for i in keep], [s.pred[i] for i in keep]  # type: ignore[misc]


def undefined_reason(s: _Scored, name: str, idx=None) -> str | None:
    """Why ``name`` cannot be computed on these rows, or None when it can."""
    idx = range(len(s.ref)) if idx is None else idx
    if len(idx) == 0:
        return "no hold-out row has a reference grade"
    if name in PROPORTIONS:
        return None
    ref, pred = _parsed_pairs(s, idx)
    if len(pred) < MIN_PARSED_ROWS:
        return (f"only {len(pred)} of {len(idx)} answers have a parsable grade (at least "
                f"{MIN_PARSED_ROWS} needed)")
    if name == "spearman" and (len(set(pred)) < 2 or len(set(ref)) < 2):
        side = "prediction" if len(set(pred)) < 2 else "reference"
        return f"every parsed {side} is the same grade: a rank correlation is undefined"
    if name == "kappa" and quadratic_kappa(ref, pred) is None:
        return "both sides are one constant grade: kappa is undefined"
    return None


def _metric(s: _Scored, name: str, idx=None) -> float | None:
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
    ref, pred = _parsed_pairs(s, idx)
    if len(pred) < MIN_PARSED_ROWS:
        return None
    if name == "grade_mae":
        return sum(abs(r - p) for r, p in zip(ref, pred, strict=True)) / len(pred)
    return spearman(ref, pred) if name == "spearman" else quadratic_kappa(ref, pred)


_FLAGS = {"parse_rate": "parsed", "grade_exact": "exact", "grade_within_1": "within1"}


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


def _version_metrics(s: _Scored, draws: dict, seed: int, n_boot: int) -> dict:
    """Every metric of one version: value, 95 % interval, rows used, and why not, if not."""
    n = len(s.ref)
    parsed = sum(s.parsed)
    out = {}
    for m in METRICS:
        reason = undefined_reason(s, m)
        value = None if reason else _metric(s, m)
        if value is None and reason is None:
            reason = f"{m} cannot be computed on these rows"
        if m in PROPORTIONS:
            low_ci, high_ci = wilson(sum(getattr(s, _FLAGS[m])), n)
            method = "wilson"
        else:
            low_ci, high_ci = percentile_interval(draws[m]) if value is not None else (None,
                                                                                       None)
            method = f"bootstrap ({n_boot} resamples, seed {seed})"
        out[m] = {"value": _r(value), "low": _r(low_ci), "high": _r(high_ci),
                  "method": method, "rows": n if m in PROPORTIONS else parsed,
                  "parse_rate": _r(parsed / n) if n else None, "undefined": reason}
    return out


def _change(b: _Scored, a: _Scored, draws_b: dict, draws_a: dict, mb: dict, ma: dict
            ) -> dict:
    """After minus before for every metric, paired on the same rows."""
    delta = {}
    for m in METRICS:
        vb, va = mb[m]["value"], ma[m]["value"]
        if m in PROPORTIONS:  # Tango's paired score interval; exact McNemar
            fb, fa = getattr(b, _FLAGS[m]), getattr(a, _FLAGS[m])
            pairs = list(zip(fb, fa, strict=True))
            both = sum(1 for x, y in pairs if x and y)
            gained = sum(1 for x, y in pairs if y and not x)
            lost = sum(1 for x, y in pairs if x and not y)
            lo, hi = paired_proportion_change(both, gained, lost, len(pairs) - both - gained
                                              - lost)
            p, test = sign_test(gained, lost), "exact McNemar (sign test on discordant rows)"
            method = "Tango's paired score interval"
        else:
            diffs = [(x - y) if x is not None and y is not None else None
                     for x, y in zip(draws_a[m], draws_b[m], strict=True)]
            lo, hi = percentile_interval(diffs) if vb is not None and va is not None else (
                None, None)
            method = "paired percentile bootstrap (the same resampled rows for both)"
            if m == "grade_mae":
                both_parsed = [(x, y) for x, y in zip(b.err, a.err, strict=True)
                               if x is not None and y is not None]
                p = sign_test(sum(1 for x, y in both_parsed if y < x),
                              sum(1 for x, y in both_parsed if y > x))
                test = "exact sign test on per-row absolute error (rows parsed by both)"
            else:
                valid = [d for d in diffs if d is not None]
                p = (min(1.0, 2 * min(sum(d <= 0 for d in valid), sum(d >= 0 for d in valid))
                         / len(valid)) if valid else None)
                test = "bootstrap (two-sided share of resamples on the other side of 0)"
        defined = vb is not None and va is not None
        why = None
        if not defined:
            side, d = ("before", mb[m]) if vb is None else ("after", ma[m])
            why = f"{side}: {d['undefined']}"
        delta[m] = {"value": _r(va - vb) if defined else None,
                    "low": _r(lo) if defined else None, "high": _r(hi) if defined else None,
                    "p_value": _r(p) if defined else None, "test": test, "method": method,
                    "undefined": why}
    return delta


def score_evaluation(holdout: HoldOut, before: list[str], after: list[str], pattern: str,
                     seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     best: list[str] | None = None, best_label: str | None = None) -> dict:
    """The evaluation report (see the module docstring) as a JSON-ready dict.

    ``best``: the answers of the best version on the current line when it is not the
    previous version; the new one is then compared with it too (``versus_best``), so
    small losses that each pass the gate cannot stack.
    """
    graded = [i for i, g in enumerate(holdout.grades) if g is not None]
    refs = [holdout.grades[i] for i in graded]
    low, high = (min(refs), max(refs)) if refs else (0.0, 0.0)
    answers = {"before": before, "after": after}
    if best is not None:
        answers["best"] = best
    versions = {name: _score(refs, [sft_data.parse_grade(texts[i], pattern) for i in graded])
                for name, texts in answers.items()}
    n = len(graded)
    boots = bootstrap_indices(n, seed, resamples)
    # Every version's statistics on the same resampled indices: the changes are paired.
    draws = {v: {m: [_metric(s, m, idx) for idx in boots] if m not in PROPORTIONS else []
                 for m in METRICS} for v, s in versions.items()}
    metrics = {v: _version_metrics(s, draws[v], seed, len(boots)) for v, s in versions.items()}
    b, a = versions["before"], versions["after"]
    delta = _change(b, a, draws["before"], draws["after"], metrics["before"], metrics["after"])
    versus_best = None
    if best is not None:
        versus_best = {"version": best_label, "metrics": metrics["best"],
                       "delta": _change(versions["best"], a, draws["best"], draws["after"],
                                        metrics["best"], metrics["after"])}

    both = [(x, y) for x, y in zip(b.err, a.err, strict=True) if x is not None or
            y is not None]
    # A row parsed by one version only: the parsed side wins (an unparsed answer has no
    # grade at all); both unparsed is a tie.
    wins = sum(1 for x, y in both if (x is None) or (y is not None and y < x))
    losses = sum(1 for x, y in both if (y is None) or (x is not None and y > x))
    rows = [{"row": i, "reference": refs[k], "before": b.pred[k], "after": a.pred[k]}
            for k, i in enumerate(graded)]
    return {
        "rows": len(holdout.prompts), "graded_rows": n,
        "ungraded_rows": len(holdout.prompts) - n,
        "scale": {"low": low, "high": high},
        "unparsed_rule": UNPARSED_RULE,
        "before": metrics["before"], "after": metrics["after"],
        "delta": delta, "versus_best": versus_best,
        "paired": {"wins": wins, "losses": losses, "ties": n - wins - losses,
                   "p_value": _r(sign_test(wins, losses)),
                   "test": "exact sign test on per-row absolute error (after vs before; a "
                           "parsed grade beats none)"},
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
