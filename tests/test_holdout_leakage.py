"""Hold-out leakage judged on what the model sees: the issue's attacks, through
run_inspector and through draft_job, with the originals and the hold-out left untouched.

The attacks (issue 17): copies of every hold-out row with a zero-width space after each
space; a hold-out row's code with a reworded answer; only the system prompt changed.
Each must be an error naming the training file:line and the hold-out file:line, and must
block the draft; a near match must reach the draft as a `holdout near match` warning.
"""

from __future__ import annotations

import hashlib
import random

import orjson
import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.demo.sample_workspace import make_row
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.inspector import run_inspector
from tunestep.tools.inspector.leakage import NEAR_MATCH, normalize_prompt, prompt_words

HOLDOUT = "datasets/processed_webdev_coding/validation.jsonl"
BATCH = "datasets/incremental/batch_100_01"
LEAK = f"{BATCH}/leak.jsonl"


def held_rows(ws) -> list[dict]:
    return [orjson.loads(line) for line in ws.resolve(HOLDOUT).read_bytes().splitlines()]


def write_rows(ws, rel: str, rows: list[dict]) -> None:
    ws.resolve(rel).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def digests(ws) -> dict[str, str]:
    """sha256 of every data file of the workspace: originals and the hold-out set."""
    return {str(p.relative_to(ws.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws.root / "datasets").rglob("*")) if p.is_file()}


def with_content(row: dict, role: str, change) -> dict:
    return {"messages": [dict(m, content=change(m["content"])) if m["role"] == role else m
                         for m in row["messages"]]}


def zero_width_after_spaces(row: dict) -> dict:
    return {"messages": [dict(m, content=m["content"].replace(" ", " \u200b"))
                         for m in row["messages"]]}


def reworded_answer(row: dict) -> dict:
    return with_content(row, "assistant",
                        lambda text: "Here is my review.\n" + text.replace("- ", "* "))


def other_system_prompt(row: dict) -> dict:
    return with_content(row, "system", lambda _: "You are a strict senior reviewer.")


