"""Broken files and generated rows: always a report, never a traceback; files untouched."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunestep.tools.demo.sample_workspace import make_row
from tunestep.tools.inspector import run_inspector

BATCH = "datasets/incremental/batch_100_04"


def good(index: int) -> bytes:
    return orjson.dumps(make_row(random.Random(index), 5000 + index))


def lines(*rows: bytes) -> bytes:
    return b"".join(r + b"\n" for r in rows)


NESTED = b"{\"a\":" * 2000 + b"1" + b"}" * 2000  # past orjson's depth limit

BROKEN: dict[str, tuple[bytes, str, set[str]]] = {
    # name: (bytes, status, error codes expected)
    "truncated.jsonl": (lines(good(1), good(2)) + good(3)[:40], "INVALID", {"invalid_json"}),
    "bom.jsonl": (b"\xef\xbb\xbf" + lines(good(1), good(2)), "READY", set()),
    "crlf.jsonl": (good(1) + b"\r\n" + good(2) + b"\r\n", "READY", set()),
    "bad_utf8.jsonl": (lines(good(1), good(2)[:30] + b"\xff\xfe" + good(2)[30:], good(3)),
                       "INVALID", {"invalid_utf8"}),
    "empty.jsonl": (b"", "INVALID", {"empty_file"}),
    "blank_only.jsonl": (b"\n\n  \n", "INVALID", {"empty_file"}),
    "array.jsonl": (orjson.dumps([orjson.loads(good(1))], option=orjson.OPT_INDENT_2),
                    "INVALID", {"jsonl_array"}),
    "one_line_array.jsonl": (b"[" + good(1) + b"," + good(2) + b"]\n", "INVALID",
                             {"jsonl_array"}),
    "nulls.jsonl": (lines(b"null", b'{"messages": null}', b'{"messages": [null]}',
                          b'{"messages": [{"role": null, "content": null}]}',
                          b'{"messages": [{"role": "user", "content": null}, '
                          b'{"role": "assistant", "content": null}]}', good(1)),
                    "INVALID", {"row_not_object", "messages_missing", "message_not_object",
                                "role_missing", "content_missing"}),
    "nested.jsonl": (lines(good(1), NESTED), "INVALID", {"invalid_json"}),
    "blank_lines.jsonl": (lines(good(1), b"", good(2), b"   "), "READY", set()),
    "empty.json": (b"", "INVALID", {"invalid_json"}),
    "broken.json": (b'[{"messages": [', "INVALID", {"invalid_json"}),
    "bad_utf8.json": (b"[" + good(1)[:20] + b"\xc3\x28" + good(1)[20:] + b"]", "INVALID",
                      {"invalid_utf8"}),
    "lines.json": (lines(good(1), good(2)), "READY", set()),
    "scalar.json": (b"42", "INVALID", {"row_not_object"}),
    "empty_array.json": (b"[]", "INVALID", {"empty_file"}),
    "bom.json": (b"\xef\xbb\xbf[" + good(1) + b"]", "READY", set()),
    "not_really.parquet": (b"PAR1 this is not parquet", "INVALID", {"file_unreadable"}),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_gets_a_report(sample_ws, name):
    data, status, codes = BROKEN[name]
    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True)
    path = folder / name
    path.write_bytes(data)
    before = sha(path)
    report = run_inspector(sample_ws, f"{BATCH}/{name}")
    assert report.status == status, report.errors
    errors = {f.code for f in report.errors if f.severity == "error"}
    assert errors == codes, report.errors
    for finding in report.errors:
        assert finding.file == f"{BATCH}/{name}"
        assert finding.line is None or finding.line >= 1
    assert sha(path) == before


def test_line_numbers_of_broken_lines(sample_ws):
    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True)
    (folder / "x.jsonl").write_bytes(
        b"\xef\xbb\xbf" + lines(good(1), b"", b"{oops", good(2), b"\xff{}") + b'{"tail')
    report = run_inspector(sample_ws, BATCH)
    found = {(f.line, f.code) for f in report.errors}
    assert {(1, "bom"), (3, "invalid_json"), (5, "invalid_utf8"), (6, "invalid_json")} <= found
    tail = next(f for f in report.errors if f.line == 6)
    assert "truncated" in tail.message
    assert report.files[0].rows == 5  # blank lines are not rows
    assert report.counts["blank_lines"] == 1


def test_pretty_printed_json_array_lines(sample_ws):
    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True)
    rows = [orjson.loads(good(1)), {"messages": [{"role": "user", "content": "{[,]}\n"}]},
            orjson.loads(good(2))]
    (folder / "x.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    report = run_inspector(sample_ws, BATCH)
    text = (folder / "x.json").read_bytes().decode().splitlines()
    bad = next(f for f in report.errors if f.code == "no_assistant")
    assert text[bad.line - 1].strip() == "{"  # the line where the broken row starts
    assert text[bad.line].strip().startswith('"messages"')


def test_a_ten_megabyte_line(sample_ws):
    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True)
    big = {"messages": [{"role": "user", "content": "x " * (5 << 20)},
                        {"role": "assistant", "content": "Grade: 3"}]}
    (folder / "big.jsonl").write_bytes(lines(good(1), orjson.dumps(big), good(2)))
    # Over the default data.max_row_bytes (4 MiB): a finding, not a load.
    report = run_inspector(sample_ws, BATCH)
    assert report.status == "INVALID" and report.counts == {"row_too_large": 1}
    assert [(e.line, e.code) for e in report.errors] == [(2, "row_too_large")]
    # Under a plan that allows 16 MiB rows it is read, and READY.
    from tunestep.tools.core.plan import load_plan, render_plan_document

    plan = load_plan(sample_ws).plan
    data = plan.data.model_copy(update={"max_row_bytes": 16 << 20})
    plan_path = sample_ws.resolve(".specs/training/plan.md")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(render_plan_document(plan.model_copy(update={"data": data})))
    report = run_inspector(sample_ws, BATCH)
    assert report.status == "READY"
    assert report.stats.chars["user"].max == 10 << 20


def test_parquet_rows(sample_ws):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True)
    rows = [orjson.loads(good(i)) for i in range(5)]
    rows.append({"messages": [{"role": "user", "content": "only a question"}]})
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    report = run_inspector(sample_ws, BATCH)
    assert report.files[0].container == "parquet"
    assert report.files[0].line_numbers == "row"
    assert {(f.line, f.code) for f in report.errors} == {(6, "no_assistant")}


# --- generated rows --------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) \
    | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", "", None, 3])
contents = st.none() | st.text(max_size=40) | st.integers() | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]),
                           "text": st.text(max_size=10)}), max_size=2)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}) | json_values,
                    max_size=5)
rows = st.one_of(
    st.fixed_dictionaries({"messages": messages}),
    st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
        {"from": roles, "value": contents}), max_size=4)}),
    st.fixed_dictionaries({"instruction": contents, "input": contents, "output": contents}),
    st.fixed_dictionaries({"prompt": contents | messages, "completion": contents | messages}),
    st.fixed_dictionaries({"text": contents}),
    json_values,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(batch=st.lists(rows, min_size=0, max_size=8),
       mangle=st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=3)),
                       max_size=3),
       container=st.sampled_from(["jsonl", "json"]))
def test_generated_rows_always_get_a_report(sample_ws, batch, mangle, container):
    folder = sample_ws.resolve(BATCH)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    if container == "jsonl":
        data = bytearray(b"".join(json.dumps(r).encode() + b"\n" for r in batch))
    else:
        data = bytearray(json.dumps(batch).encode())  # json: 2**64 and beyond included
    for position, junk in mangle:
        if data:
            data[position % len(data):position % len(data)] = junk
    path = folder / f"rows.{container}"
    path.write_bytes(bytes(data))
    before = sha(path)
    report = run_inspector(sample_ws, BATCH, max_errors=20)
    assert report.status in ("READY", "NEEDS_MAPPING", "INVALID")
    assert report.error_count == sum(
        n for code, n in report.counts.items()
        if next((f.severity for f in report.errors if f.code == code), "error") == "error"
        and _is_error(code))
    if report.status == "READY":
        assert report.error_count == 0 and report.files[0].format == "chat"
    if report.error_count:
        assert report.status == "INVALID"
    assert len([f for f in report.errors if f.severity == "error"]) <= 20
    assert sha(path) == before


def _is_error(code: str) -> bool:
    from tunestep.tools.inspector import RULES

    return RULES[code][0] == "error"
