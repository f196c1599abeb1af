"""What the operator signs, read field by field from a stored draft (the review screen's data).

``tunestep approve`` shows a draft as the ledger holds it. This module turns a
``JobDraft`` into ``DraftReview``: every field the signature covers, named in the
operator's words (where the job runs, for how long at most, what that can cost, what it
trains from and on, where results go), and, kept apart, what is shown but not signed
(the estimate, the warnings, the "trains on" reasons). It reads only the draft's fields:
signed are all of them except ``estimate``, ``warnings``, ``run_plan`` and
``approve_command``.

Fields a draft may not carry yet (the manifest's ``flavor``, ``processes``,
``timeout_seconds``: a local job's time limit, and ``workspace``) are read defensively
with ``getattr``: absent, the review falls back to the submission and the job config, or
says there is none instead of guessing. The worst-case cost multiplies the signed flavor
and timeout by the flavor's hourly price: the higher of tunestep's price table and the
estimate's (possibly live) price, labelled as not signed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.drafts.draft_model import FileRef, JobDraft
from tunestep.tools.drafts.estimate import FLAVORS

NEAR_MATCH = "holdout near match"  # the prefix of a hold-out near-match warning
DATA_ROLES = ("train", "tokenized", "eval", "inspect", "reference", "plan")


class ResumePoint(BaseModel):
    """Where the job's weights come from: a name and what pins its content."""

    source: Literal["base", "local", "hub", "bundle"]
    name: str  # a version folder name, a Hub model id, or the base model's id
    uri: str | None = None  # hf://<id>@<sha> for a Hub start
    path: str | None = None  # where its files are on this machine (a local or bundled start)
    identity: str | None = None  # sha256 over (file, sha256) of its signed files
    files: int = 0  # how many of its files the signature covers
    said: str  # one line, for people
    pinned: bool  # False: nothing signed pins the weights' content


class MergeReview(BaseModel):
    """A full step on a LoRA adapter: the job merges it into ``base`` before training."""

    adapter: str  # the start adapter (its version name, or hf://id@sha)
    base: str  # the base it merges into: a Hub id or a local folder
    files: int = 0  # the base's files the signature covers (0: a Hub id, by name)
    identity: str | None = None  # sha256 over (file, sha256) of those files


class DraftReview(BaseModel):
    draft_id: str
    digest: str
    workspace: str  # the workspace the token will be bound to
    kind: Literal["train", "inspect"]
    step: int
    batch: str
    mode: str | None
    backend: str
    flavor: str
    processes: int
    timeout_seconds: int | None  # None: the job has no time limit (a local job today)
    usd_per_hour: float  # the signed flavor's price per hour (a price list: not signed)
    price_source: str
    worst_case_usd: float | None  # usd_per_hour x timeout; None without a timeout
    image: str | None
    command: list[str]
    secrets: list[str]  # by name
    base_model: str | None
    resume: ResumePoint | None
    push: bool
    model_repo: str | None
    private: bool | None
    dataset_repo: str | None
    trackio: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    lora: dict[str, Any] | None = None
    regime: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    inputs: list[FileRef]  # data and plan files (rows, sha256)
    scripts: list[FileRef]  # the job's own files
    checkpoint: list[FileRef]  # the resume point's files
    merge: MergeReview | None = None  # a LoRA start adapter merged into its base first
    merge_base: list[FileRef] = Field(default_factory=list)  # that base's files (local)
    train_rows: int  # sum of the signed rows of the training inputs
    # shown, not signed
    estimate_usd: float
    estimate_minutes: float
    warnings: list[str]
    near_matches: list[str]  # hold-out near matches (warnings that start with NEAR_MATCH)


def files_identity(refs: list[FileRef], folder: str) -> str:
    """sha256 over (path below ``folder``, sha256) of ``refs``, sorted: the content identity
    ``promotion.version_identity`` gives the same files (one version, one hash)."""
    prefix = folder.rstrip("/") + "/"
    entries = sorted([r.path[len(prefix):] if r.path.startswith(prefix) else r.path,
                      r.sha256] for r in refs)
    return hashlib.sha256(ledger.dumps(entries).encode()).hexdigest()


def common_folder(paths: list[str]) -> str:
    parts = [p.split("/")[:-1] for p in paths]
    common = parts[0]
    for other in parts[1:]:
        while other[:len(common)] != common:
            common = common[:-1]
    return "/".join(common)


def _processes(command: list[str]) -> int:
    if "--num-processes" in command:
        at = command.index("--num-processes")
        if at + 1 < len(command) and str(command[at + 1]).isdigit():
            return int(command[at + 1])
    return 1


