"""The operator's side: review a stored draft and sign it (keys: approval.create_operator_key).

CLI only. No MCP tool reaches this module: the assistant can never sign. The review
always starts from the draft stored in the ledger (not from anything the assistant
says about it) and recomputes it, so a stale draft is refused before it is signed.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from tunestep.tools import ledger
from tunestep.tools.approval import (
    default_operator_dir,
    load_private_key,
    parse_ttl,
    sign_approval,
)
from tunestep.tools.draft import JobDraft, load_draft, recompute
from tunestep.tools.errors import TunestepError
from tunestep.tools.workspace import Workspace

PASSPHRASE_ENV = "TUNESTEP_OPERATOR_PASSPHRASE"
DEFAULT_NAME = "operator"


class ApprovalGrant(BaseModel):
    draft_id: str
    digest: str
    operator: str
    expires_in_seconds: int
    token: str


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def private_key_path(name: str, key: Path | None = None) -> Path:
    return key or default_operator_dir() / f"{name}.key.pem"


def review_draft(ws: Workspace, draft_id: str) -> JobDraft:
    """The stored draft, refused when the workspace no longer matches it."""
    stored = load_draft(ws, draft_id)
    if recompute(ws, stored).digest != stored.digest:
        raise TunestepError("draft_stale", "the workspace changed since this draft was made "
                            "(a dataset, the checkpoint, the plan or the job script); ask for "
                            "a new draft")
    return stored


def sign_draft(ws: Workspace, draft: JobDraft, *, name: str, key_path: Path,
               passphrase: bytes, ttl: str) -> ApprovalGrant:
    private_key = load_private_key(key_path, passphrase)
    seconds = parse_ttl(ttl)
    token = sign_approval(private_key, draft_id=draft.draft_id, digest=draft.digest,
                          workspace=str(ws.root), op=name, ttl_seconds=seconds)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        ledger.audit(conn, "draft.approve", draft.draft_id,
                     detail={"digest": draft.digest, "operator": name, "ttl": seconds})
    return ApprovalGrant(draft_id=draft.draft_id, digest=draft.digest, operator=name,
                         expires_in_seconds=seconds, token=token)
