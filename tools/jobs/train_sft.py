# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "trl>=1.0,<2",
#     "peft>=0.17,<1",
#     "trackio>=0.40,<1",
#     "transformers>=5.0,<6",
#     "datasets>=4.0,<6",
#     "accelerate>=1.10,<2",
#     "huggingface_hub>=1.16,<3",
#     "matplotlib>=3.9,<4",
#     "google-re2>=1.1,<2",
#     "torch==2.10.0",
# ]
# ///
# torch 2.10.0 is the newest release whose PyPI wheel is built for CUDA 12 (12.8); 2.11 and
# later are built for CUDA 13, which needs an R580 driver. A CUDA 12.x runtime runs on any
# R525+ driver (CUDA minor-version compatibility), the drivers HF's own CUDA 12.4 images
# run on. `make lock` writes train_sft.py.lock from this header; the job runs
# `uv run --locked`, so it installs exactly the locked versions the draft's digest covers.
"""One incremental supervised fine-tuning step: train, evaluate, decide, version, report.

Runs the same on a laptop CPU, a local GPU and Hugging Face Jobs. It imports nothing from
tunestep: only its declared dependencies and its sibling modules, which travel with it
(``JOB_FILES`` in ``tools/jobs/__init__.py``; the draft's digest covers each):
``job_common`` (exit codes, errors, atomic writes, the run log), ``job_config`` (this
contract), ``job_data`` (datasets, over-long rows), ``job_train`` (precision, GPU check,
model, memory estimate, SFTConfig), ``job_evaluate`` (whole hold-out generation and
grading), ``job_answers`` (hold-out answers kept with a version and reused, continuous
batching where faster), ``job_stats`` (intervals and tests), ``job_gate`` (the promotion decision),
``job_outcome`` (the new version scored, the gate asked, the reports written),
``job_process`` (SIGTERM, the failure lines, the multi-GPU relaunch, startup time),
``job_report`` (CSV, Markdown, plots, history), ``job_store`` (versions, ``latest``, Hub
pushes) and ``sft_data`` (loading, tokenization and grade parsing, which tunestep's
preprocess imports too, as ``tunestep.tools.jobs.sft_data``).

Usage::

    python -I train_sft.py --config job.json --config-sha256 HEX [--root DIR]
    uv run train_sft.py --config job.json --config-sha256 HEX --root DIR  # on HF Jobs
    accelerate launch train_sft.py --config job.json            # several GPUs

Relative paths in the config resolve against ``--root`` (default: the current directory).
``--config-sha256`` (tunestep's launchers always pass it) is the sha256 of job.json's
bytes: the job reads the file once, and refuses it before anything else when its bytes
hash to anything else (``config_tampered``). The job's own modules are loaded by file
from the script's folder; no folder is put on the import path (``python -I`` locally,
``PYTHONSAFEPATH`` on HF Jobs, and the script's folder and the working directory are
taken off ``sys.path``), so a module planted in the workspace is never imported.

Job config (JSON, ``schema`` 1). Every key is required; an unknown key is refused::

    schema            1
    draft_id          str   the approved draft this job runs
    step              int   step number; the new version folder is versions/<NNNN>_<batch>
    batch             str   batch tag, [A-Za-z0-9._-]+ (used in file names)
    mode              "full" | "lora"
    base_model        str   hub id or local path: start of a fresh full fine-tune, and the
                            model LoRA adapters attach to
    resume_from       str | null   latest checkpoint: a local full-model dir (full) or adapter
                            dir (lora; full with merge_adapter), e.g. "<model_store>/latest";
                            or "hf://owner/name[@rev]"
                            for a checkpoint pushed by an earlier step. null = fresh start
    train_files       [{"path", "sha256"}]   canonical chat JSONL {"messages": [...]}
    eval_file         {"path", "sha256"}     the hold-out set, same format
    tokenized_dir     str | null   datasets.save_to_disk folder (input_ids, attention_mask,
                            labels or assistant_masks; a DatasetDict uses "train") made by
                            tunestep's preprocess with sft_data.tokenize_chat; used instead of
                            tokenizing train_files (which are still sha256-checked) when set.
                            Its labels already hold the assistant mask, so TRL gets
                            assistant_only_loss=False (it refuses the flag on tokenized rows)
                            and the hold-out is tokenized by the same function
    tokenized_files   [{"path", "sha256"}]   every file of tokenized_dir (paths relative
                            to it); [] when tokenized_dir is null. Only these are loaded
    checkpoint        {"of": "resume_from" | "base_model", "files": [{"path", "sha256"}]}
                            | null   every file of a local start folder (the one named by
                            resume_from, or by base_model for LoRA on a full fine-tune),
                            paths relative to it; required when resume_from is a local
                            path. Only these files are loaded
    merge_adapter     {"base_files": [{"path", "sha256"}]} | null   a full step whose
                            resume_from is a LoRA adapter: base_model is loaded, the adapter
                            applied with PEFT and merged (merge_and_unload), and the merged
                            weights trained in full. base_files: every file of a local
                            base_model (relative to it; only these are loaded), [] for a Hub
                            id. null: a full step refuses an adapter (exit 2)
    hyperparameters   {per_device_train_batch_size, gradient_accumulation_steps,
                       learning_rate, num_train_epochs, max_length, seed, save_total_limit,
                       precision: "auto"|"fp16"|"bf16"|"fp32", max_steps (-1 = by epochs),
                       warmup_ratio: [0, 1) (linear warmup share of the steps; 0.05),
                       save_strategy: "no" (final weights only) | "epoch" (also keep
                       epoch checkpoints, model only, save_total_limit of them)}
    lora              {r, alpha, dropout, target_modules: "all-linear" | [names]} | null
    outputs           {model_store, model_name, metrics_csv, train_log, samples_md,
                       plots_dir, history_json, eval_json, eval_md}
    samples           {n, max_new_tokens}   the first n hold-out rows shown in samples_md
    grade_pattern     regex whose first group captures a number
    trackio           {project, space_id: str|null, dir: str|null}
    hub               {model_id: str|null, private: bool, push: bool}
    data              {overlong: "drop" | "truncate_prompt" | "error"}   a row longer than
                            max_length (the real tokenizer and training template):
                            truncate_prompt shortens the middle of the last user turn so the
                            whole answer and its end token fit (a row whose answer alone
                            cannot fit is dropped); drop leaves it out; error refuses (exit 2)
    evaluation        {batch_size: int >= 1, max_new_tokens: int | null}   the whole hold-out
                            set, batched greedy generation; null budget = the longest
                            reference answer in tokens + 8, at least samples.max_new_tokens
    gate              {metric, margin: finite number} | null
                            promotion gate (non-inferiority, see job_gate); metric one of
                            parse_rate, grade_exact, grade_within_1, grade_mae, spearman,
                            kappa. null = always promote
    expect_gpu        bool  true on a GPU flavor: without usable CUDA the job stops (exit 2)

What it does, in order: check job.json's bytes against ``--config-sha256``; validate
the config; copy every input (the train files, the hold-out set, the tokenized dataset's
files, the local start checkpoint's files, the local base a start adapter is merged
into) into a private snapshot folder outside the
workspace (``tempfile.mkdtemp``: 0700, removed at the end) while hashing the very bytes
copied, refusing any mismatch with its sha256 (``input_changed``, exit 2; nothing
trained), and from then on read only the snapshot: a file swapped after the check
changes nothing. (A fault point for the tests: ``TUNESTEP_JOB_PAUSE=<stage>:<folder>``
with stage ``before_inputs`` or ``after_inputs`` waits there for ``<folder>/<stage>.go``.)
Then stop if a GPU is expected (``expect_gpu`` or
``$ACCELERATOR`` naming one) and CUDA is not usable; resolve the precision (``auto``: bf16
where the GPU has it natively, ``is_bf16_supported(including_emulation=False)``, else
fp16 on a GPU, else fp32; any fall-back from an explicit request is logged with its
reason); load the model (fresh or resumed, full or LoRA, fp32 master weights); fit every
row to ``max_length`` by ``data.overlong`` (each row shortened or dropped is logged);
answer every hold-out prompt greedily with the previous version (the resumed one, or the
base model on a fresh start); train with TRL's ``SFTTrainer`` (assistant-only loss,
length-grouped batches, linear warmup, log/eval each epoch, activation checkpointing only
when the memory estimate needs it, Trackio offline unless a Space is configured, then
private); cast the weights to the training dtype (bf16/fp16; fp32 on CPU) and save them;
answer every hold-out prompt again with the new version; score both (below) and decide
promotion (``job_gate``); write the reports; save the model (or adapter) and tokenizer
into ``<model_store>/versions/<NNNN>_<batch>/`` (epoch checkpoints only with
``save_strategy: "epoch"``, under its ``checkpoints/``; built in ``<model_store>/.staging/``
and renamed into place); optionally push; then, if promoted, swing
``<model_store>/latest`` to it (a relative symlink, replaced atomically). A version that
fails the gate is still written to ``versions/`` (and pushed when configured) but
``latest`` stays where it was.

Evaluation (``eval_json``, ``eval_md``): every hold-out row with a reference grade is
scored for both versions: parse_rate, grade_exact, grade_within_1, grade_mae, spearman,
kappa (quadratic-weighted). An answer with no parsable grade is wrong for grade_exact and
grade_within_1; grade_mae, spearman and kappa use the parsed rows only and are undefined
(``value`` null, ``undefined`` says why) below 5 parsed rows or for a constant predictor:
nothing is imputed, and each metric carries the ``parse_rate`` it stands on. Each metric
has a 95 % interval (Wilson for proportions, a percentile bootstrap of 1000 resamples
seeded with ``seed`` otherwise); ``delta`` (after minus before) has a paired interval
(Tango's score interval for proportions, a paired bootstrap otherwise) and a p-value
(exact McNemar for proportions, exact sign test on per-row absolute error for MAE,
bootstrap for the correlations); ``versus_best`` compares the new version with the best
version on the line the same way (null when that is the previous version); ``paired``
counts rows whose absolute error fell, rose or stayed (wins/losses/ties; a parsed grade
beats none) with an exact sign test. ``per_row`` lists each row's reference and parsed
grades; ``before_reused`` says whether the previous version's answers were reused.

Promotion (``gate``): gain = delta, sign-flipped for grade_mae. Promoted only when the
lower end of the gain's paired 95 % interval is above -margin, against the previous
version and against the best version on the line (``versus_best``, from the kept
answers), so a drop the hold-out cannot rule out holds the version back. A metric that
is undefined holds the version back. ``gate: null`` always promotes.

Kept answers (``job_answers``): the new version's hold-out answers are written into its
folder (``holdout_answers.json``, keyed by its content hash, the hold-out's sha256, the
prompts, the budget and the template) with the line's best version's answers; the next
step reuses them as its "before" when they match (the report says "reused").

Hub layout (``hub.push`` with ``hub.model_id``): the version folder (without
``checkpoints/`` and the generated README.md) is committed to the repo root, one commit
per step, private unless ``hub.private`` is false. The root is thus the latest full model
(``from_pretrained(model_id)``) or adapter (``PeftModel.from_pretrained(base, model_id)``)
with its tokenizer and ``tunestep_version.json``; the result's ``hub.revision`` (the commit
sha) pins the step, and a later job resumes with
``"resume_from": "hf://<model_id>@<revision>"``. A version the gate held back is pushed
too (its commit message says so): resume from the revision of the last promoted step.
The push happens before the local commit, so a failed push fails the step. The token is
read from ``HF_TOKEN`` only when pushing or downloading, and never logged.

On Hugging Face Jobs, tunestep's backend sets ``TUNESTEP_OUTPUT_REPO`` and
``TUNESTEP_OUTPUT_PATH``: the reports (metrics CSV, train log, samples, evaluation report,
plots, history) and ``result.json`` are then committed to
``<repo>/<path>/<their path relative to --root>``, with a snapshot of each Trackio
database of ``trackio.dir`` as ``<path>/trackio/<name>.db`` (see ``push_outputs``);
tunestep merges them into the workspace's cumulative files. A launcher may
set ``TUNESTEP_JOB_STARTED`` (epoch seconds) so the time before training includes what
preceded this process (the dependency install); on HF Jobs without it, the age of the
container's first process (``uv run``, which installs the dependencies) stands in.

Outputs besides the model: ``metrics_csv`` (an epoch-0 row: the hold-out loss and the
previous version's evaluation before training; then one row per epoch, the new version's
evaluation on the last), ``train_log`` (appended), ``samples_md``, ``eval_json``,
``eval_md``, ``<plots_dir>/loss_step_<batch>.png`` (from epoch 0), ``<plots_dir>/
val_progression.png`` (with 95 % interval bars) and ``history_json`` (one summary per
step, this step's appended). Every file is written atomically (temp file, fsync, rename);
the CSV is rewritten after each epoch.

Exit status: 0 success (promoted or not), then the last stdout line is
``TUNESTEP_RESULT <json>`` with ``model_path``, ``version``, ``promoted``, ``promotion``
(promoted, reason, metric, before, after, delta, interval, p_value, margin, rule,
gain_low, detectable, versus_best), ``evaluation`` (rows, graded_rows, max_new_tokens, seconds,
rows_per_second, before, after, delta, paired, report), ``metrics_before``/
``metrics_after`` (grade_exact, grade_within1, grade_mae, parse_rate, spearman, kappa,
counts; over the whole hold-out), ``eval_loss_before``, ``final_train_loss``,
``final_eval_loss``, ``train_tokens``, ``epochs``, ``seconds``, ``precision``,
``precision_requested``, ``precision_fallback``, ``saved_dtype``, ``warnings`` (e.g.
``samples.max_new_tokens`` shorter than reference answers), ``rows_shortened``,
``rows_dropped``, ``timing`` (process_to_training, job_to_training, training,
evaluation, wall, outside_training_share), ``memory``, ``hub``;
2 bad config or input, or a GPU flavor without CUDA (nothing trained, nothing written to
the store; an existing ``versions/<NNNN>_<batch>`` is never overwritten); 1 training or
saving failed; 143 cancelled (SIGTERM). On any failure ``latest`` does not move and the
half-built version is removed; one line ``TUNESTEP_ERROR <json>`` goes to stdout and
``train_sft: error: <message>`` to stderr.

Several GPUs: ``accelerate launch train_sft.py ...`` runs the same code on every rank;
only rank 0 evaluates and writes files.
"""

