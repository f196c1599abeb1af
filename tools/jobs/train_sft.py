# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "trl>=1.0,<2",
#     "peft>=0.17,<1",
#     "trackio>=0.40,<1",
#     "transformers>=5.0,<6",
#     "datasets>=4.0,<6",
#     "accelerate>=1.10,<2",
#     "huggingface_hub>=1.0,<3",
#     "matplotlib>=3.9,<4",
#     "torch>=2.6",
# ]
# ///
"""One incremental supervised fine-tuning step: train, sample, version, report.

Runs the same on a laptop CPU, a local GPU and Hugging Face Jobs. It imports nothing from
tunestep: only its declared dependencies and its sibling ``sft_data.py`` (data loading,
tokenization and grade parsing, which tunestep's preprocess imports too, as
``tunestep.tools.jobs.sft_data``).

Usage::

    python train_sft.py --config job.json [--root DIR]
    uv run train_sft.py --config job.json --root DIR            # on HF Jobs
    accelerate launch train_sft.py --config job.json            # several GPUs

Relative paths in the config resolve against ``--root`` (default: the current directory).

Job config (JSON, ``schema`` 1). Every key is required; an unknown key is refused::

    schema            1
    draft_id          str   the approved draft this job runs
    step              int   step number; the new version folder is versions/<NNNN>_<batch>
    batch             str   batch tag, [A-Za-z0-9._-]+ (used in file names)
    mode              "full" | "lora"
    base_model        str   hub id or local path: start of a fresh full fine-tune, and the
                            model LoRA adapters attach to
    resume_from       str | null   latest checkpoint: a local full-model dir (full) or adapter
                            dir (lora), e.g. "<model_store>/latest"; or "hf://owner/name[@rev]"
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
    hyperparameters   {per_device_train_batch_size, gradient_accumulation_steps,
                       learning_rate, num_train_epochs, max_length, seed, save_total_limit,
                       precision: "auto"|"fp16"|"bf16"|"fp32", max_steps (-1 = by epochs)}
    lora              {r, alpha, dropout, target_modules: "all-linear" | [names]} | null
    outputs           {model_store, model_name, metrics_csv, train_log, samples_md,
                       plots_dir, history_json}
    samples           {n, max_new_tokens}
    grade_pattern     regex whose first group captures a number
    trackio           {project, space_id: str|null, dir: str|null}
    hub               {model_id: str|null, private: bool, push: bool}

What it does, in order: validate the config; check every train/eval file against its
sha256 (a mismatch refuses to train); load the model (fresh or resumed, full or LoRA);
generate ``samples.n`` greedy answers to the first hold-out prompts; train with TRL's
``SFTTrainer`` (assistant-only loss, log/eval/save each epoch, Trackio offline unless a
Space is configured, then private); generate the same answers again; write the metrics
CSV, samples Markdown, plots and the cross-step history; save the model (or adapter) and
tokenizer into ``<model_store>/versions/<NNNN>_<batch>/`` (epoch checkpoints, model only,
under its ``checkpoints/``; built in ``<model_store>/.staging/`` and renamed into place);
optionally push; then swing ``<model_store>/latest`` to it (a relative symlink, replaced
atomically).

Hub layout (``hub.push`` with ``hub.model_id``): the version folder (without
``checkpoints/`` and the generated README.md) is committed to the repo root, one commit
per step, private unless ``hub.private`` is false. The root is thus the latest full model
(``from_pretrained(model_id)``) or adapter (``PeftModel.from_pretrained(base, model_id)``)
with its tokenizer and ``tunestep_version.json``; the result's ``hub.revision`` (the commit
sha) pins the step, and a later job resumes with
``"resume_from": "hf://<model_id>@<revision>"``. The push happens before ``latest`` moves,
so a failed push fails the step. The token is read from ``HF_TOKEN`` only when pushing or
downloading, and never logged.

On Hugging Face Jobs, tunestep's backend sets ``TUNESTEP_OUTPUT_REPO`` and
``TUNESTEP_OUTPUT_PATH``: the reports (metrics CSV, train log, samples, plots, history)
and ``result.json`` are then committed to ``<repo>/<path>/<their path relative to --root>``
(see ``push_outputs``).

Outputs besides the model: ``metrics_csv`` (one row per epoch; the grade columns on the
last row, from the after-samples), ``train_log`` (appended), ``samples_md``,
``<plots_dir>/loss_step_<batch>.png``, ``<plots_dir>/val_progression.png`` and
``history_json`` (one summary per step, this step's appended). Every file is written
atomically (temp file, fsync, rename); the CSV is rewritten after each epoch.

Exit status: 0 success, then the last stdout line is ``TUNESTEP_RESULT <json>`` with
``model_path``, ``version``, ``metrics_before``/``metrics_after`` (grade_exact,
grade_within1, grade_mae, counts), ``eval_loss_before``, ``final_train_loss``,
``final_eval_loss``, ``train_tokens``, ``epochs``, ``seconds``, ``precision``, ``hub``;
2 bad config or input (nothing trained, nothing written to the store; an existing
``versions/<NNNN>_<batch>`` is never overwritten); 1 training or saving failed;
143 cancelled (SIGTERM). On any failure ``latest`` does not move and the half-built
version is removed; one line ``TUNESTEP_ERROR <json>`` goes to stdout and
``train_sft: error: <message>`` to stderr.

Several GPUs: ``accelerate launch train_sft.py ...`` runs the same code on every rank;
only rank 0 generates samples and writes files.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__:  # imported as tunestep.tools.jobs.train_sft: share tunestep's sft_data
    from . import sft_data
else:  # run as a script (locally or on HF Jobs): the sibling file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sft_data  # stdlib-only at import

RESULT_PREFIX = "TUNESTEP_RESULT"
ERROR_PREFIX = "TUNESTEP_ERROR"
METRICS_COLUMNS = (
    "epoch", "step", "train_loss", "eval_loss", "grade_exact", "grade_within1",
    "grade_mae", "learning_rate", "tokens", "seconds",
)
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 143


class JobError(Exception):
    """A failure with a one-line message for the operator; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


