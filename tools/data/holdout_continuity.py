"""The hold-out pin against what the operator signed: the first-sight pin is a ledger row.

The assistant can write the ledger, so it could rewrite the hold-out file and its
``validation_pins`` row together, and every later gate would measure the new set while
the pin still said "pinned on first sight". What it cannot write is the operator's
signature: every submitted job keeps its approval token (``approvals.token``, schema 9),
signed over a draft whose manifest names the hold-out (role ``eval``) by sha256. So the
pin in force must agree with the latest such evidence, checked here on every read of the
pin (``holdout_pin.check_validation``):

1. evidence is an ``approvals`` row whose kept token verifies against the call's trusted
   keys, for act ``submit_job``, naming this row's nonce and draft and this ledger and
   workspace, used while the token was valid (``signing/kept_tokens``);
2. the token's digest is the stored draft's digest, the stored manifest bytes hash to it
   (``signing/signed_manifest``), the draft trains, and its eval file is this hold-out:
   its sha256 is what the job measured;
3. the latest evidence is the one with the latest signed issue time (``iat``: never the
   row's own time, which the assistant can write); a row that fails any step is no
   evidence, and an earlier one counts instead;
4. the pin in force agrees when it is that sha256, or when the operator's verified re-pin
   that set it was signed after that approval (the operator chose the new set since).

No evidence (no job submitted yet, approvals used before tokens were kept, or no trusted
key in this call) leaves the pin as it was, and the status says it is not yet confirmed.
Honest limit: deleting every approvals row (or the later ones) falls back to older
evidence or none; the job rows and the audit still show the jobs.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from pydantic import BaseModel

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.holdout_records import PinState

UNCONFIRMED = "pinned on first sight, not yet confirmed by a signed draft"


class PinEvidence(BaseModel):
    """A submitted training draft the operator signed, and the hold-out sha256 it names."""

    job_id: str
    draft_id: str
    operator: str
    sha256: str
    signed_at: int  # the approval token's iat


class Continuity(BaseModel):
    """The pin in force against the latest signed evidence."""

    evidence: PinEvidence | None = None
    agrees: bool = True
    note: str  # in words, for the status


def signed_evidence(ws: Workspace, conn: sqlite3.Connection, rel: str) -> PinEvidence | None:
    """The latest submitted training draft the operator signed that names ``rel``."""
    from tunestep.tools.signing.approval import ACTION_SUBMIT_JOB, parse_token

    trusted = getattr(conn, "trusted_keys", None)  # the keys of the call it was opened for
    if not trusted:
        return None
    rows = conn.execute("SELECT nonce, draft_id, job_id, operator, used_at, token"
                        " FROM approvals WHERE token IS NOT NULL").fetchall()
    if not rows:
        return None
    candidates = []
    for row in rows:
        try:  # shape only, to order by the signed time; each is verified below
            candidates.append((parse_token(row["token"])[1].iat, row))
        except TunestepError:
            continue
    identity = ledger.ledger_id(conn)
    for iat, row in sorted(candidates, key=lambda c: c[0], reverse=True):
        sha = _measured(ws, conn, row, trusted, identity, ACTION_SUBMIT_JOB, rel)
        if sha is not None:
            return PinEvidence(job_id=str(row["job_id"]), draft_id=str(row["draft_id"]),
                               operator=str(row["operator"]), sha256=sha, signed_at=iat)
    return None


def _measured(ws: Workspace, conn: sqlite3.Connection, row: sqlite3.Row, trusted: Any,
              identity: str, act: str, rel: str) -> str | None:
    """The eval sha256 the row's signed draft names for ``rel``; None: no evidence."""
    from tunestep.tools.signing.kept_tokens import verify_kept_token, within_validity
    from tunestep.tools.signing.signed_manifest import signed_fields

    kept = {"token": row["token"], "nonce": row["nonce"], "request_id": row["draft_id"]}
    claims = verify_kept_token(kept, trusted, act, identity)
    if isinstance(claims, tuple) or claims.workspace != str(ws.root):
        return None
    if not within_validity(row["used_at"], claims):
        return None
    draft = conn.execute("SELECT digest, manifest FROM drafts WHERE draft_id = ?",
                         (row["draft_id"],)).fetchone()
    if draft is None or draft["digest"] != claims.digest:
        return None
    try:
        fields = signed_fields(draft, str(row["draft_id"]))  # bytes hash to the digest
    except TunestepError:
        return None
    if fields is None or fields.get("kind") != "train":
        return None
    files = fields.get("files")
    for ref in files if isinstance(files, list) else []:
        if (isinstance(ref, dict) and ref.get("role") == "eval" and ref.get("path") == rel
                and isinstance(ref.get("sha256"), str)):
            return ref["sha256"]
    return None


def continuity(ws: Workspace, conn: sqlite3.Connection, rel: str,
               state: PinState) -> Continuity:
    """Whether the pin in force (``state``) agrees with the operator's latest evidence."""
    evidence = signed_evidence(ws, conn, rel)
    if evidence is None:
        note = (f"re-pinned by {state.repin} (signed)" if state.repin is not None
                else UNCONFIRMED)
        return Continuity(note=note)
    by = f"{evidence.job_id} (draft {evidence.draft_id}, signed by {evidence.operator})"
    if state.sha256 == evidence.sha256:
        return Continuity(evidence=evidence, note=f"confirmed by {by}")
    if (state.repin is not None and state.signed_at is not None
            and state.signed_at >= evidence.signed_at):  # same second: after (a submit
            # comes after its approval, a re-pin made before it would have made it stale)
        return Continuity(evidence=evidence, note=f"re-pinned by {state.repin} (signed "
                                                  f"after {evidence.job_id})")
    return Continuity(evidence=evidence, agrees=False,
                      note=f"the pin in force ({state.sha256[:12]}) is not the hold-out "
                           f"{by} measured ({evidence.sha256[:12]}), and no re-pin the "
                           "operator signed since moved it")


def unverified_message(expected: str, note: str) -> str:
    """``validation_pin_unverified``'s text: the pin (in ``note``), what was expected, the
    fix."""
    return (f"the hold-out pin is not what the operator signed: {note}. "
            f"Expected sha256 {expected}. Restore the hold-out set to those bytes; or, if "
            "the change is intended, the operator re-pins it as it is (signed; the next "
            "step names the command for this surface)")

