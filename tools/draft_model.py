"""The draft's pydantic models: what a draft is, apart from how it is computed.

They live below ``draft.py`` so that modules which only read a draft (``run_plan.py``
renders it, ``operator.py`` and ``submit.py`` check it) import the types without
importing the drafting logic, and ``draft.py`` can import those renderers at module
level: no import circle (``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunestep.tools.estimate import Estimate
from tunestep.tools.lengths import LengthCheck
from tunestep.tools.start_point import StartPoint


class DraftRequest(BaseModel):
    """What the caller asked for; stored so the draft can be recomputed at submit."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "inspect"] = "train"
    batch: str | None = None
    mode: Literal["full", "lora"] | None = None
    backend: Literal["local", "hf-jobs"] = "local"
    flavor: str | None = None
    timeout: str | None = None
    overrides: dict[str, float | int | str] = Field(default_factory=dict)


class FileRef(BaseModel):
    # inspect drafts: "inspect" (the files inspected), "reference" (base train set and
    # earlier batches, for duplicates), "plan" (the plan document); eval is the hold-out.
    # "checkpoint": a file of a local start that an hf-jobs bundle carries (chain.py).
    role: Literal["train", "eval", "script", "tokenized", "inspect", "reference", "plan",
                  "checkpoint"]
    path: str  # workspace-relative (job scripts: their name in the bundle; a checkpoint
    # file outside the workspace: its absolute path, never sent to the job)
    sha256: str
    rows: int | None = None


class HfSubmission(BaseModel):
    """The exact Hugging Face Jobs request, secrets by name only."""

    image: str
    command: list[str]
    flavor: str
    timeout_seconds: int
    labels: dict[str, str]
    secrets: list[str]
    dataset_repo: str
    bundle: dict[str, str]  # name in the bundle -> workspace path (or job file)


class InspectEstimate(BaseModel):
    """Time and cost of a remote inspection: no training fields."""

    model_config = ConfigDict(extra="forbid")

    flavor: str
    rows: int
    rows_per_second: float
    minutes: float
    usd: float
    usd_per_hour: float
    max_usd: float  # the whole timeout billed: the most this job can cost
    suggested_timeout: str
    timeout_seconds: int
    method: str
    warnings: list[str]


class SourceUse(BaseModel):
    """How many rows of one source the step trains, and why (the run plan's data table)."""

    part: str  # "base" or the batch name
    path: str
    rows: int  # rows in the source
    trained: int  # rows of it the job trains on
    why: str


class JobDraft(BaseModel):
    draft_id: str
    digest: str
    kind: Literal["train", "inspect"]
    batch: str
    step: int
    backend: Literal["local", "hf-jobs"]
    request: DraftRequest
    job_config: dict[str, Any]
    files: list[FileRef]
    submission: HfSubmission | None
    estimate: Estimate | InspectEstimate = Field(union_mode="left_to_right")
    warnings: list[str]
    run_plan: str
    approve_command: str
    regime: str | None = None  # train drafts: data.regime, and what it made of the sources
    sources: list[SourceUse] = Field(default_factory=list)
    start: StartPoint | None = None  # where the step starts (train drafts), for people
    lengths: LengthCheck | None = None  # train drafts: over-long rows and what happens to them
    gate: dict[str, Any] | None = None  # train drafts: the plan's promotion gate (null: none)
    # train drafts: the version the job trains from, resolved now ('' = the base model;
    # None: not a train draft or made before this was recorded). record_step stores it.
    parent_version: str | None = None
