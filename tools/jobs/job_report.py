"""Reports people read: the metrics CSV, the samples Markdown, the plots, the step history."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_common import JobError, atomic_write_bytes, atomic_write_text
else:  # a sibling of the job script, whose folder is on sys.path
    from job_common import JobError, atomic_write_bytes, atomic_write_text


METRICS_COLUMNS = (
    "epoch", "step", "train_loss", "eval_loss", "grade_exact", "grade_within1",
    "grade_mae", "learning_rate", "tokens", "seconds",
    # the whole hold-out evaluation: on the epoch-0 row (before training) and the last row
    "eval_rows", "parse_rate", "grade_exact_low", "grade_exact_high", "grade_within1_low",
    "grade_within1_high", "grade_mae_low", "grade_mae_high", "spearman", "kappa",
)
# CSV/history names of the evaluation's metrics (the CSV keeps its first names).
_CSV_NAMES = {"parse_rate": "parse_rate", "grade_exact": "grade_exact",
              "grade_within_1": "grade_within1", "grade_mae": "grade_mae",
              "spearman": "spearman", "kappa": "kappa"}
_INTERVAL_COLUMNS = ("grade_exact", "grade_within_1", "grade_mae")


def eval_columns(report: dict, version: str) -> dict:
    """One version's evaluation as metrics-CSV / history columns."""
    m = report[version]
    out = {"eval_rows": report["graded_rows"]}
    for name, col in _CSV_NAMES.items():
        out[col] = m[name]["value"]
    for name in _INTERVAL_COLUMNS:
        col = _CSV_NAMES[name]
        out[f"{col}_low"], out[f"{col}_high"] = m[name]["low"], m[name]["high"]
    return out


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt_p(value: float | None) -> str:
    return "–" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def render_samples_md(cfg: dict, samples: list[dict], before: dict, after: dict,
                      max_new_tokens: int) -> str:
    buf = io.StringIO()
    w = buf.write
    w(f"# Samples — step {cfg['step']}, batch {cfg['batch']}\n\n")
    w(f"Draft `{cfg['draft_id']}`, mode {cfg['mode']}. The first {len(samples)} hold-out "
      f"prompts, answered greedily (max_new_tokens={max_new_tokens}) before and after this "
      "step; the metrics cover the whole hold-out set (see the eval report). Grades parsed "
      "with the plan's grade pattern.\n\n")
    w("| | grade exact | within 1 | MAE | parsed |\n|---|---|---|---|---|\n")
    for name, m in (("before", before), ("after", after)):
        w(f"| {name} | {_fmt(m['grade_exact'])} | {_fmt(m['grade_within1'])} | "
          f"{_fmt(m['grade_mae'])} | {m['n_parsed']}/{m['n_reference']} |\n")
    for i, s in enumerate(samples, start=1):
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in s["prompt"])
        if len(prompt) > 800:
            prompt = prompt[:800] + " …[truncated]"
        w(f"\n## Sample {i}\n\n")
        for label, text, grade in (
            ("Prompt", prompt, None),
            ("Reference", s["reference"] or "", s["grade_reference"]),
            ("Before", s["before"], s["grade_before"]),
            ("After", s["after"], s["grade_after"]),
        ):
            head = f"**{label}**" if label == "Prompt" else f"**{label}** (grade: {_fmt(grade)})"
            fence = _fence(text)
            w(f"{head}\n\n{fence}text\n{text}\n{fence}\n\n")
    return buf.getvalue()


def _metric_cell(m: dict) -> str:
    """A metric with its interval and the parse rate it stands on; undefined says so."""
    parsed = m.get("parse_rate")
    tail = f"; parsed {_fmt(parsed)}" if parsed is not None else ""
    if m["value"] is None:
        return f"undefined{tail}"
    return f"{_fmt(m['value'])} [{_fmt(m['low'])}, {_fmt(m['high'])}]{tail}"


def _change_cell(d: dict) -> str:
    if d["value"] is None:
        return "undefined"
    return f"{_fmt(d['value'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]"


def _undefined_notes(report: dict) -> list[str]:
    notes = []
    for version in ("before", "after"):
        for name, m in report[version].items():
            if m["value"] is None and m.get("undefined"):
                notes.append(f"- {name} ({version}) is undefined: {m['undefined']}")
    return notes


