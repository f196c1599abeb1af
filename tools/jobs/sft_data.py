"""Chat data for supervised fine-tuning: load, tokenize with assistant-only labels, grade.

Shared by two callers that must agree byte for byte:

- ``train_sft.py`` (the job script, beside this file) imports it as a sibling module on
  Hugging Face Jobs, where tunestep itself is not installed;
- tunestep's preprocess step imports it as ``tunestep.tools.jobs.sft_data`` to write
  ``datasets/tokenized/<batch>/`` ahead of a job.

So this module imports only the standard library and its sibling ``sft_batched`` at the
top (heavy libraries inside the functions that need them) and never imports tunestep.

The canonical row is ``{"messages": [{"role": ..., "content": ...}, ...]}``. Labels are
``-100`` outside the assistant turns as the chat template's ``{% generation %}`` markers
delimit them (the end-of-turn token included), exactly as TRL's ``SFTTrainer`` builds them
with ``assistant_only_loss=True``. ``tokenize_chat`` renders and encodes rows in batches
(``sft_batched.BatchedChat``) and goes row by row (``tokenize_row``, TRL's own call)
wherever it cannot show the batched result is the same; tests/test_sft_data.py holds it
to that.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

if __package__:  # imported as tunestep.tools.jobs.sft_data
    from .sft_batched import BatchedChat
else:  # a sibling of the job script
    from sft_batched import BatchedChat

ROLES = ("system", "user", "assistant", "tool")
QWEN3_TRAINING_TEMPLATE_FILE = Path(__file__).with_name("qwen3_training.jinja")
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class DataError(ValueError):
    """A data file breaks the canonical chat format; the message names file, line and rule."""


# ---------------------------------------------------------------------------------------
# Loading


# Message keys the chat templates read besides role/content (OpenAI-style tool calls);
# kept so that a tool-calling row trains as the inspector said it would.
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def _normalise_row(obj: object, where: str) -> dict:
    """Keep ``messages`` (role, content string; tool calls) and a ``tools`` list; reject
    anything else. An assistant turn with ``tool_calls`` may have null content: the calls
    are its answer, as in OpenAI's format."""
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
        calls = msg.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)
                                  or not all(isinstance(c, dict) for c in calls)):
            raise DataError(f"{where}: messages[{i}].tool_calls must be a list of objects "
                            "on an assistant turn")
        if not isinstance(content, str) and not (content is None and calls):
            raise DataError(f"{where}: messages[{i}].content must be a string")
        message = {"role": role, "content": content}
        message.update({k: msg[k] for k in TOOL_KEYS if msg.get(k) is not None})
        out.append(message)
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message, nothing to train on")
    row: dict = {"messages": out}
    tools = obj.get("tools")
    if isinstance(tools, list) and tools:
        row["tools"] = tools  # TRL passes a tools column to the chat template
    return row