# Long for its docstring: the job's contract, which .specs/job_config.md holds verbatim
# (tests/test_specs.py). The code is the step's flow; its parts are the job_*.py siblings.

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

T_PROCESS = time.monotonic()  # as soon as the interpreter reaches this script

if __package__:  # imported as tunestep.tools.jobs.train_sft: the same sibling modules
    from . import (
        job_answers,
        job_common,
        job_config,
        job_data,
        job_evaluate,
        job_outcome,
        job_process,
        job_store,
        job_train,
        sft_data,
    )
else:  # run as a script (locally or on HF Jobs): its siblings, stdlib-only at import
    import importlib.abc
    import importlib.util

    _HERE = Path(__file__).resolve().parent
    _SIBLINGS = frozenset({"job_answers", "job_common", "job_config", "job_data",
                           "job_evaluate", "job_gate", "job_outcome", "job_process",
                           "job_report", "job_stats", "job_store", "job_train", "sft_data",
                           "sft_batched"})

    class _Siblings(importlib.abc.MetaPathFinder):
        """The job's own modules, each loaded from its exact file beside this script.

        No folder goes on the import path (the launcher runs ``python -I``, and the
        script's folder and the working directory are taken off ``sys.path`` here too), so
        a module planted in the workspace or the job folder (an ``orjson.py``) is never
        imported: only these names resolve to files of this folder.
        """

        def find_spec(self, name, path=None, target=None):
            if name in _SIBLINGS:
                return importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
            return None

    sys.path[:] = [p for p in sys.path
                   if p not in ("", ".") and Path(p).resolve() not in (_HERE, Path.cwd())]
    sys.meta_path.insert(0, _Siblings())
    import job_answers
    import job_common
    import job_config
    import job_data
    import job_evaluate
    import job_outcome
    import job_process
    import job_store
    import job_train
    import sft_data

