"""The run plan: the draft as a document the operator reads before approving.

Rewritten by every draft_job at ``.specs/training/run_plan_preparation.md`` (the plan
document of the reference workflow). It is a view of the stored draft; the approval
itself always re-reads the ledger, never this file.
"""

from __future__ import annotations

from tunestep.tools.core.atomic import atomic_write_text
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.preflight import PreflightReport
from tunestep.tools.drafts.draft_model import JobDraft


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_PRICE_SOURCES = {"hub": "the Hub's live hardware list", "table": "tunestep's table of "
                  "published prices", "guess": "tunestep's own guess (no published price)"}


def _eval_line(est) -> str:
    """The hold-out evaluation's share of the estimate (counted in its minutes)."""
    if not getattr(est, "eval_rows", 0):
        return "- Evaluation: not counted (no hold-out rows)."
    return (f"- Evaluation: ~{est.eval_minutes:g} min of it (included): {est.eval_method}.")


def _processes_line(est) -> str:
    gpus = getattr(est, "gpus", 0)
    processes = getattr(est, "processes", 1)
    if processes > 1:
        return (f"{gpus} GPUs: {processes} training processes, one per GPU (`accelerate "
                f"launch --num_processes {processes}`), each with a whole copy of the model; "
                f"the estimate counts all {gpus}")
    return "1 GPU, one training process" if gpus == 1 else "CPU only, one process"


