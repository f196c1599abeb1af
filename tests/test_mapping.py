"""apply_mapping: canonical chat in a separate folder, a manifest, atomic, idempotent."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.mapping import (
    MANIFEST_NAME,
    DropRule,
    MappingSpec,
    apply_mapping,
    read_manifest,
    suggest_mapping,
)
from tunestep.tools.demo.sample_workspace import make_row
from tunestep.tools.inspector import run_inspector

SHAREGPT = "datasets/incremental/batch_100_02"
MAPPED = "datasets/processed_webdev_coding_mapped"
HOLDOUT = "datasets/processed_webdev_coding/validation.jsonl"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".tunestep" not in p.parts}


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def read_messages(ws, rel: str) -> list[list[dict]]:
    return [orjson.loads(line)["messages"] for line in ws.resolve(rel).read_bytes().splitlines()]


def audit_events(ws) -> list[tuple[str, str, str]]:
    with ledger.open_ledger(ws) as conn:
        return [(r["action"], r["target"], r["outcome"]) for r in conn.execute(
            "SELECT action, target, outcome FROM audit WHERE action = 'mapping.apply' "
            "ORDER BY id")]


def test_sharegpt_batch_maps_to_ready_chat_and_again_is_a_no_op(sample_ws):
    before = tree_hashes(sample_ws.root / "datasets")
    suggestion = suggest_mapping(sample_ws, SHAREGPT)
    assert suggestion.status == "NEEDS_MAPPING" and suggestion.formats == ["sharegpt"]
    result = apply_mapping(sample_ws, SHAREGPT, suggestion.mapping)
    out = f"{MAPPED}/batch_100_02"
    assert result.output == out and not result.unchanged
    assert result.files[0].output == f"{out}/conversations.jsonl"
    assert result.rows_in == result.rows_out == 100 and result.rows_dropped == 0
    # the originals and the hold-out set are byte-identical; only the output is new
    after = tree_hashes(sample_ws.root / "datasets")
    assert {k: v for k, v in after.items() if not k.startswith(
        "processed_webdev_coding_mapped/")} == before
    # same rows as the chat batches would have had
    messages = read_messages(sample_ws, result.files[0].output)
    assert [m["role"] for m in messages[0]] == ["system", "user", "assistant"]
    assert run_inspector(sample_ws, out).status == "READY"

    manifest = read_manifest(sample_ws.resolve(out))
    assert manifest["spec"] == suggestion.mapping.model_dump(mode="json")
    assert manifest["result"]["files"][0]["source_sha256"] == sha(
        sample_ws.resolve(f"{SHAREGPT}/conversations.json"))
    assert manifest["result"]["files"][0]["output_sha256"] == sha(
        sample_ws.resolve(result.files[0].output))
    assert manifest["result"]["rows_in"] == 100 and manifest["dropped"] == []

    written = sample_ws.resolve(result.files[0].output).stat().st_mtime_ns
    again = apply_mapping(sample_ws, SHAREGPT, suggestion.mapping)
    assert again.unchanged
    assert again.model_dump(exclude={"unchanged", "next_actions"}) == result.model_dump(
        exclude={"unchanged", "next_actions"})
    assert sample_ws.resolve(result.files[0].output).stat().st_mtime_ns == written
    assert audit_events(sample_ws) == [("mapping.apply", out, "ok"),
                                       ("mapping.apply", out, "unchanged")]


def test_a_changed_spec_or_a_touched_output_is_written_again(sample_ws):
    spec = suggest_mapping(sample_ws, SHAREGPT).mapping
    first = apply_mapping(sample_ws, SHAREGPT, spec)
    edited = spec.model_copy(update={"system_prompt": "Grade strictly.",
                                     "replace_system": True})
    second = apply_mapping(sample_ws, SHAREGPT, edited)
    assert not second.unchanged and second.spec_sha256 != first.spec_sha256
    messages = read_messages(sample_ws, second.files[0].output)
    assert all(m[0] == {"role": "system", "content": "Grade strictly."} for m in messages)
    output = sample_ws.resolve(second.files[0].output)
    output.write_bytes(output.read_bytes()[:-10])
    assert not apply_mapping(sample_ws, SHAREGPT, edited).unchanged
    assert sha(output) == second.files[0].output_sha256  # repaired


def test_refused_sources(sample_ws):
    spec = MappingSpec(source_format="chat")
    for source in (HOLDOUT, "datasets/processed_webdev_coding"):
        with pytest.raises(TunestepError) as caught:
            apply_mapping(sample_ws, source, spec)
        assert caught.value.code == "mapping_source_invalid"
    apply_mapping(sample_ws, SHAREGPT, suggest_mapping(sample_ws, SHAREGPT).mapping)
    with pytest.raises(TunestepError) as inside:
        apply_mapping(sample_ws, f"{MAPPED}/batch_100_02", spec)
    assert inside.value.code == "mapping_source_invalid"
    with pytest.raises(TunestepError) as holding:
        apply_mapping(sample_ws, "datasets", spec)
    assert holding.value.code == "mapping_source_invalid"
    with pytest.raises(TunestepError) as escape:
        apply_mapping(sample_ws, "../elsewhere", spec)
    assert escape.value.code == "path_escape"


def test_a_spec_that_does_not_fit_writes_nothing(sample_ws):
    alpaca = MappingSpec(source_format="alpaca")
    with pytest.raises(TunestepError) as caught:
        apply_mapping(sample_ws, SHAREGPT, alpaca)
    assert caught.value.code == "mapping_mismatch"
    assert "conversations" in caught.value.message
    assert not sample_ws.resolve(MAPPED).exists()


def test_an_output_folder_it_did_not_write_is_never_replaced(sample_ws):
    stranger = sample_ws.resolve(f"{MAPPED}/batch_100_02")
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(TunestepError) as caught:
        apply_mapping(sample_ws, SHAREGPT, suggest_mapping(sample_ws, SHAREGPT).mapping)
    assert caught.value.code == "mapping_output_exists"
    assert (stranger / "notes.txt").read_text() == "mine"


def test_a_crash_while_writing_leaves_no_partial_output(sample_ws, monkeypatch):
    from tunestep.tools.data import mapping as module

    spec = suggest_mapping(sample_ws, SHAREGPT).mapping
    real = module._write_file

    def dies_half_way(source, index, engine, target):
        real(source, index, engine, target)
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(module, "_write_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        apply_mapping(sample_ws, SHAREGPT, spec)
    mapped = sample_ws.resolve(MAPPED)
    assert list(mapped.iterdir()) == []  # no output and no temp folder left behind
    monkeypatch.setattr(module, "_write_file", real)
    first = apply_mapping(sample_ws, SHAREGPT, spec)
    monkeypatch.setattr(module, "_write_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        apply_mapping(sample_ws, SHAREGPT, spec.model_copy(update={"system_prompt": "x",
                                                                   "replace_system": True}))
    # the previous complete output is still in place
    assert sha(sample_ws.resolve(first.files[0].output)) == first.files[0].output_sha256
    assert [p.name for p in mapped.iterdir()] == ["batch_100_02"]


def test_invalid_rows_are_dropped_and_listed_or_refused(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    good = [make_row(random.Random(i), 6000 + i) for i in range(3)]
    bad = {"messages": [{"role": "user", "content": "only a question"}]}
    write_jsonl(folder / "rows.jsonl", [good[0], bad, good[1], good[1], good[2]])
    source = "datasets/incremental/batch_100_04"
    with pytest.raises(TunestepError) as refused:
        apply_mapping(sample_ws, source, MappingSpec(source_format="chat", on_invalid="fail"))
    assert refused.value.code == "mapping_rows_invalid"
    assert "rows.jsonl:2 no_assistant" in refused.value.message
    assert not sample_ws.resolve(MAPPED).exists()
    report = run_inspector(sample_ws, source)
    result = apply_mapping(sample_ws, source, report.suggested_mapping)
    assert result.rows_out == 3 and result.rows_dropped == 2
    assert [(d.line, d.reason.split(":")[0]) for d in result.dropped] == [
        (2, "no_assistant"), (4, "duplicate_in_batch")]
    assert result.drop_reasons == {"no_assistant": 1, "duplicate_in_batch": 1}
    manifest = read_manifest(sample_ws.resolve(result.output))
    assert [d["line"] for d in manifest["dropped"]] == [2, 4]
    assert run_inspector(sample_ws, result.output).status == "READY"


def test_rows_already_trained_or_in_the_holdout_are_dropped(sample_ws):
    train_row = orjson.loads(sample_ws.resolve(
        "datasets/processed_webdev_coding/train.jsonl").read_bytes().splitlines()[0])
    held_row = orjson.loads(sample_ws.resolve(HOLDOUT).read_bytes().splitlines()[3])
    fresh = make_row(random.Random(3), 6100)
    write_jsonl(sample_ws.resolve("datasets/incremental/batch_100_04/rows.jsonl"),
                [train_row, fresh, held_row])
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04",
                           MappingSpec(source_format="chat"))
    assert result.rows_out == 1
    assert {d.reason.split(":")[0] for d in result.dropped} == {"duplicate_of_earlier",
                                                                "holdout_duplicate"}


def test_repairs_cut_empty_exchanges_and_trailing_turns(sample_ws):
    rows = [
        {"conversations": [{"from": "human", "value": "first?"}, {"from": "gpt", "value": ""},
                           {"from": "human", "value": "second?"},
                           {"from": "gpt", "value": "Answer two. Grade: 7"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                           {"from": "human", "value": "left hanging"}]},
    ]
    path = sample_ws.resolve("datasets/incremental/batch_100_04/rows.json")
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(rows))
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID"
    spec = report.suggested_mapping
    assert spec.empty_turns == "drop_exchange" and spec.trim_trailing
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04", spec)
    assert result.rows_out == 2 and result.rows_changed == 2
    first, second = read_messages(sample_ws, result.files[0].output)
    assert [m["content"] for m in first] == ["second?", "Answer two. Grade: 7"]
    assert [m["role"] for m in second] == ["user", "assistant"]


def test_alpaca_prompt_completion_and_chatml_formats(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_05")
    write_jsonl(folder / "alpaca.jsonl", [
        {"instruction": "Grade this:", "input": "<p>x</p>", "output": "Grade: 5",
         "system": "Be strict.", "history": [["earlier?", "earlier answer"]]},
        {"instruction": "Grade nothing", "input": "", "output": "Grade: 9"},
    ])
    spec = run_inspector(sample_ws, "datasets/incremental/batch_100_05").suggested_mapping
    assert spec.source_format == "alpaca" and spec.system_field == "system"
    edited = MappingSpec.model_validate_json(spec.model_copy(
        update={"join_template": "{instruction}\n---\n{input}"}).model_dump_json())
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_05", edited)
    first, second = read_messages(sample_ws, result.files[0].output)
    assert first == [
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": "earlier?"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "Grade this:\n---\n<p>x</p>"},
        {"role": "assistant", "content": "Grade: 5"}]
    assert second == [{"role": "user", "content": "Grade nothing"},
                      {"role": "assistant", "content": "Grade: 9"}]

    folder = sample_ws.resolve("datasets/incremental/batch_100_06")
    write_jsonl(folder / "pc.jsonl", [
        {"prompt": "Grade <a>", "completion": "Grade: 2"},
        {"prompt": [{"role": "user", "content": "Grade <b>"}],
         "completion": [{"role": "assistant", "content": "Grade: 3"}]},
    ])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_06")
    assert report.status == "NEEDS_MAPPING" and report.files[0].format == "prompt_completion"
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_06",
                           report.suggested_mapping)
    assert read_messages(sample_ws, result.files[0].output)[1] == [
        {"role": "user", "content": "Grade <b>"}, {"role": "assistant", "content": "Grade: 3"}]

    folder = sample_ws.resolve("datasets/incremental/batch_100_07")
    write_jsonl(folder / "t.jsonl", [{"text": "<|im_start|>user\nGrade <i><|im_end|>\n"
                                              "<|im_start|>assistant\nGrade: 4<|im_end|>\n"}])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_07")
    assert report.status == "NEEDS_MAPPING"
    assert report.suggested_mapping.source_format == "chatml_text"
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_07",
                           report.suggested_mapping)
    assert read_messages(sample_ws, result.files[0].output)[0] == [
        {"role": "user", "content": "Grade <i>"}, {"role": "assistant", "content": "Grade: 4"}]


def test_plain_text_is_invalid_with_a_reason(sample_ws):
    write_jsonl(sample_ws.resolve("datasets/incremental/batch_100_04/t.jsonl"),
                [{"text": "just prose"}, {"text": "more prose"}])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID" and report.counts == {"text_unstructured": 1}
    assert report.suggested_mapping is None


def test_canonical_files_pass_through_a_foreign_mapping(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    write_jsonl(folder / "a.jsonl", [make_row(random.Random(1), 6200)])
    write_jsonl(folder / "b.jsonl", [{"conversations": [
        {"from": "human", "value": "Grade <hr>"}, {"from": "gpt", "value": "Grade: 8"}]}])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04",
                           report.suggested_mapping)
    assert [f.mapping for f in result.files] == ["pass-through", "spec"]
    assert [Path(f.output).name for f in result.files] == ["a.jsonl", "b.jsonl"]
    assert run_inspector(sample_ws, result.output).status == "READY"


def test_drop_where_rules(sample_ws):
    rows = [dict(make_row(random.Random(i), 6300 + i), source=s)
            for i, s in enumerate(["web", "spam", "web", True])]
    write_jsonl(sample_ws.resolve("datasets/incremental/batch_100_04/r.jsonl"), rows)
    spec = MappingSpec(source_format="chat", drop_where=[
        DropRule(field="source", equals="spam", reason="scraped spam"),
        DropRule(field="source", equals=1)])  # must not match the boolean True
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04", spec)
    assert result.rows_out == 3
    assert [(d.line, d.reason) for d in result.dropped] == [(2, "drop_where: scraped spam")]


def test_spec_validation():
    with pytest.raises(ValidationError):
        MappingSpec(source_format="alpaca", join_template="{input} only")
    with pytest.raises(ValidationError):
        MappingSpec.model_validate({"source_format": "chat", "python": "import os"})
    with pytest.raises(ValidationError):
        MappingSpec(source_format="sharegpt", role_map={"human": "wizard"})
    with pytest.raises(ValidationError):
        MappingSpec(source_format="excel")
    assert MANIFEST_NAME == "manifest.json"


def test_leftovers_of_a_killed_run_are_cleaned_up_later(sample_ws):
    import os
    import time

    mapped = sample_ws.resolve(MAPPED)
    old = mapped / ".batch_100_02.abc123.tmp"
    old.mkdir(parents=True)
    (old / "conversations.jsonl").write_text("half")
    fresh = mapped / ".batch_100_02.def456.tmp"  # maybe a run still writing: kept
    fresh.mkdir()
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    apply_mapping(sample_ws, SHAREGPT, suggest_mapping(sample_ws, SHAREGPT).mapping)
    assert sorted(p.name for p in mapped.iterdir()) == [".batch_100_02.def456.tmp",
                                                        "batch_100_02"]


def test_chat_rows_keep_their_tools_column(sample_ws):
    tools = [{"type": "function", "function": {"name": "lint", "parameters": {}}}]
    row = dict(make_row(random.Random(4), 6400), tools=tools)
    write_jsonl(sample_ws.resolve("datasets/incremental/batch_100_04/r.jsonl"), [row])
    assert run_inspector(sample_ws, "datasets/incremental/batch_100_04").status == "READY"
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04",
                           MappingSpec(source_format="chat"))
    written = orjson.loads(sample_ws.resolve(result.files[0].output).read_bytes())
    assert written == {"messages": row["messages"], "tools": tools}
