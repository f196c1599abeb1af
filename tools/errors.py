"""One error type for everything a caller can fix.

Every refusal in tunestep carries a stable ``code`` (listed in .specs/error_codes.md),
a message a person can act on, and where known the file and 1-based line. The MCP
layer turns it into a ToolError whose message starts with the code; the CLI prints it
and exits non-zero. Anything else is a bug and is reported as such.
"""

from __future__ import annotations


class TunestepError(Exception):
    """A problem the caller can fix: bad input, refused approval, missing file."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = f" ({self.path}{f':{self.line}' if self.line else ''})"
        return f"{self.code}: {self.message}{where}"
