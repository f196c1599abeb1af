"""The shape of a Hub repo id ``<namespace>/<name>``, as huggingface_hub accepts it.

The rule is ``huggingface_hub.utils.validate_repo_id``'s (huggingface_hub 1.x), with a
namespace required (tunestep never names a repo without its owner): each part 1-96
characters of letters, digits, ``_``, ``-`` and ``.``, starting and ending with a letter,
digit or ``_``; no ``--`` or ``..`` anywhere; not ending in ``.git``. So ``.``, ``..``,
``../x`` or ``owner/..`` never pass: an id also becomes a path (the Hub's URLs, the
datasets cache) and a traversal segment must not reach one.

Letters and digits are ASCII only, as there (its regex is compiled with re.ASCII).
tests/test_repo_ids.py checks that both accept the same ids.

Standard library only: the inspector, the HF Jobs backend and the plan use it.
"""

from __future__ import annotations

import re

# A part starts and ends with a word character (validate_repo_id's \b...\b).
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}", re.ASCII)
RULE = ("<namespace>/<name>, each 1-96 characters [A-Za-z0-9_.-] that start and end "
        "with a letter, digit or _, with no -- or .. and no .git at the end")


def repo_id_problem(value: object) -> str | None:
    """Why ``value`` is not a Hub repo id ``<namespace>/<name>``, or None when it is one."""
    if not isinstance(value, str):
        return f"a Hub repo id is a string, not {type(value).__name__}"
    if (value.count("/") != 1 or not _REPO_ID.fullmatch(value) or "--" in value
            or ".." in value or value.endswith(".git")):
        return f"{value[:200]!r} is not a Hub repo id: {RULE}"
    return None


def is_repo_id(value: object) -> bool:
    return repo_id_problem(value) is None
