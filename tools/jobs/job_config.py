"""The job config: its schema-1 contract, strict validation, and the paths it names.

The contract itself is documented in ``train_sft.py``'s docstring (and ``.specs/job_config.md``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__:  # tunestep.tools.jobs.<module>: the same files, as a package
    from .job_common import EXIT_BAD_INPUT, JobError
    from .job_evaluate import METRICS
else:  # beside the job script (its folder is on sys.path)
    from job_common import EXIT_BAD_INPUT, JobError
    from job_evaluate import METRICS

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
# Where HF Jobs mounts a step's bundle (tools/hub/jobs_api.STEP_MOUNT_PATH): a remote
# job config names its data files under it.
STEP_MOUNT = "/tunestep/step"


def mounted(path: str) -> str:
    """A bundle path, where the bundle really is: ``$TUNESTEP_STEP_DIR`` says so.

    On HF Jobs the two are the same folder; a stand-in that cannot mount at
    ``/tunestep/step`` (the test Hub's job runner) sets the variable to its own folder.
    """
    here = os.environ.get("TUNESTEP_STEP_DIR", "").rstrip("/")
    if here and (path == STEP_MOUNT or path.startswith(STEP_MOUNT + "/")):
        return here + path[len(STEP_MOUNT):]
    return path

OVERLONG = ("drop", "truncate_prompt", "error")

# ---------------------------------------------------------------------------------------
# Config


_SPEC: dict[str, Any] = {
    "schema": int, "draft_id": str, "step": int, "batch": str, "mode": str, "base_model": str,
    "resume_from": (str, type(None)), "train_files": list, "eval_file": dict,
    "tokenized_dir": (str, type(None)), "hyperparameters": dict, "lora": (dict, type(None)),
    "outputs": dict, "samples": dict, "grade_pattern": str, "trackio": dict, "hub": dict,
    "data": dict, "evaluation": dict, "gate": (dict, type(None)), "expect_gpu": bool,
    "tokenized_files": list, "checkpoint": (dict, type(None)),
    "merge_adapter": (dict, type(None)),
}
_NESTED: dict[str, dict[str, Any]] = {
    "hyperparameters": {
        "per_device_train_batch_size": int, "gradient_accumulation_steps": int,
        "learning_rate": (int, float), "num_train_epochs": (int, float),
        "max_length": (int, type(None)), "seed": int, "save_total_limit": (int, type(None)),
        "precision": str, "max_steps": int, "warmup_ratio": (int, float),
        "save_strategy": str,
    },
    "lora": {"r": int, "alpha": (int, float), "dropout": (int, float),
             "target_modules": (str, list)},
    "outputs": {
        "model_store": str, "model_name": str, "metrics_csv": str, "train_log": str,
        "samples_md": str, "plots_dir": str, "history_json": str, "eval_json": str,
        "eval_md": str,
    },
    "samples": {"n": int, "max_new_tokens": int},
    "trackio": {"project": str, "space_id": (str, type(None)), "dir": (str, type(None))},
    "hub": {"model_id": (str, type(None)), "private": bool, "push": bool},
    "eval_file": {"path": str, "sha256": str},
    "data": {"overlong": str},
    "evaluation": {"batch_size": int, "max_new_tokens": (int, type(None))},
    "gate": {"metric": str, "margin": (int, float)},
    "checkpoint": {"of": str, "files": list},
    "merge_adapter": {"base_files": list},
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# hf://owner/name[@revision], each part as huggingface_hub's validate_repo_id has it (the
# job imports no tunestep, so tools/core/repo_ids.py is restated here): no "." or ".."
# part, no "--", nothing that climbs out of a Hub path.
_HF_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HF_RESUME = re.compile(rf"^hf://{_HF_PART}/{_HF_PART}(@[\w./-]+)?$")


def _hf_address_ok(address: str) -> bool:
    return bool(_HF_RESUME.match(address)) and ".." not in address and "--" not in address


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


def _check_file_list(entries: list, where: str) -> None:
    """[{path, sha256}] with relative paths that stay inside their folder."""
    for i, entry in enumerate(entries):
        _require(isinstance(entry, dict), f"{where}[{i}] must be an object")
        _check_keys(entry, {"path": str, "sha256": str}, f"{where}[{i}]")
        _require(bool(_SHA256.match(entry["sha256"])), f"{where}[{i}].sha256 must be 64 "
                 "lowercase hex")
        parts = entry["path"].split("/")
        _require(bool(entry["path"]) and not entry["path"].startswith("/") and
                 ".." not in parts and "" not in parts and "\\" not in entry["path"],
                 f"{where}[{i}].path must be a relative path inside its folder")


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
                                (not resume.startswith("hf://") or _hf_address_ok(resume))),
             "resume_from must be a path, hf://owner/name[@revision] or null")
    _require(bool(cfg["train_files"]), "train_files must list at least one file")
    for i, entry in enumerate(cfg["train_files"]):
        _require(isinstance(entry, dict), f"train_files[{i}] must be an object")
        _check_keys(entry, {"path": str, "sha256": str}, f"train_files[{i}]")
    for where, entry in [*((f"train_files[{i}]", e) for i, e in enumerate(cfg["train_files"])),
                         ("eval_file", cfg["eval_file"])]:
        _require(bool(_SHA256.match(entry["sha256"])), f"{where}.sha256 must be 64 lowercase hex")
    _check_file_list(cfg["tokenized_files"], "tokenized_files")
    _require(cfg["tokenized_dir"] is None or bool(cfg["tokenized_files"]),
             "tokenized_dir needs tokenized_files (every file of it by sha256)")
    _require(cfg["tokenized_dir"] is not None or not cfg["tokenized_files"],
             "tokenized_files without tokenized_dir")
    checkpoint = cfg["checkpoint"]
    if checkpoint is not None:
        _require(checkpoint["of"] in ("resume_from", "base_model"),
                 "checkpoint.of must be 'resume_from' or 'base_model'")
        _require(bool(checkpoint["files"]), "checkpoint.files must list at least one file")
        _check_file_list(checkpoint["files"], "checkpoint.files")
        named = cfg[checkpoint["of"]]
        _require(bool(named) and not named.startswith("hf://"),
                 f"checkpoint.of names {checkpoint['of']}, which must be a local folder")
    resume = cfg["resume_from"]
    _require(resume is None or resume.startswith("hf://") or
             (checkpoint is not None and checkpoint["of"] == "resume_from"),
             "a local resume_from needs checkpoint.files (every file of it by sha256)")
    merge = cfg["merge_adapter"]
    if merge is not None:  # a full step that merges its start adapter into base_model
        _require(cfg["mode"] == "full", "merge_adapter needs mode 'full'")
        _require(resume is not None, "merge_adapter needs resume_from (the adapter)")
        _check_file_list(merge["base_files"], "merge_adapter.base_files")
        _require(not merge["base_files"] or not cfg["base_model"].startswith("hf://"),
                 "merge_adapter.base_files needs base_model to be a local folder")
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
    _require(0 <= hp["warmup_ratio"] < 1, "warmup_ratio must be in [0, 1)")
    _require(hp["save_strategy"] in ("no", "epoch"), "save_strategy must be 'no' or 'epoch'")
    _require(cfg["data"]["overlong"] in OVERLONG, f"data.overlong must be one of {OVERLONG}")
    ev = cfg["evaluation"]
    _require(ev["batch_size"] >= 1, "evaluation.batch_size must be >= 1")
    _require(ev["max_new_tokens"] is None or ev["max_new_tokens"] >= 1,
             "evaluation.max_new_tokens must be >= 1 or null")
    if cfg["gate"] is not None:
        _require(cfg["gate"]["metric"] in METRICS, f"gate.metric must be one of {METRICS}")
        # in the metric's units (MAE's span is the grade scale): the plan checks the span
        _require(math.isfinite(cfg["gate"]["margin"]), "gate.margin must be a finite number")
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
    eval_json: Path
    eval_md: Path
    trackio_dir: Path | None
    version_name: str = ""
    resume_label: str | None = None  # the resume folder as configured, when read from a copy


def resolve_paths(cfg: dict, root: Path) -> Paths:
    root = root.resolve()

    def at_root(p: str) -> Path:
        p = mounted(p)
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
        eval_json=at_root(out["eval_json"]),
        eval_md=at_root(out["eval_md"]),
        trackio_dir=at_root(cfg["trackio"]["dir"]) if cfg["trackio"]["dir"] else None,
        version_name=f"{cfg['step']:04d}_{cfg['batch']}",
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_config_bytes(data: bytes, expected: str | None) -> None:
    """The job.json bytes against the digest the launcher put on the command line, before
    anything in them is believed (a job.json rewritten after submit is refused)."""
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise JobError(f"config_tampered: job.json hashes to {actual[:12]}…, not the "
                       f"{expected[:12]}… it was started with; refusing to run",
                       EXIT_BAD_INPUT, reason="config_tampered")


def _copy_hashed(source: Path, target: Path, expected: str, shown: str) -> None:
    """Copy one input into the snapshot, hashing the very bytes copied; a mismatch (a file
    swapped since the host checked it) is refused. A FIFO or device is never read."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise JobError(f"missing input file: {shown} ({exc.strerror})", EXIT_BAD_INPUT,
                       reason="input_missing") from None
    with os.fdopen(fd, "rb") as reader:
        if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
            raise JobError(f"input {shown} is not a regular file", EXIT_BAD_INPUT,
                           reason="input_missing")
        with open(target, "xb") as writer:
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                writer.write(chunk)
    os.chmod(target, 0o400)
    actual = digest.hexdigest()
    if actual != expected:
        raise JobError(f"input_changed: sha256 mismatch for {shown}: expected "
                       f"{expected[:12]}…, got {actual[:12]}…; refusing to train on changed data",
                       EXIT_BAD_INPUT, reason="input_changed")