# What callers and tests reach for by this module's name.
JobError, Cancelled, RunLog = job_common.JobError, job_common.Cancelled, job_common.RunLog
EXIT_BAD_INPUT, EXIT_FAILED = job_common.EXIT_BAD_INPUT, job_common.EXIT_FAILED
EXIT_CANCELLED = job_common.EXIT_CANCELLED
validate_config = job_config.validate_config
resolve_precision = job_train.resolve_precision
Paths = job_config.Paths


# ---------------------------------------------------------------------------------------
# The run


def _config_summary(cfg: dict, paths: Paths, precision: str) -> str:
    hp = cfg["hyperparameters"]
    files = ", ".join(f"{f['path']}@{f['sha256'][:12]}" for f in cfg["train_files"])
    return (
        f"draft={cfg['draft_id']} step={cfg['step']} batch={cfg['batch']} mode={cfg['mode']} "
        f"base_model={cfg['base_model']} resume_from={cfg['resume_from']} precision={precision} "
        f"train_files=[{files}] "
        f"eval_file={cfg['eval_file']['path']}@{cfg['eval_file']['sha256'][:12]} "
        f"tokenized_dir={cfg['tokenized_dir']} hyperparameters={json.dumps(hp, sort_keys=True)} "
        f"lora={json.dumps(cfg['lora'], sort_keys=True)} data={json.dumps(cfg['data'])} "
        f"evaluation={json.dumps(cfg['evaluation'])} gate={json.dumps(cfg['gate'])} "
        f"store={paths.store} "
        f"trackio_project={cfg['trackio']['project']} trackio_space={cfg['trackio']['space_id']} "
        f"hub_model={cfg['hub']['model_id']} push={cfg['hub']['push']} "
        f"private={cfg['hub']['private']}"
    )


