"""The draft's pydantic models: what a draft is, apart from how it is computed.

They live below ``draft.py`` so that modules which only read a draft (``run_plan.py``
renders it, ``operator.py`` and ``submit.py`` check it) import the types without
importing the drafting logic, and ``draft.py`` can import those renderers at module
level: no import circle (``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunestep.tools.data.lengths import LengthCheck
from tunestep.tools.drafts.estimate import Estimate
from tunestep.tools.lineage.start_point import StartPoint
from tunestep.tools.signing.signed_manifest import as_bytes, checked_bytes
from tunestep.tools.signing.signed_manifest import (  # re-exported for the draft's readers
    draft_id_for as draft_id_for,
)
from tunestep.tools.signing.signed_manifest import (
    manifest_digest as manifest_digest,
)


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
    # "merge_base": a file of the local base a LoRA start adapter is merged into (a full
    # step after LoRA steps, tools/lineage/adapter_merge.py).
    role: Literal["train", "eval", "script", "tokenized", "inspect", "reference", "plan",
                  "checkpoint", "merge_base"]
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


MANIFEST_SCHEMA = 1


class DraftManifest(BaseModel):
    """What the operator signs: everything the job executes and everything that decides
    where its results go and what it may cost. Its canonical bytes (``manifest_bytes``)
    are stored in the ledger; the draft's digest is sha256 over exactly those bytes.

    Executed as stored: ``job_config`` (hyperparameters, mode, lora, data files and every
    input by sha256, the resume point and its files, outputs, Trackio, hub repo,
    visibility and push, the gate) becomes ``job.json`` with only ``draft_id`` filled in
    (it derives from the digest); ``submission`` (image, command, flavor, timeout, secrets
    by name, dataset repo, bundle) is the Hub request. ``files`` lists every input by
    content hash, job scripts and lock included. Nothing unsigned (the estimate,
    warnings, the run plan's path, the approve command) is part of it.
    """

    model_config = ConfigDict(extra="forbid")

    manifest_schema: Literal[1] = MANIFEST_SCHEMA
    kind: Literal["train", "inspect"]
    workspace: str  # the workspace root the token is bound to
    batch: str
    step: int
    backend: Literal["local", "hf-jobs"]
    flavor: str  # "local" for a local job
    processes: int  # training processes (one per GPU of the flavor)
    timeout_seconds: int  # the billing cap of an HF job; a local job's time limit
    request: DraftRequest
    regime: str | None = None
    sources: list[SourceUse] = Field(default_factory=list)  # which rows of each source
    start: StartPoint | None = None
    gate: dict[str, Any] | None = None
    parent_version: str | None = None
    # Signed fields added with the manifest (defaults: a draft built by hand in a test).
    flavor: str | None = None
    processes: int = 1
    timeout_seconds: int | None = None  # signed; a local job's too
    workspace: str | None = None
    manifest: str | None = None  # the canonical manifest text the digest is taken over
    files: list[FileRef]
    job_config: dict[str, Any]  # draft_id is null here: it derives from the digest
    submission: HfSubmission | None


def manifest_bytes(manifest: DraftManifest) -> bytes:
    """The canonical bytes that are stored, hashed and signed."""
    from tunestep.tools.core.hashing import canonical_json

    return canonical_json(manifest.model_dump(mode="json"))


def parse_manifest(data: bytes, digest: str, draft_id: str) -> DraftManifest:
    """The manifest in ``data`` after its bytes hash to ``digest`` (the stored or signed
    one) and ``draft_id`` derives from it; else ``draft_tampered``."""
    from tunestep.tools.core.errors import TunestepError

    checked_bytes(data, digest, draft_id)
    try:
        return DraftManifest.model_validate_json(data)
    except ValueError:
        raise TunestepError("draft_tampered", f"the stored manifest of {draft_id} is not a "
                            "valid manifest; draft again") from None


def manifest_of_row(row, draft_id: str) -> DraftManifest | None:
    """The verified manifest of a ``drafts`` row (its ``digest`` and ``manifest``
    columns); None for a draft stored before manifests (schema 7); ``draft_tampered`` when
    the bytes no longer hash to the stored digest."""
    data = row["manifest"]
    if data is None:
        return None
    return parse_manifest(as_bytes(data), row["digest"], draft_id)


def job_config_of(manifest: DraftManifest, draft_id: str) -> dict[str, Any]:
    """The job config the job runs: the signed one with its draft id filled in."""
    return {**manifest.job_config, "draft_id": draft_id}


class DraftView(BaseModel):
    """What a draft shows but never executes; stored apart from the manifest."""

    estimate: Estimate | InspectEstimate = Field(union_mode="left_to_right")
    warnings: list[str]
    run_plan: str
    approve_command: str
    lengths: LengthCheck | None = None


UNSIGNED = tuple(DraftView.model_fields)


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
    # Signed fields added with the manifest (defaults: a draft built by hand in a test).
    flavor: str | None = None
    processes: int = 1
    timeout_seconds: int | None = None  # signed; a local job's too
    workspace: str | None = None
    manifest: str | None = None  # the canonical manifest text the digest is taken over
