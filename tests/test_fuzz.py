"""Fuzzing with hypothesis: the inspector, the mapping and the approval token parser.

- The inspector never raises on generated JSONL (valid chat rows, rows broken at every
  level, random unicode, invalid UTF-8, truncated JSON, lone carriage returns); every
  finding has the file, a 1-based line inside the file and a code from ``RULES``; in a
  file with one bad line every error points at that line, counted as the job's loader
  counts lines (text mode).
- A generated row of each foreign format ``apply_mapping`` supports maps to rows the
  inspector calls READY, with every message text kept and the roles in order.
- The approval token parser refuses structured mutations of a valid token (claims
  swapped between tokens, claims re-encoded around an old signature, padding, whitespace,
  case, separators), each with the one code that names why.

(tests/test_inspector_broken.py and tests/test_approval.py fuzz the coarse cases: random
rows get a report, single-byte token mutations are refused.)
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import open_workspace
from tunestep.tools.data import data_rows
from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.inspector import RULES, run_inspector
from tunestep.tools.jobs import sft_data
from tunestep.tools.signing import approval as A
from tunestep.tools.signing import operator_keys

BATCH = "datasets/incremental/batch_5_09"


def fuzz(examples: int) -> settings:
    """Bounded runs (the file stays well under a minute); a slow example is no failure."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "ws"
    build_sample_workspace(root, base_rows=20, batch_rows=5, batches=1, holdout_rows=5)
    return open_workspace(root)


def fresh_batch(ws, name: str, data: bytes) -> str:
    folder = ws.resolve(BATCH)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    return f"{BATCH}/{name}"


def text_lines(data: bytes) -> int:
    """Lines as the job's loader counts them (text mode, universal newlines)."""
    return len(list(io.StringIO(data.decode("utf-8", "replace"), newline=None)))


def check_findings(report, shown: str, data: bytes) -> None:
    lines = max(1, text_lines(data))
    for finding in report.errors:
        assert finding.code in RULES, finding
        assert finding.severity == RULES[finding.code][0], finding
        assert finding.file == shown, finding
        assert finding.line is None or 1 <= finding.line <= lines, (finding, lines)
    assert report.error_count == sum(n for code, n in report.counts.items()
                                     if RULES[code][0] == "error")
    assert (report.status == "INVALID") == (report.error_count > 0)


# ---------------------------------------------------------------------------------------
# Rows

# Text a chat turn can hold: any unicode (no surrogates), not blank.
words = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24).filter(
    str.strip)
ints = st.integers(-2**63, 2**63 - 1)  # what JSON writers (orjson) can write
json_leaf = st.none() | st.booleans() | ints | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@st.composite
def chat_rows(draw, marker: str) -> dict:
    """A valid canonical chat row; ``marker`` keeps it unique in its file."""
    turns = draw(st.integers(1, 3))
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(words)})
    for turn in range(turns):
        user = draw(words)
        messages.append({"role": "user", "content": f"{marker} {user}" if turn == 0 else user})
        messages.append({"role": "assistant", "content": draw(words)})
    return {"messages": messages}


def _turn(draw, row: dict, role: str | None = None) -> int:
    indices = [i for i, m in enumerate(row["messages"]) if role is None or m["role"] == role]
    return draw(st.sampled_from(indices))


# Each corruption breaks one row and says which error codes may name it. All keep the row
# in canonical chat (or make it no object at all), so the file stays one format.
@st.composite
def broken_row(draw, row: dict) -> tuple[object, set[str]]:
    kind = draw(st.sampled_from([
        "not_object", "messages_null", "messages_type", "messages_empty", "message_type",
        "role_missing", "role_unknown", "content_missing", "content_type", "content_empty",
        "no_assistant", "last_not_assistant", "system_not_first", "consecutive_role",
        "tool_order"]))
    messages = row["messages"]
    if kind == "not_object":
        value = draw(st.none() | st.booleans() | ints | words
                     | st.lists(json_leaf, max_size=3))
        return value, {"row_not_object", "jsonl_array"}  # a list on line 1 is an array
    if kind == "messages_null":
        return {"messages": None}, {"messages_missing"}
    if kind == "messages_type":
        value = draw(words | ints | st.booleans()
                     | st.dictionaries(st.text(max_size=4), json_leaf, max_size=2))
        return {"messages": value}, {"messages_type"}
    if kind == "messages_empty":
        return {"messages": []}, {"messages_empty"}
    index = _turn(draw, row)
    message = messages[index]
    if kind == "message_type":
        messages[index] = draw(st.none() | words | ints | st.lists(json_leaf,
                                                                             max_size=2))
        return row, {"message_not_object"}
    if kind == "role_missing":
        if draw(st.booleans()):
            del message["role"]
        else:
            message["role"] = None
        return row, {"role_missing"}
    if kind == "role_unknown":
        message["role"] = draw(
            words.filter(lambda r: r not in {"system", "user", "assistant", "tool"})
            | ints | st.booleans() | st.lists(json_leaf, max_size=2))
        return row, {"role_unknown"}
    if kind == "content_missing":
        if draw(st.booleans()):
            del message["content"]
        else:
            message["content"] = None
        return row, {"content_missing"}
    if kind == "content_type":
        message["content"] = draw(ints | st.booleans() | st.floats(
            allow_nan=False, allow_infinity=False) | st.dictionaries(
            st.text(max_size=4), json_leaf, min_size=1, max_size=2))
        return row, {"content_type"}
    if kind == "content_empty":
        message["content"] = draw(st.sampled_from(["", " ", "\n\t ", "\u3000", "\u2003\n"]))
        return row, {"content_empty"}
    if kind == "no_assistant":
        row["messages"] = [m for m in messages if m["role"] != "assistant"]
        return row, {"no_assistant", "consecutive_role"}
    if kind == "last_not_assistant":
        messages.append({"role": "user", "content": draw(words)})
        return row, {"last_not_assistant"}
    if kind == "system_not_first":
        at = draw(st.integers(1, len(messages)))
        messages.insert(at, {"role": "system", "content": draw(words)})
        return row, {"system_not_first", "first_not_user", "last_not_assistant"}
    if kind == "consecutive_role":
        at = _turn(draw, row, "user")
        messages.insert(at, {"role": "user", "content": draw(words)})
        return row, {"consecutive_role"}
    at = _turn(draw, row, "user")  # tool_order: a tool result right after a user turn
    messages.insert(at + 1, {"role": "tool", "content": draw(words)})
    return row, {"tool_order", "consecutive_role"}


