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
with ``assistant_only_loss=True``. ``tokenize_chat`` renders and encodes rows in batches
(``_BatchedChat``) and goes row by row (``tokenize_row``, TRL's own call) wherever it
cannot show the batched result is the same; tests/test_sft_data.py holds it to that.
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
    row is what ``tokenize_row`` gives, computed in batches (``_BatchedChat``) where that
    provably gives the same, else by ``tokenize_row`` itself.
    """
    import numpy as np

    template = chat_template or training_chat_template(tokenizer)
    fast = _BatchedChat.tokenize(rows, tokenizer, template)
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


class _BatchedChat:
    """``tokenize_row`` for many rows at once, with the same result.

    ``apply_chat_template(..., return_assistant_tokens_mask=True)`` renders a row with
    transformers' ``render_jinja_template`` (which records the character spans that
    ``{% generation %}`` wraps), encodes the text with the Rust tokenizer (no special
    tokens added) and marks the tokens overlapping a span. Here the same function renders
    a batch of rows (or, for TRL's Qwen3 training template, plain Python checked against
    it: see ``render``), the same Rust tokenizer encodes the batch in one call, and a
    span's tokens are found with ``char_to_token`` instead of a Python walk over every
    token's offsets.

    A span's tokens are taken as the run from the one holding its first character to the
    one holding its last, ``ta``..``tb``, only where that is provably what every
    transformers 5.x mask builder gives (``char_to_token`` of both ends, as in 5.0;
    a walk marking every token that overlaps a span, as in 5.24, which like this relies on
    token offsets coming in order): both exist, ``tb`` > 0, the token before ``ta`` ends
    at or before the span and the one after ``tb`` starts at or after its end, and spans
    come in order and do not overlap.
    Rows that miss any of this, whose messages are not plain role/content strings (which
    transformers would normalise first), or whose batch fails to render, go through
    ``tokenize_row``; so do all rows when the tokenizer or transformers is not the kind
    this was written against, or when the first batched row differs from
    ``tokenize_row``'s (checked every call).
    """

    # Rows per encode_batch call: as few calls as the memory for their encodings allows,
    # since the Rust tokenizer spreads each call over all cores and idles between calls.
    BATCH_ROWS = 4096

    def __init__(self, tokenizer, template: str) -> None:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
        from transformers.utils.chat_template_utils import render_jinja_template

        cls = type(tokenizer)
        for name, base in (("apply_chat_template", PreTrainedTokenizerBase),
                           ("__call__", PreTrainedTokenizerBase),
                           ("_encode_plus", TokenizersBackend)):
            if getattr(cls, name, None) is not getattr(base, name):
                raise _Unbatched(f"{cls.__name__}.{name} is not transformers' own")
        backend = tokenizer._tokenizer
        # __call__ turns truncation and padding off and sets encode_special_tokens before
        # encoding; the backend is called directly only if that is already so.
        if (backend.truncation is not None or backend.padding is not None
                or backend.encode_special_tokens != tokenizer.split_special_tokens):
            raise _Unbatched("the backend tokenizer has truncation, padding or split specials")
        self.encode_batch = backend.encode_batch
        self.render_jinja_template = render_jinja_template
        self.template = tokenizer.get_chat_template(template, None)
        self.template_kwargs = dict(tokenizer.special_tokens_map)
        # TRL's Qwen3 training template (the tiny model's, the bundled fallback, and TRL's
        # pick for Qwen3) is also rendered in plain Python, checked against Jinja below.
        self.qwen3 = isinstance(self.template, str) and hashlib.sha256(
            self.template.encode("utf-8")).hexdigest() in QWEN3_TRAINING_SHA256
        self.shapes: dict[tuple, bool] = {}

    @classmethod
    def tokenize(cls, rows: Sequence[dict], tokenizer, template: str) -> list:
        """Per row (input_ids, [(first, end) token ranges of its assistant spans]), or None
        for a row left to ``tokenize_row``."""
        out: list = [None] * len(rows)
        try:
            batched = cls(tokenizer, template)
        except (ImportError, AttributeError, _Unbatched):
            return out
        plain = [i for i, row in enumerate(rows) if _plain_messages(row)]
        for k in range(0, len(plain), cls.BATCH_ROWS):
            batch = plain[k:k + cls.BATCH_ROWS]
            try:
                texts, spans = batched.render([rows[i]["messages"] for i in batch])
                encodings = batched.encode_batch(texts, add_special_tokens=False)
            except Exception:  # e.g. the template's raise_exception: tokenize_row raises it
                continue      # again, at its row
            for i, encoding, row_spans in zip(batch, encodings, spans, strict=True):
                ranges = _token_ranges(encoding, row_spans)
                if ranges is not None:
                    out[i] = (encoding.ids, ranges)
        first = next((i for i, got in enumerate(out) if got is not None), None)
        if first is not None and not _agrees(rows[first], out[first], tokenizer, template):
            return [None] * len(rows)
        return out

    def render(self, conversations: list) -> tuple[list[str], list]:
        """Rendered texts and, per text, the character spans of its generation blocks."""
        if not self.qwen3:
            return self.render_jinja(conversations)
        texts, spans = [], []
        for messages in conversations:
            shape = _qwen3_shape(messages)
            ok = self.shapes.get(shape)
            if ok is None:  # first row of this shape: Jinja decides
                (text,), (row_spans,) = self.render_jinja([messages])
                ok = self.shapes[shape] = _render_qwen3_training(messages) == (text, row_spans)
            elif ok:
                text, row_spans = _render_qwen3_training(messages)
            else:
                (text,), (row_spans,) = self.render_jinja([messages])
            texts.append(text)
            spans.append(row_spans)
        return texts, spans

    def render_jinja(self, conversations: list) -> tuple[list[str], list]:
        texts, spans = self.render_jinja_template(
            conversations=conversations, tools=None, documents=None,
            chat_template=self.template, return_assistant_tokens_mask=True,
            continue_final_message=False, add_generation_prompt=False,
            **self.template_kwargs)
        if len(texts) != len(conversations) or len(spans) != len(conversations):
            raise _Unbatched("render_jinja_template returned another shape")
        return texts, [[tuple(span) for span in row] for row in spans]


class _Unbatched(Exception):
    """The batched route does not apply; tokenize_row does."""


# sha256 of the texts _render_qwen3_training was written from, branch for branch: TRL's
# qwen3_training.jinja and the bundled copy (the same with a header). Another text, even
# an updated TRL template, renders through Jinja.
QWEN3_TRAINING_SHA256 = frozenset({
    "1d944ff8f268b611abb296cdd24d0f51981eef1c8647ac321c3a0258f61eb6c9",  # TRL's
    "274b1e96a39bd2990ec6d3297c451f8c4737fa8709ba00f52e4a752a548d83e8",  # bundled
})


def _qwen3_shape(messages: list[dict]) -> tuple:
    """What the Qwen3 training template branches on, for plain role/content messages:
    the roles in order, and whether each assistant answer holds a ``</think>``. Rows of
    one shape render through the same template branches, their contents only going
    through the same Python string operations."""
    return tuple((m["role"], m["role"] == "assistant" and "</think>" in m["content"])
                 for m in messages)


def _render_qwen3_training(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """TRL's qwen3_training.jinja, branch for branch, for plain role/content messages with
    no tools, no generation prompt: (text, [(start, end) of each generation block])."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    at = 0
    if messages[0]["role"] == "system":
        parts.append("<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n")
        at += len(parts[-1])
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "user" or (role == "system" and i > 0):
            piece = "<|im_start|>" + role + "\n" + content + "<|im_end|>" + "\n"
        elif role == "assistant":
            reasoning = ""
            if "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1] \
                    .lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            head = "<|im_start|>" + role + "\n"
            answer = ("<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"
                      + content.lstrip("\n") + "<|im_end|>\n")
            spans.append((at + len(head), at + len(head) + len(answer)))
            piece = head + answer
        elif role == "tool":
            piece = "\n<tool_response>\n" + content + "\n</tool_response>"
            if i == 0 or messages[i - 1]["role"] != "tool":
                piece = "<|im_start|>user" + piece
            if i == last or messages[i + 1]["role"] != "tool":
                piece += "<|im_end|>\n"
        else:
            continue
        parts.append(piece)
        at += len(piece)
    return "".join(parts), spans


