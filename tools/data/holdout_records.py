"""Signed re-pins of the hold-out set, verified whenever the pin is read.

A row of ``holdout_repins`` says "the operator pinned the hold-out set as these bytes".
The ledger is a file the assistant can write, so a row alone proves nothing: each row
keeps the ``tsa1`` token it was applied with, and every read of the pin (``pin_state``:
check_batch, draft_job, merge_datasets) checks it here before the row counts:

1. a token is there (``no_token``); trusted keys are known (``unverified``);
2. the signature, audience and act ``repin_holdout``, as of the token's issue
   (``bad_token``: a record outlives its token's expiry);
3. the token names this row's nonce and request and this ledger (``wrong_record``);
4. the request's stored canonical bytes hash to the signed digest and name this row's
   path, old and new sha256 and the token's workspace (``wrong_request``);
5. the row was written while the token was valid (``outside_validity``);
6. replayed in ledger sequence order, the row re-pins from the pin in force at its turn
   (``not_in_force``): a deleted or renumbered row breaks the chain, never extends it.

Also here: the copy of each pinned hold-out's bytes (``holdout_snapshots``), read only
when it still hashes to its pin, so a re-pin's review can name the rows that changed.
Requests and applying a token: ``tools/data/holdout_repin.py``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from tunestep.tools.core import ledger
from tunestep.tools.data.holdout_rows import RowDiff

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SNAPSHOT_MAX = 32 * 1024 * 1024  # bytes: a larger hold-out is pinned by sha256 alone


class RepinSubject(BaseModel):
    """What the operator signs: this hold-out file, now these bytes, replaces that pin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    act: Literal["repin_holdout"] = "repin_holdout"
    workspace: str
    ledger: str  # the ledger's identity: a recreated ledger is another ledger
    path: str  # the plan's paths.validation
    old_sha256: str  # the pin in force when the request was made
    new_sha256: str  # the file as it is now
    new_size: int
    rows: RowDiff