@st.composite
def broken_line(draw, line: bytes) -> tuple[bytes, set[str]]:
    """One good JSONL line broken as bytes: bad UTF-8, cut short, not JSON at all."""
    kind = draw(st.sampled_from(["invalid_utf8", "truncated", "garbage", "deep", "number"]))
    if kind == "invalid_utf8":
        at = draw(st.integers(0, len(line)))
        bad = draw(st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xed\xa0\x80",
                                    b"\xf8\x88\x80\x80\x80"]))
        return line[:at] + bad + line[at:], {"invalid_utf8"}
    if kind == "truncated":  # a cut inside a multi-byte character leaves bad UTF-8 too
        return line[:draw(st.integers(1, len(line) - 1))], {"invalid_json", "invalid_utf8"}
    if kind == "garbage":
        text = draw(st.text(st.characters(exclude_categories=["Cs"],
                                          exclude_characters="\r\n"), min_size=1))
        data = text.encode()
        assume(text.strip() and not _parses(data))  # (a blank line is skipped, not bad)
        return data, {"invalid_json", "jsonl_array"}
    if kind == "deep":
        depth = draw(st.integers(1100, 3000))  # past orjson's nesting limit (1024)
        return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}", {"invalid_json"}
    # numbers JSON has no word for (orjson refuses them) or that are not text anyway
    number = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e99999",
                                   b"18446744073709551616", b"-9223372036854775809"]))
    return (line.replace(b'"content":', b'"content":' + number + b',"x":', 1),
            {"invalid_json", "content_type"})


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


@st.composite
def one_bad_line_files(draw):
    """(file bytes, 1-based line of the bad row in text mode, codes that may name it)."""
    count = draw(st.integers(1, 6))
    rows = [draw(chat_rows(f"<row {i}>")) for i in range(count)]
    bad = draw(st.integers(0, count - 1))
    lines = [orjson.dumps(r) for r in rows]
    if draw(st.booleans()):
        value, codes = draw(broken_row(rows[bad]))
        lines[bad] = orjson.dumps(value)
    else:
        lines[bad], codes = draw(broken_line(lines[bad]))
    # line endings as files come: LF, CRLF, a lone CR (old Mac), maybe none at the end
    endings = [draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) for _ in lines]
    if draw(st.booleans()):
        endings[-1] = b""
    data = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    number = text_lines(b"".join(line + end for line, end in
                                 zip(lines[:bad + 1], endings[:bad + 1], strict=True)))
    return data, number, codes


@fuzz(200)
@given(case=one_bad_line_files())
def test_one_bad_line_is_named_with_its_line_and_code(fuzz_ws, case):
    data, line, codes = case
    shown = fresh_batch(fuzz_ws, "rows.jsonl", data)
    report = run_inspector(fuzz_ws, BATCH)
    check_findings(report, shown, data)
    assert report.status == "INVALID", report.errors
    errors = [f for f in report.errors if f.severity == "error"]
    assert {f.line for f in errors} == {line}, (line, errors)
    assert {f.code for f in errors} <= codes, (codes, errors)


