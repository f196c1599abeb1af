"""How often job_status may ask the Hub about one HF job: at least every 10 s, or later.

The Hub's API limit for a free account is about 1,000 calls per 5 minutes, shared by
everything the account does; an assistant that calls job_status in a tight loop must not
spend it. Each hf-jobs row keeps ``result.hub_poll.next_at`` in the ledger (so the limit
holds across processes: the MCP server, ``tunestep status``); a call before that time
answers from the ledger without a Hub request. A 429's ``Retry-After`` pushes the time
further. ``clock`` is the time source, replaceable in tests.
"""

from __future__ import annotations

import time
from typing import Any

from tunestep.tools.core import ledger
from tunestep.tools.core.workspace import Workspace

MIN_INTERVAL_S = 10.0
clock = time.time


def next_at(result: dict[str, Any] | None) -> float:
    return float(((result or {}).get("hub_poll") or {}).get("next_at") or 0.0)


def due(result: dict[str, Any] | None) -> bool:
    """Whether the Hub may be asked about this job now."""
    return clock() >= next_at(result)


def schedule(ws: Workspace, job_id: str, retry_after: float | None = None) -> float:
    """Record that the Hub was just asked (or refused us): returns the next allowed time."""
    wait = max(MIN_INTERVAL_S, float(retry_after or 0.0))
    when = clock() + wait
    state = ledger.dumps({"next_at": when, "interval_s": wait})
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        # json_set: only this key changes, whatever else wrote the result meanwhile.
        conn.execute("UPDATE jobs SET result = json_set(COALESCE(NULLIF(result, ''), '{}'),"
                     " '$.hub_poll', json(?)) WHERE job_id = ?", (state, job_id))
    return when
