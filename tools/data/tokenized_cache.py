"""Is there a tokenized dataset for this step already: the cache's key and its lookup.

The key covers everything that decides the tokens (the inputs' content and selected
rows, the tokenizer files, the training template, the tokenization code, max_length).
``merge.step_datasets`` looks the step's dataset up here for the draft, and
``preprocess`` writes it under the same key; both import this module, neither imports
the other (``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

import contextlib
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file, sha256_json
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.step_data import StepDatasets, TokenizedFile

CACHE_VERSION = 1
CACHE_FILE = "tunestep_cache.json"
# Files a tokenizer is loaded from (whichever exist); all of them go into the key.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "tokenizer.model",
)


def tokenizer_dir(ws: Workspace, model: str, *, local_only: bool = False) -> Path:
    """The local folder the plan's tokenizer loads from: a model folder, or the hub cache.

    ``local_only`` never asks the Hub (for read-only callers such as draft_job).
    """
    candidate = Path(model).expanduser()
    if candidate.is_absolute():
        if candidate.is_dir():
            return candidate
        raise TunestepError("tokenizer_unavailable", "the plan's model folder does not exist",
                            path=model)
    with contextlib.suppress(TunestepError):
        local = ws.resolve_model_store(model)
        if local.is_dir():
            return local.resolve()
    try:
        from huggingface_hub import snapshot_download

        from tunestep.tools.hub.errors import configure_client

        configure_client()  # a client-side timeout, as for every Hub call
        # Tokenizer files only: a cache hit (or offline mode) must never fetch weights.
        return Path(snapshot_download(model, allow_patterns=list(TOKENIZER_FILES),
                                      local_files_only=local_only))
    except Exception as exc:  # offline without a cached copy, unknown repo, no network
        raise TunestepError(
            "tokenizer_unavailable",
            f"cannot find the tokenizer of '{model}' locally or on the Hub "
            f"({type(exc).__name__}); set the plan's model to a local folder") from None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tokenizer_fingerprint(folder: Path) -> dict[str, Any]:
    """Everything besides the data that decides the tokens, cheaply, without loading.

    The tokenizer files (the model's chat template lives in them), the bundled training
    template and TRL's version (the fallbacks when the model's template has no generation
    markers), and the shared tokenization code itself.
    """
    from tunestep.tools.jobs import sft_data

    files = {name: sha256_file(folder / name) for name in TOKENIZER_FILES
             if (folder / name).is_file()}
    if not files:
        raise TunestepError("tokenizer_unavailable", "no tokenizer files in the model folder",
                            path=str(folder))
    return {
        "files": files,
        "bundled_template": sha256_file(sft_data.QWEN3_TRAINING_TEMPLATE_FILE),
        # the shared tokenization code: sft_data and its batched route beside it
        "code": {name: sha256_file(Path(sft_data.__file__).with_name(name))
                 for name in ("sft_data.py", "sft_batched.py")},
        "versions": {name: _version(name) for name in ("transformers", "tokenizers", "trl")},
    }


def config_key(fingerprint: dict, max_length: int) -> str:
    """Everything but the data: tokenizer, template inputs, code, max_length."""
    return sha256_json({"v": CACHE_VERSION, "tokenizer": fingerprint, "max_length": max_length})


def part_key(file_sha256: str, fingerprint: dict, max_length: int) -> str:
    return sha256_json({"input": file_sha256, "config": config_key(fingerprint, max_length)})


def step_key(step: StepDatasets, fingerprint: dict, max_length: int) -> str:
    """Content of every input (and which rows of it), tokenizer, template, max_length."""
    return sha256_json({
        "v": CACHE_VERSION, "tokenizer": fingerprint, "max_length": max_length,
        "inputs": [[f.sha256, f.selected] for f in step.sources],
    })


def read_json(path: Path) -> dict | None:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def intact(folder: Path, record: dict, *, hashes: bool = False) -> bool:
    """Every file the record lists is there with its recorded size (and sha256)."""
    for entry in record.get("files", []):
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if hashes and sha256_file(path) != entry["sha256"]:
            return False
    return True


def find_tokenized(ws: Workspace, plan: Plan, step: StepDatasets, max_length: int | None = None,
                   ) -> tuple[str, str, list[TokenizedFile]] | None:
    """(folder, key, files) of a tokenized dataset matching this step, else None."""
    max_length = max_length or plan.training.max_length
    folder = ws.resolve(f"{plan.paths.tokenized}/{step.batch}")
    record = read_json(folder / CACHE_FILE)
    if record is None:
        return None
    try:
        fingerprint = tokenizer_fingerprint(tokenizer_dir(ws, plan.model, local_only=True))
    except TunestepError:
        return None  # no tokenizer here: the job tokenizes itself
    key = step_key(step, fingerprint, max_length)
    if record.get("key") != key or not intact(folder, record):
        return None
    rel = ws.relative(folder)
    files = []
    for entry in record["files"]:
        # Hashed now, not copied from the record: a draft's digest must see a changed file.
        digest = sha256_file(folder / entry["name"])
        if digest != entry["sha256"]:
            return None
        files.append(TokenizedFile(path=f"{rel}/{entry['name']}", sha256=digest,
                                   size=entry["size"]))
    return rel, key, files
