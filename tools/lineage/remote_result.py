"""A remote training step's ``result.json``, checked on the host before it moves anything.

A job on Hugging Face Jobs reports its end by pushing ``result.json`` beside its outputs.
Whoever can write that repo (or a job that went wrong) can write anything there, so
nothing in it is believed because it says so:

- it must be one JSON object of at most ``MAX_RESULT_BYTES`` with the fields of
  ``RemoteResult`` (``remote_result_invalid``);
- it must be this draft's step: draft id, step, batch, version folder ``NNNN_<batch>``
  and the model repo the draft pushes to (``remote_result_mismatch``);
- it must name the start the ledger expects it to descend from: ``resume_from`` is the
  draft's ``hf://<id>@<sha>`` (the last promoted push) exactly, none when the draft starts
  from the base, a container path when the start travels in the bundle (pinned by the
  digest) (``remote_result_wrong_parent``);
- whether it becomes latest is decided here, by the gate the operator signed (the
  draft's ``gate``, via ``load_draft``) over the metrics the job reported, with the job's
  own rule ``tools/jobs/job_gate.decide_promotion``; the job's claim is kept beside it as
  ``promotion_reported`` and never used. Metrics that cannot be read hold the version
  back (the operator can still promote it, signed).

A result that fails a check fails the job with that code in its result (``error_code``):
the job is terminal and says why, never "running" for ever, and no step is recorded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from tunestep.tools.core.errors import TunestepError

MAX_RESULT_BYTES = 1 << 20
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class RemoteHub(BaseModel):
    model_config = ConfigDict(strict=True)

    model_id: str
    revision: str
    private: bool | None = None


class RemoteResult(BaseModel):
    """The fields of a training job's result that the host relies on."""

    model_config = ConfigDict(strict=True, extra="allow")

    draft_id: str
    step: int
    batch: str
    version: str
    resume_from: str | None = None
    hub: RemoteHub | None = None
    promotion: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None


def read_result(path: Path) -> dict:
    """``result.json`` as an object, bounded; ``remote_result_invalid`` otherwise."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RESULT_BYTES + 1)
    except OSError as exc:
        raise TunestepError("remote_result_invalid", f"result.json cannot be read: "
                            f"{exc.strerror}", path=path.name) from None
    if len(raw) > MAX_RESULT_BYTES:
        raise TunestepError("remote_result_invalid", f"result.json is larger than "
                            f"{MAX_RESULT_BYTES} bytes", path=path.name)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TunestepError("remote_result_invalid", f"result.json is not JSON: {exc}",
                            path=path.name) from None
    if not isinstance(value, dict):
        raise TunestepError("remote_result_invalid", "result.json must be a JSON object, "
                            f"not {type(value).__name__}", path=path.name)
    return value


def check_result(config: dict, draft_id: str, reported: dict) -> dict:
    """The job's result with the host's promotion decision in place of the job's claim;
    raises ``remote_result_invalid`` / ``_mismatch`` / ``_wrong_parent``."""
    from tunestep.tools.jobs.job_gate import decide_promotion

    try:
        result = RemoteResult.model_validate(reported)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                           for e in exc.errors()[:5])
        raise TunestepError("remote_result_invalid", f"result.json lacks what a step's "
                            f"result holds ({fields})", path="result.json") from None
    step, batch = config["step"], config["batch"]
    expected = {"draft_id": draft_id, "step": step, "batch": batch,
                "version": f"versions/{step:04d}_{batch}"}
    for key, want in expected.items():
        if getattr(result, key) != want:
            raise TunestepError("remote_result_mismatch", f"result.json says {key} "
                                f"{getattr(result, key)!r}, this job is {key} {want!r}",
                                path="result.json")
    hub = config.get("hub") or {}
    if hub.get("push"):
        if result.hub is None or not COMMIT.match(result.hub.revision):
            raise TunestepError("remote_result_invalid", "result.json names no pushed "
                                "commit (hub.revision, 40 hex)", path="result.json")
        if result.hub.model_id != hub.get("model_id"):
            raise TunestepError("remote_result_mismatch", f"result.json says the model went "
                                f"to {result.hub.model_id!r}, the draft pushes to "
                                f"{hub.get('model_id')!r}", path="result.json")
    if not _same_start(result.resume_from, config.get("resume_from")):
        raise TunestepError("remote_result_wrong_parent", f"result.json says the step "
                            f"trained from {result.resume_from!r}; the ledger expects it to "
                            f"descend from {config.get('resume_from')!r}",
                            path="result.json")
    decision = _decide(decide_promotion, config.get("gate"), result.evaluation)
    checked = dict(reported)
    checked["promotion_reported"] = reported.get("promotion")
    checked["promotion"] = {**decision, "decided_by": "host"}
    checked["promoted"] = bool(decision["promoted"])
    return checked


def _same_start(reported: str | None, expected: str | None) -> bool:
    """The job resumed from the draft's start: the exact ``hf://id@sha``, none, or (a start
    carried in the bundle, pinned file by file by the digest) a path in the container,
    which the job reports resolved."""
    if expected is None or reported is None:
        return expected is None and reported is None
    if expected.startswith("hf://") or reported.startswith("hf://"):
        return reported == expected
    return True


def _decide(decide, gate: dict | None, evaluation: dict | None) -> dict:
    """The signed gate over the reported metrics; unreadable metrics hold the step back."""
    if gate is None:
        return decide(None, {})
    try:
        decision = decide(gate, evaluation or {})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return {"promoted": False, "metric": gate.get("metric"),
                "reason": f"the job's reported evaluation cannot be read by the gate "
                          f"({type(exc).__name__}); latest stays, promote by hand if it "
                          "should move"}
    if not isinstance(decision, dict) or not isinstance(decision.get("promoted"), bool):
        return {"promoted": False, "metric": gate.get("metric"),
                "reason": "the gate gave no decision over the reported evaluation"}
    return decision