def snapshot_inputs(cfg: dict, paths: Paths, snapshot: Path) -> Paths:
    """Every input copied into ``snapshot`` (a job-private folder outside the workspace)
    while hashed against the config; the returned Paths read only from it.

    The train files, the hold-out set, every file of the tokenized dataset and of a local
    start checkpoint: what the job loads is exactly the bytes it verified, whatever happens
    to the originals afterwards. A file not listed in the config is not copied, so it
    cannot be loaded either.
    """
    pause("before_inputs")
    train = []
    for i, (path, entry) in enumerate(zip(paths.train_files, cfg["train_files"], strict=True)):
        target = snapshot / "train" / f"{i:03d}" / path.name
        _copy_hashed(path, target, entry["sha256"], entry["path"])
        train.append(target)
    eval_file = snapshot / "eval" / paths.eval_file.name
    _copy_hashed(paths.eval_file, eval_file, cfg["eval_file"]["sha256"], cfg["eval_file"]["path"])
    tokenized = None
    if paths.tokenized_dir is not None:
        tokenized = snapshot / "tokenized"
        for entry in cfg["tokenized_files"]:
            _copy_hashed(paths.tokenized_dir / entry["path"], tokenized / entry["path"],
                         entry["sha256"], f"{cfg['tokenized_dir']}/{entry['path']}")
    resume_from, base_model, resume_label = paths.resume_from, paths.base_model, None
    checkpoint = cfg["checkpoint"]
    if checkpoint is not None:
        folder = snapshot / "checkpoint"
        source = Path(mounted(cfg[checkpoint["of"]]))
        source = source if source.is_absolute() else paths.root / source
        for entry in checkpoint["files"]:
            _copy_hashed(source / entry["path"], folder / entry["path"], entry["sha256"],
                         f"{cfg[checkpoint['of']]}/{entry['path']}")
        if checkpoint["of"] == "resume_from":
            resume_from, resume_label = folder, str(paths.resume_from)
        else:
            base_model = str(folder)
    merge = cfg["merge_adapter"]
    if merge is not None and merge["base_files"]:  # the base the adapter merges into
        folder = snapshot / "merge_base"
        source = Path(paths.base_model)
        for entry in merge["base_files"]:
            _copy_hashed(source / entry["path"], folder / entry["path"], entry["sha256"],
                         f"{cfg['base_model']}/{entry['path']}")
        base_model = str(folder)
    pause("after_inputs")
    return replace(paths, train_files=train, eval_file=eval_file, tokenized_dir=tokenized,
                   resume_from=resume_from, base_model=base_model, resume_label=resume_label)


def make_snapshot_dir() -> Path:
    """A fresh folder only this user can read (mkdtemp: 0700), outside the workspace."""
    return Path(tempfile.mkdtemp(prefix="tunestep-inputs-"))


PAUSE_ENV = "TUNESTEP_JOB_PAUSE"


def pause(stage: str) -> None:
    """A fault point for the tests: with ``TUNESTEP_JOB_PAUSE=<stage>:<folder>`` the job
    says it reached ``stage`` (``<folder>/<stage>.reached``) and waits (at most 120 s) for
    ``<folder>/<stage>.go``, so a test swaps files at an exact point, not by a race."""
    wanted, _, folder = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != stage or not folder:
        return
    import time

    Path(folder, f"{stage}.reached").touch()
    deadline = time.monotonic() + 120
    while not Path(folder, f"{stage}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def verify_inputs(cfg: dict, paths: Paths) -> None:
    """What must hold before anything is read: the data is verified by snapshot_inputs."""
    entries = [*zip(paths.train_files, cfg["train_files"], strict=True),
               (paths.eval_file, cfg["eval_file"])]
    for path, entry in entries:
        if not path.is_file():
            raise JobError(f"missing data file: {entry['path']}", EXIT_BAD_INPUT)
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