class Cancelled(BaseException):  # BaseException: library `except Exception` must not swallow it
    """Raised from the SIGTERM handler to unwind training."""


# ---------------------------------------------------------------------------------------
# Config


_SPEC: dict[str, Any] = {
    "schema": int, "draft_id": str, "step": int, "batch": str, "mode": str, "base_model": str,
    "resume_from": (str, type(None)), "train_files": list, "eval_file": dict,
    "tokenized_dir": (str, type(None)), "hyperparameters": dict, "lora": (dict, type(None)),
    "outputs": dict, "samples": dict, "grade_pattern": str, "trackio": dict, "hub": dict,
}
_NESTED: dict[str, dict[str, Any]] = {
    "hyperparameters": {
        "per_device_train_batch_size": int, "gradient_accumulation_steps": int,
        "learning_rate": (int, float), "num_train_epochs": (int, float),
        "max_length": (int, type(None)), "seed": int, "save_total_limit": (int, type(None)),
        "precision": str, "max_steps": int,
    },
    "lora": {"r": int, "alpha": (int, float), "dropout": (int, float),
             "target_modules": (str, list)},
    "outputs": {
        "model_store": str, "model_name": str, "metrics_csv": str, "train_log": str,
        "samples_md": str, "plots_dir": str, "history_json": str,
    },
    "samples": {"n": int, "max_new_tokens": int},
    "trackio": {"project": str, "space_id": (str, type(None)), "dir": (str, type(None))},
    "hub": {"model_id": (str, type(None)), "private": bool, "push": bool},
    "eval_file": {"path": str, "sha256": str},
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_RESUME = re.compile(r"^hf://[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _check_keys(obj: dict, spec: dict[str, Any], where: str) -> None:
    """Exactly the keys of ``spec``, each of the declared type (bool is not an int here)."""
    unknown = sorted(set(obj) - set(spec))
    missing = sorted(set(spec) - set(obj))
    if unknown:
        raise JobError(f"config: unknown key(s) {unknown} in {where}", EXIT_BAD_INPUT)
    if missing:
        raise JobError(f"config: missing key(s) {missing} in {where}", EXIT_BAD_INPUT)
    for key, types in spec.items():
        value = obj[key]
        types = types if isinstance(types, tuple) else (types,)
        # bool is an int subclass: `true` must not pass where a number is expected
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise JobError(f"config: {where}.{key} must be {names}", EXIT_BAD_INPUT)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise JobError(f"config: {message}", EXIT_BAD_INPUT)


def validate_config(cfg: Any) -> dict:
    """Check the job config against the schema-1 contract; return it unchanged."""
    _require(isinstance(cfg, dict), "top level must be a JSON object")
    _check_keys(cfg, _SPEC, "config")
    for key, spec in _NESTED.items():
        if cfg[key] is not None:
            _check_keys(cfg[key], spec, key)
    _require(cfg["schema"] == 1, f"schema must be 1, got {cfg['schema']}")
    _require(bool(cfg["draft_id"].strip()), "draft_id must not be empty")
    _require(cfg["step"] >= 0, "step must be >= 0")
    _require(bool(_SAFE_TAG.match(cfg["batch"])), "batch must match [A-Za-z0-9][A-Za-z0-9._-]*")
    _require(cfg["mode"] in ("full", "lora"), "mode must be 'full' or 'lora'")
    _require(bool(cfg["base_model"].strip()), "base_model must not be empty")
    resume = cfg["resume_from"]
    _require(resume is None or (bool(resume.strip()) and
                                (not resume.startswith("hf://") or bool(_HF_RESUME.match(resume)))),
             "resume_from must be a path, hf://owner/name[@revision] or null")
    _require(bool(cfg["train_files"]), "train_files must list at least one file")
    for i, entry in enumerate(cfg["train_files"]):
        _require(isinstance(entry, dict), f"train_files[{i}] must be an object")
        _check_keys(entry, {"path": str, "sha256": str}, f"train_files[{i}]")
    for where, entry in [*((f"train_files[{i}]", e) for i, e in enumerate(cfg["train_files"])),
                         ("eval_file", cfg["eval_file"])]:
        _require(bool(_SHA256.match(entry["sha256"])), f"{where}.sha256 must be 64 lowercase hex")
    hp = cfg["hyperparameters"]
    _require(hp["per_device_train_batch_size"] >= 1, "per_device_train_batch_size must be >= 1")
    _require(hp["gradient_accumulation_steps"] >= 1, "gradient_accumulation_steps must be >= 1")
    _require(hp["learning_rate"] > 0, "learning_rate must be > 0")
    _require(hp["num_train_epochs"] > 0, "num_train_epochs must be > 0")
    _require(hp["max_length"] is None or hp["max_length"] >= 8, "max_length must be >= 8 or null")
    _require(hp["save_total_limit"] is None or hp["save_total_limit"] >= 1,
             "save_total_limit must be >= 1 or null")
    _require(hp["precision"] in PRECISIONS, f"precision must be one of {PRECISIONS}")
    _require(hp["max_steps"] == -1 or hp["max_steps"] >= 1, "max_steps must be -1 or >= 1")
    if cfg["mode"] == "lora":
        _require(cfg["lora"] is not None, "mode 'lora' needs a lora block")
        lora = cfg["lora"]
        _require(lora["r"] >= 1, "lora.r must be >= 1")
        _require(0 <= lora["dropout"] < 1, "lora.dropout must be in [0, 1)")
        tm = lora["target_modules"]
        _require(isinstance(tm, str) or all(isinstance(t, str) for t in tm),
                 "lora.target_modules must be a string or a list of strings")
    _require(cfg["samples"]["n"] >= 0, "samples.n must be >= 0")
    _require(cfg["samples"]["max_new_tokens"] >= 1, "samples.max_new_tokens must be >= 1")
    try:
        groups = re.compile(cfg["grade_pattern"]).groups
    except re.error as exc:
        raise JobError(f"config: grade_pattern is not a valid regex ({exc})",
                       EXIT_BAD_INPUT) from exc
    _require(groups >= 1, "grade_pattern needs a capturing group for the number")
    _require(bool(cfg["trackio"]["project"].strip()), "trackio.project must not be empty")
    hub = cfg["hub"]
    _require(not hub["push"] or bool(hub["model_id"]), "hub.push needs hub.model_id")
    return cfg


@dataclass
class Paths:
    """Every path the job touches, resolved against --root (the store through its link)."""

    root: Path
    train_files: list[Path]
    eval_file: Path
    tokenized_dir: Path | None
    resume_from: Path | None
    resume_hub: str | None  # "owner/name@rev" when resume_from is hf://...
    base_model: str  # local absolute path if it exists under root, else the hub id as given
    store: Path
    metrics_csv: Path
    train_log: Path
    samples_md: Path
    plots_dir: Path
    history_json: Path
    trackio_dir: Path | None
    version_name: str = ""


def resolve_paths(cfg: dict, root: Path) -> Paths:
    root = root.resolve()

    def at_root(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    resume_from, resume_hub = None, None
    if cfg["resume_from"]:
        if cfg["resume_from"].startswith("hf://"):
            resume_hub = cfg["resume_from"][len("hf://"):]
        else:
            # resolve(): follow `latest` now, so the step records (and loads) one concrete
            # version even if the pointer moves while this job runs.
            resume_from = at_root(cfg["resume_from"]).resolve()
    base_local = at_root(cfg["base_model"])
    out = cfg["outputs"]
    # The store is usually the workspace link models/<name>: resolve() writes to its target.
    store = at_root(out["model_store"]).resolve()
    return Paths(
        root=root,
        train_files=[at_root(f["path"]) for f in cfg["train_files"]],
        eval_file=at_root(cfg["eval_file"]["path"]),
        tokenized_dir=at_root(cfg["tokenized_dir"]) if cfg["tokenized_dir"] else None,
        resume_from=resume_from,
        resume_hub=resume_hub,
        base_model=str(base_local.resolve()) if base_local.exists() else cfg["base_model"],
        store=store,
        metrics_csv=at_root(out["metrics_csv"]),
        train_log=at_root(out["train_log"]),
        samples_md=at_root(out["samples_md"]),
        plots_dir=at_root(out["plots_dir"]),
        history_json=at_root(out["history_json"]),
        trackio_dir=at_root(cfg["trackio"]["dir"]) if cfg["trackio"]["dir"] else None,
        version_name=f"{cfg['step']:04d}_{cfg['batch']}",
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_inputs(cfg: dict, paths: Paths) -> None:
    """Refuse to train on anything but the approved bytes."""
    entries = [*zip(paths.train_files, cfg["train_files"], strict=True),
               (paths.eval_file, cfg["eval_file"])]
    for path, entry in entries:
        if not path.is_file():
            raise JobError(f"missing data file: {entry['path']}", EXIT_BAD_INPUT)
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise JobError(
                f"sha256 mismatch for {entry['path']}: expected {entry['sha256'][:12]}…, "
                f"got {actual[:12]}…; refusing to train on changed data",
                EXIT_BAD_INPUT,
            )
    if paths.tokenized_dir is not None and not paths.tokenized_dir.is_dir():
        raise JobError(f"tokenized_dir not found: {cfg['tokenized_dir']}", EXIT_BAD_INPUT)
    if paths.resume_from is not None and not paths.resume_from.is_dir():
        raise JobError(f"resume_from not found: {cfg['resume_from']}", EXIT_BAD_INPUT)
    latest = paths.store / "latest"
    if latest.exists() and not latest.is_symlink():
        raise JobError(f"{latest} is a real folder, not a link; move it into versions/ first",
                       EXIT_BAD_INPUT)
    if (paths.store / "versions" / paths.version_name).exists():
        raise JobError(
            f"version {paths.version_name} already exists in the model store; "
            "a step never overwrites a committed version",
            EXIT_BAD_INPUT,
        )


# ---------------------------------------------------------------------------------------
# Files: atomic writes, the run log


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def scrub(text: str) -> str:
    """Defence in depth: the token never reaches a log line or an error message."""
    token = os.environ.get("HF_TOKEN")
    return text.replace(token, "***") if token and len(token) >= 8 else text


class RunLog:
    """Human-readable lines appended to train.log (and echoed to stderr), token-scrubbed."""

    def __init__(self, path: Path | None, tag: str, echo: bool = True):
        self.path, self.tag, self.echo = path, tag, echo
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        message = scrub(message)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} [{self.tag}] {message}"
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")


# ---------------------------------------------------------------------------------------
# Precision, model, data


def resolve_precision(requested: str, cuda: bool, bf16_ok: bool) -> tuple[str, str | None]:
    """The precision to train in, and a warning when the request had to fall back.

    "auto": bf16 where the GPU has it, else fp16 on a GPU, else fp32. An explicit fp16/bf16
    falls back instead of crashing (a T4 has no bf16, a CPU has neither).
    """
    if requested == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "fp32", None
    if requested == "bf16" and not (cuda and bf16_ok):
        fallback = "fp16" if cuda else "fp32"
        return fallback, f"bf16 requested but this hardware lacks it; training in {fallback}"
    if requested == "fp16" and not cuda:
        return "fp32", "fp16 requested but no CUDA GPU is available; training in fp32"
    return requested, None


def _hub_download(spec: str, log: RunLog) -> Path:
    """Fetch 'owner/name[@revision]' from the Hub (token from HF_TOKEN) into a temp dir."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    log(f"downloading checkpoint {repo_id}@{revision or 'main'} from the Hub")
    target = Path(tempfile.mkdtemp(prefix="tunestep-resume-"))
    atexit.register(shutil.rmtree, target, True)  # a model-sized download: never left behind
    snapshot_download(repo_id, revision=revision or None, local_dir=target,
                      token=os.environ.get("HF_TOKEN") or None)
    return target


def load_model_and_tokenizer(cfg: dict, paths: Paths, log: RunLog):
    """(model, tokenizer, what it resumed from) for fresh/resumed, full/LoRA training.

    The model is loaded in fp32: mixed precision (fp16/bf16 autocast) keeps fp32 master
    weights, which fp16 gradient scaling requires and which keep small updates from
    vanishing; a 0.6B model in fp32 fits every GPU flavor we use.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resume = paths.resume_from
    label = str(resume) if resume is not None else None
    if paths.resume_hub:
        resume = _hub_download(paths.resume_hub, log)
        label = f"hf://{paths.resume_hub}"
    mode = cfg["mode"]
    is_adapter = resume is not None and (resume / "adapter_config.json").is_file()
    if resume is not None and mode == "full" and is_adapter:
        raise JobError("resume_from holds a LoRA adapter but mode is 'full'", EXIT_BAD_INPUT)
    if resume is not None and mode == "lora" and not is_adapter:
        raise JobError("mode 'lora' resumes from an adapter dir (adapter_config.json)",
                       EXIT_BAD_INPUT)

    # The tokenizer travels with every version, so a resumed step uses the one it trained with.
    has_tokenizer = resume is not None and (resume / "tokenizer_config.json").is_file()
    tok_source = str(resume) if has_tokenizer else paths.base_model
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    model_source = str(resume) if (resume is not None and mode == "full") else paths.base_model
    log(f"loading model from {model_source}")
    model = AutoModelForCausalLM.from_pretrained(model_source, dtype=torch.float32)

    if mode == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume is not None:
            log(f"loading LoRA adapter from {resume} (trainable)")
            model = PeftModel.from_pretrained(model, str(resume), is_trainable=True)
        else:
            lora = cfg["lora"]
            model = get_peft_model(model, LoraConfig(
                r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"], task_type="CAUSAL_LM",
            ))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"LoRA trainable parameters: {trainable}")
    return model, tokenizer, label


def load_datasets(cfg: dict, paths: Paths, tokenizer, template: str, log: RunLog):
    """(train, eval, eval_rows, pretokenized). Raw chat rows unless tokenized_dir is given."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        eval_rows = sft_data.load_chat_rows([paths.eval_file])
        if paths.tokenized_dir is None:
            train_rows = sft_data.load_chat_rows(paths.train_files)
            log(f"train rows: {len(train_rows)}, eval rows: {len(eval_rows)}")
            return Dataset.from_list(train_rows), Dataset.from_list(eval_rows), eval_rows, False
    except sft_data.DataError as exc:
        raise JobError(f"bad data: {exc}", EXIT_BAD_INPUT) from exc

    train = load_from_disk(str(paths.tokenized_dir))
    if isinstance(train, DatasetDict):
        if "train" not in train:
            raise JobError("tokenized_dir holds splits but no 'train'", EXIT_BAD_INPUT)
        train = train["train"]
    if "input_ids" not in train.column_names:
        raise JobError("tokenized_dir has no input_ids column", EXIT_BAD_INPUT)
    if "labels" not in train.column_names and "assistant_masks" not in train.column_names:
        raise JobError("tokenized_dir needs labels or assistant_masks (assistant-only loss)",
                       EXIT_BAD_INPUT)
    # Eval gets the very same tokenization, so train and eval losses measure the same thing.
    max_length = cfg["hyperparameters"]["max_length"]
    eval_ds = sft_data.tokenize_chat(eval_rows, tokenizer, max_length, chat_template=template)
    log(f"pretokenized train rows: {len(train)} from {paths.tokenized_dir}; "
        f"eval rows: {len(eval_ds)}")
    return train, eval_ds, eval_rows, True


# ---------------------------------------------------------------------------------------
# Samples and grades


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers, batched with left padding, thinking disabled where the template has it."""
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
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so answers start aligned
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            # enable_thinking is a Qwen3 template variable; other templates ignore it.
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
                     for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(**enc, generation_config=gen_cfg)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def render_samples_md(cfg: dict, samples: list[dict], before: dict, after: dict) -> str:
    buf = io.StringIO()
    w = buf.write
    w(f"# Samples — step {cfg['step']}, batch {cfg['batch']}\n\n")
    w(f"Draft `{cfg['draft_id']}`, mode {cfg['mode']}. The first {len(samples)} hold-out "
      f"prompts, answered greedily (max_new_tokens={cfg['samples']['max_new_tokens']}) "
      "before and after this step. Grades parsed with the plan's grade pattern.\n\n")
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

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train"), ("eval_loss", "eval (hold-out)")):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="loss", title=f"Loss per epoch — batch {batch}")
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
            ax2.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(-0.05, 1.05))
    ax2.grid(alpha=0.3)
    ax3 = ax2.twinx()
    if pts := series("grade_mae"):
        ax3.plot(*zip(*pts, strict=True), marker="s", linestyle="--", color="tab:red", label="MAE")
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


def _clean(value: Any) -> Any:
    """Floats that JSON can carry (NaN/inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EpochRecorder:
    """Trainer callback: one metrics row per epoch, log lines, progressive CSV rewrites."""

    def __init__(self, log: RunLog, csv_path: Path | None, t0: float):
        from transformers import TrainerCallback

        recorder = self
        self.rows: list[dict] = []
        self.eval_loss_before: float | None = None
        self.training = False
        self.log, self.csv_path, self.t0 = log, csv_path, t0

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                recorder.training = True
                recorder.t0 = time.monotonic()

            def on_log(self, args, state, control, logs=None, **kwargs):
                recorder.on_log(state, logs or {})

        self.callback = _Callback()

    def on_log(self, state, logs: dict) -> None:
        scalars = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        self.log("log " + json.dumps({k: _clean(round(v, 6) if isinstance(v, float) else v)
                                      for k, v in scalars.items()}))
        seconds = round(time.monotonic() - self.t0, 2)
        if not self.training:  # the baseline evaluation before the first step
            if "eval_loss" in logs:
                self.eval_loss_before = _clean(float(logs["eval_loss"]))
            return
        if "loss" in logs:  # a per-epoch training log (the end-of-run summary uses train_loss)
            self.rows.append({
                "epoch": round(float(logs.get("epoch", state.epoch or 0)), 4),
                "step": state.global_step,
                "train_loss": _clean(float(logs["loss"])),
                "learning_rate": logs.get("learning_rate"),
                "tokens": int(logs["num_tokens"]) if "num_tokens" in logs else None,
                "seconds": seconds,
            })
        elif "eval_loss" in logs:
            if not self.rows:
                self.rows.append({"epoch": round(float(logs.get("epoch", 0)), 4),
                                  "step": state.global_step, "seconds": seconds})
            self.rows[-1]["eval_loss"] = _clean(float(logs["eval_loss"]))
        else:
            return
        if self.csv_path is not None and state.is_world_process_zero:
            atomic_write_text(self.csv_path, metrics_csv_text(self.rows))


# ---------------------------------------------------------------------------------------
# Version store


def commit_version(staging: Path, store: Path, name: str) -> Path:
    """Rename the finished staging folder to versions/<name> (atomic on one filesystem)."""
    final = store / "versions" / name
    if final.exists():
        raise JobError(f"version {name} appeared while training; not overwriting it")
    os.replace(staging, final)
    return final


def move_latest(store: Path, name: str) -> None:
    """Point <store>/latest at versions/<name>: new link under a temp name, then rename over."""
    latest = store / "latest"
    if latest.exists() and not latest.is_symlink():
        raise JobError(f"{latest} is a real folder, not a link; leaving it alone")
    tmp = store / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{name}", tmp)  # relative: the store can move or be mounted elsewhere
    os.replace(tmp, latest)


def push_version(cfg: dict, folder: Path, log: RunLog) -> dict:
    """Upload the version folder to the Hub repo root as one commit, private by default.

    The returned commit sha pins this step: a later job resumes from
    ``hf://<model_id>@<sha>``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    hub = cfg["hub"]
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)  # read only here; never logged
    repo = api.create_repo(hub["model_id"], private=hub["private"], exist_ok=True,
                           repo_type="model")
    # Not pushed: epoch checkpoints, and the README.md that PEFT/TRL generate (a card of
    # placeholders whose metadata can carry this machine's local base-model path).
    ops = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p))
           for p in sorted(folder.rglob("*"))
           if p.is_file() and p.relative_to(folder).parts[0] not in ("checkpoints", "README.md")]
    info = api.create_commit(
        repo.repo_id, operations=ops, repo_type="model",
        commit_message=f"tunestep step {cfg['step']:04d} ({cfg['batch']}), draft {cfg['draft_id']}",
    )
    log(f"pushed the model to {repo.repo_id} at {info.oid} (private={hub['private']})")
    return {"model_id": repo.repo_id, "revision": info.oid, "private": hub["private"]}


