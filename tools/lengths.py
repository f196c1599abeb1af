"""No row trains without its answer: the step's lengths, checked before a draft is made.

TRL truncates a row longer than ``max_length`` by keeping its start, so what is lost is
the end: the assistant's answer, its grade and the end token. Before a draft is made every
training row is counted with the model's real tokenizer and chat template. The counts
come from the inspector's cached report (``run_inspector(tokens=True)``: cached by the
content of each file, the tokenizer and ``max_length``), so an unchanged file is not
tokenized again. Each over-long row is then handled as ``data.overlong`` says:

- ``truncate_prompt`` (default): the job shortens the middle of the user turn and keeps
  the whole answer. The host checks that this can work: the row without its user turns
  (system prompt, answer, template) plus ``MIN_PROMPT_TOKENS`` of the user turn must fit;
  a row where even that is too long would train without its grade, and the draft is
  refused (``answer_overlong``, naming file and line).
- ``drop``: the job leaves the row out; the host counts how many.
- ``error``: the draft is refused (``row_overlong``, naming file and line).

The job does the shortening or dropping (and logs each row); the host counts and shows it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tunestep.tools.errors import TunestepError
from tunestep.tools.plan import Plan
from tunestep.tools.workspace import Workspace

# The fewest user-turn tokens a shortened prompt keeps (its head and tail around the cut,
# with the marker the job puts in the middle): a prompt cut to less says nothing.
MIN_PROMPT_TOKENS = 32
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


def check_lengths(ws: Workspace, plan: Plan, files: list[str], max_length: int,
                  policy: Policy) -> LengthCheck:
    """Count every row of the step's training files and apply ``policy`` to the long ones.

    Raises ``row_overlong`` (policy ``error``) or ``answer_overlong`` (``truncate_prompt``
    where the answer cannot be kept) naming the first such row's file and line.
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
    rests = _rest_tokens(ws, plan, long_rows)
    hopeless = [(f, line, n, rest) for (f, line, n), rest in zip(long_rows, rests, strict=True)
                if rest + MIN_PROMPT_TOKENS > max_length]
    if hopeless:
        f, line, n, rest = hopeless[0]
        raise TunestepError(
            "answer_overlong",
            f"{len(hopeless)} training row(s) cannot keep their answer within "
            f"training.max_length {max_length:,} even with the user turn shortened: "
            f"{f}:{line} is {n:,} tokens, {rest:,} of them outside the user turn. Training "
            "it would cut the answer and its grade: shorten the system prompt or answer, "
            "raise training.max_length, or set data.overlong to drop",
            path=f, line=line)
    check.shortened = len(long_rows)
    check.listed = [LongRow(file=f, line=line, tokens=n, rest_tokens=rest,
                            action="shorten_prompt")
                    for (f, line, n), rest in list(zip(long_rows, rests, strict=True))[:SHOWN]]
    return check


def _messages(row) -> tuple[list, tuple, tuple, object]:
    messages = row["messages"]
    roles = tuple(m.get("role") for m in messages)
    contents = tuple(m.get("content") if isinstance(m.get("content"), str) else ""
                     for m in messages)
    return messages, roles, contents, row.get("tools")


def _count(ws: Workspace, plan: Plan, rel: str, max_length: int) -> list[tuple[int, int]]:
    """(line, tokens) of every row of one file over ``max_length``, counted here."""
    from tunestep.tools.inspector.tokens import TokenCounter, load_tokenizer
    from tunestep.tools.merge import read_rows

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
                 ) -> list[int]:
    """Per over-long row: its tokens outside the user turns' contents (what must fit)."""
    from tunestep.tools.inspector.tokens import load_tokenizer
    from tunestep.tools.merge import read_rows

    tokenizer, _ = load_tokenizer(ws, plan.model)
    by_file: dict[str, dict[int, object]] = {}
    for rel in dict.fromkeys(f for f, *_ in long_rows):
        wanted = {line for f, line, _ in long_rows if f == rel}
        by_file[rel] = {line: row for line, row in read_rows(ws.resolve(rel), rel)
                        if line in wanted}
    rests = []
    for rel, line, _ in long_rows:
        messages, roles, contents, tools = _messages(by_file[rel][line])
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        user = 0
        at = 0
        for role, content in zip(roles, contents, strict=True):
            found = text.find(content, at) if content else -1
            if found < 0:
                continue
            at = found + len(content)
            if role == "user":
                first = encoding.char_to_token(found)
                last = encoding.char_to_token(at - 1)
                if first is not None and last is not None:
                    user += last - first + 1
        rests.append(len(encoding.ids) - user)
    return rests