@dataclass
class Prepared:
    model: Any
    tokenizer: Any
    original_template: Any
    template: str
    data: job_data.Datasets
    holdout: job_evaluate.HoldOut
    budget: int
    longest_reference: int
    resumed_from: str | None
    warnings: list[str]
    resume_folder: Path | None  # the previous version's files (its kept answers)
    answers_key: dict  # what the hold-out answers depend on (job_answers.generation_key)


def prepare(cfg: dict, paths: Paths, log: RunLog) -> Prepared:
    model, tokenizer, resumed_from, folder = job_train.load_model_and_tokenizer(cfg, paths, log)
    try:
        template = sft_data.training_chat_template(tokenizer)
    except ValueError as exc:
        raise JobError(str(exc), EXIT_BAD_INPUT) from exc
    if paths.resume_label is not None and resumed_from == str(paths.resume_from):
        resumed_from = paths.resume_label  # the verified copy stands for the configured folder
    data = job_data.load_datasets(cfg, paths, tokenizer, template, log)
    # The whole hold-out set, each row cut before its last assistant turn.
    holdout = job_evaluate.HoldOut.from_rows(data.eval_rows, cfg["grade_pattern"])
    budget, longest, warnings = job_evaluate.answer_budget(
        tokenizer, holdout.references, cfg["evaluation"], cfg["samples"]["max_new_tokens"])
    for warning in warnings:
        log(f"warning: {warning}")
    key = job_answers.generation_key(cfg["eval_file"]["sha256"], holdout, budget,
                                     tokenizer.chat_template, cfg["base_model"], cfg["mode"])
    return Prepared(model, tokenizer, tokenizer.chat_template, template, data, holdout,
                    budget, longest, resumed_from, warnings, folder, key)


