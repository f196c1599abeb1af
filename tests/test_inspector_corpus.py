"""Every real-format sample of ../shared/corpus/real_formats: right format, useful status, and
where a mapping is suggested, the mapped output inspects READY."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tunestep.tools.data.mapping import apply_mapping
from tunestep.tools.inspector import run_inspector

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "real_formats"

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(),
    reason=f"the shared real-format corpus is not beside the repo ({CORPUS} is missing)")

# file -> (format, status, error codes that must be found)
EXPECTED = {
    # What OpenAI's fine-tuning accepts is READY: the row of a system turn and an answer
    # without a user turn is a first_not_user warning, not an error.
    "openai_toy_chat.jsonl": ("chat", "READY", set()),
    "axolotl_alpaca.json": ("alpaca", "NEEDS_MAPPING", set()),
    "axolotl_sharegpt_conversation.json": ("sharegpt", "NEEDS_MAPPING", set()),
    "axolotl_sharegpt_missingturns.json": ("sharegpt", "INVALID", {"content_empty"}),
    "llamafactory_identity_alpaca.json": ("alpaca", "NEEDS_MAPPING", set()),
    "llamafactory_glaive_toolcall_sharegpt.json": ("sharegpt", "INVALID",
                                                   {"duplicate_in_batch"}),
    "llamafactory_v1_typed_content.jsonl": ("chat_parts", "NEEDS_MAPPING", set()),
    "llamafactory_kto_messages_label.json": ("kto", "NEEDS_MAPPING", set()),
    "llamafactory_dpo_preference.json": ("preference", "INVALID", {"preference_data"}),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def corpus_ws(sample_ws):
    folder = sample_ws.root / "corpus"
    folder.mkdir()
    for name in EXPECTED:
        shutil.copy(CORPUS / name, folder / name)
    return sample_ws


def test_every_corpus_file_is_known():
    present = {p.name for p in CORPUS.iterdir() if p.suffix in (".json", ".jsonl")}
    assert present == set(EXPECTED), "a new corpus file needs an expectation here"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format_status_and_mapping_to_ready(corpus_ws, name):
    fmt, status, codes = EXPECTED[name]
    source = corpus_ws.root / "corpus" / name
    before = sha(source)
    report = run_inspector(corpus_ws, f"corpus/{name}")
    assert report.files[0].format == fmt
    assert report.status == status, report.errors
    found = {f.code for f in report.errors if f.severity == "error"}
    assert found == codes, report.errors
    if status == "NEEDS_MAPPING":
        assert report.suggested_mapping is not None
        assert report.mapping_preview.exact
    if name == "llamafactory_dpo_preference.json":
        assert report.suggested_mapping is None
        assert any("DPO" in a for a in report.next_actions)
        return
    if status == "READY":  # trains as it is: every row, nothing to map
        assert report.files[0].rows == sum(1 for line in source.open() if line.strip())
        return
    assert report.suggested_mapping is not None, report.next_actions
    result = apply_mapping(corpus_ws, f"corpus/{name}", report.suggested_mapping)
    assert result.rows_out == report.mapping_preview.rows_out
    assert result.rows_in == result.rows_out + result.rows_dropped
    mapped = run_inspector(corpus_ws, result.output)
    assert mapped.status == "READY", mapped.errors
    assert mapped.files[0].format == "chat"
    assert sha(source) == before  # the original is untouched


def test_tool_calls_become_qwen_style_turns(corpus_ws):
    name = "llamafactory_glaive_toolcall_sharegpt.json"
    report = run_inspector(corpus_ws, f"corpus/{name}")
    spec = report.suggested_mapping
    assert spec.role_map == {"human": "user", "gpt": "assistant",
                             "function_call": "tool_call", "observation": "tool"}
    assert spec.tools_field == "tools"
    result = apply_mapping(corpus_ws, f"corpus/{name}", spec)
    import orjson

    first = orjson.loads(corpus_ws.resolve(result.files[0].output).read_bytes()
                         .splitlines()[0])["messages"]
    assert first[0]["role"] == "system" and "<tools>\n{\"name\": \"search_recipes\"" \
        in first[0]["content"]
    call = next(m for m in first if m["content"].startswith("<tool_call>"))
    assert call["role"] == "assistant"
    assert call["content"].endswith("</tool_call>")
    assert orjson.loads(call["content"].split("\n")[1])["name"] == "search_recipes"
    roles = [m["role"] for m in first]
    assert roles[roles.index("tool") - 1] == "assistant"


def test_mapped_tool_rows_render_like_the_original_with_tools(corpus_ws, tiny_model_dir):
    """The tools block in the system turn is what the Qwen3 template renders for tools=."""
    import orjson
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    name = "llamafactory_glaive_toolcall_sharegpt.json"
    row = orjson.loads((CORPUS / name).read_bytes())[0]
    tools = orjson.loads(row["tools"])
    report = run_inspector(corpus_ws, f"corpus/{name}")
    result = apply_mapping(corpus_ws, f"corpus/{name}", report.suggested_mapping)
    mapped = orjson.loads(corpus_ws.resolve(result.files[0].output).read_bytes()
                          .splitlines()[0])["messages"]
    plain = [m for m in mapped if m["role"] != "system"]
    with_tools = tokenizer.apply_chat_template(plain, tools=tools, tokenize=False)
    assert tokenizer.apply_chat_template(mapped, tokenize=False) == with_tools


def test_kto_mapping_keeps_only_desirable_rows(corpus_ws):
    name = "llamafactory_kto_messages_label.json"
    report = run_inspector(corpus_ws, f"corpus/{name}")
    preview = report.mapping_preview
    import orjson

    labels = [r["label"] for r in orjson.loads((CORPUS / name).read_bytes())]
    assert preview.rows_out == labels.count(True)
    assert sum(preview.drop_reasons.values()) == labels.count(False)
    result = apply_mapping(corpus_ws, f"corpus/{name}", report.suggested_mapping)
    assert result.rows_out == labels.count(True)
    assert all("label" in d.reason for d in result.dropped)
