"""What to do next, as data: a tool call with its arguments, or a thing a person does.

Results carry these so that each view can say them in its own syntax: the MCP view as a
tool call (``run_inspector(path='...')``), the CLI as the command a person types
(``tunestep inspect ...``, rendered in ``server/next_steps.py``). The ``next_actions``
strings of a result are the MCP form, kept for clients that read text.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Value = str | int | float | bool


class NextAction(BaseModel):
    """One next step. ``tool`` None: only ``note`` (something to do by hand)."""

    lead: str = ""  # words before the call, e.g. "fix the rows listed, or"
    tool: str | None = None  # an MCP tool name
    args: dict[str, Value] = Field(default_factory=dict)
    # Arguments whose value is a field of the same result, e.g. mapping=suggested_mapping.
    from_result: dict[str, str] = Field(default_factory=dict)
    note: str = ""  # what the call does or gives

    def mcp(self) -> str:
        """The MCP form: ``tool(arg='value', mapping=suggested_mapping) note``."""
        if self.tool is None:
            return " ".join(p for p in (self.lead, self.note) if p)
        args = [f"{k}={v!r}" for k, v in self.args.items()]
        args += [f"{k}={v}" for k, v in self.from_result.items()]
        return " ".join(p for p in (self.lead, f"{self.tool}({', '.join(args)})", self.note)
                        if p)


def mcp_texts(actions: list[NextAction]) -> list[str]:
    return [a.mcp() for a in actions]
