"""Rule codes and the checks of canonical chat rows.

Every finding carries one of the codes below; ``.specs/inspector_rules.md`` is the same
table in prose. A code's severity never changes with context, so a caller can act on the
code alone. Checks return ``(code, message)`` pairs; they never raise on bad data.
"""

from __future__ import annotations

from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"

RULES: dict[str, tuple[str, str]] = {
    # reading the file
    "file_unreadable": (ERROR, "the file cannot be opened, or its container is broken"),
    "row_too_large": (ERROR, "a row over data.max_row_bytes; skipped to its newline, never "
                             "held in memory"),
    "file_too_large": (ERROR, "a .json file over the size a whole-file parse may take; "
                              "write it as JSON Lines"),
    "column_type_unsupported": (ERROR, "a Parquet column of a type the job cannot train on "
                                       "(binary, decimal, temporal, map, ...)"),
    "no_data_files": (ERROR, "the folder holds no .jsonl, .json or .parquet file"),
    "empty_file": (ERROR, "the file holds no rows"),
    "invalid_utf8": (ERROR, "bytes that are not UTF-8"),
    "invalid_json": (ERROR, "a line (or the .json file) is not valid JSON"),
    "jsonl_array": (ERROR, "a .jsonl file holding a JSON array instead of one object per line"),
    "json_lines_in_json": (WARNING, "a .json file holding JSON Lines; read as JSON Lines"),
    "bom": (WARNING, "the file starts with a UTF-8 byte order mark (ignored)"),
    "blank_lines": (INFO, "blank lines were skipped"),
    # the format of rows
    "row_not_object": (ERROR, "a row that is not a JSON object"),
    "format_unknown": (ERROR, "a row with none of the fields of a known format"),
    "mixed_formats": (ERROR, "two formats in one file; names the first line of each"),
    "preference_data": (ERROR, "chosen/rejected rows are preference (DPO) data, not SFT data"),
    "text_unstructured": (ERROR, "plain text rows have no turns to train a chat model on"),
    "field_missing": (ERROR, "a field the format needs is missing"),
    "field_type": (ERROR, "a field of the format has the wrong type"),
    "tools_invalid": (ERROR, "the tools column is not a JSON list of tool definitions"),
    "unexpected_key": (WARNING, "a key the format does not use (training ignores it)"),
    "weight_ignored": (WARNING, "a per-message weight that assistant-only loss does not honour"),
    # the structure of a conversation
    "messages_missing": (ERROR, "no messages list"),
    "messages_type": (ERROR, "messages is not a list"),
    "messages_empty": (ERROR, "the messages list is empty"),
    "message_not_object": (ERROR, "a message that is not an object"),
    "role_missing": (ERROR, "a message without a role"),
    "role_unknown": (ERROR, "a role other than system, user, assistant, tool"),
    "content_missing": (ERROR, "a message without content (or null content)"),
    "content_type": (ERROR, "content that is not a string (or a list of text parts)"),
    "content_empty": (ERROR, "content that is empty or only whitespace"),
    "system_not_first": (ERROR, "a system message after the first turn"),
    "consecutive_role": (ERROR, "two user or two assistant turns in a row"),
    # A warning: the conversation still trains (OpenAI's fine-tuning takes a system turn
    # followed by an assistant answer), it only opens unusually.
    "first_not_user": (WARNING, "the first turn after the system prompt is the assistant's, "
                                "not the user's (trainable)"),
    "tool_order": (ERROR, "a tool result that does not follow an assistant turn"),
    "no_assistant": (ERROR, "no assistant turn: nothing to train on"),
    "last_not_assistant": (ERROR, "the last turn is not the assistant's"),
    "template_placeholder": (WARNING, "an unfilled {{placeholder}} in an assistant answer"),
    # across rows and files
    "duplicate_in_batch": (ERROR, "the same conversation as an earlier row of this input"),
    "duplicate_of_earlier": (ERROR, "the same conversation as a row of the base train set "
                                    "or of an earlier batch"),
    "holdout_duplicate": (ERROR, "the same prompt as a hold-out row (Unicode NFKC, case, "
                                 "whitespace, zero-width and control characters folded)"),
    "holdout_near_match": (WARNING, "the prompt holds half or more of a hold-out prompt's "
                                    "distinctive 8-word sequences"),
    "holdout_overlap": (WARNING, "the prompt shares an 8-word sequence with a hold-out row"),
    "grade_unparseable": (WARNING, "the plan's grade pattern finds no grade in the answer"),
    # with tokens=True
    # A warning: whether a row is too long depends on max_length and data.overlong (the
    # draft applies those), and the status must not change with tokens=True.
    "over_max_length": (WARNING, "more tokens than the plan's training.max_length"),
    "template_error": (ERROR, "the chat template cannot render the row"),
}

CANONICAL_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Message keys a chat template understands; anything else earns an unexpected_key warning.
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id",
                          "reasoning_content"})