def render_run_plan(draft: JobDraft, report: PreflightReport) -> str:
    cfg, est = draft.job_config, draft.estimate
    hp = cfg["hyperparameters"]
    resume = cfg["resume_from"] or "nothing (fresh start from the base model)"
    problems = "\n".join(f"- {p.severity}: `{p.code}` {p.message}" for p in report.problems)
    v = report.validation
    preflight = "\n".join([
        f"1. Batch: `{report.batch_path}` (step {report.step}), "
        f"{sum(f.rows or 0 for f in report.files)} rows in {len(report.files)} file(s).",
        f"2. Hold-out set: `{v.path}`, {v.rows} rows, sha256 `{v.sha256}` "
        f"({'unchanged since pinned' if not v.changed else 'CHANGED'}). Never written.",
        f"3. Checkpoint: `{report.checkpoint.link}` -> latest `{report.checkpoint.latest}`.",
        f"4. HF token: {'available' if report.hf_token_available else 'not found'} "
        "(its value is never stored; jobs get it as the secret `HF_TOKEN` at submit time).",
    ])
    last = report.last_step
    if last is not None:
        preflight += (f"\n5. Last step: {last.step} (`{last.batch}`), version "
                      f"`{last.version}`, " + (
                          "promoted." if last.promoted else
                          f"**rolled back by the operator**: {last.reason}." if
                          getattr(last, "rolled_back", False) else
                          f"**promoted: false**: {last.reason}; latest stayed where it "
                          "was."))
    if report.retrain:
        preflight += (f"\n6. Trained again, in full: {', '.join(report.retrain)} (the "
                      "weights this step starts from never learned them).")
    data = _table(["role", "file", "rows", "sha256"],
                  [[f.role, f"`{f.path}`", str(f.rows if f.rows is not None else ""),
                    f"`{f.sha256[:16]}`"] for f in draft.files])
    if draft.sources:
        data += (f"\n\nRegime **{draft.regime}**: rows trained per source, and why.\n\n"
                 + _table(["source", "rows", "trained", "why"],
                          [[f"`{u.path}`", str(u.rows), str(u.trained), u.why]
                           for u in draft.sources]))
        data += f"\n\n{sum(u.trained for u in draft.sources)} rows trained in all."
    lengths = draft.lengths
    if lengths is not None:
        data += (f"\n\nLengths: {lengths.rows} rows counted with `{lengths.tokenizer}` against "
                 f"max_length {lengths.max_length}; {lengths.overlong} longer "
                 f"(data.overlong `{lengths.policy}`: {lengths.shortened} shortened in the "
                 f"user turn, {lengths.dropped} dropped). No row trains without its answer.")
        if lengths.listed:
            data += "\n\n" + _table(["row", "tokens", "outside the user turn", "action"], [
                [f"`{r.file}:{r.line}`", str(r.tokens),
                 "" if r.rest_tokens is None else str(r.rest_tokens), r.action]
                for r in lengths.listed])
    hyper = _table(["key", "value"], [[k, f"`{v}`"] for k, v in hp.items()])
    lora = ""
    if cfg["lora"]:
        lora = "\nLoRA: " + ", ".join(f"{k} `{v}`" for k, v in cfg["lora"].items()) + "\n"
    submission = ""
    if draft.submission:
        s = draft.submission
        submission = (
            "\n## Hugging Face Jobs submission\n\n"
            f"- flavor `{s.flavor}`, timeout {s.timeout_seconds} s, image `{s.image}`\n"
            f"- command `{' '.join(s.command)}`\n"
            f"- model pushed to `{cfg['hub']['model_id']}` "
            f"({'private' if cfg['hub']['private'] else 'PUBLIC: the plan says hub.private false'})"
            ", one commit per step; the next step resumes from that exact commit\n"
            f"- bundle: one commit to the {'private' if cfg['hub']['private'] else 'PUBLIC'} "
            f"dataset repo `{s.dataset_repo}` under "
            f"`steps/{draft.draft_id}/`, mounted read-only at the exact commit\n"
            f"- labels {s.labels} (plus `tunestep-draft`)\n"
            f"- secrets by name: {', '.join(s.secrets)}\n")
    warnings = "\n".join(f"- {w}" for w in draft.warnings) or "- none"
    o = cfg["outputs"]
    g = draft.gate
    if g is None:
        gate = "- promotion gate: none (`gate: null`): every finished step moves `latest`"
    else:
        better = "lower" if g["metric"] == "grade_mae" else "higher"
        gate = (f"- promotion gate: `{g['metric']}` ({better} is better) on the whole hold-out "
                f"set: `latest` moves only when the lower end of the paired 95 % interval "
                f"of the gain over `latest` (and over the best version on the line) is "
                f"above {-g['margin']:g}, i.e. the hold-out shows it is not worse by more "
                f"than {g['margin']:g}; a version held back is kept and recorded, and the "
                "operator can still promote it (`tunestep promote VERSION`)")
    return f"""# Run plan: step {draft.step}, batch {draft.batch}

Draft `{draft.draft_id}`, digest `{draft.digest}`.
Backend **{draft.backend}**, mode **{cfg['mode']}**. Nothing runs until the operator approves.

## Preflight

{preflight}

{problems}

## Datasets

{data}

## Training

- Model: `{cfg['base_model']}`
- Resume from: `{resume}`
- Starts from: {draft.start.described if draft.start else resume}
{lora}
{hyper}

## Hardware and estimate

- Flavor `{est.flavor}`; {est.total_tokens} training tokens ({est.train_tokens} x {est.epochs:g}
  epochs), {est.optimizer_steps} optimizer steps.
- {_processes_line(est)}
- About **{est.minutes:g} min** and **${est.usd:.2f}** (${est.usd_per_hour:g}/h, price from
  {_PRICE_SOURCES.get(est.price_source, est.price_source)}). Method:
  {est.method}.
{_eval_line(est)}
- Timeout {est.timeout_seconds} s; suggested {est.suggested_timeout} (estimate + 30 %).
- Memory needed about {est.memory_needed_gb:g} GB.

Warnings:
{warnings}
{submission}
## Outputs

- metrics CSV `{o['metrics_csv']}`, log `{o['train_log']}`, samples `{o['samples_md']}`
- plots in `{o['plots_dir']}`; new model version in `{o['model_store']}/versions/`, then
  `latest` moves to it if the promotion gate passes
{gate}

## How to approve

The operator reviews the stored draft and signs it in their own terminal:

```
{draft.approve_command}
```

and pastes the token printed on the last line to the assistant, which calls
`submit_job(draft_id="{draft.draft_id}", approval_token=...)`.
"""


def write_run_plan(ws: Workspace, draft: JobDraft, report: PreflightReport) -> None:
    atomic_write_text(ws.resolve(draft.run_plan), render_run_plan(draft, report))