def render_eval_md(cfg: dict, report: dict, promotion: dict, before_label: str) -> str:
    """The evaluation report for people: both versions, the change, the gate's decision."""
    buf = io.StringIO()
    w = buf.write
    w(f"# Hold-out evaluation — step {cfg['step']}, batch {cfg['batch']}\n\n")
    reused = report.get("before_reused")
    before_how = ("its answers **reused** from the version's kept hold-out answers (same "
                  "weights, hold-out and generation settings: not generated again)"
                  if reused else "answered again")
    w(f"Every hold-out row ({report['rows']}; {report['graded_rows']} with a reference grade) "
      f"answered greedily by the previous version ({before_label}; {before_how}) and by "
      f"this step's, max_new_tokens={report['max_new_tokens']} (the longest reference "
      f"answer is {report['longest_reference_tokens']} tokens). Grades on the scale "
      f"{_fmt(report['scale']['low'])}–{_fmt(report['scale']['high'])}; "
      f"{report['unparsed_rule']}.\n\n")
    w("| metric | before [95 % CI] | after [95 % CI] | change [95 % CI] | p |\n"
      "|---|---|---|---|---|\n")
    for name in report["delta"]:
        d = report["delta"][name]
        w(f"| {name} | {_metric_cell(report['before'][name])} | "
          f"{_metric_cell(report['after'][name])} | {_change_cell(d)} | "
          f"{_fmt_p(d['p_value'])} |\n")
    notes = _undefined_notes(report)
    if notes:
        w("\n" + "\n".join(notes) + "\n")
    vb = report.get("versus_best")
    if vb:
        w(f"\nAgainst the best version on the line ({vb['version']}), paired on the same "
          "rows:\n\n| metric | best [95 % CI] | change [95 % CI] |\n|---|---|---|\n")
        for name, d in vb["delta"].items():
            w(f"| {name} | {_metric_cell(vb['metrics'][name])} | {_change_cell(d)} |\n")
    else:
        w("\nThe best version on the line is the previous one: the comparison above is "
          "also the comparison with the line's best.\n")
    pr = report["paired"]
    w(f"\nPaired, row by row (absolute grade error): {pr['wins']} better, {pr['losses']} "
      f"worse, {pr['ties']} unchanged; {pr['test']}: p = {_fmt_p(pr['p_value'])}.\n\n")
    w("Intervals: Wilson for proportions, a seeded percentile bootstrap for MAE, Spearman "
      "and kappa; for every change Tango's paired score interval (proportions) or a paired "
      "bootstrap (the same resampled rows for both versions). p-values: exact McNemar / "
      "sign tests where per-row outcomes exist.\n\n")
    w("## Promotion\n\n")
    verdict = "promoted: latest moves to this version" if promotion["promoted"] else \
        "not promoted: latest stays where it was; the version is kept"
    w(f"**{verdict}.** {promotion['reason']}.\n")
    seconds = report["seconds"]
    gen = report.get("generation") or {}
    before_cost = "0 s before (reused)" if reused else f"{_fmt(seconds['before'])} s before"
    w(f"\nCost: {before_cost}, {_fmt(seconds['after'])} s after "
      f"({_fmt(report['rows_per_second'])} rows/s, batch size {report['batch_size']}"
      + (f"; after: {gen['after']}" if gen.get("after") else "") + ").\n")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Metrics, plots, history


def metrics_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS_COLUMNS})
    return buf.getvalue()


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_losses(rows: list[dict], batch: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train"), ("eval_loss", "eval (hold-out)")):
        # the epoch-0 row holds the hold-out loss before training: the curve starts there
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="loss", title=batch)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [h["step"] for h in history]

    def series(key):
        return [(h["step"], h[key]) for h in history if h.get(key) is not None]

    if pts := series("eval_loss"):
        ax1.plot(*zip(*pts, strict=True), marker="o", label="eval loss")
    ax1.set(ylabel="hold-out loss", title="Validation across steps")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for key, label in (("grade_exact", "grade exact"), ("grade_within1", "within 1")):
        if pts := series(key):
            xs, ys = zip(*pts, strict=True)
            lows = [h.get(f"{key}_low") for h in history if h.get(key) is not None]
            highs = [h.get(f"{key}_high") for h in history if h.get(key) is not None]
            if all(v is not None for v in (*lows, *highs)):  # 95 % interval bars
                yerr = [[max(0.0, y - lo) for y, lo in zip(ys, lows, strict=True)],
                        [max(0.0, hi - y) for y, hi in zip(ys, highs, strict=True)]]
                ax2.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)
            else:
                ax2.plot(xs, ys, marker="o", label=label)
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(-0.05, 1.05))
    ax2.grid(alpha=0.3)
    ax3 = ax2.twinx()
    if pts := series("grade_mae"):
        xs, ys = zip(*pts, strict=True)
        lows = [h.get("grade_mae_low") for h in history if h.get("grade_mae") is not None]
        highs = [h.get("grade_mae_high") for h in history if h.get("grade_mae") is not None]
        yerr = ([[max(0.0, y - lo) for y, lo in zip(ys, lows, strict=True)],
                 [max(0.0, hi - y) for y, hi in zip(ys, highs, strict=True)]]
                if all(v is not None for v in (*lows, *highs)) else None)
        ax3.errorbar(xs, ys, yerr=yerr, marker="s", linestyle="--", color="tab:red",
                     capsize=3, label="MAE")
    ax3.set_ylabel("grade MAE")
    handles = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
    if handles:
        ax2.legend(handles=handles, loc="best")
    ax2.set_xticks(sorted(set(steps)))
    _save_figure(fig, path)
    plt.close(fig)


def update_history(path: Path, entry: dict) -> list[dict]:
    """Append this step's summary (replacing an earlier entry for the same step and batch)."""
    history: list[dict] = []
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            history = loaded if isinstance(loaded, list) else []
        except json.JSONDecodeError as exc:
            raise JobError(f"history_json is not valid JSON: {exc}") from exc
    history = [h for h in history
               if not (h.get("step") == entry["step"] and h.get("batch") == entry["batch"])]
    history.append(entry)
    history.sort(key=lambda h: (h.get("step", 0), str(h.get("batch", ""))))
    atomic_write_text(path, json.dumps(history, indent=2) + "\n")
    return history