def _plain_messages(row) -> bool:
    """Messages of only role/content strings: transformers passes them to the template as
    they are."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(row, dict) and row.get("tools"):
        return False  # a tools block: apply_chat_template renders it (tokenize_row)
    return type(messages) is list and bool(messages) and all(
        type(m) is dict and m.keys() == {"role", "content"}
        and type(m["role"]) is str and type(m["content"]) is str for m in messages)


def _token_ranges(encoding, spans) -> list[tuple[int, int]] | None:
    """Token ranges [first, end) of the character spans, or None when not provably exact."""
    ranges = []
    done = 0
    for a, b in spans:
        if not done <= a < b:  # in order, not overlapping, not empty
            return None
        first = encoding.char_to_token(a)
        last = encoding.char_to_token(b - 1)
        if first is None or not last or last < first:
            return None
        if first > 0 and encoding.token_to_chars(first - 1)[1] > a:
            return None
        after = encoding.token_to_chars(last + 1)
        if after is not None and after[0] < b:
            return None
        ranges.append((first, last + 1))
        done = b
    return ranges


def _agrees(row: dict, got: tuple, tokenizer, template: str) -> bool:
    """The batched result for one row equals tokenize_row's."""
    want = tokenize_row(row["messages"], tokenizer, template, None)
    ids, ranges = got
    labels = [-100] * len(ids)
    for a, b in ranges:
        labels[a:b] = ids[a:b]
    return want["input_ids"] == list(ids) and want["labels"] == labels


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