def push_outputs(paths: Paths, result: dict, log: RunLog) -> dict | None:
    """On HF Jobs, send the step's reports back to the bundle repo the backend reads.

    Set by tunestep's hf-jobs backend: ``TUNESTEP_OUTPUT_REPO`` (a dataset repo) and
    ``TUNESTEP_OUTPUT_PATH`` (``outputs/<draft_id>``). Each report lands at
    ``<output path>/<its path relative to --root>`` (the basename when outside the root),
    beside ``result.json`` (the TUNESTEP_RESULT summary), in one commit.
    """
    repo_id, prefix = os.environ.get("TUNESTEP_OUTPUT_REPO"), os.environ.get("TUNESTEP_OUTPUT_PATH")
    if not repo_id or not prefix:
        return None
    from huggingface_hub import CommitOperationAdd, HfApi

    prefix = prefix.strip("/")
    files = [paths.metrics_csv, paths.train_log, paths.samples_md, paths.history_json,
             paths.plots_dir / f"loss_step_{result['batch']}.png",
             paths.plots_dir / "val_progression.png"]
    ops = [CommitOperationAdd(f"{prefix}/result.json", json.dumps(result, indent=2).encode())]
    for f in files:
        if f.is_file():
            rel = f.relative_to(paths.root).as_posix() if f.is_relative_to(paths.root) else f.name
            ops.append(CommitOperationAdd(f"{prefix}/{rel}", f.read_bytes()))
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    info = api.create_commit(repo_id, operations=ops, repo_type="dataset",
                             commit_message=f"tunestep outputs {prefix}")
    log(f"pushed {len(ops)} output files to {repo_id}/{prefix} at {info.oid}")
    return {"repo_id": repo_id, "path": prefix, "revision": info.oid}


