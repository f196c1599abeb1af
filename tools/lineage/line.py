"""Which version is latest, and which batches its weights learned: derived from the ledger.

The ledger records two kinds of event, and nothing else decides this:

- a step (``steps``): its job stored a new version, trained on top of ``steps.parent``, the
  version its draft resumed from (resolved when the draft was made, so a promotion while
  the job runs does not change it; '' = the base model); ``steps.promoted`` is the *gate's*
  decision, whether the job made it latest;
- a signed move of latest (``promotions``): the operator promoted a version or rolled back
  to one.

Replayed in ledger sequence order (``seq``, handed out inside each writing transaction, so
a clock that jumps back cannot reorder them) they give the latest version and, for every
version, its line: the versions it descends from, itself last. A batch is learned when a
step in the latest version's line trained it; every other trained batch is "not learned"
(replay trains it in full again). ``steps.promoted`` stays the gate's record; readers that
mean "is it latest" or "is it learned" ask this module, so a promotion by hand never has to
be copied anywhere.

Rows from before schema 5 carry no ``seq`` and no ``parent``: they replay first, in time
order, and such a step's parent is whatever was latest when it was recorded (the old rule).

A version with no step (the base, or a folder put in the store by hand) starts a line of
its own: promoting it means no recorded batch is learned.

A ``promotions`` row counts only when its signed token verifies (``promotion_records``):
against the keys given (``trusted``), else those of the call the ledger connection was
opened for; a row that does not
verify moves nothing and is listed in ``ignored``. Order stays the ledger's ``seq`` (a
clock may jump): someone who can write the ledger can still delete or renumber genuine
signed rows, so latest can become a version the operator once signed for, never one no
operator signed (see .specs/approval_protocol.md, "What holds against whom").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.lineage.promotion_records import IgnoredPromotion, verify_record

if TYPE_CHECKING:
    from tunestep.tools.core.workspace import Workspace
    from tunestep.tools.lineage.start_point import StartPoint

BASE = ""  # steps.parent of a step that trained from the base model


class Lineage(BaseModel):
    latest: str | None = None  # None: the ledger moved latest never (a store set up by hand)
    latest_step: int | None = None  # the step that made ``latest`` (None: no step did)
    line: list[str] = Field(default_factory=list)  # latest's ancestry, oldest first
    learned: list[str] = Field(default_factory=list)  # batches the latest weights learned
    not_learned: list[str] = Field(default_factory=list)  # trained, but not into latest
    moved_by: str | None = None  # "gate" or "operator": who made latest latest
    ignored: list[IgnoredPromotion] = Field(default_factory=list)  # rows that moved nothing

    def holds(self, version: str | None) -> bool:
        """True when ``version`` is latest or one of its ancestors."""
        return version is not None and version in self.line


def _key(row: sqlite3.Row) -> str:
    # Rows from before versions were recorded (schema 1) name no folder: the step stands in.
    return row["version"] or f"step-{row['step']}"


def _order(row: sqlite3.Row, kind: int, index: int, at: float) -> tuple:
    # Sequenced rows after the unsequenced (older) ones; those keep the old time order,
    # and at equal times a step comes first (a version is promoted after its step stored it).
    seq = row["seq"]
    return (0, at, kind, index) if seq is None else (1, seq, kind, index)


def lineage(conn: sqlite3.Connection, store: str | None = None,
            trusted: dict | None = None) -> Lineage:
    """Replay the steps and the signed moves of latest (of ``store``, when given); a move
    whose token does not verify against ``trusted`` (default: the keys of the call the
    connection was opened for, ``conn.trusted_keys``) is ignored and named."""
    steps = conn.execute("SELECT step, batch, version, promoted, recorded_at, parent, seq"
                         " FROM steps ORDER BY step").fetchall()
    query = "SELECT nonce, request_id, store, version, at, seq, token FROM promotions"
    rows = conn.execute(query + (" WHERE store = ?" if store else ""),
                        (store,) if store else ()).fetchall()
    keys = trusted if trusted is not None else getattr(conn, "trusted_keys", None)
    identity = ledger.ledger_id(conn)
    ignored: list[IgnoredPromotion] = []
    moves = []
    for row in rows:
        verdict = verify_record(conn, row, keys, identity)
        if isinstance(verdict, IgnoredPromotion):
            ignored.append(verdict)
        else:
            moves.append(row)
    events = sorted([(_order(s, 0, i, s["recorded_at"]), 0, s) for i, s in enumerate(steps)]
                    + [(_order(m, 1, i, m["at"]), 1, m) for i, m in enumerate(moves)],
                    key=lambda e: e[0])
    lines: dict[str, tuple[str, ...]] = {}
    batches: dict[str, str] = {}  # version -> the batch its step trained
    made_by: dict[str, int] = {}
    latest: str | None = None
    moved_by: str | None = None
    for _, kind, row in events:
        if kind == 0:
            version = _key(row)
            parent = row["parent"] if row["parent"] is not None else (latest or BASE)
            # A parent no step made (a hand-put folder, an unmapped Hub commit) heads a
            # line of its own.
            above = lines.get(parent, (parent,)) if parent else ()
            lines[version] = (*above, version)
            batches[version] = row["batch"]
            made_by[version] = row["step"]
            if row["promoted"]:
                latest, moved_by = version, "gate"
        else:
            latest, moved_by = row["version"], "operator"
            lines.setdefault(latest, (latest,))
    line = list(lines.get(latest, ())) if latest else []
    learned = {batches[v] for v in line if v in batches}
    trained = {s["batch"] for s in steps}
    return Lineage(latest=latest, latest_step=made_by.get(latest) if latest else None,
                   line=line, learned=sorted(learned), not_learned=sorted(trained - learned),
                   moved_by=moved_by, ignored=ignored)



def hub_version(conn: sqlite3.Connection, model_id: str, revision: str) -> str | None:
    """The recorded version a pushed Hub commit is (a step's push or a synced download)."""
    row = conn.execute("SELECT version FROM steps WHERE hub_model_id = ? AND hub_revision = ?"
                       " AND version IS NOT NULL ORDER BY step DESC LIMIT 1",
                       (model_id, revision)).fetchone()
    if row is None:
        row = conn.execute("SELECT version FROM model_versions WHERE hub_model_id = ? AND"
                           " hub_revision = ? ORDER BY recorded_at DESC LIMIT 1",
                           (model_id, revision)).fetchone()
    return row["version"] if row else None


def start_parent(ws: Workspace, start: StartPoint) -> str:
    """The version a draft's job trains from, fixed at draft time (BASE: the base model).

    ``hf://id@sha`` maps to the version the ledger recorded for that commit (unmapped: the
    address itself, a line of its own); a local folder ``versions/NNNN_<batch>`` (resumed,
    a LoRA's full base, or carried in the bundle) is that version; anything else is the base.
    """
    if start.source == "hub" and start.hub_model_id and start.hub_revision:
        with ledger.open_ledger(ws) as conn:
            found = hub_version(conn, start.hub_model_id, start.hub_revision)
        return found or f"hf://{start.hub_model_id}@{start.hub_revision}"
    folder = {"bundle": start.checkpoint,
              "local": start.resume_from or start.base_model}.get(start.source)
    if folder and Path(folder).parent.name == "versions":
        return Path(folder).name
    return BASE
