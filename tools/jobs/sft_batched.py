"""Tokenization in batches, with exactly the result ``sft_data.tokenize_row`` gives row by row.

``sft_data.tokenize_chat`` asks ``BatchedChat.tokenize`` first and sends every row it
cannot vouch for through ``tokenize_row`` (TRL's own call). Apart from sft_data because
it is one self-contained speed-up with its own proof obligations (which transformers
internals it relies on, the Qwen3 training template in plain Python checked against
Jinja); tests/test_sft_data.py holds it to the reference.

A job module like sft_data: standard library only at the top, never imports tunestep,
shipped beside the job script (``JOB_FILES``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence


class BatchedChat:
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
    def tokenize(cls, rows: Sequence[dict], tokenizer, template: str,
                 reference: Callable) -> list:
        """Per row (input_ids, [(first, end) token ranges of its assistant spans]), or None
        for a row left to ``tokenize_row``; ``reference`` is ``tokenize_row`` (passed in:
        this module is below sft_data, which imports it)."""
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
        if first is not None and not _agrees(rows[first], out[first], reference, tokenizer,
                                             template):
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


def _agrees(row: dict, got: tuple, reference: Callable, tokenizer, template: str) -> bool:
    """The batched result for one row equals tokenize_row's (``reference``)."""
    want = reference(row["messages"], tokenizer, template, None)
    ids, ranges = got
    labels = [-100] * len(ids)
    for a, b in ranges:
        labels[a:b] = ids[a:b]
    return want["input_ids"] == list(ids) and want["labels"] == labels