# ---------------------------------------------------------------------------------------
# The run


def _install_cancel_handler(state: dict) -> None:
    def handler(signum, frame):
        # After `latest` moved the step is done; while unwinding a first cancel, a second
        # SIGTERM must not interrupt the cleanup.
        if state.get("committed") or state.get("cancelling"):
            return
        state["cancelling"] = True
        raise Cancelled()

    signal.signal(signal.SIGTERM, handler)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # accelerate/torchrun set RANK per process


def _config_summary(cfg: dict, paths: Paths, precision: str) -> str:
    hp = cfg["hyperparameters"]
    files = ", ".join(f"{f['path']}@{f['sha256'][:12]}" for f in cfg["train_files"])
    return (
        f"draft={cfg['draft_id']} step={cfg['step']} batch={cfg['batch']} mode={cfg['mode']} "
        f"base_model={cfg['base_model']} resume_from={cfg['resume_from']} precision={precision} "
        f"train_files=[{files}] "
        f"eval_file={cfg['eval_file']['path']}@{cfg['eval_file']['sha256'][:12]} "
        f"tokenized_dir={cfg['tokenized_dir']} hyperparameters={json.dumps(hp, sort_keys=True)} "
        f"lora={json.dumps(cfg['lora'], sort_keys=True)} store={paths.store} "
        f"trackio_project={cfg['trackio']['project']} trackio_space={cfg['trackio']['space_id']} "
        f"hub_model={cfg['hub']['model_id']} push={cfg['hub']['push']} "
        f"private={cfg['hub']['private']}"
    )