def resume_point(draft: JobDraft) -> ResumePoint | None:
    """The start the signed config names, pinned by a Hub commit or its files' hashes."""
    if draft.kind != "train":
        return None
    cfg = draft.job_config
    start = draft.start
    resume = cfg.get("resume_from")
    checkpoint = [f for f in draft.files if f.role == "checkpoint"]
    said = start.described if start is not None else (resume or cfg.get("base_model") or "")
    if isinstance(resume, str) and resume.startswith("hf://"):
        name, _, sha = resume[len("hf://"):].partition("@")
        return ResumePoint(source="hub", name=name, uri=resume, identity=sha or None,
                           said=said, pinned=bool(sha))
    if checkpoint:
        folder = common_folder([f.path for f in checkpoint])
        name = folder.rsplit("/", 1)[-1] or folder
        source = start.source if start is not None and start.source != "base" else "local"
        return ResumePoint(source=source, name=name, identity=files_identity(checkpoint, folder),
                           files=len(checkpoint), said=said, pinned=True,
                           path=start.checkpoint if start is not None and start.checkpoint
                           else folder)
    if resume:  # a local checkpoint the draft names but whose files it does not sign
        name = str(resume).rstrip("/").rsplit("/", 1)[-1]
        return ResumePoint(source="local", name=name, said=said, pinned=False, path=str(resume))
    base = str(cfg.get("base_model") or "")
    if start is not None and start.source == "local":  # new adapters on a local checkpoint
        return ResumePoint(source="local", name=base.rstrip("/").rsplit("/", 1)[-1],
                           said=said, pinned=False, path=base)
    return ResumePoint(source="base", name=base, said=said, pinned=False)


def merge_review(draft: JobDraft) -> MergeReview | None:
    """The merge the signed config asks for (``merge_adapter``), in people's words."""
    cfg = draft.job_config
    if draft.kind != "train" or cfg.get("merge_adapter") is None:
        return None
    said = draft.start.merge if draft.start is not None else None
    base = [f for f in draft.files if f.role == "merge_base"]
    folder = common_folder([f.path for f in base]) if base else ""
    return MergeReview(adapter=said.adapter if said else str(cfg.get("resume_from")),
                       base=folder or str(cfg.get("base_model")), files=len(base),
                       identity=files_identity(base, folder) if base else None)


def review(draft: JobDraft, workspace: str) -> DraftReview:
    """``draft`` as the operator signs it, for the token bound to ``workspace`` (the
    signed manifest's own workspace when the draft carries one)."""
    workspace = getattr(draft, "workspace", None) or workspace
    cfg, sub, est = draft.job_config, draft.submission, draft.estimate
    hub = cfg.get("hub") or {}
    # The signed manifest's own fields where the draft has them (flavor, processes,
    # timeout_seconds: a local job's time limit too); else the submission and config.
    signed_timeout = getattr(draft, "timeout_seconds", None)
    if sub is not None:
        flavor, timeout, image = sub.flavor, sub.timeout_seconds, sub.image
        command, secrets, dataset_repo = list(sub.command), list(sub.secrets), sub.dataset_repo
    else:  # a local job: this machine; its timeout when the draft carries one
        flavor, image, dataset_repo = "local", None, None
        timeout = signed_timeout if signed_timeout is not None else cfg.get("timeout_seconds")
        command = [str(c) for c in cfg.get("command") or []]
        secrets = ["HF_TOKEN"] if hub.get("push") else []
    if isinstance(signed_timeout, int) and signed_timeout > 0:
        timeout = signed_timeout
    timeout = timeout if isinstance(timeout, int) and timeout > 0 else None
    flavor = getattr(draft, "flavor", None) or flavor
    processes = getattr(draft, "processes", None)
    processes = processes if isinstance(processes, int) and processes > 1 else \
        _processes(command)
    # The flavor is signed, its price is not: the higher of tunestep's table price for the
    # signed flavor and the estimate's (a live Hub price), so an edited estimate can only
    # make the worst case look worse, never cheaper.
    quoted = float(getattr(est, "usd_per_hour", 0.0) or 0.0)
    table = FLAVORS[flavor].usd_per_hour if flavor in FLAVORS else 0.0
    price = max(table, quoted)
    source = "table" if table >= quoted and table > 0 else getattr(est, "price_source", "table")
    worst = round(price * timeout / 3600, 4) if timeout is not None else (
        0.0 if price == 0 else None)
    inputs = [f for f in draft.files if f.role in DATA_ROLES]
    return DraftReview(
        draft_id=draft.draft_id, digest=draft.digest, workspace=workspace, kind=draft.kind,
        step=draft.step, batch=draft.batch, mode=cfg.get("mode"), backend=draft.backend,
        flavor=flavor, processes=processes, timeout_seconds=timeout,
        usd_per_hour=price, price_source=source,
        worst_case_usd=worst, image=image, command=command, secrets=secrets,
        base_model=cfg.get("base_model"), resume=resume_point(draft),
        push=bool(hub.get("push")), model_repo=hub.get("model_id"),
        private=hub.get("private"), dataset_repo=dataset_repo,
        trackio=cfg.get("trackio") or {}, gate=cfg.get("gate", draft.gate),
        hyperparameters=cfg.get("hyperparameters") or {}, lora=cfg.get("lora"),
        regime=draft.regime, data=cfg.get("data") or {}, inputs=inputs,
        scripts=[f for f in draft.files if f.role == "script"],
        checkpoint=[f for f in draft.files if f.role == "checkpoint"],
        merge=merge_review(draft),
        merge_base=[f for f in draft.files if f.role == "merge_base"],
        train_rows=sum(f.rows or 0 for f in draft.files if f.role == "train"),
        estimate_usd=float(est.usd), estimate_minutes=float(est.minutes),
        warnings=[w for w in draft.warnings if not w.startswith(NEAR_MATCH)],
        near_matches=[w for w in draft.warnings if w.startswith(NEAR_MATCH)])
