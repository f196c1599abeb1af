"""run_inspector on the sample workspace and on crafted rows: every rule, with file and line."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace, make_row
from tunestep.tools.inspector import RULES, InspectionReport, run_inspector

HOLDOUT = "datasets/processed_webdev_coding/validation.jsonl"
TRAIN = "datasets/processed_webdev_coding/train.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def chat(user: str = "Review: <p>hi</p>", answer: str = "Fine.\nGrade: 8",
         system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def codes_at(report: InspectionReport) -> set[tuple[int | None, str]]:
    return {(f.line, f.code) for f in report.errors}


def holdout_rows(ws: Workspace) -> list[dict]:
    return [orjson.loads(line) for line in ws.resolve(HOLDOUT).read_bytes().splitlines()]


# --- the sample workspace --------------------------------------------------------------

def test_sample_batches_ready_or_needing_mapping_without_false_alarms(sample_ws):
    first = run_inspector(sample_ws, "datasets/incremental/batch_100_01")
    assert first.status == "READY", first.errors
    assert first.error_count == 0 and first.warning_count == 0
    assert first.files[0].format == "chat" and first.files[0].rows == 100
    assert first.stats.rows == 100 and first.stats.roles == {
        "system": 100, "user": 100, "assistant": 100}
    assert first.stats.turns.min == first.stats.turns.max == 3
    assert sum(first.stats.grades.values()) == 100
    assert first.duplicates.compared_with == [TRAIN]
    assert first.leakage.checked and first.leakage.overlap_rows == 0

    second = run_inspector(sample_ws, "datasets/incremental/batch_100_02")
    assert second.status == "NEEDS_MAPPING"
    assert second.files[0].format == "sharegpt"
    assert second.suggested_mapping.source_format == "sharegpt"
    assert second.mapping_preview.rows_out == 100
    assert second.error_count == 0 and second.warning_count == 0

    third = run_inspector(sample_ws, "datasets/incremental/batch_100_03")
    assert third.status == "READY"
    # step 3 is compared with the base train set and both earlier batches
    assert len(third.duplicates.compared_with) == 3
    assert third.leakage.overlap_rows == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_leakage_warnings_on_other_sample_seeds(tmp_path, seed):
    """Shared templates and code idioms are boilerplate, whatever the generator drew."""
    build_sample_workspace(tmp_path / "ws", seed=seed)
    ws = open_workspace(tmp_path / "ws")
    for batch in ("batch_100_01", "batch_100_02", "batch_100_03"):
        report = run_inspector(ws, f"datasets/incremental/{batch}")
        assert report.counts.get("holdout_overlap", 0) == 0, report.errors
        assert report.error_count == 0, report.errors


def test_whole_folder_and_single_file_paths(sample_ws):
    one = run_inspector(sample_ws, "datasets/incremental/batch_100_01/examples.jsonl")
    assert one.status == "READY" and one.path.endswith("examples.jsonl")
    # The base train set is READY and is not compared with itself.
    train = run_inspector(sample_ws, TRAIN)
    assert train.status == "READY" and train.duplicates.compared_with == []
    # The hold-out set can be inspected; it is not checked for leakage into itself.
    held = run_inspector(sample_ws, HOLDOUT)
    assert held.status == "READY" and not held.leakage.checked
    assert "hold-out" in held.leakage.note


def test_caller_errors_raise(sample_ws):
    with pytest.raises(TunestepError) as missing:
        run_inspector(sample_ws, "datasets/incremental/nope")
    assert missing.value.code == "path_missing"
    for bad, code in [("../outside", "path_escape"), ("/etc/passwd", "path_absolute"),
                      ("a\x00b", "path_control_char")]:
        with pytest.raises(TunestepError) as caught:
            run_inspector(sample_ws, bad)
        assert caught.value.code == code
    (sample_ws.root / "notes.txt").write_text("hello")
    with pytest.raises(TunestepError) as unsupported:
        run_inspector(sample_ws, "notes.txt")
    assert unsupported.value.code == "data_format"


def test_empty_folder_is_invalid_not_an_exception(sample_ws):
    (sample_ws.root / "datasets/incremental/batch_100_04").mkdir()
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID" and report.counts == {"no_data_files": 1}


# --- the cache -------------------------------------------------------------------------

def test_unchanged_batch_comes_from_the_ledger_cache(sample_ws):
    path = "datasets/incremental/batch_100_01"
    first = run_inspector(sample_ws, path)
    again = run_inspector(sample_ws, path)
    assert not first.cached and again.cached
    assert again.model_dump(exclude={"cached"}) == first.model_dump(exclude={"cached"})
    with ledger.open_ledger(sample_ws) as conn:
        stored = conn.execute("SELECT path FROM inspections").fetchall()
    assert [r["path"] for r in stored] == [path]
    # A changed file, a changed plan setting or another max_errors is a new key.
    target = sample_ws.resolve(f"{path}/examples.jsonl")
    target.write_bytes(target.read_bytes() + orjson.dumps(chat()) + b"\n")
    changed = run_inspector(sample_ws, path)
    assert not changed.cached and changed.files[0].rows == 101
    assert not run_inspector(sample_ws, path, max_errors=5).cached
    # A changed hold-out set also invalidates the report (leakage depends on it).
    held = sample_ws.resolve(HOLDOUT)
    held.write_bytes(held.read_bytes() + orjson.dumps(chat("x y z")) + b"\n")
    assert not run_inspector(sample_ws, path).cached


def test_cached_report_survives_a_broken_ledger_row(sample_ws):
    path = "datasets/incremental/batch_100_01"
    first = run_inspector(sample_ws, path)
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE inspections SET report = '{\"not\": 1}'")
    again = run_inspector(sample_ws, path)
    assert not again.cached and again.status == first.status


# --- duplicates and leakage ------------------------------------------------------------

def test_duplicates_inside_the_batch_and_of_earlier_data(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    train_row = orjson.loads(sample_ws.resolve(TRAIN).read_bytes().splitlines()[4])
    batch1_row = orjson.loads(sample_ws.resolve(
        "datasets/incremental/batch_100_01/examples.jsonl").read_bytes().splitlines()[9])
    fresh = make_row(random.Random(99), 9001)
    # Same conversation with other key order and spacing is still a duplicate.
    respelled = {"messages": [{"content": m["content"], "role": m["role"]}
                              for m in fresh["messages"]]}
    write_jsonl(folder / "a.jsonl", [fresh, train_row, batch1_row])
    (folder / "b.jsonl").write_bytes(orjson.dumps(respelled, option=orjson.OPT_INDENT_2)
                                     .replace(b"\n", b" ") + b"\n")
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID"
    found = {(f.file.rsplit("/", 1)[-1], f.line, f.code) for f in report.errors}
    assert ("a.jsonl", 2, "duplicate_of_earlier") in found
    assert ("a.jsonl", 3, "duplicate_of_earlier") in found
    assert ("b.jsonl", 1, "duplicate_in_batch") in found
    message = next(f.message for f in report.errors if f.line == 2)
    assert TRAIN in message and "line 5" in message
    assert report.duplicates.in_input == 1 and report.duplicates.of_earlier == 2
    # The repair mapping would keep only the one new row.
    assert report.suggested_mapping is not None
    assert report.mapping_preview.rows_out == 1


def test_later_batches_are_not_earlier(sample_ws):
    """Batch 1 is not compared with batches 2 and 3 (they come later)."""
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_01")
    assert report.duplicates.compared_with == [TRAIN]


def test_holdout_copy_is_an_error_and_shared_wording_a_warning(sample_ws):
    held = holdout_rows(sample_ws)
    copy = held[6]
    shouted = {"messages": [dict(m, content="  " + m["content"].upper().replace(" ", "   "))
                            for m in copy["messages"]]}
    # A new prompt that quotes a whole hold-out snippet: a near match, not a copy.
    snippet = held[11]["messages"][1]["content"]
    quoting = chat(user="Please look again at this:\n" + snippet + "\nIs it better now?",
                   answer="Somewhat.\nGrade: 6")
    # Two lines of a long hold-out snippet: shared wording well under half of it.
    lines = held[16]["messages"][1]["content"].split("\n")[2:4]
    partial = chat(user="Have a look at this part:\n" + "\n".join(lines),
                   answer="Fine.\nGrade: 9")
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    write_jsonl(folder / "x.jsonl", [make_row(random.Random(5), 7001), shouted, quoting,
                                     partial])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert {(2, "holdout_duplicate"), (3, "holdout_near_match"),
            (4, "holdout_overlap")} <= codes_at(report)
    near = next(f for f in report.errors if f.code == "holdout_near_match")
    assert near.severity == "warning" and f"{HOLDOUT}:12" in near.message
    overlap = next(f for f in report.errors if f.code == "holdout_overlap")
    assert overlap.severity == "warning" and f"{HOLDOUT}:17" in overlap.message
    exact = next(f for f in report.errors if f.code == "holdout_duplicate")
    assert f"{HOLDOUT}:7" in exact.message
    assert report.leakage.exact == 1 and report.leakage.overlap_rows == 1
    assert report.leakage.near_match_rows == 1
    [row] = report.leakage.near_matches
    assert (row.line, row.holdout_line) == (3, 12) and row.containment >= 0.5


# --- rules on crafted rows -------------------------------------------------------------

CRAFTED = [
    ("row_not_object", [1, 2]),
    ("row_not_object", None),
    ("messages_type", {"messages": "hello"}),
    ("messages_missing", {"messages": None}),
    ("messages_empty", {"messages": []}),
    ("message_not_object", {"messages": ["hi", {"role": "assistant", "content": "x"}]}),
    ("role_missing", {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}),
    ("role_unknown", {"messages": [{"role": "bot", "content": "q"},
                                   {"role": "assistant", "content": "a"}]}),
    ("content_missing", {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}),
    ("content_missing", {"messages": [{"role": "user", "content": None},
                                      {"role": "assistant", "content": "a"}]}),
    ("content_type", {"messages": [{"role": "user", "content": 5},
                                   {"role": "assistant", "content": "a"}]}),
    ("content_empty", {"messages": [{"role": "user", "content": " \n"},
                                    {"role": "assistant", "content": "a"}]}),
    ("system_not_first", {"messages": [{"role": "user", "content": "q"},
                                       {"role": "system", "content": "s"},
                                       {"role": "assistant", "content": "a"}]}),
    ("consecutive_role", {"messages": [{"role": "user", "content": "q"},
                                       {"role": "user", "content": "q2"},
                                       {"role": "assistant", "content": "a"}]}),
    ("tool_order", {"messages": [{"role": "user", "content": "q"},
                                 {"role": "tool", "content": "{}"},
                                 {"role": "assistant", "content": "a"}]}),
    ("no_assistant", {"messages": [{"role": "user", "content": "q"}]}),
    ("last_not_assistant", {"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "a"},
                                         {"role": "user", "content": "more?"}]}),
    ("format_unknown", {"question": "q", "answer": "a"}),
]


@pytest.mark.parametrize(("code", "row"), CRAFTED, ids=[c for c, _ in CRAFTED])
def test_each_rule_names_file_line_and_code(sample_ws, code, row):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    good = [make_row(random.Random(i), 8000 + i) for i in range(3)]
    write_jsonl(folder / "rows.jsonl", [good[0], good[1], row, good[2]])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID"
    assert (3, code) in codes_at(report), report.errors
    finding = next(f for f in report.errors if f.code == code)
    assert finding.file == "datasets/incremental/batch_100_04/rows.jsonl"
    assert finding.severity == RULES[code][0] == "error"
    assert report.stats.rows == 3  # the good rows still count


def test_warnings_do_not_block_ready(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    rows = [
        dict(chat(user="Check <b>this</b> please", answer="Hello {{name}}.\nGrade: 5"),
             id=7),
        {"messages": [{"role": "user", "content": "q one two", "weight": 0},
                      {"role": "assistant", "content": "No grade here", "weight": 0.5}]},
        chat(user="fine", answer="Grade: 9"),
    ]
    write_jsonl(folder / "rows.jsonl", rows)
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "READY", report.errors
    found = codes_at(report)
    assert {(1, "unexpected_key"), (1, "template_placeholder"), (2, "weight_ignored"),
            (2, "grade_unparseable")} <= found
    assert report.error_count == 0 and report.warning_count == 4


def test_an_answer_without_a_user_turn_trains_with_a_warning(sample_ws):
    """OpenAI's fine-tuning takes a system turn and an answer alone: READY, a warning."""
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    write_jsonl(folder / "rows.jsonl", [
        chat(user="fine", answer="Grade: 9"),
        {"messages": [{"role": "system", "content": "Be kind."},
                      {"role": "assistant", "content": "Grade: 8"}]}])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "READY" and (2, "first_not_user") in codes_at(report)
    assert RULES["first_not_user"][0] == "warning"