def _configure_trackio_env(cfg: dict, paths: Paths) -> None:
    """Offline Trackio under trackio.dir; a Space only when the config names one.

    Must run before trackio is imported: it reads TRACKIO_DIR at import time, and an
    inherited TRACKIO_SPACE_ID / TRACKIO_SERVER_URL would send metrics somewhere the plan
    never asked for.
    """
    if paths.trackio_dir is not None:
        paths.trackio_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TRACKIO_DIR"] = str(paths.trackio_dir)
    if not cfg["trackio"]["space_id"]:
        for var in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
            os.environ.pop(var, None)


def build_sft_config(cfg: dict, precision: str, output_dir: Path, pretokenized: bool, cuda: bool):
    from trl import SFTConfig

    hp = cfg["hyperparameters"]
    tr = cfg["trackio"]
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # Fields that newer transformers releases added or renamed; tunestep's own environment
    # may hold any version in its supported range, so only pass what this one knows.
    optional = {
        # transformers would otherwise create a static Trackio Space on a Hub push, and
        # Spaces/repos are public unless hub_private_repo=True (DESIGN §4). Releases
        # without this field never create one.
        "trackio_static_space_id": False,
        "project": tr["project"],
    }
    # Memory is the constraint on a GPU; on CPU recomputation only costs time. transformers
    # 5.2x renamed gradient_checkpointing (TRL turns it on by default) activation_checkpointing.
    if "activation_checkpointing" in names:
        optional["activation_checkpointing"] = cuda
    else:
        optional["gradient_checkpointing"] = cuda
    if tr["space_id"]:
        if "trackio_space_id" not in names:
            raise JobError("trackio.space_id needs a transformers release with trackio_space_id",
                           EXIT_BAD_INPUT)
        optional["trackio_space_id"] = tr["space_id"]
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp["per_device_train_batch_size"],
        per_device_eval_batch_size=hp["per_device_train_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        learning_rate=float(hp["learning_rate"]),
        num_train_epochs=float(hp["num_train_epochs"]),
        max_steps=hp["max_steps"],
        seed=hp["seed"],
        data_seed=hp["seed"],
        max_length=hp["max_length"],
        logging_strategy="epoch",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=hp["save_total_limit"],
        # Checkpoints are for picking an epoch, not for resuming mid-run (a step restarts
        # from the last committed version), so optimizer state is not worth the disk.
        save_only_model=True,
        # TRL refuses assistant_only_loss on pre-tokenized rows; their labels already
        # carry the same assistant mask (sft_data.tokenize_chat).
        assistant_only_loss=not pretokenized,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=["trackio"],
        run_name=f"{cfg['draft_id']}-step{cfg['step']:04d}-{cfg['batch']}",
        hub_private_repo=True,  # a configured Trackio Space is private too
        push_to_hub=False,  # pushing is ours (push_version), after the samples are in
        disable_tqdm=True,
        dataloader_num_workers=0,
        **{k: v for k, v in optional.items() if k in names},
    )


