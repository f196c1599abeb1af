"""A stored draft manifest's bytes, checked against their digest before anything reads them.

Below every reader (draft_model, chain, the local backend): stdlib, orjson and errors only,
so a module low in the import graph can read a signed field without importing the draft.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from tunestep.tools.core.errors import TunestepError


def draft_id_for(digest: str) -> str:
    """A draft's id derives from its manifest's digest."""
    return f"draft-{digest[:12]}"


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def checked_bytes(data: bytes, digest: str, draft_id: str) -> bytes:
    """``data`` when it hashes to ``digest`` and ``draft_id`` derives from that digest."""
    if manifest_digest(data) != digest or draft_id_for(digest) != draft_id:
        raise TunestepError("draft_tampered", f"the stored manifest of {draft_id} does not "
                            "hash to its digest: it was changed after it was drafted; "
                            "draft again and ask the operator for a new approval")
    return data


def signed_fields(row: Any, draft_id: str) -> dict | None:
    """The verified manifest of a ``drafts`` row (``digest``, ``manifest``) as a dict;
    None for a draft stored before manifests (schema 7)."""
    if row["manifest"] is None:
        return None
    data = checked_bytes(as_bytes(row["manifest"]), row["digest"], draft_id)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("job_config"), dict):
        raise TunestepError("draft_tampered", f"the stored manifest of {draft_id} is not a "
                            "manifest; draft again")
    return value
