"""GradeCheck: the plan's grade pattern, found in an answer fast.

Apart from the engine because it is one small thing with its own trick (a literal prefix
searched before the RE2 pattern runs) and its own hostile-input test.
"""

from __future__ import annotations

import re


class GradeCheck:
    """The plan's grade pattern; the last match in an answer is its grade.

    A pattern that starts with a literal (``grade`` in the default) is searched from the
    literal's last occurrence, which skips the slow case-insensitive scan of the text.
    """

    def __init__(self, pattern: str) -> None:
        from tunestep.tools.core.patterns import compile_pattern

        self.regex = compile_pattern(pattern)  # RE2: no pattern can stall the scan
        self.literal, self.fold = _leading_literal(pattern)

    def find(self, text: str) -> str | None:
        if self.literal:
            hay = text.lower() if self.fold else text
            position = hay.rfind(self.literal)
            if position < 0:
                return None
            if len(hay) == len(text):
                match = self.regex.match(text, position)
                if match is not None:
                    return match.group(1)
        last = None
        for last in self.regex.finditer(text):  # noqa: B007 - we want the last one
            pass
        return last.group(1) if last is not None else None


def _leading_literal(pattern: str) -> tuple[str, bool]:
    try:
        from re import _parser  # the stdlib's own pattern parser

        parsed = _parser.parse(pattern)
        fold = bool(parsed.state.flags & re.IGNORECASE)
        chars = []
        for op, arg in parsed:
            if op is not _parser.LITERAL:
                break
            chars.append(chr(arg))
        literal = "".join(chars)
    except Exception:  # private API changed: simply no shortcut
        return "", False
    if len(literal) < 2 or (fold and not literal.isascii()):
        return "", False
    return (literal.lower() if fold else literal), fold
