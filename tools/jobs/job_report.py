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


def lineage_layout(history: list[dict]) -> dict:
    """How the progression plot draws the steps: each step joins its parent's point (the
    version it resumed from; an unknown parent is the base at step 0), the chain from the
    base to ``latest`` is the line, every other step (held back, or rolled back past) a
    branch. ``latest`` is the version of the last promoted step."""
    by_version = {h.get("version"): h for h in history if h.get("version")}
    promoted = [h for h in history if h.get("promoted")]
    latest = promoted[-1]["version"] if promoted else None
    on_line: set[str] = set()
    version = latest
    while version in by_version and version not in on_line:
        on_line.add(version)
        version = by_version[version].get("parent")
    parents = {h.get("version"): (h.get("parent") if h.get("parent") in by_version else None)
               for h in history}
    return {"latest": latest, "on_line": on_line, "parents": parents}


def plot_history(history: list[dict], path: Path) -> None:
    """Validation across steps, following the lineage: the line from the base to
    ``latest`` solid, held-back or rolled-back steps as dotted branches with hollow
    markers, LoRA steps as diamonds, the base and ``latest`` labelled; 95 % interval bars;
    the legend below the axes, clear of the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    history = sorted(history, key=lambda h: (h.get("step", 0), str(h.get("batch", ""))))
    layout = lineage_layout(history)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    colours = {"eval_loss": "tab:purple", "grade_exact": "tab:blue",
               "grade_within1": "tab:green", "grade_mae": "tab:red"}
    ax3 = ax2.twinx()
    axes = {"eval_loss": ax1, "grade_exact": ax2, "grade_within1": ax2, "grade_mae": ax3}
    first = history[0] if history else {}

    def point(h: dict | None, key: str):
        """(x, y, low, high) of a step's value, or of the base (h None: step 0)."""
        if h is None:
            suffix = "_before"
            src, x = first, 0
        else:
            suffix, src, x = "", h, h["step"]
        y = src.get(f"{key}{suffix}")
        if y is None:
            return None
        return (x, y, src.get(f"{key}_low{suffix}"), src.get(f"{key}_high{suffix}"))

    versions = {h.get("version"): h for h in history}
    for key, ax in axes.items():
        colour = colours[key]
        for h in history:
            here = point(h, key)
            if here is None:
                continue
            parent = layout["parents"].get(h.get("version"))
            there = point(versions.get(parent) if parent else None, key)
            branch = h.get("version") not in layout["on_line"]
            if there is not None:
                ax.plot([there[0], here[0]], [there[1], here[1]], color=colour,
                        linestyle=":" if branch else "-", alpha=0.6 if branch else 1.0)
            marker = "D" if h.get("mode") == "lora" else "o"
            err = None
            if here[2] is not None and here[3] is not None:
                err = [[max(0.0, here[1] - here[2])], [max(0.0, here[3] - here[1])]]
            ax.errorbar([here[0]], [here[1]], yerr=err, marker=marker, color=colour,
                        markerfacecolor="white" if branch else colour, capsize=3,
                        linestyle="none")
            if h.get("version") == layout["latest"] and key in ("eval_loss", "grade_within1"):
                ax.annotate("latest", (here[0], here[1]), textcoords="offset points",
                            xytext=(6, 6), fontsize=8)
        base = point(None, key)
        if base is not None:
            ax.plot([0], [base[1]], marker="s", color=colour, linestyle="none")
            if key in ("eval_loss", "grade_within1"):
                ax.annotate("base", (0, base[1]), textcoords="offset points",
                            xytext=(6, -10), fontsize=8)
    ax1.set(ylabel="hold-out loss", title="Validation across steps (the lineage)")
    ax1.grid(alpha=0.3)
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(-0.05, 1.05))
    ax2.grid(alpha=0.3)
    ax3.set_ylabel("grade MAE")
    steps = sorted({0, *(h["step"] for h in history)})
    ax2.set_xticks(steps)
    handles = [Line2D([], [], color=colours[k], marker="o", label=label) for k, label in (
        ("eval_loss", "eval loss"), ("grade_exact", "grade exact"),
        ("grade_within1", "within 1"), ("grade_mae", "MAE (right axis)"))]
    handles += [
        Line2D([], [], color="grey", marker="o", label="on the line to latest"),
        Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle=":",
               label="held back / rolled back (branch)"),
        Line2D([], [], color="grey", marker="D", linestyle="none", label="LoRA step"),
        Line2D([], [], color="grey", marker="s", linestyle="none", label="base (step 0)")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
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