ATTACKS = {
    "zero-width space after each space": zero_width_after_spaces,
    "the code with a reworded answer": reworded_answer,
    "only the system prompt changed": other_system_prompt,
    # more of the same family: what the tokenizer sees differs, a reader sees no change
    "spaces replaced by zero-width spaces": lambda r: with_content(
        r, "user", lambda t: t.replace(" ", "\u200b")),
    "joiners inside words, upper case": lambda r: with_content(
        r, "user", lambda t: "\u200d".join(t.upper())),
    "full-width letters and no-break spaces": lambda r: with_content(
        r, "user", lambda t: t.replace("a", "\uff41").replace(" ", "\u00a0")),
    "control characters and a BOM": lambda r: with_content(
        r, "user", lambda t: "\ufeff" + t.replace("(", "\x01(").replace(";", "\x7f;")),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_on_a_holdout_row_is_an_error_naming_both_rows(sample_ws, attack):
    held = held_rows(sample_ws)
    before = digests(sample_ws)
    write_rows(sample_ws, LEAK, [make_row(random.Random(3), 9100), ATTACKS[attack](held[4])])
    before[LEAK] = digests(sample_ws)[LEAK]
    report = run_inspector(sample_ws, BATCH)
    assert report.status == "INVALID"
    [finding] = [f for f in report.errors if f.code == "holdout_duplicate"]
    assert (finding.file, finding.line, finding.severity) == (LEAK, 2, "error")
    assert f"{HOLDOUT}:5" in finding.message
    assert report.leakage.exact == 1
    assert digests(sample_ws) == before  # only read


def test_copies_of_every_holdout_row_with_zero_width_spaces_are_all_caught(sample_ws):
    held = held_rows(sample_ws)
    write_rows(sample_ws, LEAK, [zero_width_after_spaces(r) for r in held])
    report = run_inspector(sample_ws, BATCH, max_errors=1000)
    found = {(f.line, f.message.split(HOLDOUT + ":")[1].split(" ")[0])
             for f in report.errors if f.code == "holdout_duplicate" and f.file == LEAK}
    assert found == {(n, str(n)) for n in range(1, len(held) + 1)}
    assert report.leakage.exact == len(held) == 40


def test_the_normalization_folds_what_a_reader_cannot_see():
    plain = prompt_words("Grade this:\n<img src=\"cart1.png\">  now")
    assert plain == ["grade", "this:", "<img", 'src="cart1.png">', "now"]
    for spelled in ["GRADE\tthis:\u2028<img src=\"cart1.png\">\u3000now",
                    "Grade \u200bthis: \u200b<img \u200bsrc=\"cart1.png\"> \u200bnow",
                    "Gr\u00adade th\u2060is:\n<img\u00a0src=\"cart1.png\">\u200e now",
                    "\uff27rade this:\x00\n<img src=\"cart1.png\">\x1b now"]:
        assert normalize_prompt(spelled)[1] == "".join(plain), spelled
    # Different words stay different.
    assert normalize_prompt("Grade this: <img src=\"cart2.png\"> now")[1] != "".join(plain)


def test_a_reworded_instruction_over_the_same_code_is_a_near_match(sample_ws):
    held = held_rows(sample_ws)
    row = held[16]  # a long snippet (seven code lines)
    reworded = with_content(row, "user", lambda t: "Please grade the following code that "
                            "was submitted for review today.\n" + t.split("\n", 1)[1])
    write_rows(sample_ws, LEAK, [reworded])
    report = run_inspector(sample_ws, BATCH)
    assert report.status == "READY"  # a warning: the operator decides
    [near] = [f for f in report.errors if f.code == "holdout_near_match"]
    assert (near.file, near.line) == (LEAK, 1) and f"{HOLDOUT}:17" in near.message
    [row_found] = report.leakage.near_matches
    assert row_found.containment >= NEAR_MATCH == report.leakage.near_match_threshold


@pytest.mark.parametrize("seed", [4, 5])
def test_fresh_sample_rows_are_never_near_matches(tmp_path, seed):
    """Rows from the same generator (same templates, same code idioms) but other
    submissions: no exact or near match (a shared template line may still be an
    overlap warning: that rule is older and looser)."""
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    build_sample_workspace(tmp_path / "ws", seed=seed)
    ws = open_workspace(tmp_path / "ws")
    rng = random.Random(seed)
    write_rows(ws, LEAK, [make_row(rng, 50_000 + i) for i in range(300)])
    report = run_inspector(ws, BATCH)
    assert report.status == "READY", report.errors
    assert "holdout_near_match" not in report.counts and report.leakage.exact == 0


# ---------------------------------------------------------------------------------------
# The draft


@pytest.mark.parametrize("attack", ["zero-width space after each space",
                                    "the code with a reworded answer",
                                    "only the system prompt changed"])
def test_an_attack_blocks_the_draft_naming_both_files_and_lines(model_ws, attack):
    held = held_rows(model_ws)
    write_rows(model_ws, LEAK, [make_row(random.Random(3), 9100), ATTACKS[attack](held[7])])
    before = digests(model_ws)
    with pytest.raises(TunestepError) as err:
        draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "batch_not_ready"
    assert f"{LEAK}:2 holdout_duplicate" in err.value.message
    assert f"{HOLDOUT}:8" in err.value.message
    assert (err.value.path, err.value.line) == (LEAK, 2)
    assert digests(model_ws) == before


def test_the_draft_checks_the_rows_itself_when_a_verdict_is_forged(model_ws):
    """Case: the inspector's verdict is cached in the ledger, which the assistant can
    write: the INVALID report of a leaked batch is rewritten to READY in the SQLite file
    itself. The draft reads the train files itself and still refuses, naming both rows."""
    import sqlite3

    held = held_rows(model_ws)
    write_rows(model_ws, LEAK, [make_row(random.Random(3), 9100),
                                zero_width_after_spaces(held[2]), other_system_prompt(held[9])])
    report = run_inspector(model_ws, BATCH)
    assert report.status == "INVALID" and report.leakage.exact == 2
    forged = report.model_copy(update={"status": "READY", "errors": [], "error_count": 0,
                                       "counts": {}, "leakage": report.leakage.model_copy(
                                           update={"exact": 0})})
    db = sqlite3.connect(model_ws.root / ".tunestep" / "state.sqlite")
    with db:
        changed = db.execute("UPDATE inspections SET report = ? WHERE cache_key = ?",
                             (forged.model_dump_json(), report.cache_key)).rowcount
    db.close()
    assert changed == 1 and run_inspector(model_ws, BATCH).status == "READY"  # believed
    before = digests(model_ws)
    with pytest.raises(TunestepError) as err:
        draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "holdout_leak"
    assert (err.value.path, err.value.line) == (LEAK, 2)
    assert f"{LEAK}:2 has the prompt of hold-out row {HOLDOUT}:3" in err.value.message
    assert f"{LEAK}:3 has the prompt of hold-out row {HOLDOUT}:10" in err.value.message
    assert digests(model_ws) == before


def test_a_near_match_reaches_the_draft_as_a_warning(model_ws):
    held = held_rows(model_ws)
    snippet = held[11]["messages"][1]["content"]
    quoting = {"messages": [{"role": "user", "content": "Please look again at this:\n"
                             + snippet + "\nIs it better now?"},
                            {"role": "assistant", "content": "Somewhat.\nGrade: 6"}]}
    write_rows(model_ws, LEAK, [quoting])
    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    near = [w for w in draft.warnings if w.startswith("holdout near match")]
    assert len(near) == 1 and f"{LEAK}:1 " in near[0] and f"{HOLDOUT}:12" in near[0]
    from tunestep.tools.drafts.review import review  # what the approval screen is built from

    assert review(draft, str(model_ws.root)).near_matches == near