def _iter_file(path: Path) -> Iterable[tuple[object, str]]:
    """Yield (object, 'file:line') for a JSONL file, or a .json file holding a list."""
    try:
        yield from _iter_decoded(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None


def _iter_decoded(path: Path) -> Iterable[tuple[object, str]]:
    # utf-8-sig: a byte-order mark is only an inspector warning, so the job must read it.
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        for i, obj in enumerate(data):
            yield obj, f"{path}[{i}]"
        return
    with path.open(encoding="utf-8-sig") as fh:
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
                 max_length: int | None, tools: list | None = None) -> dict:
    """input_ids / attention_mask / labels for one conversation (labels -100 off-assistant).

    The reference: ``apply_chat_template`` exactly as TRL calls it. ``tokenize_chat`` gets
    the same result in batches and falls back to this for any row it cannot vouch for.
    """
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
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
    matches what ``SFTTrainer(assistant_only_loss=True)`` prepares from the same rows: each
    row is what ``tokenize_row`` gives, computed in batches (``BatchedChat``) where that
    provably gives the same, else by ``tokenize_row`` itself.
    """
    import numpy as np

    template = chat_template or training_chat_template(tokenizer)
    fast = BatchedChat.tokenize(rows, tokenizer, template, tokenize_row)
    ids_rows: list = []
    kept: list[int] = []  # tokens each row keeps, or -1 for a row dropped
    slow_labels: dict[int, list[int]] = {}
    for i, got in enumerate(fast):  # in row order, so errors surface as row by row
        if got is None:
            rec = tokenize_row(rows[i]["messages"], tokenizer, template, None,
                               rows[i].get("tools"))
            ids_row = rec["input_ids"]
            slow_labels[i] = rec["labels"]
            first = next((k for k, label in enumerate(rec["labels"]) if label != -100), None)
        else:
            ids_row, ranges = got
            first = ranges[0][0] if ranges else None
        if first is None and max_length is None:
            raise DataError(f"row {i}: the chat template marked no assistant tokens")
        ids_rows.append(ids_row)
        # Keep the start as TRL does (Python's [:max_length]); a row left with no trained
        # token is dropped.
        cut = len(ids_row) if max_length is None else len(range(len(ids_row))[:max_length])
        kept.append(cut if first is not None and first < cut else -1)

    n = len(ids_rows)
    lengths = np.fromiter(map(len, ids_rows), dtype=np.int64, count=n)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    total = int(starts[-1])
    ids = np.fromiter(chain.from_iterable(ids_rows), dtype=np.int64, count=total)
    labels = np.full(total, -100, dtype=np.int64)
    for got, base in zip(fast, starts.tolist(), strict=False):
        if got is not None:  # the assistant spans' tokens keep their ids
            for a, b in got[1]:
                labels[base + a:base + b] = ids[base + a:base + b]
    for i, row_labels in slow_labels.items():
        labels[starts[i]:starts[i + 1]] = row_labels

    kept_lengths = np.array(kept, dtype=np.int64)
    if np.array_equal(kept_lengths, lengths):  # nothing cut, nothing dropped
        return _dataset(ids, labels, lengths)
    chosen = np.flatnonzero(kept_lengths >= 0)
    if not len(chosen):
        raise DataError("no row has assistant tokens left after tokenization")
    kept_lengths = kept_lengths[chosen]
    new_starts = np.cumsum(kept_lengths) - kept_lengths
    take = np.arange(int(kept_lengths.sum())) + np.repeat(starts[chosen] - new_starts,
                                                          kept_lengths)
    return _dataset(ids[take], labels[take], kept_lengths)


_LIST_CHUNK = 2**31 - 1  # values per Arrow list chunk (its offsets are int32)


def _dataset(ids, labels, lengths):
    """The ``datasets.Dataset`` that ``Dataset.from_list`` builds from these rows as Python
    lists, column types included, built from the arrays directly."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    features = _list_features(_int_range(ids), _int_range(labels))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    columns = {}
    for name, values in (("input_ids", ids), ("attention_mask", None), ("labels", labels)):
        value_type = features.arrow_schema.field(name).type.value_type
        dtype = value_type.to_pandas_dtype()
        values = np.ones(len(ids), dtype) if values is None else values.astype(dtype, copy=False)
        chunks, first = [], 0
        while first < len(lengths):  # list offsets are int32: chunk past 2**31 values
            last = max(first + 1, int(np.searchsorted(
                offsets, offsets[first] + _LIST_CHUNK, side="right")) - 1)
            lo, hi = int(offsets[first]), int(offsets[last])
            chunks.append(pa.ListArray.from_arrays(
                pa.array((offsets[first:last + 1] - lo).astype(np.int32)),
                pa.array(values[lo:hi])))
            first = last
        columns[name] = pa.chunked_array(chunks, type=pa.list_(value_type))
    # A content fingerprint like from_list's, which pickles the whole table to get one.
    try:
        import xxhash  # a dependency of datasets

        digest = xxhash.xxh64()
    except ImportError:
        digest = hashlib.blake2b(digest_size=8)
    for array in (lengths, ids, labels):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).data)
    return Dataset(InMemoryTable(pa.table(columns)), info=DatasetInfo(features=features),
                   fingerprint=digest.hexdigest())


def _int_range(values) -> int:
    """The narrowest of int8/16/32/64 holding every value, as its bit width."""
    import numpy as np

    low, high = int(values.min()), int(values.max())
    return next(bits for bits in (8, 16, 32, 64)
                if np.iinfo(f"int{bits}").min <= low and high <= np.iinfo(f"int{bits}").max)


@functools.lru_cache(maxsize=16)
def _list_features(ids_bits: int, labels_bits: int):
    """The features ``Dataset.from_list`` gives such rows (it narrows input_ids and
    attention_mask to smaller ints where every value fits): asked of it, on one row
    holding the extremes of those widths."""
    from datasets import Dataset

    def extremes(bits: int) -> list[int]:
        return [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1]

    return Dataset.from_list([{"input_ids": extremes(ids_bits), "attention_mask": [1],
                               "labels": extremes(labels_bits)}]).features


# ---------------------------------------------------------------------------------------
# Grades


@functools.lru_cache(maxsize=16)
def _grade_regex(pattern: str):
    """The plan's pattern on RE2 (linear time) where installed: the job and tunestep.

    The assistant writes the plan; on a backtracking engine a pattern like ``(a|aa)*c``
    would spin for the rest of the paid job's timeout on one generated answer. The job's
    header installs ``google-re2``; Python's ``re`` is the fallback only where it is
    missing (tunestep's plan check refuses the patterns that backtrack worst there).
    """
    try:
        import re2
    except ImportError:
        return re.compile(pattern)
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return re.compile(pattern)  # the plan check already refused what RE2 cannot run


def parse_grade(text: str | None, pattern: str) -> float | None:
    """The number captured by the pattern's first group in ``text``, or None.

    ``<think>...</think>`` blocks are skipped first, so a grade mentioned while reasoning
    does not count as the answer.
    """
    if not text:
        return None
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    match = _grade_regex(pattern).search(text)
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