def run(cfg: dict, paths: Paths, state: dict) -> dict:
    t_start = time.monotonic()
    main = job_common.is_main_process()
    log = RunLog(paths.train_log if main else None, f"step {paths.version_name}")
    job_train.configure_trackio_env(cfg, paths)

    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    job_train.check_gpu(cfg, torch)  # a GPU flavor without CUDA stops here, not at timeout
    cuda = torch.cuda.is_available()
    bf16_ok = job_train.bf16_supported(torch)
    requested = cfg["hyperparameters"]["precision"]
    precision, fallback = resolve_precision(requested, cuda, bf16_ok)
    device = (f"cuda ({torch.cuda.get_device_name(0)}, native bf16: {bf16_ok})" if cuda
              else "cpu")
    log(f"start: {_config_summary(cfg, paths, precision)}")
    log(f"precision: requested {requested}, training in {precision} on {device}"
        + (f"; fall-back: {fallback}" if fallback else ""))
    set_seed(cfg["hyperparameters"]["seed"])  # before LoRA init and sampling
    prep = prepare(cfg, paths, log)
    ev = cfg["evaluation"]
    previous = {"answers": [], "seconds": 0.0, "how": None, "reused": False, "why": None,
                "line_best": None}
    if main:  # the kept answers of the previous version when they match, else generated
        prep.model.to(torch.device("cuda" if cuda else "cpu"))
        previous = job_answers.before_answers(
            prep.model, prep.tokenizer, prep.holdout, prep.answers_key, prep.resume_folder,
            prep.budget, ev["batch_size"], precision, log)
    before, seconds_before = previous["answers"], previous["seconds"]

    draft_tag = re.sub(r"[^A-Za-z0-9._-]", "_", cfg["draft_id"])
    # Built beside versions/ (same filesystem, so the final rename is atomic) and never
    # inside it, so readers of versions/ only ever see finished steps.
    staging = paths.store / ".staging" / f"{paths.version_name}-{draft_tag}"
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of a failed attempt
        staging.mkdir(parents=True)
        (paths.store / "versions").mkdir(exist_ok=True)
    ctx = {"precision": precision, "fallback": fallback, "requested": requested,
           "cuda": cuda, "t_start": t_start, "before": before,
           "seconds_before": seconds_before, "torch": torch, "previous": previous}
    try:
        result = _train_and_publish(cfg, paths, state, log, prep, staging, ctx, SFTTrainer)
    except BaseException:
        if main:  # nothing half-written stays in the store; the next attempt starts clean
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _train_and_publish(cfg, paths, state, log, prep: Prepared, staging: Path, ctx: dict,
                       SFTTrainer) -> dict:
    torch, precision = ctx["torch"], ctx["precision"]
    tokenizer = prep.tokenizer
    hp = cfg["hyperparameters"]
    # Train with the marker template (TRL masks with it); the saved tokenizer gets its own back.
    tokenizer.chat_template = prep.template
    main = job_common.is_main_process()
    csv_path = paths.metrics_csv if main else None
    memory = job_train.memory_estimate(prep.model, hp, precision, torch)
    log(f"memory: {memory['reason']}")
    recorder = job_train.EpochRecorder(log, csv_path, time.monotonic())
    trainer = SFTTrainer(
        model=prep.model,
        args=job_train.build_sft_config(
            cfg, precision, staging / "checkpoints", prep.data.pretokenized,
            memory["checkpointing"],
            # every rank derives the same value from the same hold-out and budget
            job_train.ddp_timeout_seconds(len(prep.holdout.prompts), prep.budget,
                                          cfg["evaluation"]["batch_size"])),
        train_dataset=prep.data.train,
        eval_dataset=prep.data.eval,
        processing_class=tokenizer,
        callbacks=[recorder.callback],
    )
    trainer.evaluate()  # hold-out loss of the starting point: the CSV's epoch-0 row
    startup = job_process.startup_seconds(T_PROCESS)
    log(f"training (started {startup['process_to_training']}s after the process"
        + (f", {startup['job_to_training']}s after the job" if startup["job_to_training"]
           is not None else "") + ")")
    t_train = time.monotonic()
    train_out = trainer.train()
    train_seconds = time.monotonic() - t_train
    trained = trainer.accelerator.unwrap_model(trainer.model)
    # Saved (and pushed) in the training dtype: half the bytes of fp32 master weights, and
    # what a bf16/fp16 run means to serve.
    save_dtype = job_train.torch_dtype(torch, precision)
    if save_dtype is not torch.float32:
        trained.to(save_dtype)
    trainer.save_model(str(staging))  # full model or adapter; on all ranks (sharded setups)
    if hp["save_strategy"] == "no":  # nothing asked for epoch checkpoints: none are kept
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    tokenizer.chat_template = prep.original_template
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(staging))

    # Rank 0 from here: the new version answers the hold-out, the gate decides, the
    # reports are written; then the push and the commit.
    scored = job_outcome.score_new_version(cfg, paths, prep, ctx, trained, staging, log)
    promotion = scored.promotion
    result = job_outcome.write_reports(
        cfg, paths, prep, ctx, scored, staging=staging, recorder=recorder, train_out=train_out,
        save_dtype=save_dtype, train_seconds=train_seconds, startup=startup, memory=memory)
    final = paths.store / "versions" / paths.version_name
    wall = max(time.monotonic() - T_PROCESS, job_process.process_age() or 0.0)
    # Pushes come before the local commit: on HF Jobs they are the only lasting copy, so a
    # failed push fails the step instead of leaving a version nobody can reach.
    if cfg["hub"]["push"]:
        result["hub"] = job_store.push_version(cfg, staging, log, promotion)
    result["seconds"] = round(time.monotonic() - ctx["t_start"], 2)
    result["timing"]["wall"] = round(wall, 2)
    result["timing"]["outside_training_share"] = round(1 - train_seconds / max(wall, 1e-9), 4)
    result["output_repo"] = job_store.push_outputs(paths, result, log)

    state["committed"] = True  # from here a SIGTERM no longer unwinds the step
    # The version's evidence: its files' sha256 and sizes, recorded in the ledger (issue 17).
    result["version_files"] = job_store.version_manifest(staging)
    job_store.commit_version(staging, paths.store, paths.version_name)
    if promotion["promoted"]:
        job_store.move_latest(paths.store, paths.version_name)
        log(f"done: {final} is latest ({result['seconds']}s)")
    else:
        log(f"done: {final} recorded, NOT promoted; latest unchanged ({result['seconds']}s)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one tunestep SFT step from a job config.")
    parser.add_argument("--config", required=True, type=Path, help="job config JSON")
    parser.add_argument("--root", type=Path, default=Path.cwd(),
                        help="folder that relative config paths resolve against (default: cwd)")
    parser.add_argument("--config-sha256", default=None,
                        help="sha256 of the config file's bytes; the job refuses to run "
                             "when they differ (tunestep's launchers always pass it)")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="one training process per GPU (multi-GPU flavors): relaunches "
                             "itself through accelerate's launcher")
    args = parser.parse_args(argv)
    relaunch = job_common.launch_argv(sys.argv[0], list(sys.argv[1:] if argv is None else argv),
                                      args.num_processes, dict(os.environ))
    if relaunch is not None:
        return job_process.relaunch(relaunch, args.num_processes)

    state: dict = {}
    job_process.install_cancel_handler(state)
    log_path = None
    snapshot = None
    try:
        try:
            # The bytes are read once, hashed, and only then parsed: what runs is what
            # the launcher's digest names.
            data = args.config.read_bytes()
            job_config.verify_config_bytes(data, args.config_sha256)
            cfg = validate_config(json.loads(data.decode("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JobError(f"cannot read config {args.config}: {exc}", EXIT_BAD_INPUT) from exc
        paths = job_config.resolve_paths(cfg, args.root)
        log_path = paths.train_log if job_common.is_main_process() else None
        job_config.verify_inputs(cfg, paths)
        snapshot = job_config.make_snapshot_dir()
        paths = job_config.snapshot_inputs(cfg, paths, snapshot)
        result = run(cfg, paths, state)
    except JobError as exc:
        return job_process.fail(str(exc), exc.code, log_path, exc.reason)
    except Cancelled:
        return job_process.fail("cancelled (SIGTERM); latest not moved", EXIT_CANCELLED, log_path)
    except Exception as exc:  # one clear line for the operator; the traceback goes to stderr
        import traceback

        print(job_common.scrub(traceback.format_exc()), file=sys.stderr, flush=True)
        return job_process.fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED, log_path)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
    if result:
        print(f"{job_process.RESULT_PREFIX} {json.dumps(result, default=str)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
