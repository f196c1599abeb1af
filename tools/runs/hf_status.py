"""An hf-jobs job's stage, asked of the Hub, and what a finished one brings home.

A status call on a running hf-jobs job lands here (``refresh_hf``): the Hub's stage is
mapped to the ledger's status, and on completion the job's pushed outputs are fetched
into the job folder and the known ones brought into the workspace (a training step), or
the remote inspection's report is fetched instead (no step is recorded). The local
backend's status stays in ``job_control``; adopting a Hub job made while submitting is
``hf_submit.settle_submitting``.
"""

from __future__ import annotations

import sqlite3

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.runs.job_rows import draft_kind, job_row

HF_STAGES = {"COMPLETED": "succeeded", "ERROR": "failed", "CANCELED": "cancelled",
             "DELETED": "cancelled"}


def hf_api():
    from tunestep.tools.hub import jobs_api as hf_jobs
    from tunestep.tools.hub.token import read_token

    return hf_jobs.hub_api(read_token())


def split_external(external_id: str) -> tuple[str | None, str]:
    namespace, _, job = external_id.rpartition("/")
    return namespace or None, job


def refresh_hf(ws: Workspace, row) -> None:
    """The ledger's row of a running hf-jobs job brought up to the Hub's stage."""
    from tunestep.tools.hub import jobs_api as hf_jobs
    from tunestep.tools.hub import poll as hf_poll
    from tunestep.tools.hub.errors import HubError
    from tunestep.tools.runs import local_backend as local

    if not hf_poll.due(ledger.loads(row["result"])):
        return  # asked less than 10 s ago (or told to wait): the ledger's answer stands
    namespace, job = split_external(row["external_id"])
    api = hf_api()
    try:
        remote = hf_jobs.hf_job_status(api, job, namespace=namespace)
    except HubError as exc:  # the job's state stays as the ledger has it
        hf_poll.schedule(ws, row["job_id"], exc.retry_after)
        raise
    hf_poll.schedule(ws, row["job_id"])
    row = job_row(ws, row["job_id"])
    status = HF_STAGES.get(remote.stage)
    if status is None:
        return
    result = ledger.loads(row["result"]) or {}
    if not isinstance(result, dict):
        result = {}
    try:
        if status == "succeeded" and not isinstance(result.get("repo"), str):
            raise TunestepError("remote_result_invalid", "the ledger names no repo the "
                                "job's outputs were pushed to")
        if status == "succeeded" and draft_kind(ws, row["draft_id"]) == "inspect":
            fetched = _fetch_inspection(ws, api, row, result["repo"])
            if "error" in fetched:
                status = "failed"
            result.update(fetched)
        elif status == "succeeded":
            result.update(_fetch_outputs(ws, api, row, result["repo"]))
    except HubError:
        raise  # the Hub did not answer: the job stays as it is and is asked again later
    except TunestepError as exc:
        # Outputs that cannot be believed end the job here, saying why; no step is
        # recorded and nothing moves (tools/lineage/remote_result.py).
        status = "failed"
        result.update({"error": exc.message, "error_code": exc.code,
                       "remote_result_rejected": True})
    local.record_outcome(ws, row["job_id"], status, None, result)


def _fetch_inspection(ws: Workspace, api, row, repo: str) -> dict:
    """A remote inspection's report, fetched into its job folder (nothing else is taken).

    The job pushed ``result.json``, an InspectionReport; it lands at
    ``.tunestep/jobs/<job_id>/result.json`` and its verdict goes into the job's result.
    """
    from pydantic import ValidationError

    from tunestep.tools.hub.bundle import output_path
    from tunestep.tools.hub.job_outputs import fetch_job_outputs
    from tunestep.tools.inspector import InspectionReport
    from tunestep.tools.runs.local_backend import job_dir

    folder = job_dir(ws, row["job_id"])
    folder.mkdir(parents=True, exist_ok=True)
    outputs = fetch_job_outputs(api, repo, output_path(row["draft_id"]),
                                folder, allow=["result.json"])
    item = next((f for f in outputs.files if f.name == "result.json"), None)
    if item is None:
        return {"error": "the job completed without pushing its report (result.json)"}
    try:
        report = InspectionReport.model_validate_json(item.local_path.read_bytes())
    except ValidationError:
        return {"error": "the pushed result.json is not an inspection report",
                "report_path": ws.relative(item.local_path)}
    return {"kind": "inspect", "report_path": ws.relative(item.local_path),
            "inspected": report.path, "status": report.status, "summary": report.summary,
            "error_count": report.error_count, "warning_count": report.warning_count,
            "counts": report.counts, "outputs_revision": outputs.revision}