@dataclass
class Prepared:
    model: Any
    tokenizer: Any
    original_template: Any
    template: str
    train_ds: Any
    eval_ds: Any
    pretokenized: bool
    prompts: list[list[dict]]
    references: list[str | None]
    resumed_from: str | None


def prepare(cfg: dict, paths: Paths, log: RunLog) -> Prepared:
    model, tokenizer, resumed_from = load_model_and_tokenizer(cfg, paths, log)
    try:
        template = sft_data.training_chat_template(tokenizer)
    except ValueError as exc:
        raise JobError(str(exc), EXIT_BAD_INPUT) from exc
    train_ds, eval_ds, eval_rows, pretokenized = load_datasets(cfg, paths, tokenizer, template, log)
    # Samples: the first n hold-out conversations, cut before their last assistant turn.
    split = [sft_data.split_prompt(row) for row in eval_rows[:cfg["samples"]["n"]]]
    return Prepared(model, tokenizer, tokenizer.chat_template, template, train_ds, eval_ds,
                    pretokenized, [p for p, _ in split], [r for _, r in split],
                    resumed_from)


def score_samples(prep: Prepared, before: list[str], after: list[str], pattern: str):
    samples = []
    for prompt, reference, b, a in zip(prep.prompts, prep.references, before, after, strict=True):
        samples.append({
            "prompt": prompt, "reference": reference, "before": b, "after": a,
            "grade_reference": sft_data.parse_grade(reference, pattern),
            "grade_before": sft_data.parse_grade(b, pattern),
            "grade_after": sft_data.parse_grade(a, pattern),
        })
    m_before = sft_data.grade_metrics((s["grade_reference"], s["grade_before"]) for s in samples)
    m_after = sft_data.grade_metrics((s["grade_reference"], s["grade_after"]) for s in samples)
    return samples, m_before, m_after


