"""Terminal lines at a width: the one wrapping helper every screen prints through.

At 80 columns (a default terminal; ``COLUMNS`` sets another) no line is longer than the
width, except one word that alone is longer: it stands on its own line, whole. Lines
break between words only, never inside a path, ``file:line``, code, sha or fingerprint
(``token`` makes one unbreakable word of each, a name with spaces included), and no
line ends in spaces (what a pipe gets is what a person reads). A command to type that
does not fit continues after a shell ``\\``, so it still runs as printed when pasted.

Every string that comes from the workspace (file and folder names, row excerpts in
findings, plan values, anything a tool echoes) goes through ``safe_text`` or ``token``
before it reaches the terminal: the assistant writes those, and the operator must read
what is there, not what an escape sequence or a rich tag makes the screen show.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.text import Text


@dataclass(frozen=True)
class View:
    """How this screen is shown: on the approval screen; the --workspace hints need."""

    approving: bool = False
    workspace: str | None = None  # added to printed commands when the cwd is elsewhere
    bound_to: str | None = None  # approving: the workspace root the token is bound to


# What a terminal would act on instead of showing: C0 controls (ESC starts ANSI
# sequences, CR and BS overwrite, a newline fakes a line), DEL, C1 controls (CSI is one
# character there), and the bidirectional overrides/isolates and marks that reorder
# what follows (the "Trojan Source" characters), plus zero-width characters and the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                     "\u2060-\u2069\ue000\ufeff]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: Any) -> str:
    """``value`` as text that shows exactly what it is, in a terminal and to rich.

    Control, bidi and zero-width characters are shown visibly as escapes (``\\x1b``,
    ``\\u202e``, a newline as ``\\x0a``), and rich markup is made inert (``[conceal]``
    prints as written). The one function every screen uses for workspace strings.
    """
    return escape(_UNSAFE.sub(_visible, "" if value is None else str(value)))


def visible_text(value: Any) -> str:
    """Like ``safe_text`` for plain ``print`` (no rich): controls visible, tabs kept.

    For job output, which carries row text the assistant wrote: an ESC in a training
    row must not reach the operator's terminal as an escape sequence.
    """
    text = "" if value is None else str(value)
    return _UNSAFE.sub(lambda m: "\t" if m.group() == "\t" else _visible(m), text)


w = safe_text  # short, for the many f-strings below


# --- 80 columns: the one wrapping helper -------------------------------------------------

# A space inside one token (a file name with spaces): the wrapper never breaks there, and
# it prints as a plain space. A private-use character, escaped when it comes from outside.
_KEPT_SPACE = "\ue000"
# "estimate    ...", "worst case  ...": a label padded to 12 columns, then the value
_LABEL = re.compile(r"^[a-z][a-z -]{9}[a-z ] \S$")
LABEL_WIDTH = 12


def token(value: Any) -> str:
    """A path, file:line, code, sha or fingerprint as one word the wrapper never breaks.

    Controls are escaped as ``safe_text`` does; a name with a space in it is shell-quoted
    (``'batch 1/my file.jsonl'``: copied whole, it is the name) and kept on one line.
    """
    text = _UNSAFE.sub(_visible, "" if value is None else str(value))
    quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "'\""  # a repr() already
    if (" " in text and not quoted) or text == "":
        text = shlex.quote(text)
    return escape(text).replace(" ", _KEPT_SPACE)


def _breaks(plain: str, first: int, rest: int) -> list[int]:
    """Where to cut ``plain`` so each line fits: only before a word, never inside one.

    A word wider than the line stands alone on its line, whole (the terminal may wrap it;
    nothing here cuts a path or a sha).
    """
    offsets: list[int] = []
    start, width, words_on_line = 0, first, 0
    for match in re.finditer(r"[^ ]+", plain):
        if words_on_line and cell_len(plain[start:match.end()]) > width:
            offsets.append(match.start())
            start, width, words_on_line = match.start(), rest, 0
        words_on_line += 1
    return offsets


def wrap_markup(markup: str, width: int, *, style: str = "", hang: int | None = None) -> list[Text]:
    """``markup`` (rich markup, workspace strings already through ``w``/``token``) as lines
    of at most ``width`` cells, broken between words only, no trailing spaces.

    Continuation lines are indented by ``hang``: by default under the value of a
    ``label       value`` line, else two more than the line's own indent.
    """
    lines: list[Text] = []
    for paragraph in markup.split("\n"):
        text = Text.from_markup(paragraph, style=style)
        plain = text.plain
        indent = len(plain) - len(plain.lstrip(" "))
        pad = hang if hang is not None else (
            LABEL_WIDTH if _LABEL.match(plain[:LABEL_WIDTH + 1]) else indent + 2)
        pad = min(pad, max(width // 2, 0))
        for n, part in enumerate(text.divide(_breaks(plain, width, width - pad))):
            part.rstrip()
            if n == 0 and part.cell_len > width and " " not in part.plain.strip():
                part = part[len(part.plain) - len(part.plain.lstrip(" ")):]  # one wide word
            part.plain = part.plain.replace(_KEPT_SPACE, " ")
            if n:  # a word too wide for the indent moves left, never past the width
                part = Text(" " * max(0, min(pad, width - part.cell_len))) + part
            lines.append(part)
    return lines


class Screen:
    """A console whose ``print`` of a string wraps between words at its width.

    Every renderer prints through one, so every line of every screen fits the terminal
    (80 columns by default) without a path, code, sha or file:line cut in two, and no
    line carries trailing spaces (a pipe gets what a person reads). Anything that is not
    a string (a table) goes to the console as it is.
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)

    def print(self, *objects: Any, style: str = "", hang: int | None = None,
              **kwargs: Any) -> None:
        if len(objects) != 1 or not isinstance(objects[0], str) or kwargs:
            self.console.print(*objects, style=style or None, **kwargs)
            return
        for line in wrap_markup(objects[0], self.console.width, style=style, hang=hang):
            self.console.print(line, soft_wrap=True)

    def command(self, command: str, indent: int = 2, lead: str | None = None) -> None:
        """A command to type, whole words only: a long one continues on the next line
        after a shell ``\\``, so it still runs as printed when pasted."""
        groups: list[list[str]] = []
        for word in (_UNSAFE.sub(_visible, shlex.quote(w)) for w in shlex.split(command)):
            if groups and len(groups[-1]) == 1 and groups[-1][0].startswith("--") \
                    and not word.startswith("-"):
                groups[-1].append(word)  # a flag and its value stay on one line
            else:
                groups.append([word])
        width, more = self.console.width, indent + 4
        units: list[str] = []
        for group in groups:  # a flag with a value too wide to share a line: one line each
            unit = " ".join(group)
            units += group if more + cell_len(unit) + 2 > width else [unit]
        lines, line = [], (" " * indent if lead is None else lead) + units[0]
        for unit in units[1:]:
            if cell_len(line) + 1 + cell_len(unit) + 2 > width:
                lines.append(line + " \\")
                # a word wider than the line starts at the left edge, whole
                line = " " * max(0, min(more, width - 2 - cell_len(unit))) + unit
            else:
                line += " " + unit
        for text in [*lines, line]:
            self.console.print(Text(text), soft_wrap=True)


def screen(console: Console | Screen) -> Screen:
    return console if isinstance(console, Screen) else Screen(console)


def prose(console: Console | Screen, text: str, indent: int = 0, style: str = "") -> None:
    """Workspace text wrapped at spaces to the width (paths and codes stay whole words)."""
    screen(console).print(" " * indent + safe_text(text), style=style,
                          hang=indent + 2 if indent else None)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h " \
        f"{minutes % 60:02d} min"
