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


# --- reading a spec a person wrote --------------------------------------------------------

# An example value per field, for an error that says what a right one looks like.
_EXAMPLES = {
    "source_format": '"sharegpt" (one of chat, sharegpt, alpaca, prompt_completion, '
                     'chatml_text)',
    "role_map": '{"human": "user", "gpt": "assistant"} (to system, user, assistant, tool '
                'or tool_call)',
    "drop_where": '[{"field": "label", "equals": false}]',
    "empty_turns": '"drop_exchange" (one of keep, drop_exchange, drop_row)',
    "on_invalid": '"drop" or "fail"',
    "join_template": '"{instruction}\\n\\n{input}"',
    "tools_template": 'a text holding {tools}',
    "tool_call_template": '"<tool_call>\\n{content}\\n</tool_call>"',
    "replace_system": "true or false",
    "trim_trailing": "true or false",
    "history_field": '"history" or null',
}
SPEC_EXAMPLE = ('{"source_format": "sharegpt", "messages_field": "conversations", '
                '"role_key": "from", "content_key": "value", '
                '"role_map": {"human": "user", "gpt": "assistant"}}')


def parse_mapping_spec(data: bytes | str | dict, shown: str | None = None):
    """A MappingSpec from JSON text (or its parsed object), or ``mapping_spec_invalid``
    naming each wrong field, what is wrong, and an example of a right value (no validator
    internals, no URLs)."""
    import orjson
    from pydantic import ValidationError

    from tunestep.tools.core.errors import TunestepError

    try:
        raw = data if isinstance(data, dict) else orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        line, column = exc.lineno, exc.colno
        if reason.startswith("unexpected end of data"):  # where the text stops, not after
            text = (data.decode("utf-8", "replace") if isinstance(data, bytes)
                    else data).rstrip()
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n") - 1
            reason = "it ends before the JSON is complete"
        raise TunestepError("mapping_spec_invalid", f"the spec is not valid JSON: {reason} "
                            f"(line {line}, column {column}); e.g. {SPEC_EXAMPLE}",
                            path=shown) from None
    if not isinstance(raw, dict):
        raise TunestepError("mapping_spec_invalid", f"the spec must be a JSON object, not "
                            f"{type(raw).__name__}; e.g. {SPEC_EXAMPLE}", path=shown)
    try:
        return MappingSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [_spec_problem(e) for e in exc.errors(include_url=False)]
        raise TunestepError("mapping_spec_invalid", f"{len(problems)} problem(s) in the spec: "
                            + "; ".join(problems), path=shown) from None


def _spec_problem(error: dict) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ())) or "the spec"
    top = str(error["loc"][0]) if error.get("loc") else ""
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        known = ", ".join(MappingSpec.model_fields)
        return f"{loc}: not a MappingSpec field (the fields: {known})"
    if kind == "missing":
        what = "required"
    else:
        what = error.get("msg", "wrong").removeprefix("Value error, ")
        what = what[:1].lower() + what[1:]
        given = error.get("input")
        if kind != "missing" and not isinstance(given, dict | list) and given is not None:
            shown = repr(given)
            what += f" (got {shown[:40]}{'...' if len(shown) > 40 else ''})"
    example = _EXAMPLES.get(top)
    if example is None and top in MappingSpec.model_fields:
        annotation = str(MappingSpec.model_fields[top].annotation)
        example = '"a_column"' if "str" in annotation else None
    return f"{loc}: {what}" + (f"; e.g. {example}" if example else "")