def _last(rows: list[dict], key: str):
    return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)


def run(cfg: dict, paths: Paths, state: dict) -> dict:
    t_start = time.monotonic()
    main = _is_main_process()
    log = RunLog(paths.train_log if main else None, f"step {paths.version_name}")
    _configure_trackio_env(cfg, paths)

    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    cuda = torch.cuda.is_available()
    precision, warning = resolve_precision(cfg["hyperparameters"]["precision"], cuda,
                                           cuda and torch.cuda.is_bf16_supported())
    log(f"start: {_config_summary(cfg, paths, precision)}")
    if warning:
        log(f"warning: {warning}")
    set_seed(cfg["hyperparameters"]["seed"])  # before LoRA init and sampling
    prep = prepare(cfg, paths, log)
    max_new = cfg["samples"]["max_new_tokens"]
    before: list[str] = []
    if main and prep.prompts:
        prep.model.to(torch.device("cuda" if cuda else "cpu"))
        before = generate_answers(prep.model, prep.tokenizer, prep.prompts, max_new)
        log(f"generated {len(before)} samples before training")

    draft_tag = re.sub(r"[^A-Za-z0-9._-]", "_", cfg["draft_id"])
    # Built beside versions/ (same filesystem, so the final rename is atomic) and never
    # inside it, so readers of versions/ only ever see finished steps.
    staging = paths.store / ".staging" / f"{paths.version_name}-{draft_tag}"
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of a failed attempt
        staging.mkdir(parents=True)
        (paths.store / "versions").mkdir(exist_ok=True)
    try:
        result = _train_and_publish(cfg, paths, state, log, prep, before, staging, precision,
                                    cuda, t_start, SFTTrainer)
    except BaseException:
        if main:  # nothing half-written stays in the store; the next attempt starts clean
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _train_and_publish(cfg, paths, state, log, prep: Prepared, before, staging: Path,
                       precision: str, cuda: bool, t_start: float, SFTTrainer) -> dict:
    tokenizer = prep.tokenizer
    # Train with the marker template (TRL masks with it); the saved tokenizer gets its own back.
    tokenizer.chat_template = prep.template
    csv_path = paths.metrics_csv if _is_main_process() else None
    recorder = EpochRecorder(log, csv_path, time.monotonic())
    trainer = SFTTrainer(
        model=prep.model,
        args=build_sft_config(cfg, precision, staging / "checkpoints", prep.pretokenized, cuda),
        train_dataset=prep.train_ds,
        eval_dataset=prep.eval_ds,
        processing_class=tokenizer,
        callbacks=[recorder.callback],
    )
    trainer.evaluate()  # hold-out loss of the starting point, for the step's before/after
    log("training")
    train_out = trainer.train()
    trainer.save_model(str(staging))  # full model or adapter; on all ranks (sharded setups)
    tokenizer.chat_template = prep.original_template
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(staging))

    trained = trainer.accelerator.unwrap_model(trainer.model)
    after = generate_answers(trained, tokenizer, prep.prompts, cfg["samples"]["max_new_tokens"])
    samples, m_before, m_after = score_samples(prep, before, after, cfg["grade_pattern"])
    atomic_write_text(paths.samples_md, render_samples_md(cfg, samples, m_before, m_after))
    log(f"samples written: before={json.dumps(m_before)} after={json.dumps(m_after)}")

    rows = recorder.rows
    if rows:
        rows[-1].update({k: m_after[k] for k in ("grade_exact", "grade_within1", "grade_mae")})
    atomic_write_text(paths.metrics_csv, metrics_csv_text(rows))
    final_train, final_eval = _last(rows, "train_loss"), _last(rows, "eval_loss")
    train_tokens = _last(rows, "tokens")
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    summary = {
        "draft_id": cfg["draft_id"], "step": cfg["step"], "batch": cfg["batch"],
        "mode": cfg["mode"], "model_name": cfg["outputs"]["model_name"],
        "base_model": cfg["base_model"], "resume_from": prep.resumed_from, "precision": precision,
        "metrics_before": m_before, "metrics_after": m_after,
        "eval_loss_before": recorder.eval_loss_before,
        "final_train_loss": final_train, "final_eval_loss": final_eval,
        "train_runtime": round(train_out.metrics.get("train_runtime", 0.0), 2),
        "train_tokens": train_tokens, "epochs": len(rows),
        "datasets": {"train_files": cfg["train_files"], "eval_file": cfg["eval_file"],
                     "tokenized_dir": cfg["tokenized_dir"]},
        "finished_at": finished_at,
    }
    atomic_write_text(staging / "tunestep_version.json", json.dumps(summary, indent=2) + "\n")

    plot_losses(rows, cfg["batch"], paths.plots_dir / f"loss_step_{cfg['batch']}.png")
    history = update_history(paths.history_json, {
        "step": cfg["step"], "batch": cfg["batch"], "draft_id": cfg["draft_id"],
        "mode": cfg["mode"], "eval_loss": final_eval, "eval_loss_before": recorder.eval_loss_before,
        "train_loss": final_train, "grade_exact": m_after["grade_exact"],
        "grade_within1": m_after["grade_within1"], "grade_mae": m_after["grade_mae"],
        "grade_exact_before": m_before["grade_exact"], "grade_mae_before": m_before["grade_mae"],
        "train_tokens": train_tokens, "version": f"versions/{paths.version_name}",
        "finished_at": finished_at,
    })
    plot_history(history, paths.plots_dir / "val_progression.png")

    final = paths.store / "versions" / paths.version_name
    result = {
        "ok": True,
        **{k: summary[k] for k in ("draft_id", "step", "batch", "mode", "model_name", "precision")},
        "model_path": str(final), "version": f"versions/{paths.version_name}",
        "latest": str(paths.store / "latest"), "resume_from": prep.resumed_from,
        "metrics_before": m_before, "metrics_after": m_after,
        "eval_loss_before": recorder.eval_loss_before,
        "final_train_loss": final_train, "final_eval_loss": final_eval,
        "train_tokens": train_tokens, "epochs": len(rows), "hub": None,
        "outputs": {"metrics_csv": str(paths.metrics_csv), "samples_md": str(paths.samples_md),
                    "train_log": str(paths.train_log), "history_json": str(paths.history_json),
                    "plots_dir": str(paths.plots_dir)},
    }
    # Pushes come before the local commit: on HF Jobs they are the only lasting copy, so a
    # failed push fails the step instead of leaving a version nobody can reach.
    if cfg["hub"]["push"]:
        result["hub"] = push_version(cfg, staging, log)
    result["seconds"] = round(time.monotonic() - t_start, 2)
    result["output_repo"] = push_outputs(paths, result, log)

    commit_version(staging, paths.store, paths.version_name)
    move_latest(paths.store, paths.version_name)
    state["committed"] = True
    log(f"done: {final} is latest ({result['seconds']}s)")
    return result