@fuzz(60)
@given(case=one_bad_line_files())
def test_the_line_is_the_one_the_job_loader_names(fuzz_ws, case):
    """Where the job's own loader refuses a file, it names the line the inspector names."""
    data, line, codes = case
    # Lines broken as bytes (the job's loader is laxer about row contents). Its stdlib
    # reader has no line for bad UTF-8 (UnicodeDecodeError) or too deep a nesting
    # (RecursionError); the inspector catches those before any job.
    assume("invalid_json" in codes and _decodes(data) and b"[" * 500 not in data)
    shown = fresh_batch(fuzz_ws, "rows.jsonl", data)
    report = run_inspector(fuzz_ws, BATCH)
    assert line in {f.line for f in report.errors}
    path = fuzz_ws.resolve(shown)
    with pytest.raises(sft_data.DataError) as job:
        sft_data.load_chat_rows([path])
    assert re.search(rf":{line}: ", str(job.value)), (str(job.value), line)
    if "invalid_json" in {f.code for f in report.errors}:
        with pytest.raises(TunestepError) as merged:
            data_rows.read_rows(path, shown)
        assert merged.value.line == line


@fuzz(100)
@given(rows=st.lists(chat_rows("?"), min_size=1, max_size=5),
       endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n  \r\n"]),
                        min_size=5, max_size=5))
def test_ready_means_the_job_loader_reads_every_row(fuzz_ws, rows, endings):
    for index, row in enumerate(rows):  # unique rows: duplicates are errors of their own
        row["messages"][1 if row["messages"][0]["role"] == "system" else 0]["content"] += (
            f" #{index}")
    data = b"".join(orjson.dumps(r) + endings[i] for i, r in enumerate(rows))
    shown = fresh_batch(fuzz_ws, "rows.jsonl", data)
    report = run_inspector(fuzz_ws, BATCH)
    check_findings(report, shown, data)
    assert report.status == "READY", report.errors
    path = fuzz_ws.resolve(shown)
    assert len(sft_data.load_chat_rows([path])) == len(rows) == report.files[0].rows
    assert [n for n, _ in data_rows.read_rows(path, shown)] == [
        n for n, line in enumerate(io.StringIO(data.decode(), newline=None), 1) if line.strip()]


def test_a_line_of_unicode_whitespace_is_blank_as_for_the_job(fuzz_ws):
    rows = [orjson.dumps({"messages": [{"role": "user", "content": f"q {i}"},
                                       {"role": "assistant", "content": "Grade: 5"}]})
            for i in range(2)]
    data = rows[0] + b"\n\x1f\n\xc2\xa0 \xe3\x80\x80\n" + rows[1] + b"\n"
    shown = fresh_batch(fuzz_ws, "rows.jsonl", data)
    report = run_inspector(fuzz_ws, BATCH)
    assert report.status == "READY" and report.counts.get("blank_lines") == 1
    assert report.files[0].rows == len(sft_data.load_chat_rows([fuzz_ws.resolve(shown)])) == 2
    assert [n for n, _ in data_rows.read_rows(fuzz_ws.resolve(shown), shown)] == [1, 4]


junk_line = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_any.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda r: orjson.dumps(r), chat_rows("!")),
    st.builds(lambda v: json.dumps({"messages": v}).encode(), json_any),
    st.builds(lambda v: json.dumps({"messages": [v, {"role": "assistant", "content": "a"}]}
                                   ).encode(), json_any),
)


@fuzz(150)
@given(lines=st.lists(junk_line, max_size=8),
       endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b""]), min_size=8,
                        max_size=8),
       container=st.sampled_from(["jsonl", "json"]))
def test_any_bytes_get_a_report_with_file_line_and_code(fuzz_ws, lines, endings, container):
    if container == "jsonl":
        data = b"".join(line + end for line, end in zip(lines, endings, strict=False))
    else:
        data = b"[" + b",\n".join(lines) + b"]"
    shown = fresh_batch(fuzz_ws, f"rows.{container}", data)
    report = run_inspector(fuzz_ws, BATCH, max_errors=30)
    check_findings(report, shown, data)
    if report.status == "READY":
        rows = sft_data.load_chat_rows([fuzz_ws.resolve(shown)])
        assert len(rows) == report.files[0].rows


@fuzz(100)
@given(data=st.data())
def test_a_bad_element_of_a_json_array_is_named_by_its_first_line(fuzz_ws, data):
    count = data.draw(st.integers(1, 5))
    rows = [data.draw(chat_rows(f"<row {i}>")) for i in range(count)]
    bad = data.draw(st.integers(0, count - 1))
    value, codes = data.draw(broken_row(rows[bad]))
    rows[bad] = value
    # one element per line after the "[" line: element i starts on line i + 2
    text = b"[\n" + b",\n".join(orjson.dumps(r) for r in rows) + b"\n]\n"
    shown = fresh_batch(fuzz_ws, "rows.json", text)
    report = run_inspector(fuzz_ws, BATCH)
    check_findings(report, shown, text)
    errors = [f for f in report.errors if f.severity == "error"]
    assert {f.line for f in errors} == {bad + 2}, errors
    assert {f.code for f in errors} <= codes | {"row_not_object"}, errors


# ---------------------------------------------------------------------------------------
# Mapping foreign formats