WEIGHT_KEYS = ("weight", "loss_weight")


def severity(code: str) -> str:
    return RULES[code][0]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_roles(roles: tuple) -> list[tuple[str, str]]:
    """Order rules over a sequence of (already valid) roles; cached by the caller."""
    issues: list[tuple[str, str]] = []
    previous = None
    first_turn = None
    for index, role in enumerate(roles, 1):
        if role == "system":
            if index > 1:
                issues.append(("system_not_first", f"message {index} is a system message; "
                                                   "only the first may be"))
        else:
            if first_turn is None:
                first_turn = (index, role)
            if role == previous and role in ("user", "assistant"):
                issues.append(("consecutive_role", f"messages {index - 1} and {index} are "
                                                   f"both {role} turns"))
            if role == "tool" and previous not in ("assistant", "tool"):
                issues.append(("tool_order", f"message {index} is a tool result that does "
                                             "not follow an assistant turn"))
        previous = role
    if first_turn is not None and first_turn[1] != "user":
        issues.append(("first_not_user", f"message {first_turn[0]} is the first turn and "
                                         f"it is {first_turn[1]}'s, not the user's; it "
                                         "still trains"))
    if "assistant" not in roles:
        issues.append(("no_assistant", "no assistant turn: nothing to train on"))
    elif roles and roles[-1] != "assistant":
        issues.append(("last_not_assistant", f"the last turn (message {len(roles)}) is "
                                             f"{roles[-1]}'s, not the assistant's"))
    return issues


def check_messages(messages: Any, field: str = "messages") -> list[tuple[str, str]]:
    """Every structural rule over one conversation; returns (code, message) pairs."""
    if messages is None:
        return [("messages_missing", f"'{field}' is missing or null")]
    if not isinstance(messages, list):
        return [("messages_type", f"'{field}' is a {_type_name(messages)}, not a list")]
    if not messages:
        return [("messages_empty", f"'{field}' is an empty list")]
    issues: list[tuple[str, str]] = []
    roles: list[str] = []
    for index, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            issues.append(("message_not_object",
                           f"message {index} is a {_type_name(message)}, not an object"))
            continue
        role = _check_role(index, message, issues)
        _check_content(index, message, role, issues)
        if role is not None:
            roles.append(role)
    if len(roles) == len(messages):  # order rules only make sense when every role is known
        issues.extend(check_roles(tuple(roles)))
    return issues


def _check_role(index: int, message: dict, issues: list) -> str | None:
    role = message.get("role")
    if role is None:
        issues.append(("role_missing", f"message {index} has no role"))
        return None
    if not isinstance(role, str) or role not in CANONICAL_ROLES:
        issues.append(("role_unknown", f"message {index} has role {role!r}; expected system, "
                                       "user, assistant or tool (map it with role_map)"))
        return None
    return role


def _check_content(index: int, message: dict, role: str | None, issues: list) -> None:
    content = message.get("content")
    calls = message.get("tool_calls")
    if role == "assistant" and isinstance(calls, list) and calls and not content:
        return  # an OpenAI-style tool call: the calls are the answer
    label = f"message {index}" + (f" ({role})" if role else "")
    if content is None:
        issues.append(("content_missing", f"{label} has no content"
                                          + (" (null)" if "content" in message else "")))
    elif isinstance(content, list):
        kinds = sorted({str(p.get("type")) if isinstance(p, dict) else _type_name(p)
                        for p in content})
        issues.append(("content_type", f"{label} content is a list of parts of type(s) "
                                       f"{', '.join(kinds)}; only text parts can be trained"))
    elif not isinstance(content, str):
        issues.append(("content_type", f"{label} content is a {_type_name(content)}, "
                                       "not a string"))
    elif not content.strip():
        issues.append(("content_empty", f"{label} content is empty"
                                        + (" (whitespace only)" if content else "")))


def message_key_issues(messages: list, allow_weights: bool = False) -> list[tuple[str, str]]:
    """unexpected_key / weight_ignored warnings over the raw messages of a chat row."""
    issues: list[tuple[str, str]] = []
    for index, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            continue
        for key, value in message.items():
            if key in MESSAGE_KEYS or value is None:
                continue
            if key in WEIGHT_KEYS:
                if not allow_weights:
                    issue = _weight_issue(index, message.get("role"), key, value)
                    if issue:
                        issues.append(issue)
                continue
            issues.append(("unexpected_key", f"message {index} has key '{key}', which "
                                             "training ignores"))
    return issues


def _weight_issue(index: int, role: Any, key: str, value: Any) -> tuple[str, str] | None:
    """A weight matters only where it disagrees with assistant-only loss."""
    expected = 1 if role == "assistant" else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != expected:
        return ("weight_ignored", f"message {index} ({role}) has {key}={value!r}; training "
                                  f"uses assistant-only loss (weight {expected} here)")
    return None
