"""MappingSpec: how rows of a foreign format become canonical chat. Declarative, never code.

The inspector suggests one; the assistant may edit it (it is plain JSON) before
``apply_mapping`` runs it. Every field has a default that suits the common public layout
of its format, so a suggestion stays short: only what differs from the defaults matters.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SourceFormat = Literal["chat", "sharegpt", "alpaca", "prompt_completion", "chatml_text"]
# "tool_call" is not a chat role: it marks a turn holding a function call, written as an
# assistant turn through ``tool_call_template`` (what Qwen-style templates render).
TargetRole = Literal["system", "user", "assistant", "tool", "tool_call"]

# The Hermes/Qwen tool block, byte for byte what Qwen3's chat template renders into the
# system turn when called with ``tools=``; so a mapped row tokenizes like the original
# rendered with its tools. ``{tools}`` is replaced by one JSON line per tool.
QWEN_TOOLS_TEMPLATE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
TOOL_CALL_TEMPLATE = "<tool_call>\n{content}\n</tool_call>"

SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "function_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


class DropRule(BaseModel):
    """Drop every row whose top-level ``field`` equals ``equals`` (before conversion)."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1)
    equals: str | int | float | bool | None
    reason: str | None = None

    def describe(self) -> str:
        return self.reason or f"{self.field} == {self.equals!r}"


class MappingSpec(BaseModel):
    """How to turn rows of ``source_format`` into ``{"messages": [{role, content}, ...]}``."""

    model_config = ConfigDict(extra="forbid")

    source_format: SourceFormat
    # chat / sharegpt: the list of turns, and the keys inside each turn.
    messages_field: str = "messages"
    role_key: str = "role"
    content_key: str = "content"
    role_map: dict[str, TargetRole] = Field(default_factory=dict)
    # alpaca
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    history_field: str | None = None
    join_template: str = "{instruction}\n\n{input}"  # used when input is non-empty
    # prompt/completion
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    # ChatML-rendered text
    text_field: str = "text"
    # any format: a per-row system column, a fixed system prompt, a tools column
    system_field: str | None = None
    system_prompt: str | None = None
    replace_system: bool = False  # True: system_prompt replaces a row's own system turn
    tools_field: str | None = None
    tools_template: str = QWEN_TOOLS_TEMPLATE
    tool_call_template: str = TOOL_CALL_TEMPLATE
    # repairs
    empty_turns: Literal["keep", "drop_exchange", "drop_row"] = "keep"
    trim_trailing: bool = False  # drop turns after the last assistant turn
    drop_where: list[DropRule] = Field(default_factory=list)
    on_invalid: Literal["drop", "fail"] = "drop"

    @field_validator("messages_field", "role_key", "content_key", "instruction_field",
                     "input_field", "output_field", "prompt_field", "completion_field",
                     "text_field")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a field name must not be empty")
        return value

    @model_validator(mode="after")
    def _templates(self) -> MappingSpec:
        if "{instruction}" not in self.join_template:
            raise ValueError("join_template must contain {instruction}")
        if "{tools}" not in self.tools_template:
            raise ValueError("tools_template must contain {tools}")
        if "{content}" not in self.tool_call_template:
            raise ValueError("tool_call_template must contain {content}")
        return self

    def required_fields(self) -> tuple[str, ...]:
        """Top-level fields a row must have for this spec to apply at all."""
        if self.source_format in ("chat", "sharegpt"):
            return (self.messages_field,)
        if self.source_format == "alpaca":
            return (self.instruction_field, self.output_field)
        if self.source_format == "prompt_completion":
            return (self.prompt_field, self.completion_field)
        return (self.text_field,)

    def known_fields(self) -> set[str]:
        """Top-level fields the spec reads; any other key is dropped by the mapping."""
        fields = set(self.required_fields())
        if self.source_format == "alpaca":
            fields.add(self.input_field)
            if self.history_field:
                fields.add(self.history_field)
        for extra in (self.system_field, self.tools_field):
            if extra:
                fields.add(extra)
        fields.update(rule.field for rule in self.drop_where)
        return fields


_PLACEHOLDER = re.compile(r"\{(instruction|input|tools|content)\}")


def fill(template: str, **values: str) -> str:
    """Substitute ``{name}`` placeholders in one pass (values may themselves hold braces)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def default_spec(source_format: SourceFormat, **overrides) -> MappingSpec:
    """The spec the inspector starts from for a format (public layout defaults)."""
    base: dict = {"source_format": source_format}
    if source_format == "sharegpt":
        base.update(messages_field="conversations", role_key="from", content_key="value",
                    role_map=dict(SHAREGPT_ROLES), system_field="system", tools_field="tools")
    elif source_format == "alpaca":
        base.update(history_field="history", system_field="system")
    base.update(overrides)
    return MappingSpec.model_validate(base)