SHAREGPT_USER = ["human", "user"]
SHAREGPT_ASSISTANT = ["gpt", "assistant", "model", "chatgpt", "bard", "bing"]
# ChatML text is cut at its markers: a turn's text cannot hold them, nor a role be \W.
chatml_words = words.filter(lambda t: "<|im_" not in t and "|>" not in t)


@st.composite
def exchanges(draw, marker: str, text=words) -> list[tuple[str, str]]:
    turns = draw(st.integers(1, 3))
    out = []
    for turn in range(turns):
        user = draw(text)
        out.append(("user", f"{marker} {user}" if turn == 0 else user))
        out.append(("assistant", draw(text)))
    return out


@st.composite
def foreign_rows(draw, fmt: str, marker: str) -> tuple[dict, list[dict]]:
    """(a row in ``fmt``, the canonical messages it must map to)."""
    system = draw(st.none() | words)
    if fmt == "sharegpt":
        turns = draw(exchanges(marker))
        names = {"user": SHAREGPT_USER, "assistant": SHAREGPT_ASSISTANT}
        conversation = []
        expected = []
        for role, text in turns:
            if role == "assistant" and draw(st.booleans()):  # a tool call and its result
                call, result = draw(words), draw(words)
                conversation += [{"from": "function_call", "value": call},
                                 {"from": draw(st.sampled_from(["observation", "tool",
                                                                "function"])),
                                  "value": result}]
                expected += [{"role": "assistant",
                              "content": f"<tool_call>\n{call.strip()}\n</tool_call>"},
                             {"role": "tool", "content": result}]
            conversation.append({"from": draw(st.sampled_from(names[role])), "value": text})
            expected.append({"role": role, "content": text})
        row: dict = {"conversations": conversation}
        if system is not None:
            if draw(st.booleans()):
                conversation.insert(0, {"from": "system", "value": system})
            else:
                row["system"] = system  # a system column becomes the system turn
            expected.insert(0, {"role": "system", "content": system})
        return row, expected
    if fmt == "kto":  # a conversation and a label: only desirable answers are kept
        turns = draw(exchanges(marker))
        messages = [{"role": r, "content": t} for r, t in turns]
        label = draw(st.booleans())
        return {"messages": messages, "label": label}, messages if label else None
    if fmt == "alpaca":
        instruction, output = f"{marker} {draw(words)}", draw(words)
        extra = draw(st.sampled_from(["", " \n"]) | words)
        history = draw(st.lists(st.tuples(words, words), max_size=2))
        row = {"instruction": instruction, "input": extra, "output": output}
        if history:
            row["history"] = [list(pair) for pair in history]
        if system is not None:
            row["system"] = system
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        expected = ([{"role": "system", "content": system}] if system is not None else [])
        for question, answer in history:
            expected += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        expected += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": output}]
        return row, expected
    if fmt == "prompt_completion":
        if draw(st.booleans()):
            prompt, completion = f"{marker} {draw(words)}", draw(words)
            return {"prompt": prompt, "completion": completion}, [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        turns = draw(exchanges(marker))
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": r, "content": t} for r, t in turns]
        return {"prompt": messages[:-1], "completion": messages[-1:]}, messages
    if fmt == "chatml_text":
        turns = draw(exchanges(marker, chatml_words))
        if system is not None and "<|im_" not in system and "|>" not in system:
            turns.insert(0, ("system", system))
        text = "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in turns)
        return {"text": text}, [{"role": r, "content": t} for r, t in turns]
    # chat_parts: content as lists of text parts, joined by the mapping
    turns = draw(exchanges(marker))
    messages = []
    for role, text in turns:
        cut = draw(st.integers(0, len(text)))
        key = draw(st.sampled_from(["text", "value"]))
        messages.append({"role": role, "content": [{"type": "text", key: text[:cut]},
                                                   {"type": "text", key: text[cut:]}]})
    return {"messages": messages}, [{"role": r, "content": t} for r, t in turns]


@st.composite
def foreign_files(draw):
    fmt = draw(st.sampled_from(["sharegpt", "alpaca", "prompt_completion", "chatml_text",
                                "chat_parts", "kto"]))
    count = draw(st.integers(1, 4))
    pairs = [draw(foreign_rows(fmt, f"<row {i}>")) for i in range(count)]
    if all(expected is None for _, expected in pairs):  # an all-undesirable KTO file
        pairs.append(({**pairs[0][0], "label": True}, pairs[0][0]["messages"]))
    return fmt, pairs, draw(st.sampled_from(["jsonl", "json"]))


@fuzz(120)
@given(case=foreign_files())
def test_any_foreign_row_maps_to_ready_chat_keeping_every_text(fuzz_ws, case):
    fmt, pairs, container = case
    rows = [row for row, _ in pairs]
    data = (b"".join(orjson.dumps(r) + b"\n" for r in rows) if container == "jsonl"
            else orjson.dumps(rows))
    fresh_batch(fuzz_ws, f"rows.{container}", data)
    suggestion = suggest_mapping(fuzz_ws, BATCH)
    assert suggestion.status == "NEEDS_MAPPING", suggestion
    assert suggestion.formats == [{"chatml_text": "text"}.get(fmt, fmt)]
    result = apply_mapping(fuzz_ws, BATCH, suggestion.mapping)
    kept = [expected for _, expected in pairs if expected is not None]
    assert result.rows_out == len(kept), result.dropped
    assert result.rows_dropped == len(rows) - len(kept), result.dropped
    assert all(d.reason.startswith("drop_where") for d in result.dropped)  # KTO's only
    assert run_inspector(fuzz_ws, result.output).status == "READY"
    written = [orjson.loads(line) for line in
               fuzz_ws.resolve(result.files[0].output).read_bytes().splitlines()]
    assert [w["messages"] for w in written] == kept


def test_a_compact_json_array_loses_no_row_to_its_neighbours_drop(fuzz_ws):
    """Rows of a one-line .json array share line 1: dropping one must not drop the rest."""
    answer = {"role": "assistant", "content": "Grade: 5"}
    rows = [{"messages": [{"role": "user", "content": "q one"}, answer], "label": False},
            {"messages": [{"role": "user", "content": "q one"}, answer], "label": True},
            {"messages": [{"role": "user", "content": "q two"}, answer], "label": True},
            {"messages": [{"role": "user", "content": "q two"}, answer], "label": True}]
    fresh_batch(fuzz_ws, "rows.json", orjson.dumps(rows))
    report = run_inspector(fuzz_ws, BATCH)
    assert report.mapping_preview.rows_out == 2  # one undesirable, one duplicate
    result = apply_mapping(fuzz_ws, BATCH, report.suggested_mapping)
    assert (result.rows_in, result.rows_out, result.rows_dropped) == (4, 2, 2)
    assert [(d.line, d.reason.split(":")[0]) for d in result.dropped] == [
        (1, "drop_where"), (4, "duplicate_in_batch")]  # numbered by element
    written = fuzz_ws.resolve(result.files[0].output).read_bytes().splitlines()
    assert [orjson.loads(w)["messages"] for w in written] == [rows[1]["messages"],
                                                               rows[2]["messages"]]


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_a_bom_file_is_ready_and_the_job_reads_it(fuzz_ws, container):
    rows = [{"messages": [{"role": "user", "content": f"q {i}"},
                          {"role": "assistant", "content": "Grade: 5"}]} for i in range(2)]
    data = (b"".join(orjson.dumps(r) + b"\n" for r in rows) if container == "jsonl"
            else orjson.dumps(rows))
    shown = fresh_batch(fuzz_ws, f"rows.{container}", b"\xef\xbb\xbf" + data)
    assert run_inspector(fuzz_ws, BATCH).status == "READY"
    assert len(data_rows.read_rows(fuzz_ws.resolve(shown), shown)) == 2
    assert len(sft_data.load_chat_rows([fuzz_ws.resolve(shown)])) == 2


def test_an_openai_tool_call_is_ready_and_the_job_reads_it(fuzz_ws):
    """Once a known gap (a strict xfail): the loader now keeps tool calls and tools."""
    call = {"type": "function", "function": {"name": "lint", "arguments": "{}"}}
    tool = {"type": "function", "function": {"name": "lint", "parameters": {}}}
    row = {"messages": [{"role": "user", "content": "lint this"},
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": "no problems"},
                        {"role": "assistant", "content": "Grade: 9"}],
           "tools": [tool]}
    shown = fresh_batch(fuzz_ws, "rows.jsonl", orjson.dumps(row) + b"\n")
    assert run_inspector(fuzz_ws, BATCH).status == "READY"
    loaded = sft_data.load_chat_rows([fuzz_ws.resolve(shown)])[0]
    assert loaded["messages"][1] == {"role": "assistant", "content": None,
                                     "tool_calls": [call]}
    assert loaded["tools"] == [tool]


# ---------------------------------------------------------------------------------------
# Approval tokens

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()  # also trusted: a second operator
TRUSTED = {operator_keys.key_id(k.public_key()): k.public_key() for k in (KEY, OTHER)}


def sign(key=KEY, **fields) -> str:
    base = {"draft_id": "draft-0123456789ab", "digest": "ab" * 32,
            "workspace": "/home/op/ws", "op": "alice", "ttl_seconds": 3600, "now": NOW,
            "ledger_id": "5e" * 16}
    return A.sign_approval(key, **{**base, **fields})


# One token for the tests that draw from it: a fresh nonce per example would make the
# data generation depend on more than the seed.
TOKEN = sign()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[str, str, str]:
    prefix, claims, signature = token.split(".")
    return prefix, claims, signature


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(parts(token)[1] + "=="))


