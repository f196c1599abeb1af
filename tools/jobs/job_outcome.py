"""After training: the new version scored and decided on, then every report of the step.

The new version answers the whole hold-out set; its answers are scored against the
previous version's (and the line's best version's), the gate decides promotion, and the
answers are kept with the version (``job_answers``). Then the step's reports are written
(the evaluation report, samples, the metrics CSV, the version's ``tunestep_version.json``,
the loss plot, the history and its progression plot) and the result the job prints is
built. Apart from ``train_sft`` so that the script keeps the step's flow (train, save,
push, commit) and this the bookkeeping around it; only rank 0 runs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import job_answers, job_common, job_evaluate, job_gate, job_report
else:  # a sibling of the job script, loaded by its finder
    import job_answers
    import job_common
    import job_evaluate
    import job_gate
    import job_report


@dataclass
class Scored:
    """The new version's hold-out answers, the evaluation report and the gate's decision."""

    after: list
    seconds_after: float
    report: dict
    promotion: dict


def score_new_version(cfg: dict, paths, prep, ctx: dict, trained: Any, staging: Path,
                      log) -> Scored:
    """Answer the hold-out with the trained model, score both versions, decide promotion;
    write ``eval_json``/``eval_md`` and keep the answers in ``staging``.

    ``prep`` is train_sft's ``Prepared``, ``ctx`` its run context (precision, the previous
    version's answers and how long they took).
    """
    precision, tokenizer, hp = ctx["precision"], prep.tokenizer, cfg["hyperparameters"]
    ev = cfg["evaluation"]
    t_after = time.monotonic()
    after, how_after = job_answers.answer_holdout(trained, tokenizer, prep.holdout.prompts,
                                                  prep.budget, ev["batch_size"], precision)
    seconds_after = time.monotonic() - t_after
    log(f"evaluated the new version on {len(after)} hold-out rows in {seconds_after:.1f}s "
        f"({how_after})")
    previous, after_label = ctx["previous"], f"versions/{paths.version_name}"
    best = previous["line_best"]
    report = job_evaluate.score_evaluation(
        prep.holdout, ctx["before"], after, cfg["grade_pattern"], hp["seed"],
        best=best["answers"] if best else None, best_label=best["version"] if best else None)
    rows_total = len(after) * (1 if ctx["previous"]["reused"] else 2)  # generated ones
    report.update({
        "step": cfg["step"], "batch": cfg["batch"], "draft_id": cfg["draft_id"],
        "before_version": prep.resumed_from or f"base model {cfg['base_model']}",
        "after_version": f"versions/{paths.version_name}",
        "max_new_tokens": prep.budget, "longest_reference_tokens": prep.longest_reference,
        "batch_size": ev["batch_size"],
        "seconds": {"before": round(ctx["seconds_before"], 2), "after": round(seconds_after, 2)},
        "before_reused": previous["reused"], "before_not_reused": previous["why"],
        "generation": {"before": previous["how"], "after": how_after},
        "rows_per_second": round(rows_total / max(ctx["seconds_before"] + seconds_after, 1e-9),
                                 2),
    })
    promotion = job_gate.decide_promotion(cfg["gate"], report)
    report["promotion"] = promotion
    # The new version's answers travel with it: the next step's "before", and the line's best.
    job_answers.keep_answers(staging, prep.answers_key, after_label, after,
                             job_answers.next_line_best(
                                 (cfg["gate"] or {}).get("metric", "grade_within_1"),
                                 promotion["promoted"], report, report["before_version"],
                                 ctx["before"], after_label, after, best, prep.answers_key))
    job_common.atomic_write_text(paths.eval_json, json.dumps(report, indent=2) + "\n")
    job_common.atomic_write_text(paths.eval_md, job_report.render_eval_md(
        cfg, report, promotion, report["before_version"]))
    log(f"promotion: {'promoted' if promotion['promoted'] else 'NOT promoted'}: "
        f"{promotion['reason']}")
    return Scored(after, seconds_after, report, promotion)


def write_reports(cfg: dict, paths, prep, ctx: dict, scored: Scored, *, staging: Path,
                  recorder, train_out, save_dtype, train_seconds: float, startup: dict,
                  memory: dict) -> dict:
    """Samples, the metrics CSV, the version summary, plots and history; returns the
    result (``hub``, ``seconds``, the wall time and the commit are the caller's)."""
    precision = ctx["precision"]
    after, report, promotion = scored.after, scored.report, scored.promotion
    seconds_after = scored.seconds_after
    m_before = job_evaluate.legacy_metrics(report, "before")
    m_after = job_evaluate.legacy_metrics(report, "after")
    samples = job_evaluate.sample_rows(prep.holdout, ctx["before"], after, cfg["samples"]["n"],
                                       cfg["grade_pattern"])
    job_common.atomic_write_text(paths.samples_md, job_report.render_samples_md(
        cfg, samples, m_before, m_after, prep.budget))

    rows = recorder.rows
    baseline = {"epoch": 0, "step": 0, "eval_loss": recorder.eval_loss_before,
                **job_report.eval_columns(report, "before")}
    if rows:
        rows[-1].update(job_report.eval_columns(report, "after"))
    rows = [baseline, *rows]
    job_common.atomic_write_text(paths.metrics_csv, job_report.metrics_csv_text(rows))
    final_train, final_eval = _last(rows, "train_loss"), _last(rows, "eval_loss")
    train_tokens = _last(rows, "tokens")
    epochs = len(recorder.rows)
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    evaluation = {k: report[k] for k in (
        "rows", "graded_rows", "max_new_tokens", "longest_reference_tokens", "batch_size",
        "seconds", "rows_per_second", "before", "after", "delta", "paired", "versus_best",
        "before_reused", "generation")}
    evaluation["report"] = str(paths.eval_json)
    summary = {
        "draft_id": cfg["draft_id"], "step": cfg["step"], "batch": cfg["batch"],
        "mode": cfg["mode"], "model_name": cfg["outputs"]["model_name"],
        "base_model": cfg["base_model"], "resume_from": prep.resumed_from, "precision": precision,
        "saved_dtype": str(save_dtype).removeprefix("torch."),
        "metrics_before": m_before, "metrics_after": m_after,
        "eval_loss_before": recorder.eval_loss_before,
        "final_train_loss": final_train, "final_eval_loss": final_eval,
        "train_runtime": round(train_out.metrics.get("train_runtime", 0.0), 2),
        "train_tokens": train_tokens, "epochs": epochs, "promotion": promotion,
        "datasets": {"train_files": cfg["train_files"], "eval_file": cfg["eval_file"],
                     "tokenized_dir": cfg["tokenized_dir"]},
        "finished_at": finished_at,
    }
    job_common.atomic_write_text(staging / "tunestep_version.json",
                                 json.dumps(summary, indent=2) + "\n")

    job_report.plot_losses(rows, cfg["batch"], paths.plots_dir / f"loss_step_{cfg['batch']}.png")
    history = job_report.update_history(paths.history_json, {
        "step": cfg["step"], "batch": cfg["batch"], "draft_id": cfg["draft_id"],
        "mode": cfg["mode"], "eval_loss": final_eval, "eval_loss_before": recorder.eval_loss_before,
        "train_loss": final_train, **job_report.eval_columns(report, "after"),
        **{f"{k}_before": v for k, v in job_report.eval_columns(report, "before").items()
           if k != "eval_rows"},
        "promoted": promotion["promoted"], "parent": job_answers.version_label(prep.resume_folder),
        "train_tokens": train_tokens, "version": f"versions/{paths.version_name}",
        "finished_at": finished_at,
    })
    job_report.plot_history(history, paths.plots_dir / "val_progression.png")

    final = paths.store / "versions" / paths.version_name
    result = {
        "ok": True,
        **{k: summary[k] for k in ("draft_id", "step", "batch", "mode", "model_name", "precision",
                                   "saved_dtype")},
        "precision_requested": ctx["requested"], "precision_fallback": ctx["fallback"],
        "model_path": str(final), "version": f"versions/{paths.version_name}",
        "latest": str(paths.store / "latest"), "resume_from": prep.resumed_from,
        "promoted": promotion["promoted"], "promotion": promotion, "evaluation": evaluation,
        "metrics_before": m_before, "metrics_after": m_after,
        "eval_loss_before": recorder.eval_loss_before,
        "final_train_loss": final_train, "final_eval_loss": final_eval,
        "train_tokens": train_tokens, "epochs": epochs, "hub": None,
        "warnings": prep.warnings + ([ctx["fallback"]] if ctx["fallback"] else []),
        "rows_shortened": prep.data.rows_shortened, "rows_dropped": prep.data.rows_dropped,
        "eval_rows_shortened": prep.data.eval_rows_shortened,
        "eval_rows_dropped": prep.data.eval_rows_dropped,
        "timing": {**startup, "training": round(train_seconds, 2),
                   "evaluation": round(ctx["seconds_before"] + seconds_after, 2)},
        "memory": memory,
        "outputs": {"metrics_csv": str(paths.metrics_csv), "samples_md": str(paths.samples_md),
                    "train_log": str(paths.train_log), "history_json": str(paths.history_json),
                    "eval_json": str(paths.eval_json), "eval_md": str(paths.eval_md),
                    "plots_dir": str(paths.plots_dir)},
    }
    return result


def _last(rows: list[dict], key: str):
    return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)