def subject_bytes(subject: RepinSubject) -> bytes:
    return orjson.dumps(subject.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def subject_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class IgnoredRepin(BaseModel):
    """A ``holdout_repins`` row that does not verify: it moved no pin."""

    nonce: str
    request_id: str
    reason: str  # no_token | unverified | bad_token | wrong_record | wrong_request | ...
    detail: str


class PinState(BaseModel):
    """The pin in force for one hold-out path, and how it came to be."""

    sha256: str
    first_sha256: str  # pinned on first sight
    repin: str | None = None  # the verified re-pin request that set the pin in force
    operator: str | None = None
    at: float | None = None
    signed_at: int | None = None  # its token's iat: signed, unlike ``at`` (holdout_continuity)
    ignored: list[IgnoredRepin] = Field(default_factory=list)


# --------------------------------------------------------------------------- snapshots


def snapshot_bytes(path: Path, sha256: str) -> bytes | None:
    """The file's bytes when they still hash to ``sha256`` and are small enough to keep."""
    try:
        if path.stat().st_size > SNAPSHOT_MAX:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def keep_snapshot(conn: sqlite3.Connection, rel: str, sha256: str, data: bytes | None) -> None:
    """Keep a copy of pinned bytes (inside the caller's write transaction)."""
    if data is not None:
        conn.execute("INSERT OR IGNORE INTO holdout_snapshots(sha256, path, size, content,"
                     " kept_at) VALUES (?, ?, ?, ?, ?)",
                     (sha256, rel, len(data), data, time.time()))


def snapshot(conn: sqlite3.Connection, sha256: str) -> bytes | None:
    """The kept bytes of a pin; None when absent or when they no longer hash to it."""
    row = conn.execute("SELECT content FROM holdout_snapshots WHERE sha256 = ?",
                       (sha256,)).fetchone()
    if row is None:
        return None
    data = bytes(row["content"])
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


# --------------------------------------------------------------------------- reading


def pin_state(conn: sqlite3.Connection, rel: str, first_sha256: str) -> PinState:
    """The pin in force: the first-sight pin moved by each verified re-pin, in order."""
    state = PinState(sha256=first_sha256, first_sha256=first_sha256)
    rows = conn.execute("SELECT * FROM holdout_repins WHERE path = ? ORDER BY seq, at",
                        (rel,)).fetchall()
    if not rows:
        return state
    identity = ledger.ledger_id(conn)
    trusted = getattr(conn, "trusted_keys", None)  # the keys of the call it was opened for
    for row in rows:
        checked = verify_repin(conn, row, trusted, identity)
        if isinstance(checked, IgnoredRepin):
            state.ignored.append(checked)
        elif row["old_sha256"] != state.sha256:
            state.ignored.append(IgnoredRepin(
                nonce=str(row["nonce"]), request_id=str(row["request_id"]),
                reason="not_in_force", detail="it re-pins a hold-out that was not the pin "
                f"in force ({str(row['old_sha256'])[:12]}, the pin was {state.sha256[:12]})"))
        else:
            state.sha256, state.repin = row["new_sha256"], row["request_id"]
            state.operator, state.at = row["operator"], row["at"]
            state.signed_at = signed_iat(row["token"])
    return state


def signed_iat(token: str) -> int | None:
    """The issue time of a kept token that already verified (its claims are the signed
    ones)."""
    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.signing.approval import parse_token

    try:
        return parse_token(token)[1].iat
    except TunestepError:
        return None


def verify_repin(conn: sqlite3.Connection, row: sqlite3.Row,
                 trusted: dict[str, Ed25519PublicKey] | None,
                 ledger_id: str) -> IgnoredRepin | RepinSubject:
    """The signed subject when the row is the operator's re-pin; else why it is ignored."""
    from tunestep.tools.signing.approval import ACTION_REPIN
    from tunestep.tools.signing.kept_tokens import verify_kept_token, within_validity

    def ignored(reason: str, detail: str) -> IgnoredRepin:
        return IgnoredRepin(nonce=str(row["nonce"]), request_id=str(row["request_id"]),
                            reason=reason, detail=detail)

    claims = verify_kept_token(row, trusted, ACTION_REPIN, ledger_id)
    if isinstance(claims, tuple):
        return ignored(*claims)
    request = conn.execute("SELECT subject FROM holdout_repin_requests WHERE request_id = ?",
                           (row["request_id"],)).fetchone()
    subject = parse_subject(request["subject"]) if request is not None else None
    if subject is None or subject_digest(raw_bytes(request["subject"])) != claims.digest:
        return ignored("wrong_request", "the request the token signs is not in the ledger "
                                        "as signed")
    if (subject.workspace != claims.workspace or subject.ledger != ledger_id
            or (subject.path, subject.old_sha256, subject.new_sha256)
            != (row["path"], row["old_sha256"], row["new_sha256"])):
        return ignored("wrong_request", "the token re-pins another file or sha256")
    if not within_validity(row["at"], claims):
        return ignored("outside_validity", "the record is dated outside its token's validity")
    return subject


def raw_bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def parse_subject(value) -> RepinSubject | None:
    try:
        return RepinSubject.model_validate_json(raw_bytes(value))
    except ValueError:
        return None


def measured_by(conn: sqlite3.Connection, rel: str, sha256: str) -> str:
    """Which pin ``sha256`` was for ``rel``, in words: a verified re-pin's id, the
    first-sight pin, or neither."""
    first = conn.execute("SELECT sha256 FROM validation_pins WHERE path = ?",
                         (rel,)).fetchone()
    if first is None:
        return "not pinned"
    found = "pinned on first sight" if first["sha256"] == sha256 else None
    identity = ledger.ledger_id(conn)
    trusted = getattr(conn, "trusted_keys", None)  # the keys of the call it was opened for
    for row in conn.execute("SELECT * FROM holdout_repins WHERE path = ? AND new_sha256 = ?"
                            " ORDER BY seq, at", (rel, sha256)).fetchall():
        if isinstance(verify_repin(conn, row, trusted, identity), RepinSubject):
            found = f"re-pinned by {row['request_id']} ({row['operator']})"
    return found or "not a pin this ledger verifies"