def refused(token: str) -> str:
    with pytest.raises(TunestepError) as err:
        A.verify_approval(token, TRUSTED, now=NOW + 10)
    return err.value.code


def canonical(claims: dict) -> bytes:
    return orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)


hex_digits = "0123456789abcdef"
VALID_CHANGES = {
    "aud": st.text(max_size=64),
    "act": st.text(max_size=64),
    "draft_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
    "digest": st.text(hex_digits, min_size=64, max_size=64),
    "workspace": st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                         max_size=30).map(lambda t: "/" + t),
    "op": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    "iat": st.integers(0, 2**53 - 1),
    "exp": st.integers(0, 2**53 - 1),
    "nonce": st.text(hex_digits, min_size=32, max_size=32),
}
INVALID_CHANGES = {
    "v": st.sampled_from([0, 2, -1, "1", True, 1.0]),
    "digest": st.text("0123456789ABCDEFxyz", min_size=1, max_size=70).filter(
        lambda d: not re.fullmatch("[0-9a-f]{64}", d)),
    "nonce": st.text(hex_digits, max_size=40).filter(lambda n: len(n) != 32),
    "kid": st.text(hex_digits + "G", max_size=20).filter(
        lambda k: not re.fullmatch("[0-9a-f]{16}", k)),
    "iat": st.sampled_from([-1, 2**53, "1800000000", 1.5, None]),
    "workspace": st.sampled_from(["", "relative/ws", "/a\x00b"]),
    "draft_id": st.sampled_from(["", "../x", "a/b", "-lead", "x" * 129]),
    "op": st.sampled_from(["", "bob smith", "-x", "o" * 65]),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_claims_changed_around_an_old_signature_are_refused(data):
    token = TOKEN
    _, _, signature = parts(token)
    claims = claims_of(token)
    if data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(VALID_CHANGES)))
        value = data.draw(VALID_CHANGES[field].filter(lambda v: v != claims[field]))
        expected = "approval_bad_signature"
    else:
        field = data.draw(st.sampled_from(sorted(INVALID_CHANGES)))
        value = data.draw(INVALID_CHANGES[field])
        expected = "approval_malformed"
    changed = {**claims, field: value}
    assert refused(f"tsa1.{b64(canonical(changed))}.{signature}") == expected