def test_errors_are_capped_but_all_counted(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
    write_jsonl(folder / "rows.jsonl", rows)
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04", max_errors=7)
    listed = [f for f in report.errors if f.severity == "error"]
    assert [f.line for f in listed] == list(range(1, 8))  # the first ones, in order
    assert report.error_count == 40 and report.counts["no_assistant"] == 40
    assert report.truncated
    assert report.suggested_mapping is None  # a repair would drop every row


def test_mixed_formats_name_the_first_line_of_each(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    rows = [chat(), chat(user="b"), {"conversations": [{"from": "human", "value": "q"},
                                                       {"from": "gpt", "value": "a"}]},
            {"instruction": "i", "input": "", "output": "o"}]
    write_jsonl(folder / "rows.jsonl", rows)
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID" and report.files[0].format == "mixed"
    mixed = next(f for f in report.errors if f.code == "mixed_formats")
    assert mixed.line == 1
    assert "from line 1" in mixed.message and "from line 3" in mixed.message \
        and "from line 4" in mixed.message
    assert report.files[0].first_lines == {"chat": 1, "sharegpt": 3, "alpaca": 4}
    assert report.suggested_mapping is None


def test_folder_with_a_ready_file_and_a_foreign_one(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    write_jsonl(folder / "a.jsonl", [make_row(random.Random(1), 9100)])
    write_jsonl(folder / "b.jsonl", [{"instruction": "Grade <i>x</i>", "input": "",
                                      "output": "Grade: 4"}])
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert [f.status for f in report.files] == ["READY", "NEEDS_MAPPING"]
    assert report.status == "NEEDS_MAPPING"
    assert report.suggested_mapping.source_format == "alpaca"
    assert report.mapping_preview.rows_out == 2


def test_progress_is_reported(sample_ws, monkeypatch):
    from tunestep.tools.inspector import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY", 16)
    calls = []
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_01",
                           progress=lambda done, total, message: calls.append((done, total,
                                                                               message)))
    assert report.status == "READY"
    assert calls and calls[-1][0] == 100 and calls[-1][1] is None
    assert "examples.jsonl" in calls[-1][2]
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_a_failing_progress_sink_does_not_fail_the_inspection(sample_ws):
    def broken(done, total, message):
        raise RuntimeError("client went away")

    assert run_inspector(sample_ws, "datasets/incremental/batch_100_01",
                         progress=broken).status == "READY"


def test_hub_dataset_offline_is_a_clear_error(sample_ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunestepError) as caught:
        run_inspector(sample_ws, "hf://datasets/someone/some-data")
    assert caught.value.code == "hub_offline"
    with pytest.raises(TunestepError) as bad:
        run_inspector(sample_ws, "hf://datasets/not a valid id")
    assert bad.value.code == "hub_id"


def test_report_is_sized_for_a_chat(sample_ws):
    folder = sample_ws.resolve("datasets/incremental/batch_100_04")
    rows = [{"messages": [{"role": "user", "content": "q" * 50}]} for _ in range(5000)]
    write_jsonl(folder / "rows.jsonl", rows)
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.error_count >= 5000
    assert len(report.model_dump_json()) < 40_000


def test_every_rule_code_is_documented():
    spec = (Path(__file__).resolve().parents[1] / ".specs" / "inspector_rules.md").read_text()
    missing = [code for code in RULES if f"| `{code}` |" not in spec]
    assert not missing, f"document these rule codes in .specs/inspector_rules.md: {missing}"
