"""The plan's regexes (``grade_pattern``, ``data.batch_pattern``) on a linear-time engine.

The assistant writes the plan, so a pattern such as ``(a+)+$`` must never make a tool
backtrack for minutes: with the interpreter lock held, one such match stops the whole
MCP server, ``cancel_job`` included. Every plan pattern is compiled with RE2
(``google-re2``), whose matching time is linear in the text, and a pattern RE2 does not
support (backreferences, lookaround) is refused at plan load.

The job grades with RE2 as well (``google-re2`` is in its locked header); it falls back to
Python's ``re``, a backtracking engine, only where RE2 is missing. So the plan also refuses
what ``re`` cannot compile and a repetition nested inside another unbounded one
(``(a+)+``, ``(\\d+\\s*)*``), the patterns that backtrack worst there. Known difference:
in RE2 ``\\d``, ``\\s`` and ``\\w`` are ASCII classes; in ``re`` they are Unicode.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> Any:
    """The RE2 regex for a plan pattern; ValueError (with why) when it is refused."""
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) \
            else str(exc)
        raise ValueError(f"not supported by the linear-time engine RE2 ({detail}): "
                         "backreferences and lookaround are not allowed") from None
    try:
        parsed = re._parser.parse(pattern)  # what the job's engine makes of it
    except re.error as exc:
        raise ValueError(f"not a regular expression the job can use: {exc}") from None
    if _nested_repeat(parsed, inside=False):
        raise ValueError("a repetition inside another unbounded repetition (such as "
                         "'(a+)+') can backtrack exponentially in the job; write it flat")
    return compiled


def _nested_repeat(parsed: Any, inside: bool) -> bool:
    """Whether an unbounded-ish repeat holds another one (star height above one)."""
    p = re._parser
    repeats = (p.MAX_REPEAT, p.MIN_REPEAT, getattr(p, "POSSESSIVE_REPEAT", None))
    for op, arg in parsed:
        if op in repeats:
            _low, high, body = arg
            many = high is p.MAXREPEAT or high > 1
            if (many and inside) or _nested_repeat(body, inside or many):
                return True
            continue
        if op is p.SUBPATTERN:
            bodies = [arg[-1]]
        elif op is p.BRANCH:
            bodies = arg[1]
        elif op in (p.ASSERT, p.ASSERT_NOT):
            bodies = [arg[1]]
        elif op is getattr(p, "ATOMIC_GROUP", None):
            bodies = [arg]
        else:
            continue
        if any(_nested_repeat(body, inside) for body in bodies):
            return True
    return False
