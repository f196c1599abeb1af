"""How a MappingSpec turns a row of any known format into canonical chat.

The single implementation behind both the inspector (which converts foreign rows with the
suggested spec and checks the result) and ``apply_mapping`` (which writes it), so what the
inspector promises is what the mapping does. Which format a row is in, and the spec the
inspector suggests for it, is ``formats.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from tunestep.tools.inspector.spec import MappingSpec, fill

CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.DOTALL)


class RowProblem(Exception):
    """A row the spec cannot convert at all (a finding, never a crash)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def convert(row: Any, spec: MappingSpec) -> tuple[list | None, str | None, list[str]]:
    """One row through a spec: (messages, drop reason, repairs made).

    ``messages`` keeps whatever is wrong with the row (a null content, an unknown role) so
    that the canonical checks can name it; only a row with nothing to convert raises
    RowProblem. A row matching a drop rule returns ``(None, reason, [])``.
    """
    if not isinstance(row, dict):
        raise RowProblem("row_not_object", f"the row is a {_kind(row)}, not an object")
    for rule in spec.drop_where:
        if rule.field in row and _same(row[rule.field], rule.equals):
            return None, f"drop_where: {rule.describe()}", []
    messages = _CONVERTERS[spec.source_format](row, spec)
    repairs: list[str] = []
    messages = _add_system(row, spec, messages)
    if spec.empty_turns != "keep":
        messages, dropped = _drop_empty(messages, spec.empty_turns, repairs)
        if dropped:
            return None, dropped, []
    if spec.trim_trailing:
        messages = _trim_trailing(messages, repairs)
    return messages, None, repairs


def _same(value: Any, expected: Any) -> bool:
    # True == 1 in Python; a drop rule on a boolean label must not match the number 1.
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return value == expected


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _field(row: dict, name: str, required: bool = True) -> Any:
    if name not in row or row[name] is None:
        if required:
            raise RowProblem("field_missing", f"the row has no '{name}'")
        return None
    return row[name]


