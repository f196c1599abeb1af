"""Which version is latest, and which batches its weights learned: derived from the ledger.

The ledger records two kinds of event, and nothing else decides this:

- a step (``steps``): its job stored a new version, trained on top of the version that was
  latest then; ``steps.promoted`` is the *gate's* decision, whether the job made it latest;
- a signed move of latest (``promotions``): the operator promoted a version or rolled back
  to one.

Replayed in time order they give the latest version and, for every version, its line: the
versions it descends from, itself last. A batch is learned when a step in the latest
version's line trained it; every other trained batch is "not learned" (replay trains it in
full again). ``steps.promoted`` stays the gate's record; readers that mean "is it latest" or
"is it learned" ask this module, so a promotion by hand never has to be copied anywhere.

A version with no step (the base, or a folder put in the store by hand) starts a line of
its own: promoting it means no recorded batch is learned.
"""

from __future__ import annotations

import sqlite3

from pydantic import BaseModel, Field


class Lineage(BaseModel):
    latest: str | None = None  # None: the ledger moved latest never (a store set up by hand)
    latest_step: int | None = None  # the step that made ``latest`` (None: no step did)
    line: list[str] = Field(default_factory=list)  # latest's ancestry, oldest first
    learned: list[str] = Field(default_factory=list)  # batches the latest weights learned
    not_learned: list[str] = Field(default_factory=list)  # trained, but not into latest
    moved_by: str | None = None  # "gate" or "operator": who made latest latest

    def holds(self, version: str | None) -> bool:
        """True when ``version`` is latest or one of its ancestors."""
        return version is not None and version in self.line


def _key(row: sqlite3.Row) -> str:
    # Rows from before versions were recorded (schema 1) name no folder: the step stands in.
    return row["version"] or f"step-{row['step']}"


def lineage(conn: sqlite3.Connection, store: str | None = None) -> Lineage:
    """Replay the steps and the signed moves of latest (of ``store``, when given)."""
    steps = conn.execute("SELECT step, batch, version, promoted, recorded_at FROM steps"
                         " ORDER BY recorded_at, step").fetchall()
    query = "SELECT version, at FROM promotions"
    moves = conn.execute(query + (" WHERE store = ?" if store else "") + " ORDER BY at",
                         (store,) if store else ()).fetchall()
    # At equal times a step comes first: a version is promoted after its step stored it.
    events = sorted([(s["recorded_at"], 0, i, s) for i, s in enumerate(steps)]
                    + [(m["at"], 1, i, m) for i, m in enumerate(moves)],
                    key=lambda e: e[:3])
    lines: dict[str, tuple[str, ...]] = {}
    batches: dict[str, str] = {}  # version -> the batch its step trained
    made_by: dict[str, int] = {}
    latest: str | None = None
    moved_by: str | None = None
    for _, kind, _, row in events:
        if kind == 0:
            version = _key(row)
            lines[version] = (lines.get(latest, ()) if latest else ()) + (version,)
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
                   moved_by=moved_by)
