"""No row trains without its answer: the step's lengths, checked before a draft is made.

TRL truncates a row longer than ``max_length`` by keeping its start, so what is lost is
the end: the assistant's answer, its grade and the end token. Before a draft is made every
training row is counted with the model's real tokenizer and chat template. The counts
come from the inspector's cached report (``run_inspector(tokens=True)``: cached by the
content of each file, the tokenizer and ``max_length``), so an unchanged file is not
tokenized again. Each over-long row is then handled as ``data.overlong`` says:

- ``truncate_prompt`` (default): the job shortens the middle of the last user turn
  before the answer and keeps the whole answer (``tools/jobs/job_data.shorten_prompt``).
  The host applies the job's own rule to count: a row fits that way when the row without
  that user turn's content, plus the omission marker and one kept token, fits; the job
  drops a row that does not (its answer alone is too long), and the host counts it as
  dropped and says so, naming the rows.
- ``drop``: the job leaves the row out; the host counts how many.
- ``error``: the draft is refused (``row_overlong``, naming file and line).

The job does the shortening or dropping (and logs each row); the host counts and shows it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace

# What the job keeps of a shortened user turn besides its omission marker: one token.
MIN_PROMPT_TOKENS = 1
SHOWN = 20  # over-long rows listed in a draft; all are counted

Policy = Literal["drop", "truncate_prompt", "error"]


class LongRow(BaseModel):
    file: str
    line: int | None
    tokens: int  # the whole rendered row
    rest_tokens: int | None = None  # the row without its user turns' contents
    action: Literal["shorten_prompt", "drop", "refuse"]


class LengthCheck(BaseModel):
    """What the step does with rows longer than max_length, counted before the draft."""

    policy: Policy
    max_length: int
    tokenizer: str
    rows: int  # training rows counted
    overlong: int  # rows longer than max_length
    shortened: int = 0  # truncate_prompt: rows whose user turn the job shortens
    dropped: int = 0  # drop: rows the job leaves out
    longest: int = 0
    listed: list[LongRow] = Field(default_factory=list)  # the first SHOWN
    # truncate_prompt: rows the job drops because even without their last user turn they
    # do not fit (their answer alone is too long), as file:line (the first SHOWN)
    answer_too_long: list[str] = Field(default_factory=list)


def check_lengths(ws: Workspace, plan: Plan, files: list[str], max_length: int,
                  policy: Policy) -> LengthCheck:
    """Count every row of the step's training files and apply ``policy`` to the long ones.

    Raises ``row_overlong`` (policy ``error``) naming the first such row's file and line.
    """
    from tunestep.tools.inspector import run_inspector

    long_rows: list[tuple[str, int | None, int]] = []
    rows = 0
    tokenizer = ""
    for rel in files:
        report = run_inspector(ws, rel, tokens=True)
        stats = report.stats.tokens
        assert stats is not None  # tokens=True always counts
        tokenizer = stats.tokenizer
        rows += report.stats.rows
        if max_length >= stats.max_length:
            listed = stats.overlong_rows
            if len(listed) < stats.over_max_length:
                listed = None  # more than the report lists: count them here
        else:
            listed = None  # a shorter limit than the plan's: the report cannot tell
        if listed is None:
            found = _count(ws, plan, rel, max_length)
        else:
            found = [(r.line, r.tokens) for r in listed if r.tokens > max_length]
        long_rows += [(rel, line, n) for line, n in found]
    check = LengthCheck(policy=policy, max_length=max_length, tokenizer=tokenizer, rows=rows,
                        overlong=len(long_rows),
                        longest=max((n for *_, n in long_rows), default=0))
    if not long_rows:
        return check
    if policy == "error":
        first = long_rows[0]
        shown = ", ".join(f"{f}:{line} ({n:,} tokens)" for f, line, n in long_rows[:5])
        raise TunestepError(
            "row_overlong",
            f"{len(long_rows)} training row(s) are longer than training.max_length "
            f"{max_length:,}: {shown}. data.overlong is 'error': shorten them, raise "
            "training.max_length, or set data.overlong to truncate_prompt or drop",
            path=first[0], line=first[1])
    if policy == "drop":
        check.dropped = len(long_rows)
        check.listed = [LongRow(file=f, line=line, tokens=n, action="drop")
                        for f, line, n in long_rows[:SHOWN]]
        return check
    rests, marker = _rest_tokens(ws, plan, long_rows)
    actions = ["shorten_prompt" if rest + marker + MIN_PROMPT_TOKENS <= max_length
               else "drop" for rest in rests]
    check.shortened = actions.count("shorten_prompt")
    check.dropped = actions.count("drop")
    check.listed = [LongRow(file=f, line=line, tokens=n, rest_tokens=rest, action=action)
                    for (f, line, n), rest, action in
                    list(zip(long_rows, rests, actions, strict=True))[:SHOWN]]
    check.answer_too_long = [f"{f}:{line}" for (f, line, _), action in
                             zip(long_rows, actions, strict=True) if action == "drop"][:SHOWN]
    return check


def _messages(row) -> tuple[list, tuple, tuple, object]:
    messages = row["messages"]
    roles = tuple(m.get("role") for m in messages)
    contents = tuple(m.get("content") if isinstance(m.get("content"), str) else ""
                     for m in messages)
    return messages, roles, contents, row.get("tools")


def _count(ws: Workspace, plan: Plan, rel: str, max_length: int) -> list[tuple[int, int]]:
    """(line, tokens) of every row of one file over ``max_length``, counted here."""
    from tunestep.tools.data.data_rows import read_rows
    from tunestep.tools.inspector.tokens import TokenCounter, load_tokenizer

    tokenizer, _ = load_tokenizer(ws, plan.model)
    counter = TokenCounter(tokenizer, max_length)
    results = []
    for line, row in read_rows(ws.resolve(rel), rel):
        done = counter.add(line, *_messages(row))
        results += done or []
    results += counter.flush()
    return sorted((line, n) for line, n, _, error in results
                  if error is None and n is not None and n > max_length)


def _rest_tokens(ws: Workspace, plan: Plan, long_rows: list[tuple[str, int | None, int]]
                 ) -> tuple[list[int], int]:
    """Per over-long row: its tokens outside the user turn the job shortens (the last one
    before the last answer); and the omission marker's tokens."""
    from tunestep.tools.data.data_rows import read_rows
    from tunestep.tools.inspector.tokens import load_tokenizer
    from tunestep.tools.jobs.job_data import OMISSION

    tokenizer, _ = load_tokenizer(ws, plan.model)
    marker = len(tokenizer(OMISSION, add_special_tokens=False)["input_ids"])
    by_file: dict[str, dict[int, object]] = {}
    for rel in dict.fromkeys(f for f, *_ in long_rows):
        wanted = {line for f, line, _ in long_rows if f == rel}
        by_file[rel] = {line: row for line, row in read_rows(ws.resolve(rel), rel)
                        if line in wanted}
    rests = []
    for rel, line, _ in long_rows:
        messages, roles, contents, tools = _messages(by_file[rel][line])
        answer = max((i for i, r in enumerate(roles) if r == "assistant"), default=-1)
        users = [i for i in range(answer) if roles[i] == "user"]
        cut_turn = users[-1] if users else None
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        user = 0
        at = 0
        for index, content in enumerate(contents):
            found = text.find(content, at) if content else -1
            if found < 0:
                continue
            at = found + len(content)
            if index == cut_turn:
                first = encoding.char_to_token(found)
                last = encoding.char_to_token(at - 1)
                if first is not None and last is not None:
                    user = last - first + 1
        rests.append(len(encoding.ids) - user)
    return rests, marker