def test_the_key_id_decides_between_untrusted_and_bad_signature():
    token = TOKEN
    _, _, signature = parts(token)
    claims = claims_of(token)
    stranger = Ed25519PrivateKey.generate()
    for kid, code in ((operator_keys.key_id(OTHER.public_key()), "approval_bad_signature"),
                      (operator_keys.key_id(stranger.public_key()), "approval_untrusted_key"),
                      ("0" * 16, "approval_untrusted_key")):
        assert refused(f"tsa1.{b64(canonical({**claims, 'kid': kid}))}.{signature}") == code
    # a stranger's own valid token names its key as untrusted, not its signature
    assert refused(sign(stranger)) == "approval_untrusted_key"


@settings(max_examples=40, deadline=None)
@given(draft=VALID_CHANGES["draft_id"], nonce_pair=st.booleans(), by_other=st.booleans())
def test_claims_and_signatures_swapped_between_valid_tokens_are_refused(draft, nonce_pair,
                                                                         by_other):
    first = sign(draft_id="draft-first")
    second = sign(OTHER if by_other else KEY, draft_id=draft if not nonce_pair
                  else "draft-first")  # same draft: the nonces still differ
    assert A.verify_approval(first, TRUSTED, now=NOW) and A.verify_approval(second, TRUSTED,
                                                                            now=NOW)
    (_, c1, s1), (_, c2, s2) = parts(first), parts(second)
    assert refused(f"tsa1.{c1}.{s2}") == "approval_bad_signature"
    assert refused(f"tsa1.{c2}.{s1}") == "approval_bad_signature"
    # half of one claims text and half of the other: never the same bytes signed
    cut = len(c1) // 2
    assert refused(f"tsa1.{c1[:cut]}{c2[cut:]}.{s1}") in ("approval_malformed",
                                                         "approval_bad_signature")


