"""Chat data for supervised fine-tuning: load, tokenize with assistant-only labels, grade.

Shared by two callers that must agree byte for byte:

- ``train_sft.py`` (the job script, beside this file) imports it as a sibling module on
  Hugging Face Jobs, where tunestep itself is not installed;
- tunestep's preprocess step imports it as ``tunestep.tools.jobs.sft_data`` to write
  ``datasets/tokenized/<batch>/`` ahead of a job.

So this module imports only the standard library at the top (heavy libraries inside the
functions that need them) and never imports tunestep.

The canonical row is ``{"messages": [{"role": ..., "content": ...}, ...]}``. Labels are
``-100`` outside the assistant turns as the chat template's ``{% generation %}`` markers
delimit them (the end-of-turn token included), exactly as TRL's ``SFTTrainer`` builds them
with ``assistant_only_loss=True``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")
QWEN3_TRAINING_TEMPLATE_FILE = Path(__file__).with_name("qwen3_training.jinja")
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class DataError(ValueError):
    """A data file breaks the canonical chat format; the message names file, line and rule."""


# ---------------------------------------------------------------------------------------
# Loading


def _normalise_row(obj: object, where: str) -> dict:
    """Keep only ``messages`` with ``role``/``content`` strings; reject anything else."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: messages[{i}] must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}].role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message, nothing to train on")
    return {"messages": out}


def _iter_file(path: Path) -> Iterable[tuple[object, str]]:
    """Yield (object, 'file:line') for a JSONL file, or a .json file holding a list."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        for i, obj in enumerate(data):
            yield obj, f"{path}[{i}]"
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{lineno}"
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc


def load_chat_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Read canonical chat rows from JSONL (or JSON list) files, in order.

    Each row becomes ``{"messages": [{"role", "content"}, ...]}``; other keys are dropped.
    Raises ``DataError`` naming the file and line of the first bad row.
    """
    rows: list[dict] = []
    for path in paths:
        for obj, where in _iter_file(Path(path)):
            rows.append(_normalise_row(obj, where))
    return rows


def split_prompt(row: dict) -> tuple[list[dict], str | None]:
    """Messages before the last assistant turn (the prompt) and that turn's text (the reference)."""
    messages = row["messages"]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i], messages[i]["content"]
    return list(messages), None


# ---------------------------------------------------------------------------------------
# Chat template and tokenization


def has_generation_markers(template: str | dict | None) -> bool:
    """True when the template wraps assistant output in ``{% generation %}`` markers."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and _GENERATION_MARKER.search(template) is not None


def bundled_qwen3_training_template() -> str:
    """TRL's Qwen3 training template, shipped beside this file for jobs without it."""
    return QWEN3_TRAINING_TEMPLATE_FILE.read_text(encoding="utf-8")


def training_chat_template(tokenizer) -> str:
    """The chat template to tokenize training data with: one that has generation markers.

    In order: the tokenizer's own template if it has markers; TRL's training variant of a
    template TRL recognises (e.g. the stock Qwen3 one); the bundled Qwen3 training template
    when the tokenizer speaks ChatML (``<|im_start|>``/``<|im_end|>``). Otherwise raises,
    because silently training on the whole sequence would change what the model learns.
    """
    own = tokenizer.chat_template
    if has_generation_markers(own):
        return own["default"] if isinstance(own, dict) else own
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
        if patched and has_generation_markers(patched):
            return patched
    except Exception:  # TRL absent, the template unknown to it, or unrenderable by its probes:
        pass  # the checks below still decide
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return bundled_qwen3_training_template()
    raise ValueError(
        "the tokenizer's chat template has no {% generation %} markers and no training "
        "variant is known for it; assistant-only loss needs one"
    )


def tokenize_row(messages: list[dict], tokenizer, chat_template: str,
                 max_length: int | None) -> dict:
    """input_ids / attention_mask / labels for one conversation (labels -100 off-assistant)."""
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    labels = [tok if m else -100 for tok, m in zip(ids, mask, strict=True)]
    if max_length is not None:  # keep_start, as TRL truncates
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_chat(rows: Sequence[dict], tokenizer, max_length: int | None,
                  chat_template: str | None = None):
    """Tokenize canonical rows into a ``datasets.Dataset`` ready for ``SFTTrainer``.

    Columns: ``input_ids``, ``attention_mask``, ``labels``. Rows whose assistant tokens are
    all cut off by ``max_length`` are dropped (they carry no loss), as TRL does. The result
    matches what ``SFTTrainer(assistant_only_loss=True)`` prepares from the same rows.
    """
    from datasets import Dataset

    template = chat_template or training_chat_template(tokenizer)
    records = []
    for i, row in enumerate(rows):
        rec = tokenize_row(row["messages"], tokenizer, template, max_length)
        if all(label == -100 for label in rec["labels"]):
            if max_length is None:
                raise DataError(f"row {i}: the chat template marked no assistant tokens")
            continue
        records.append(rec)
    if not records:
        raise DataError("no row has assistant tokens left after tokenization")
    return Dataset.from_list(records)


# ---------------------------------------------------------------------------------------
# Grades


def parse_grade(text: str | None, pattern: str) -> float | None:
    """The number captured by the pattern's first group in ``text``, or None.

    ``<think>...</think>`` blocks are skipped first, so a grade mentioned while reasoning
    does not count as the answer.
    """
    if not text:
        return None
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    match = re.search(pattern, text)
    if not match:
        return None
    try:
        value = float(match.group(1))
    except (IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def grade_metrics(pairs: Iterable[tuple[float | None, float | None]]) -> dict:
    """Accuracy and error of predicted grades against reference grades.

    ``pairs`` are ``(reference, predicted)``. Only pairs with a reference grade count. An
    unparsed prediction counts as wrong for ``grade_exact`` / ``grade_within1`` (so a model
    that stops answering in the grade format is not rewarded) and is left out of
    ``grade_mae``. A metric is None when it has nothing to average over.
    """
    pairs = list(pairs)
    graded = [(ref, pred) for ref, pred in pairs if ref is not None]
    both = [(ref, pred) for ref, pred in graded if pred is not None]
    n = len(graded)
    return {
        "n": len(pairs),
        "n_reference": n,
        "n_parsed": len(both),
        "grade_exact": (sum(1 for r, p in both if abs(r - p) < 1e-9) / n) if n else None,
        "grade_within1": (sum(1 for r, p in both if abs(r - p) <= 1 + 1e-9) / n) if n else None,
        "grade_mae": (sum(abs(r - p) for r, p in both) / len(both)) if both else None,
    }
