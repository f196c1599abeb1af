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
        hint=None,
    ) -> None:
        self.code = code
        self.message = message
        self.path = path
        self.line = line
        # What to do next as a structured step (tools/next_step.NextAction): the MCP text
        # says it as a tool call, the CLI as the tunestep command.
        self.hint = hint
        super().__init__(str(self))

    def where(self) -> str:
        return f" ({self.path}{f':{self.line}' if self.line else ''})" if self.path else ""

    def __str__(self) -> str:
        hint = f"; next: {self.hint.mcp()}" if self.hint is not None else ""
        return f"{self.code}: {self.message}{hint}{self.where()}"
