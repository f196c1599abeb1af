"""Which format a row is in, and the MappingSpec the inspector converts it with.

Detection looks at each row's keys (every row, not five), so a file whose rows disagree is
caught. The conversion itself (``convert``, ``RowProblem``) is ``conversion.py``.

Canonical chat is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles system,
user, assistant and tool.
"""

from __future__ import annotations

from typing import Any

from tunestep.tools.inspector.spec import MappingSpec, default_spec

CHAT = "chat"  # messages with role/content strings: the canonical format
CHAT_PARTS = "chat_parts"  # messages whose content is a list of typed parts
SHAREGPT = "sharegpt"
ALPACA = "alpaca"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"
KTO = "kto"  # messages (or prompt/completion) plus a boolean label
PREFERENCE = "preference"
UNKNOWN = "unknown"
NOT_OBJECT = "not_object"

# Formats a mapping can turn into canonical chat, and the spec format that does it.
MAPPABLE = {CHAT: "chat", CHAT_PARTS: "chat", SHAREGPT: "sharegpt", ALPACA: "alpaca",
            PROMPT_COMPLETION: "prompt_completion", KTO: "chat", TEXT: "chatml_text"}
DESCRIPTIONS = {
    CHAT: "chat messages (role/content)",
    CHAT_PARTS: "chat messages with content as typed parts",
    SHAREGPT: "ShareGPT conversations (from/value)",
    ALPACA: "Alpaca instruction/input/output",
    PROMPT_COMPLETION: "prompt/completion",
    TEXT: "plain text",
    KTO: "KTO (conversation + boolean label)",
    PREFERENCE: "preference data (chosen/rejected)",
    UNKNOWN: "unknown",
}


def classify(row: Any) -> str:
    """The format of one row, from its keys."""
    if not isinstance(row, dict):
        return NOT_OBJECT
    if "chosen" in row and "rejected" in row:
        return PREFERENCE
    if "messages" in row:
        if isinstance(row.get("label"), bool):
            return KTO
        messages = row["messages"]
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
                and "from" in messages[0] and "role" not in messages[0]:
            return SHAREGPT
        if isinstance(messages, list) and any(
                isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages):
            return CHAT_PARTS
        return CHAT
    if "conversations" in row:
        return SHAREGPT
    if "instruction" in row and "output" in row:
        return ALPACA
    if "prompt" in row and "completion" in row:
        return KTO if isinstance(row.get("label"), bool) else PROMPT_COMPLETION
    if "text" in row:
        return TEXT
    return UNKNOWN


def spec_for(fmt: str, row: dict) -> MappingSpec | None:
    """The spec the inspector converts a row of ``fmt`` with (generous public defaults).

    Optional columns (system, tools, history) are switched on whether or not this row has
    them: a spec that names an absent column behaves exactly like one that does not, so
    the suggestion built at the end of a file converts every row the way the scan did.
    """
    if fmt in (CHAT, CHAT_PARTS):
        return default_spec("chat")
    if fmt == KTO:
        if "messages" in row:
            return default_spec("chat", drop_where=[_label_rule()])
        return default_spec("prompt_completion", drop_where=[_label_rule()])
    if fmt == SHAREGPT:
        field = "conversations" if "conversations" in row else "messages"
        turns = row.get(field)
        first = turns[0] if isinstance(turns, list) and turns else None
        keys = {}
        if isinstance(first, dict) and "role" in first and "from" not in first:
            keys = {"role_key": "role", "content_key": "content"}
        return default_spec("sharegpt", messages_field=field, **keys)
    if fmt == ALPACA:
        return default_spec("alpaca")
    if fmt == PROMPT_COMPLETION:
        return default_spec("prompt_completion")
    if fmt == TEXT and isinstance(row.get("text"), str) and "<|im_start|>" in row["text"]:
        return default_spec("chatml_text")
    return None


def _label_rule():
    from tunestep.tools.inspector.spec import DropRule

    return DropRule(field="label", equals=False,
                    reason="KTO label false: an undesirable answer, not one to imitate")


def allowed_keys(fmt: str, spec: MappingSpec | None) -> set[str]:
    """Top-level keys that earn no unexpected_key warning in a row of ``fmt``."""
    if spec is None:
        return set()
    keys = spec.known_fields()
    if fmt in (CHAT, CHAT_PARTS):
        keys.add("tools")  # TRL passes a tools column to the chat template
    if fmt == KTO:
        keys.add("label")
    return keys