def _escape_one(raw: bytes, draw) -> bytes:
    """The same JSON value with one string character written as a \\u escape."""
    text = raw.decode()
    spots = [m.start() for m in re.finditer(r'(?<=":")[A-Za-z0-9]', text)]
    at = draw(st.sampled_from(spots))
    return (text[:at] + f"\\u{ord(text[at]):04x}" + text[at + 1:]).encode()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_the_same_claims_written_another_way_are_malformed(data):
    """Equal claims in non-canonical JSON, with the old signature: refused before any key."""
    token = TOKEN
    _, _, signature = parts(token)
    claims = claims_of(token)
    raw = canonical(claims)
    variant = data.draw(st.sampled_from(["spaces", "indent", "unsorted", "escaped",
                                         "float", "duplicate", "slash", "bom", "trailing"]))
    if variant == "spaces":
        other = json.dumps(claims, sort_keys=True).encode()
    elif variant == "indent":
        other = orjson.dumps(claims, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    elif variant == "unsorted":
        keys = data.draw(st.permutations(sorted(claims)).filter(lambda k: k != sorted(k)))
        other = orjson.dumps({k: claims[k] for k in keys})
    elif variant == "escaped":
        other = _escape_one(raw, data.draw)
    elif variant == "float":
        field = data.draw(st.sampled_from(["v", "iat", "exp"]))
        other = raw.replace(f'"{field}":{claims[field]}'.encode(),
                            f'"{field}":{claims[field]}.0'.encode())
    elif variant == "duplicate":
        field = data.draw(st.sampled_from(sorted(claims)))
        other = raw[:-1] + b"," + orjson.dumps({field: claims[field]})[1:]
    elif variant == "slash":
        other = raw.replace(b'"/', b'"\\/', 1)
    elif variant == "bom":
        other = b"\xef\xbb\xbf" + raw
    else:
        other = raw + data.draw(st.sampled_from([b" ", b"\n", b"\x00", b"{}"]))
    assert other != raw
    if variant not in ("bom", "trailing"):
        assert json.loads(other) == claims  # the same claims, only written otherwise
    assert refused(f"tsa1.{b64(other)}.{signature}") == "approval_malformed"


def _std_alphabet(text: str) -> str:
    return text.replace("-", "+").replace("_", "/")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_padding_whitespace_case_and_separator_variants_are_refused(data):
    token = TOKEN
    prefix, claims, signature = parts(token)
    variant = data.draw(st.sampled_from([
        "pad_claims", "pad_signature", "inner_space", "std_alphabet", "prefix_case",
        "claims_case", "signature_case", "dot", "double_dot", "twice", "cut_signature",
        "long_signature", "zero_width"]))
    expected = {"approval_malformed"}
    if variant == "pad_claims":
        mutated = f"{prefix}.{claims}{'=' * data.draw(st.integers(1, 3))}.{signature}"
    elif variant == "pad_signature":
        mutated = f"{prefix}.{claims}.{signature}{'=' * data.draw(st.integers(1, 3))}"
    elif variant == "inner_space":
        space = data.draw(st.sampled_from([" ", "\t", "\n", "\r\n", "\u00a0", "\u3000"]))
        at = data.draw(st.integers(1, len(token) - 1))
        mutated = token[:at] + space + token[at:]
    elif variant == "std_alphabet":
        assume(any(c in "-_" for c in claims + signature))
        mutated = f"{prefix}.{_std_alphabet(claims)}.{_std_alphabet(signature)}"
    elif variant == "prefix_case":
        mutated = data.draw(st.sampled_from(["TSA1", "Tsa1", "tSa1", "tsA1"])) + token[4:]
    elif variant in ("claims_case", "signature_case"):
        text = claims if variant == "claims_case" else signature
        spots = [i for i, c in enumerate(text) if c.isalpha()]
        flips = set(data.draw(st.lists(st.sampled_from(spots), min_size=1, max_size=4)))
        changed = "".join(c.swapcase() if i in flips else c for i, c in enumerate(text))
        mutated = (f"{prefix}.{changed}.{signature}" if variant == "claims_case"
                   else f"{prefix}.{claims}.{changed}")
        # different bytes: unreadable claims, claims nobody signed (naming another key,
        # when the flip lands in the key id), or a signature that fails
        expected = {"approval_malformed", "approval_bad_signature"}
        if variant == "claims_case":
            expected.add("approval_untrusted_key")
    elif variant == "dot":
        dot = data.draw(st.sampled_from(["\u3002", "\uff0e", ",", ":", "·"]))
        mutated = token.replace(".", dot, data.draw(st.integers(1, 2)))
    elif variant == "double_dot":
        mutated = token.replace(".", "..", 1)
    elif variant == "twice":
        mutated = data.draw(st.sampled_from([token + "." + token, token + "\n" + token,
                                             token + token[4:]]))
    elif variant == "cut_signature":
        mutated = f"{prefix}.{claims}.{signature[:-data.draw(st.integers(1, 8))]}"
    elif variant == "long_signature":
        extra = data.draw(st.sampled_from(["A", "AA", "AAAA"]))
        mutated = f"{prefix}.{claims}.{signature}{extra}"
    else:
        at = data.draw(st.integers(1, len(token) - 1))
        mutated = token[:at] + data.draw(st.sampled_from(["\u200b", "\ufeff", "\x00"])) + \
            token[at:]
    assert mutated != token
    assert refused(mutated) in expected, (variant, mutated)


@settings(max_examples=30, deadline=None)
@given(before=st.sampled_from(["", " ", "\n", "\t", "\r\n", "  \n"]),
       after=st.sampled_from(["", " ", "\n", "\t", "\r\n", "\n\n"]))
def test_whitespace_around_a_pasted_token_is_the_only_slack(before, after):
    token = TOKEN
    claims = A.verify_approval(before + token + after, TRUSTED, now=NOW)
    assert claims == A.verify_approval(token, TRUSTED, now=NOW)


# ---------------------------------------------------------------------------------------
# Hostile MCP arguments: a named error, never a traceback

LONG = "x" * 5000
DIGITS = "9" * 5000
ARGS = "arguments"  # refused by the SDK's argument schema (the message names the argument)


def _known_codes() -> set[str]:
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[1] / ".specs" / "error_codes.md").read_text()
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", spec, flags=re.M))