def _fail(message: str, code: int, log_path: Path | None) -> int:
    message = " ".join(scrub(message).split())  # one line
    if log_path is not None:
        RunLog(log_path, "train_sft", echo=False)(f"FAILED ({code}): {message}")
    print(f"train_sft: error: {message}", file=sys.stderr, flush=True)
    print(f"{ERROR_PREFIX} {json.dumps({'ok': False, 'error': message, 'exit_code': code})}",
          flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one tunestep SFT step from a job config.")
    parser.add_argument("--config", required=True, type=Path, help="job config JSON")
    parser.add_argument("--root", type=Path, default=Path.cwd(),
                        help="folder that relative config paths resolve against (default: cwd)")
    args = parser.parse_args(argv)

    state: dict = {}
    _install_cancel_handler(state)
    log_path = None
    try:
        try:
            cfg = validate_config(json.loads(args.config.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise JobError(f"cannot read config {args.config}: {exc}", EXIT_BAD_INPUT) from exc
        paths = resolve_paths(cfg, args.root)
        log_path = paths.train_log if _is_main_process() else None
        verify_inputs(cfg, paths)
        result = run(cfg, paths, state)
    except JobError as exc:
        return _fail(str(exc), exc.code, log_path)
    except Cancelled:
        return _fail("cancelled (SIGTERM); latest not moved", EXIT_CANCELLED, log_path)
    except Exception as exc:  # one clear line for the operator; the traceback goes to stderr
        import traceback

        print(scrub(traceback.format_exc()), file=sys.stderr, flush=True)
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED, log_path)
    if result:
        print(f"{RESULT_PREFIX} {json.dumps(result, default=str)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
