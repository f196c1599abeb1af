"""A finished training step's outcome, read from the ledger: what the results card shows.

The gate's decision and reason, the before/after hold-out metrics with their 95 %
intervals and the paired change, and the progression of every recorded step as a tree:
each step hangs under the version its job trained from (``steps.parent``), the latest
version's line is the trunk (``tools/lineage/line.py``), and a step that is not on it (held
back by its gate, or rolled back by the operator) is a branch. When the gate held this
step's version back and it is not latest, the operator's ``tunestep promote`` command.
The hold-out the gate measured: its sha256 from the signed draft, and whether an
operator's re-pin set it.

Read-only: the ledger's ``jobs`` and ``steps`` rows as job_status last recorded them; it
asks no backend (the card calls it after job_status said the job ended).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.line import lineage


class Measure(BaseModel):
    """One metric on the hold-out: the value and its 95 % interval (None: not computed)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None


class MetricChange(BaseModel):
    name: str
    before: Measure
    after: Measure
    change: Measure  # after - before, paired over the same hold-out rows
    p_value: float | None = None


class StepNode(BaseModel):
    """One recorded step in the progression tree."""

    step: int
    batch: str
    version: str
    parent: str | None  # the version it trained from ('' = the base model; None: unknown)
    gate_promoted: bool | None  # the gate's decision (None: not recorded)
    on_line: bool  # in the latest version's ancestry (the trunk)
    latest: bool
    gate_metric: str | None = None
    before: float | None = None
    after: float | None = None


class HoldoutMeasured(BaseModel):
    """The hold-out set a step's gate measured: the eval file its signed draft pinned."""

    path: str
    sha256: str
    short: str  # the first 12 hex, as screens show it
    rows: int | None = None
    # How that sha256 came to be the pin: "pinned on first sight", "re-pinned by
    # repin-… (operator)" (a verified signed re-pin), or that this ledger verifies neither.
    pinned_by: str


def holdout_of_draft(ws: Workspace, draft_id: str) -> HoldoutMeasured | None:
    """The hold-out the draft's signed manifest names (None: no readable draft, or no
    hold-out in it, e.g. an inspection)."""
    from tunestep.tools.data.holdout_records import measured_by
    from tunestep.tools.drafts.draft import load_draft

    try:
        draft = load_draft(ws, draft_id)
    except TunestepError:
        return None
    ref = next((f for f in draft.files if f.role == "eval" and f.sha256), None)
    if ref is None:
        return None
    with ledger.open_ledger(ws) as conn:
        pinned_by = measured_by(conn, ref.path, ref.sha256)
    return HoldoutMeasured(path=ref.path, sha256=ref.sha256, short=ref.sha256[:12],
                           rows=ref.rows, pinned_by=pinned_by)


class StepOutcome(BaseModel):
    job_id: str
    draft_id: str
    status: str
    step: int
    batch: str
    version: str
    gate: dict[str, Any] | None = None  # the draft's gate (metric, margin)
    promoted: bool | None = None  # the gate's decision
    reason: str | None = None
    metrics: list[MetricChange] = Field(default_factory=list)
    graded_rows: int | None = None
    rows: int | None = None
    latest: str | None = None
    moved_by: str | None = None  # "gate" or "operator": who made latest latest
    progression: list[StepNode] = Field(default_factory=list)
    promote_command: str | None = None  # when the gate held this version back
    holdout: HoldoutMeasured | None = None  # what the gate measured (the signed eval file)


def _measure(raw: Any) -> Measure:
    return Measure.model_validate(raw) if isinstance(raw, dict) else Measure()


def _metrics(evaluation: dict) -> list[MetricChange]:
    before = evaluation.get("before") or {}
    after = evaluation.get("after") or {}
    delta = evaluation.get("delta") or {}
    names = [n for n in before if isinstance(before.get(n), dict)]
    return [MetricChange(name=n, before=_measure(before.get(n)), after=_measure(after.get(n)),
                         change=_measure(delta.get(n)),
                         p_value=(delta.get(n) or {}).get("p_value")
                         if isinstance(delta.get(n), dict) else None)
            for n in names]


def step_outcome(ws: Workspace, job_id: str) -> StepOutcome:
    """The outcome of the training step job ``job_id`` recorded, with the progression."""
    from tunestep.tools.core.plan import load_plan

    link = load_plan(ws).plan.model_link
    with ledger.open_ledger(ws) as conn:
        job = conn.execute("SELECT job_id, draft_id, status FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()
        if job is None:
            raise TunestepError("job_unknown", f"no job '{job_id}' in this workspace's ledger")
        step = conn.execute("SELECT * FROM steps WHERE job_id = ?", (job_id,)).fetchone()
        if step is None:
            raise TunestepError(
                "step_not_recorded", f"job '{job_id}' is {job['status']} and recorded no "
                "training step (still running, failed, cancelled, or an inspection)")
        steps = conn.execute("SELECT * FROM steps ORDER BY step").fetchall()
        line = lineage(conn, link)
    draft = _draft_gate(ws, job["draft_id"])
    evaluation = ledger.loads(step["evaluation"]) or {}
    version = step["version"] or f"step-{step['step']}"
    metric = (draft or {}).get("metric") or next(iter(evaluation.get("after") or {}), None)
    nodes = [_node(row, line.line, line.latest, metric) for row in steps]
    held_back = step["promoted"] == 0 and line.latest != version
    return StepOutcome(
        job_id=job_id, draft_id=job["draft_id"], status=job["status"], step=step["step"],
        batch=step["batch"], version=version, gate=draft,
        promoted=None if step["promoted"] is None else bool(step["promoted"]),
        reason=step["promotion_reason"], metrics=_metrics(evaluation),
        graded_rows=evaluation.get("graded_rows"), rows=evaluation.get("rows"),
        latest=line.latest, moved_by=line.moved_by, progression=nodes,
        promote_command=(f"tunestep promote {version} --workspace {ws.root}"
                         if held_back and step["version"] else None),
        holdout=holdout_of_draft(ws, job["draft_id"]))


def _node(row, line: list[str], latest: str | None, metric: str | None) -> StepNode:
    """A step, with ``metric`` (this outcome's gate metric) before and after it."""
    version = row["version"] or f"step-{row['step']}"
    evaluation = ledger.loads(row["evaluation"]) or {}

    def value(side: str) -> float | None:
        found = (evaluation.get(side) or {}).get(metric) if metric else None
        return found.get("value") if isinstance(found, dict) else None

    return StepNode(step=row["step"], batch=row["batch"], version=version,
                    parent=row["parent"],
                    gate_promoted=None if row["promoted"] is None else bool(row["promoted"]),
                    on_line=version in line, latest=version == latest, gate_metric=metric,
                    before=value("before"), after=value("after"))


def _draft_gate(ws: Workspace, draft_id: str) -> dict[str, Any] | None:
    """The gate the step's signed draft carried (None: no gate, or no readable draft)."""
    from tunestep.tools.drafts.draft import load_draft

    try:
        draft = load_draft(ws, draft_id)
    except TunestepError:  # a draft gone or tampered with: the card shows no gate
        return None
    gate = draft.job_config.get("gate", draft.gate)
    return gate if isinstance(gate, dict) else None
