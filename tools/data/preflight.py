"""check_batch: is everything in place for the next step? A report, never a crash.

The batch folders (``batch_folders``) and the hold-out pin (``holdout_pin``) live apart:
the step's selection reads them too, without the report.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.datafiles import (
    DataFile,
    batch_step,
    check_batch_name,
    describe,
    list_data_files,
)
from tunestep.tools.core.next_step import NextAction, mcp_texts
from tunestep.tools.core.plan import load_plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.batch_folders import (
    BatchInfo,
    LastInspection,
    discover_batches,
    last_inspection,
)
from tunestep.tools.data.holdout_pin import ValidationStatus, check_validation
from tunestep.tools.data.holdout_repin import repin_action
from tunestep.tools.hub.token import token_status
from tunestep.tools.lineage.line import lineage
from tunestep.tools.lineage.model_store import CheckpointStatus, inspect_store


class Problem(BaseModel):
    code: str
    severity: Literal["error", "warning", "info"]
    message: str
    path: str | None = None


class LastStep(BaseModel):
    """The newest recorded step, and whether its version became ``latest``."""

    step: int
    batch: str
    version: str | None
    promoted: bool
    reason: str | None  # the promotion gate's reason, from the job
    # The operator moved latest back past it (a signed rollback), as opposed to a gate
    # that held the step back: the words differ, and no one should be told to promote it.
    rolled_back: bool = False


class PreflightReport(BaseModel):
    """The answer to "can the next step start?", with what to do when it cannot."""

    batch: str | None
    step: int | None
    batch_path: str | None
    ready: bool
    problems: list[Problem]
    files: list[DataFile]
    validation: ValidationStatus
    checkpoint: CheckpointStatus
    hf_token_available: bool
    hf_token_source: str | None
    batches: list[BatchInfo]
    plan_source: str | None
    next_actions: list[str] = Field(default_factory=list)
    last_step: LastStep | None = None
    next_steps: list[NextAction] = Field(default_factory=list)  # next_actions, structured
    inspection: LastInspection | None = None
    requested: str | None = None  # the batch asked for by name (None: the next one)
    nothing_left: bool = False  # every batch folder is trained: nothing to do until the next
    # Batches trained, but not into the weights latest holds (rolled back, or held back by
    # the gate): the next step trains them again, in full.
    retrain: list[str] = Field(default_factory=list)


def check_batch(ws: Workspace, batch: str | None = None) -> PreflightReport:
    """Preflight for a step: the batch, the hold-out set, the checkpoint and the HF token."""
    loaded = load_plan(ws)
    plan = loaded.plan
    problems: list[Problem] = [Problem(code="plan_defaults", severity="info", message=note)
                               for note in loaded.notes]
    actions: list[NextAction] = []
    with ledger.open_ledger(ws) as conn:
        trained = ledger.trained_batches(conn)
        batches = discover_batches(ws, loaded, trained)
        line = lineage(conn, plan.model_link)
        retrain = [b.name for b in batches if b.name in set(line.not_learned)]
        chosen, files = _choose_batch(ws, plan.paths.incremental, plan.data.batch_pattern,
                                      batch, batches, problems, retrain)
        validation = check_validation(ws, conn, plan.paths.validation)
        last = conn.execute("SELECT step, batch, version, promoted, promotion_reason FROM steps"
                            " ORDER BY step DESC LIMIT 1").fetchone()
        inspection = None
        if chosen is not None:
            inspection = last_inspection(ws, conn, f"{plan.paths.mapped}/{chosen.name}",
                                         chosen.path, files)
    _validation_problems(validation, problems, actions)
    last_step = None
    if last is not None:
        # Promoted = in the latest version's line (the gate's move or the operator's).
        rolled = line.moved_by == "operator" and not line.holds(
            last["version"] or f"step-{last['step']}")
        last_step = LastStep(
            step=last["step"], batch=last["batch"], version=last["version"],
            promoted=line.holds(last["version"] or f"step-{last['step']}")
            if line.latest is not None else bool(last["promoted"]),
            reason=f"latest moved back to {line.latest}" if rolled
            else last["promotion_reason"], rolled_back=rolled)
    if inspection is not None and inspection.current and inspection.status == "INVALID":
        problems.append(Problem(
            code="batch_invalid", severity="error",
            message=f"the inspector found {inspection.error_count} error(s) in this data "
                    "when it last ran: fix the rows or map them", path=inspection.path))

    link = ws.resolve_model_store(plan.model_link)
    checkpoint = inspect_store(link, plan.model_link)
    if not checkpoint.exists or not checkpoint.target_exists:
        problems.append(Problem(
            code="checkpoint_missing", severity="error" if trained else "warning",
            message="no checkpoint at the model link: sync the model store"
            + ("" if trained else " (a first step can start from the base model)"),
            path=plan.model_link))
        actions.append(NextAction(note=f"sync the model store so that {plan.model_link} "
                                       "points at the latest checkpoint"))
    elif checkpoint.latest is None:
        problems.append(Problem(code="checkpoint_empty", severity="warning",
                                message="the model store holds no checkpoint yet",
                                path=plan.model_link))

    _chain_state(ws, plan.model_link, link, checkpoint, problems, actions)
    _latest_evidence(ws, plan.model_link, plan.model, link, problems, actions)

    if last_step is not None and last_step.rolled_back:
        problems.append(Problem(
            code="step_rolled_back", severity="info",
            message=f"step {last_step.step} ({last_step.batch}) was rolled back by the "
                    f"operator ({last_step.reason}); the next step resumes from "
                    f"{line.latest}",
            path=plan.model_link))
    elif last_step is not None and not last_step.promoted:
        # The ledger's line; where that is the base, the base folder the link names (a
        # link elsewhere is latest_link_mismatch, reported apart).
        held = line.latest or (checkpoint.latest.rsplit("/", 1)[-1] if checkpoint.latest
                               else "the base model")
        problems.append(Problem(
            code="step_not_promoted", severity="warning",
            message=f"step {last_step.step} ({last_step.batch}) was not promoted: "
                    f"{last_step.reason or 'the promotion gate did not pass'}; latest stays at "
                    f"{held}, and the next step resumes from it",
            path=plan.model_link))
        if last_step.version:
            actions.append(NextAction(
                lead=f"to use {last_step.version} anyway, the operator promotes it:",
                tool="promote_version", args={"version": last_step.version},
                note="(signed by the operator)"))

    token = token_status()
    if not token.available:
        problems.append(Problem(
            code="hf_token_missing", severity="warning",
            message="no Hugging Face token in the environment or token file: needed for "
                    "hf-jobs and Hub pushes, not for local jobs"))

    for data_file in files:
        if data_file.rows is None:
            problems.append(Problem(code="file_unreadable", severity="error",
                                    message=f"cannot count rows: {data_file.note}",
                                    path=data_file.path))
    if retrain and chosen is not None:
        problems.append(Problem(
            code="batches_to_retrain", severity="info",
            message=f"the weights latest holds never learned {', '.join(retrain)} (rolled "
                    "back or held back): the next step trains "
                    f"{'it' if len(retrain) == 1 else 'them'} again, in full"))
    ready = not any(p.severity == "error" for p in problems)
    if chosen is not None and ready:
        actions.insert(0, _next_for(chosen, inspection))
    elif chosen is None and batch is None and retrain:
        # No new batch folder, but rolled-back batches await: draft the last of them again
        # (the others come along in full).
        actions.insert(0, NextAction(
            lead=f"to retrain {', '.join(retrain)} now:", tool="draft_job",
            args={"batch": retrain[-1]}, note="(or drop the next batch in first)"))
    return PreflightReport(
        batch=chosen.name if chosen else None,
        step=chosen.step if chosen else None,
        batch_path=chosen.path if chosen else None,
        ready=ready,
        problems=problems,
        files=files,
        validation=validation,
        checkpoint=checkpoint,
        hf_token_available=token.available,
        hf_token_source=token.source,
        batches=batches,
        plan_source=loaded.source,
        last_step=last_step,
        next_actions=mcp_texts(actions),
        next_steps=actions,
        inspection=inspection,
        requested=batch,
        nothing_left=batch is None and chosen is None and bool(batches)
        and all(b.trained for b in batches) and not retrain,
        retrain=retrain,
    )


def _next_for(chosen: BatchInfo, inspection: LastInspection | None) -> NextAction:
    """The step after a clean preflight, from what the inspector last said."""
    if inspection is None or not inspection.current or inspection.status is None:
        return NextAction(tool="run_inspector", args={"path": inspection.path if inspection
                                                      else chosen.path})
    if inspection.status == "NEEDS_MAPPING":
        return NextAction(tool="apply_mapping", args={"source": inspection.path},
                          from_result={"mapping": "suggested_mapping"},
                          note="(the inspector's suggestion)")
    return NextAction(tool="draft_job", args={"batch": chosen.name})



def _choose_batch(ws: Workspace, incremental: str, pattern: str, named: str | None,
                  batches: list[BatchInfo], problems: list[Problem],
                  retrain: list[str] | None = None,
                  ) -> tuple[BatchInfo | None, list[DataFile]]:
    if named is not None:
        check_batch_name(named)
        chosen = next((b for b in batches if b.name == named), None)
        if chosen is None:
            step = batch_step(named, pattern)
            problems.append(Problem(
                code="batch_missing", severity="error",
                message=("no such batch folder" if step is not None
                         else f"'{named}' does not match the batch pattern {pattern}")
                + "; " + _known(batches, incremental),
                path=f"{incremental}/{named}"))
            return None, []
        if chosen.trained:
            problems.append(Problem(code="batch_already_trained", severity="warning",
                                    message="the ledger records this batch as trained",
                                    path=chosen.path))
    else:
        chosen = next((b for b in batches if not b.trained), None)
        if chosen is None and retrain:
            problems.append(Problem(
                code="batch_missing", severity="error",
                message=f"no new batch folder, and {', '.join(retrain)} await retraining "
                        "(the weights latest holds never learned them: rolled back or held "
                        f"back): draft {retrain[-1]} again, which trains "
                        f"{'it' if len(retrain) == 1 else 'them all'} in full, or drop the "
                        f"next batch into {incremental}/", path=incremental))
            return None, []
        if chosen is None:
            done = (f"nothing left to train: all {len(batches)} batch folder(s) are "
                    f"trained (the last: {batches[-1].name}); " if batches else
                    "no batch folder yet: ")
            problems.append(Problem(
                code="batch_missing", severity="error",
                message=f"{done}drop the next batch into {incremental}/", path=incremental))
            return None, []
    _report_gaps(batches, chosen, problems)
    folder = ws.resolve(chosen.path)
    files = [describe(p, ws.relative(p), ws.call) for p in list_data_files(folder, ws.root)]
    if not files:
        problems.append(Problem(code="batch_empty", severity="error",
                                message="the batch folder holds no .jsonl, .json or .parquet file",
                                path=chosen.path))
    elif all((f.rows or 0) == 0 for f in files if f.rows is not None) and any(
            f.rows == 0 for f in files):
        problems.append(Problem(code="batch_empty", severity="error",
                                message="the batch's data files hold no rows", path=chosen.path))
    return chosen, files


def _known(batches: list[BatchInfo], incremental: str, shown: int = 12) -> str:
    """The batch folders there are, for a name that is not one of them."""
    if not batches:
        return f"there is no batch folder under {incremental}/ yet"
    names = [b.name for b in batches]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"the batches: {', '.join(names[:shown])}{more}"


def _report_gaps(batches: list[BatchInfo], chosen: BatchInfo, problems: list[Problem]) -> None:
    steps = [b.step for b in batches if b.step < chosen.step]
    expected = set(range(1, chosen.step))
    missing = sorted(expected - set(steps))
    if missing:
        problems.append(Problem(code="batch_gap", severity="info",
                                message=f"no batch folder for step(s) {missing} before "
                                        f"step {chosen.step}", path=chosen.path))


def _validation_problems(validation: ValidationStatus, problems: list[Problem],
                         actions: list[NextAction]) -> None:
    for record in validation.ignored_repins:
        problems.append(Problem(
            code="repin_unverified", severity="warning",
            message=f"a hold-out re-pin record ({record.request_id}) is ignored "
                    f"({record.reason}: {record.detail}); the pin in force is what the "
                    "verified records say", path=".tunestep/state.sqlite"))
    if not validation.present:
        problems.append(Problem(code="validation_missing", severity="error",
                                message="the hold-out validation set is missing",
                                path=validation.path))
    elif validation.pin_unverified:
        from tunestep.tools.data.holdout_continuity import unverified_message

        problems.append(Problem(
            code="validation_pin_unverified", severity="error",
            message=unverified_message(validation.signed_sha256 or "",
                                       validation.pin_note or ""), path=validation.path))
        actions.append(repin_action())
    if validation.present and validation.changed:
        problems.append(Problem(
            code="validation_changed", severity="error",
            message=f"the hold-out set changed since it was pinned: pinned sha256 "
                    f"{validation.pinned_sha256}, now {validation.sha256}. Restore it; "
                    "tunestep never writes it. If the change is intended, the operator "
                    "re-pins it (signed; every later gate measures the new set).",
            path=validation.path))
        if not validation.pin_unverified:  # one re-pin action is enough
            actions.append(repin_action())


def _latest_evidence(ws: Workspace, shown: str, model: str, link, problems: list[Problem],
                     actions: list) -> None:
    """The store's link against the ledger's line, and signed records that do not verify
    (tools/lineage/latest_check.py, tools/lineage/promotion_records.py)."""
    from tunestep.tools.lineage.latest_check import latest_state

    with ledger.open_ledger(ws) as conn:
        state = latest_state(ws, conn, shown, model, link)
    for record in state.ignored:
        problems.append(Problem(
            code="promotion_unverified", severity="warning",
            message=f"a promotion record to {record.version} is ignored ({record.reason}: "
                    f"{record.detail}); latest is what the verified records and the gate "
                    "say", path=".tunestep/state.sqlite"))
    if not state.matches:
        problems.append(Problem(code="latest_link_mismatch", severity="error",
                                message=state.message or "", path=f"{shown}/latest"))
        if state.fix_action is not None:
            actions.append(state.fix_action)


def _chain_state(ws: Workspace, shown: str, link, checkpoint: CheckpointStatus,
                 problems: list[Problem], actions: list) -> None:
    """The latest version's origin, and a remote step whose model is not home yet."""
    from pathlib import Path

    from tunestep.tools.lineage.chain import unsynced_step, version_origin

    with ledger.open_ledger(ws) as conn:
        pending = unsynced_step(conn, link, shown)
        latest = Path(checkpoint.latest) if checkpoint.latest else None
        origin = (version_origin(conn, shown, latest.name)
                  if latest is not None and latest.parent.name == "versions" else None)
    if origin is not None:
        checkpoint.source = origin["source"]
        checkpoint.hub_model_id = origin["hub_model_id"]
        checkpoint.hub_revision = origin["hub_revision"]
    if pending is not None:
        problems.append(Problem(
            code="model_not_synced", severity="warning",
            message=f"step {pending['step']} ({pending['batch']}) trained on HF Jobs; its "
                    f"model {pending['hub_model_id']}@{pending['hub_revision'][:12]} is not in "
                    "the model store yet (a remote step resumes from it; a local one is "
                    "refused until it is synced)", path=shown))
        actions.append(NextAction(lead="bring it home:", tool="sync_model",
                                  args={"version": pending["version"]}))