def _fetch_outputs(ws: Workspace, api, row, repo: str) -> dict:
    """Download what the job pushed into the job folder, then bring the known outputs in.

    Only the plan's log and plot folders reach the workspace (a job must not be able to
    overwrite the plan, a dataset or the hold-out set by pushing a file), and the
    cumulative files are merged, not replaced (outputs_merge.py): the history by step,
    train.log appended once, the progression plot redrawn from the merged history, the
    job's Trackio store merged by run into ``.tunestep/trackio``. Per-step files (metrics
    CSV, samples, the step's loss plot) are copied. A merge that fails is reported in
    ``merge_errors``; it never loses the job's outcome.
    """
    import shutil

    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.drafts.draft import load_draft
    from tunestep.tools.hub.bundle import output_path
    from tunestep.tools.hub.job_outputs import fetch_job_outputs
    from tunestep.tools.lineage import outputs_merge
    from tunestep.tools.lineage.remote_result import check_result, read_result
    from tunestep.tools.runs.local_backend import job_dir

    paths = load_plan(ws).plan.paths
    draft = load_draft(ws, row["draft_id"])
    out = draft.job_config["outputs"]
    progression = f"{out['plots_dir']}/val_progression.png"
    allowed = [f"{paths.logs}/", f"{paths.plots}/"]
    staging = job_dir(ws, row["job_id"]) / "outputs"
    outputs = fetch_job_outputs(api, repo, output_path(row["draft_id"]),
                                staging, allow=[*allowed, "result.json", "trackio/"])
    errors: list[str] = []
    history = None
    reported = next((f for f in outputs.files if f.name == "result.json"), None)
    if reported is None:
        raise TunestepError("remote_result_missing", "the job completed without pushing its "
                            "result (result.json): nothing it made is recorded")
    # Checked before anything of the job's reaches the workspace: this draft's step, the
    # start the ledger expects, and the gate decided here (tools/lineage/remote_result.py). The
    # lists of what was fetched come after: the job's own "outputs" (its paths in the
    # container) must not stand in for them.
    summary: dict = {**check_result(draft.job_config, row["draft_id"],
                                    read_result(reported.local_path)),
                     "outputs": [], "merged": []}
    config = draft.job_config
    for item in outputs.files:
        try:
            if item.name == "result.json":
                continue
            elif item.name.startswith("trackio/"):
                if item.name.endswith(".db") and item.name.count("/") == 1:
                    runs = outputs_merge.merge_trackio(ws.state_dir / "trackio",
                                                       item.local_path)
                    summary["merged"].append(f".tunestep/{item.name} ({len(runs)} run(s))")
            elif item.name == out["history_json"]:
                history = outputs_merge.merge_history(ws.resolve(item.name), item.local_path,
                                                      config["step"], config["batch"])
                summary["merged"].append(item.name)
            elif item.name == out["train_log"]:
                outputs_merge.append_log_once(ws.resolve(item.name), item.local_path,
                                              row["draft_id"])
                summary["merged"].append(item.name)
            elif item.name != progression:  # redrawn below from the whole history
                target = ws.resolve(item.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                temp = target.with_name(f".{target.name}.fetch")
                shutil.copyfile(item.local_path, temp)
                temp.replace(target)
                summary["outputs"].append(item.name)
        except TunestepError as exc:
            errors.append(str(exc))
        except (OSError, ValueError, sqlite3.Error) as exc:  # a malformed output file
            errors.append(f"{item.name}: {type(exc).__name__}: {exc}")
    if history is not None:
        try:
            outputs_merge.redraw_progression(history, ws.resolve(progression))
            summary["merged"].append(progression)
        except Exception as exc:  # a plot of odd values must not lose the job's outcome
            errors.append(f"{progression} not redrawn: {type(exc).__name__}: {exc}")
    if errors:
        summary["merge_errors"] = errors
    return summary
