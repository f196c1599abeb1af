"""The two ledger reads every job view starts from: a job's row, and its draft's kind.

Apart so that ``job_control`` and ``hf_status`` share them without importing each other.
"""

from __future__ import annotations

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace


def job_row(ws: Workspace, job_id: str):
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise TunestepError("job_unknown", f"no job '{job_id}' in this workspace's ledger")
    return row


def draft_kind(ws: Workspace, draft_id: str) -> str | None:
    with ledger.open_ledger(ws) as conn:
        found = conn.execute("SELECT kind FROM drafts WHERE draft_id = ?",
                             (draft_id,)).fetchone()
    return found["kind"] if found else None