def _flatten(content: Any) -> Any:
    """A list of text parts becomes one string; anything else is returned untouched."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type", "text") != "text":
            return content
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            return content
        texts.append(text)
    return "".join(texts)


def _message(role: Any, content: Any, source: dict | None = None) -> dict:
    message: dict = {}
    if role is not None:
        message["role"] = role
    if content is not None:
        message["content"] = content
    if source:
        for key in ("tool_calls", "tool_call_id", "name"):
            if source.get(key) is not None:
                message[key] = source[key]
    return message


def _turns(row: dict, spec: MappingSpec) -> list:
    turns = row.get(spec.messages_field)
    if turns is None:
        state = "null" if spec.messages_field in row else "missing"
        raise RowProblem("messages_missing", f"'{spec.messages_field}' is {state}")
    if not isinstance(turns, list):
        raise RowProblem("messages_type",
                         f"'{spec.messages_field}' is a {_kind(turns)}, not a list")
    return turns


def _from_chat(row: dict, spec: MappingSpec) -> list:
    out = []
    for turn in _turns(row, spec):
        if not isinstance(turn, dict):
            out.append(turn)  # left for check_messages to name
            continue
        role = turn.get(spec.role_key)
        out.append(_apply_role(role, _flatten(turn.get(spec.content_key)), spec, turn))
    return out


def _from_sharegpt(row: dict, spec: MappingSpec) -> list:
    return _from_chat(row, spec)


def _apply_role(role: Any, content: Any, spec: MappingSpec, source: dict | None) -> dict:
    mapped = role
    if isinstance(role, str):
        mapped = spec.role_map.get(role)
        if mapped is None and spec.source_format == "sharegpt":  # System, Human, GPT
            mapped = next((v for k, v in spec.role_map.items()
                           if k.casefold() == role.casefold()), None)
        mapped = role if mapped is None else mapped
    if mapped == "tool_call":
        text = content if isinstance(content, str) else None
        if text is not None and text.strip():
            content = fill(spec.tool_call_template, content=text.strip())
        mapped = "assistant"
    return _message(mapped, content, source)


def _from_alpaca(row: dict, spec: MappingSpec) -> list:
    instruction = _text_field(row, spec.instruction_field)
    output = _text_field(row, spec.output_field)
    extra = row.get(spec.input_field)
    if extra is not None and not isinstance(extra, str):
        raise RowProblem("field_type", f"'{spec.input_field}' is a {_kind(extra)}, not text")
    prompt = instruction
    if isinstance(instruction, str) and extra and extra.strip():
        prompt = fill(spec.join_template, instruction=instruction, input=extra)
    messages = _history(row, spec)
    messages.append(_message("user", prompt))
    messages.append(_message("assistant", output))
    return messages


def _text_field(row: dict, name: str) -> str:
    value = _field(row, name)
    if not isinstance(value, str):
        raise RowProblem("field_type", f"'{name}' is a {_kind(value)}, not text")
    return value


def _history(row: dict, spec: MappingSpec) -> list:
    if not spec.history_field:
        return []
    history = row.get(spec.history_field)
    if history is None:
        return []
    if not isinstance(history, list):
        raise RowProblem("field_type", f"'{spec.history_field}' is a {_kind(history)}, "
                                       "not a list of [question, answer] pairs")
    messages = []
    for number, pair in enumerate(history, 1):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RowProblem("field_type", f"'{spec.history_field}' item {number} is not a "
                                           "[question, answer] pair")
        messages.append(_message("user", pair[0]))
        messages.append(_message("assistant", pair[1]))
    return messages


def _from_prompt_completion(row: dict, spec: MappingSpec) -> list:
    prompt = _field(row, spec.prompt_field)
    completion = _field(row, spec.completion_field)
    return _side(prompt, "user", spec) + _side(completion, "assistant", spec)


def _side(value: Any, role: str, spec: MappingSpec) -> list:
    if isinstance(value, str):
        return [_message(role, value)]
    if isinstance(value, list):  # conversational prompt/completion: lists of messages
        return [_apply_role(m.get(spec.role_key), _flatten(m.get(spec.content_key)), spec, m)
                if isinstance(m, dict) else m for m in value]
    raise RowProblem("field_type", f"a {role} side that is a {_kind(value)}, "
                                   "neither text nor a list of messages")


def _from_chatml(row: dict, spec: MappingSpec) -> list:
    text = _field(row, spec.text_field)
    if not isinstance(text, str):
        raise RowProblem("field_type", f"'{spec.text_field}' is a {_kind(text)}, not text")
    turns = CHATML_TURN.findall(text)
    if not turns:
        raise RowProblem("text_unstructured", "no <|im_start|>role ... <|im_end|> turns "
                                              "in the text")
    return [_apply_role(role, content, spec, None) for role, content in turns]


_CONVERTERS = {
    "chat": _from_chat,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "chatml_text": _from_chatml,
}


def _add_system(row: dict, spec: MappingSpec, messages: list) -> list:
    """The row's system column, the spec's system prompt and the tools block."""
    system = None
    if spec.system_field and isinstance(row.get(spec.system_field), str) \
            and row[spec.system_field].strip():
        system = row[spec.system_field]
    has_own = bool(messages) and isinstance(messages[0], dict) \
        and messages[0].get("role") == "system"
    if system is not None and not has_own:
        messages = [_message("system", system), *messages]
        has_own = True
    if spec.system_prompt and (spec.replace_system or not has_own):
        if has_own:
            messages = [_message("system", spec.system_prompt), *messages[1:]]
        else:
            messages = [_message("system", spec.system_prompt), *messages]
            has_own = True
    if spec.tools_field and row.get(spec.tools_field) not in (None, "", []):
        block = fill(spec.tools_template, tools=_tool_lines(row[spec.tools_field]))
        if has_own and isinstance(messages[0].get("content"), str):
            head = dict(messages[0], content=messages[0]["content"] + "\n\n" + block)
            messages = [head, *messages[1:]]
        else:
            messages = [_message("system", block), *messages]
    return messages


def _tool_lines(tools: Any) -> str:
    """One JSON line per tool, as ``tool | tojson`` renders it in a chat template."""
    if isinstance(tools, str):
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            raise RowProblem("tools_invalid", "the tools column is not valid JSON") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowProblem("tools_invalid", "the tools column is not a list of tool objects")
    return "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)


def _is_empty(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("tool_calls"):
        return False
    content = message.get("content")
    return content is None or (isinstance(content, str) and not content.strip())


def _drop_empty(messages: list, policy: str, repairs: list[str]) -> tuple[list, str | None]:
    empty = [i for i, m in enumerate(messages) if _is_empty(m)]
    if not empty:
        return messages, None
    if policy == "drop_row":
        return messages, f"content_empty: message {empty[0] + 1} is empty"
    # drop_exchange: remove each exchange (a user turn and the turns up to the next user
    # turn) that holds an empty turn; an empty system turn goes alone.
    doomed: set[int] = set()
    for index in empty:
        if messages[index].get("role") == "system":
            doomed.add(index)
            continue
        start = index
        while start > 0 and _role(messages[start]) != "user" and _role(messages[start - 1]) \
                != "system":
            start -= 1
        end = index + 1
        while end < len(messages) and _role(messages[end]) != "user":
            end += 1
        doomed.update(range(start, end))
    kept = [m for i, m in enumerate(messages) if i not in doomed]
    repairs.append(f"dropped {len(doomed)} turn(s) around {len(empty)} empty turn(s)")
    return kept, None


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def _trim_trailing(messages: list, repairs: list[str]) -> list:
    last = max((i for i, m in enumerate(messages) if _role(m) == "assistant"), default=None)
    if last is None or last == len(messages) - 1:
        return messages
    repairs.append(f"trimmed {len(messages) - last - 1} turn(s) after the last answer")
    return messages[:last + 1]
