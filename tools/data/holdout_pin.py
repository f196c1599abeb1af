"""The hold-out set's pin: its sha256 recorded on first sight, any later change caught,
the operator's verified re-pins applied (``holdout_records``, ``holdout_repin``).

Apart from preflight's report because the data tools need it too: the selection refuses
to read rows against a hold-out set that is missing or changed (``pinned_validation``).
"""

from __future__ import annotations

import sqlite3
import time

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.datafiles import count_rows
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.holdout_continuity import continuity, unverified_message
from tunestep.tools.data.holdout_records import (
    IgnoredRepin,
    PinState,
    keep_snapshot,
    pin_state,
    snapshot_bytes,
)
from tunestep.tools.data.holdout_repin import repin_action


class ValidationStatus(BaseModel):
    path: str
    present: bool
    sha256: str | None = None
    size: int | None = None
    rows: int | None = None
    pinned_sha256: str | None = None
    pinned_at: float | None = None
    newly_pinned: bool = False
    changed: bool = False
    # The pin in force was set by the operator's signed re-pin (its request id), not on
    # first sight; re-pin records that do not verify are named and moved nothing.
    repinned_by: str | None = None
    ignored_repins: list[IgnoredRepin] = Field(default_factory=list)
    # The pin in force against the operator's latest signed, submitted training draft
    # (holdout_continuity): how it stands, in words, and whether it disagrees.
    pin_note: str | None = None
    pin_unverified: bool = False
    signed_sha256: str | None = None  # the hold-out the latest signed draft measured


def check_validation(ws: Workspace, conn: sqlite3.Connection, rel: str) -> ValidationStatus:
    """Pin the hold-out set on first sight; report any later change. Never writes it."""
    path = ws.resolve(rel)
    if not path.is_file():
        return ValidationStatus(path=rel, present=False)
    digest = sha256_file(path, ws.call)
    size = path.stat().st_size
    rows, _ = count_rows(path)
    status = ValidationStatus(path=rel, present=True, sha256=digest, size=size, rows=rows)
    pin = conn.execute(
        "SELECT sha256, pinned_at FROM validation_pins WHERE path = ?", (rel,)
    ).fetchone()
    if pin is None:
        kept = snapshot_bytes(path, digest)  # read before the lock: a re-pin's diff uses it
        # Read again under the write lock: a concurrent first use may have pinned it.
        with ledger.transaction(conn):
            pin = conn.execute(
                "SELECT sha256, pinned_at FROM validation_pins WHERE path = ?", (rel,)
            ).fetchone()
            if pin is None:
                now = time.time()
                conn.execute(
                    "INSERT INTO validation_pins(path, sha256, size, rows, pinned_at)"
                    " VALUES (?, ?, ?, ?, ?)", (rel, digest, size, rows or 0, now))
                keep_snapshot(conn, rel, digest, kept)
                ledger.audit(conn, "validation.pin", rel,
                             detail={"sha256": digest, "rows": rows})
        if pin is None:  # a deleted pin row is pinned afresh: the evidence still holds
            return _continued(ws, conn, rel, PinState(sha256=digest, first_sha256=digest),
                              status.model_copy(update={"pinned_sha256": digest,
                                                        "pinned_at": now,
                                                        "newly_pinned": True}))
    state = pin_state(conn, rel, pin["sha256"])  # the operator's verified re-pins applied
    return _continued(ws, conn, rel, state, status.model_copy(update={
        "pinned_sha256": state.sha256, "pinned_at": state.at or pin["pinned_at"],
        "changed": state.sha256 != digest, "repinned_by": state.repin,
        "ignored_repins": state.ignored}))


def _continued(ws: Workspace, conn: sqlite3.Connection, rel: str, state: PinState,
               status: ValidationStatus) -> ValidationStatus:
    result = continuity(ws, conn, rel, state)
    return status.model_copy(update={
        "pin_note": result.note, "pin_unverified": not result.agrees,
        "signed_sha256": result.evidence.sha256 if result.evidence else None})


def pinned_validation(ws: Workspace, conn: sqlite3.Connection, rel: str) -> ValidationStatus:
    """The hold-out status, raising when it is missing or changed (for tools that need it)."""
    status = check_validation(ws, conn, rel)
    if not status.present:
        raise TunestepError("validation_missing", "the hold-out set is missing", path=rel)
    if status.pin_unverified:
        raise TunestepError("validation_pin_unverified", unverified_message(
            status.signed_sha256 or "", status.pin_note or ""),
            path=rel, hint=repin_action("if the change is intended:"))
    if status.changed:
        raise TunestepError(
            "validation_changed",
            f"the hold-out set changed since it was pinned "
            f"(pinned {status.pinned_sha256[:12]}, now {status.sha256[:12]}): restore it, "
            "or, if the change is intended, the operator re-pins it", path=rel,
            hint=repin_action("if the change is intended:"))
    return status