# (tool, arguments, the code expected). Each row is a caller's mistake or an attack an
# assistant could make with one tool call; none may reach the client as an unexpected
# exception ("Error executing tool X" and nothing more).
HOSTILE_ARGUMENTS = [
    ("check_batch", {"batch": "../../etc"}, "path_escape"),
    ("check_batch", {"batch": "a\x00b"}, "path_control_char"),
    ("check_batch", {"batch": 5}, ARGS),
    ("run_inspector", {"path": LONG}, "path_too_long"),
    ("run_inspector", {"path": f"{LONG}/{LONG}"}, "path_too_long"),
    ("run_inspector", {"path": "/etc/passwd"}, "path_absolute"),
    ("run_inspector", {"path": "../outside"}, "path_escape"),
    ("run_inspector", {"path": "a\x00b"}, "path_control_char"),
    ("run_inspector", {"path": "hf://datasets/x"}, "hub_id"),
    ("run_inspector", {"path": "datasets", "max_errors": 10**30}, "bad_argument"),
    ("run_inspector", {"path": "datasets", "max_errors": -1}, "bad_argument"),
    ("run_inspector", {"path": ["datasets"]}, ARGS),
    ("apply_mapping", {"source": "../x"}, "path_escape"),
    ("apply_mapping", {"source": LONG}, "path_too_long"),
    ("apply_mapping", {"source": "datasets/incremental/batch_5_01",
                       "mapping": {"source_format": "nope"}}, "mapping_spec_invalid"),
    ("apply_mapping", {"source": "datasets/incremental/batch_5_01",
                       "mapping": {"source_format": "chat", "code": "import os"}},
     "mapping_spec_invalid"),
    ("merge_datasets", {"batch": "../../x"}, "path_escape"),
    ("merge_datasets", {"strategy": "zip"}, ARGS),
    ("preprocess", {"batch": LONG}, "batch_missing"),
    ("draft_job", {"overrides": {"seed": 2**70}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"seed": -1}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"learning_rate": "1e-4"}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"learning_rate": 1e308 * 10}}, ARGS),  # inf: not JSON
    ("draft_job", {"overrides": {"num_train_epochs": 1e300}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"per_device_train_batch_size": 0}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"precision": "fp64"}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"max_steps": -5}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"lora_dropout": 1}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"max_length": DIGITS}}, "plan_value_invalid"),
    ("draft_job", {"overrides": {"gate.max_regression": 5}}, "draft_bad_override"),
    ("draft_job", {"overrides": {"seed": [1]}}, ARGS),
    ("draft_job", {"timeout": DIGITS}, "plan_value_invalid"),
    ("draft_job", {"timeout": "30d"}, "plan_value_invalid"),
    ("draft_job", {"timeout": "-1h"}, "plan_value_invalid"),
    ("draft_job", {"mode": "qlora"}, ARGS),
    ("draft_job", {"batch": "a\x00b"}, "path_control_char"),
    ("submit_job", {"draft_id": LONG, "approval_token": LONG}, "approval_malformed"),
    ("submit_job", {"draft_id": "draft-0", "approval_token": "tsa1." + DIGITS},
     "approval_malformed"),
    ("promote_version", {"version": "../../x"}, "version_unknown"),
    ("promote_version", {"version": LONG}, "version_unknown"),
    ("job_status", {"job_id": "\x00"}, "job_unknown"),
    ("job_status", {"job_id": LONG}, "job_unknown"),
    ("job_logs", {"job_id": "j", "tail": 10**30}, "bad_argument"),
    ("job_logs", {"job_id": "j", "tail": 0}, "bad_argument"),
    ("cancel_job", {"job_id": LONG}, "job_unknown"),
    ("sync_model", {"version": LONG}, "sync_unknown_version"),
    ("list_jobs", {"limit": -10**20}, "bad_argument"),
    ("list_jobs", {"limit": 10**30}, "bad_argument"),
    ("list_jobs", {"limit": "x"}, ARGS),
]


@pytest.fixture(scope="module")
def mcp_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-fuzz") / "ws"
    build_sample_workspace(root, base_rows=20, batch_rows=5, batches=1, holdout_rows=5)
    return open_workspace(root)


@pytest.mark.parametrize("tool, args, code", HOSTILE_ARGUMENTS,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(HOSTILE_ARGUMENTS)])
def test_hostile_mcp_arguments_get_named_errors(mcp_ws, tool, args, code):
    """Case: an assistant passes a hostile argument; the refusal names its code (or the
    SDK's schema check names the argument), never an unexpected exception."""
    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    async def call():
        async with Client(build_server(ServerConfig(workspace=mcp_ws.root))) as client:
            return await client.call_tool(tool, args)

    result = anyio.run(call)
    assert result.is_error
    text = result.content[0].text
    if code == ARGS:
        assert re.search(f"validation errors? for {tool}Arguments", text), text[:300]
        assert next(iter(args)) in text
        return
    assert error_code(result) == code, text[:300]
    assert code in _known_codes()
