"""No row trains without its answer: the draft's length check and data.overlong."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import load_plan, render_plan_document
from tunestep.tools.drafts.draft import DraftRequest, draft_job

BASE = "datasets/processed_webdev_coding/train.jsonl"
BATCH = "datasets/incremental/batch_100_01/examples.jsonl"


def set_plan(ws, max_length: int | None = None, **data) -> None:
    plan = load_plan(ws).plan
    update = {"data": plan.data.model_copy(update=data)}
    if max_length is not None:
        update["training"] = plan.training.model_copy(update={"max_length": max_length})
    (ws.root / ".specs/training/plan.md").write_text(
        render_plan_document(plan.model_copy(update=update)))


def lengths_by_hand(ws, rel: str) -> list[tuple[int, int, int]]:
    """(line, row tokens, tokens outside the user turns), the slow obvious way."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(load_plan(ws).plan.model)
    out = []
    for line, raw in enumerate(ws.resolve(rel).read_bytes().splitlines(), start=1):
        messages = orjson.loads(raw)["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # The job shortens the last user turn before the last answer, nothing else.
        answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        last_user = max(i for i in range(answer) if messages[i]["role"] == "user")
        user, at = 0, 0
        for i, m in enumerate(messages):
            start = text.index(m["content"], at)
            at = start + len(m["content"])
            if i == last_user:
                user = sum(1 for s, e in enc["offset_mapping"] if e > start and s < at)
        out.append((line, len(enc["input_ids"]), len(enc["input_ids"]) - user))
    return out


def marker(ws) -> int:
    from transformers import AutoTokenizer

    from tunestep.tools.jobs.job_data import OMISSION

    tokenizer = AutoTokenizer.from_pretrained(load_plan(ws).plan.model)
    return len(tokenizer(OMISSION, add_special_tokens=False)["input_ids"])


def over(ws, limit: int) -> list[tuple[str, int, int, int]]:
    return [(rel, line, n, rest) for rel in (BASE, BATCH)
            for line, n, rest in lengths_by_hand(ws, rel) if n > limit]


def test_truncate_prompt_counts_the_rows_the_job_shortens(model_ws):
    ws = model_ws
    set_plan(ws, max_length=400)
    expected = over(ws, 400)
    assert expected and all(rest + marker(ws) + 1 <= 400 for *_, rest in expected)
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    lengths = draft.lengths
    assert (lengths.policy, lengths.max_length, lengths.rows) == ("truncate_prompt", 400, 300)
    assert lengths.overlong == lengths.shortened == len(expected) and lengths.dropped == 0
    assert [(r.file, r.line, r.tokens, r.rest_tokens) for r in lengths.listed] == \
        expected[:20]
    assert {r.action for r in lengths.listed} == {"shorten_prompt"}
    assert any("keeps the whole answer" in w for w in draft.warnings)
    plan_md = (ws.root / draft.run_plan).read_text()
    assert f"{len(expected)} longer (data.overlong `truncate_prompt`" in plan_md
    assert f"`{expected[0][0]}:{expected[0][1]}`" in plan_md


def test_a_shorter_max_length_override_is_counted_too(model_ws):
    """The inspector's cached report lists rows over the plan's max_length; a smaller
    override is counted afresh, not guessed from it."""
    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01",
                                             overrides={"max_length": 380}))
    assert draft.lengths.max_length == 380
    assert draft.lengths.overlong == len(over(model_ws, 380)) > 0


def test_drop_counts_and_error_refuses_naming_file_and_line(model_ws):
    ws = model_ws
    expected = over(ws, 400)
    set_plan(ws, max_length=400, overlong="drop")
    dropped = draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert dropped.lengths.dropped == len(expected) and dropped.lengths.shortened == 0
    assert any("leaves them out" in w for w in dropped.warnings)
    set_plan(ws, max_length=400, overlong="error")
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "row_overlong"
    assert (err.value.path, err.value.line) == expected[0][:2]
    assert f"{expected[0][0]}:{expected[0][1]} ({expected[0][2]:,} tokens)" in err.value.message


def test_a_row_whose_answer_cannot_fit_is_counted_as_dropped(model_ws):
    """truncate_prompt can only cut the last user turn: a row still too long without it
    would lose its grade, so the job drops it (its own rule); the draft counts and names
    those rows, and the rest as shortened."""
    ws = model_ws
    limit = 200
    rows = over(ws, limit)
    hopeless = [r for r in rows if r[3] + marker(ws) + 1 > limit]
    assert hopeless and len(hopeless) < len(rows)
    set_plan(ws, max_length=limit)
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    lengths = draft.lengths
    assert lengths.dropped == len(hopeless)
    assert lengths.shortened == len(rows) - len(hopeless)
    assert lengths.answer_too_long[0] == f"{hopeless[0][0]}:{hopeless[0][1]}"
    warning = next(w for w in draft.warnings if "cannot keep their answer" in w)
    assert f"{hopeless[0][0]}:{hopeless[0][1]}" in warning


def test_the_host_counts_what_the_job_does(model_ws):
    """The job's own shortening (tools/jobs/job_data.shorten_prompt, with the training
    template) agrees with the host's count on which rows it can keep."""
    from transformers import AutoTokenizer

    from tunestep.tools.jobs import job_data, sft_data

    ws = model_ws
    limit = 200
    set_plan(ws, max_length=limit)
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    tokenizer = AutoTokenizer.from_pretrained(load_plan(ws).plan.model)
    template = (Path(job_data.__file__).parent / "qwen3_training.jinja").read_text()
    rows = {(rel, line): orjson.loads(raw)["messages"] for rel in (BASE, BATCH)
            for line, raw in enumerate(ws.resolve(rel).read_bytes().splitlines(), start=1)}
    agree = 0
    for listed in draft.lengths.listed:
        fitted = job_data.shorten_prompt({"messages": rows[(listed.file, listed.line)]},
                                         tokenizer, template, limit)
        assert (fitted is not None) == (listed.action == "shorten_prompt"), listed
        if fitted is not None:
            n = len(sft_data.tokenize_row(fitted["messages"], tokenizer, template,
                                          None)["input_ids"])
            assert n <= limit
        agree += 1
    assert agree == len(draft.lengths.listed) > 0
