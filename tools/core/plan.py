"""The plan: YAML front matter of ``.specs/training/plan.md``, read into one typed model.

Defaults are the reference run plan's (DESIGN §2), so a workspace without a plan still
works, with a note saying so. Unknown keys are errors naming the key: a typo in a
hyperparameter must never silently fall back to a default. Every value is checked at
load (``plan_value_invalid`` naming the key and what it allows): strict types (``true``
is no number, ``'5'`` is no number, a number is no string), finite numbers, and each
number within the range stated beside its key here and in .specs/plan_format.md, so that
nothing the job would refuse after it started can be signed. The ranges are types
(``Annotated``) shared with draft_job's overrides (``check_overrides``). The ``paths``
section and the rule that keeps its locations apart are ``plan_paths``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan_paths import (
    PLAN_PATH,
    PathConflict,
    Paths,
    check_path_roles,
    conflict_error,
    link_resolver,
)
from tunestep.tools.core.plan_values import (
    METRIC_SPAN,
    METRIC_UNITS,
    STRICT,
    AccumulationSteps,
    BatchSize,
    CheckpointsKept,
    Epochs,
    LearningRate,
    LoraAlpha,
    LoraRank,
    MaxLength,
    PlanLoader,
    Precision,
    Ratio,
    Seed,
    check_timeout,
    value_error,
)
from tunestep.tools.core.repo_ids import repo_id_problem
from tunestep.tools.core.workspace import Workspace

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)


def _regex(value: str):
    """A plan pattern compiled on the linear-time engine, or refused (tools/core/patterns.py)."""
    from tunestep.tools.core.patterns import compile_pattern

    return compile_pattern(value)


class _Section(BaseModel):
    # strict: no coercion (true is not 1, '5' is not 5, 5 is not '5'; an int is a float);
    # allow_inf_nan: NaN and infinities are refused in every section, whatever its keys.
    model_config = STRICT


class Training(_Section):
    per_device_train_batch_size: BatchSize = 2
    gradient_accumulation_steps: AccumulationSteps = 1
    learning_rate: LearningRate = 2e-5
    resume_learning_rate: LearningRate = 1e-5
    num_train_epochs: Epochs = 3
    max_length: MaxLength = 2048
    # auto: bf16 where the GPU has it natively (A10G, L4, A100, H100), fp16 on a T4,
    # fp32 without CUDA; the job resolves it and logs any fall-back.
    precision: Precision = "auto"
    save_total_limit: CheckpointsKept = 3
    seed: Seed = 42
    # A short warmup keeps the first updates of a resumed model from undoing earlier steps.
    warmup_ratio: Ratio = 0.05


class Lora(_Section):
    r: LoraRank = 16
    alpha: LoraAlpha = 16
    dropout: Ratio = 0.05
    learning_rate: LearningRate = 1e-4
    target_modules: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = "all-linear"


class Job(_Section):
    backend: Literal["local", "hf-jobs"] = "local"
    flavor: Annotated[str, Field(min_length=1, max_length=64)] = "a10g-large"
    timeout: str = "2h"
    secrets: list[str] = Field(default_factory=lambda: ["HF_TOKEN"])
    image: str = "ghcr.io/astral-sh/uv:python3.12-bookworm"
    # "locked": `uv run --locked` installs exactly tools/jobs/train_sft.py.lock (billed
    # install time, counted by the estimate). "image": the image already holds the job's
    # dependencies (e.g. built from `uv export --script` of the lock, torch inside) and its
    # python3 runs the script with no install; pin such an image by digest (@sha256:).
    install: Literal["locked", "image"] = "locked"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        return check_timeout(value)


class Hub(_Section):
    """Hub ids. Everything is private unless the plan says otherwise, explicitly."""

    model_id: str | None = None
    dataset_repo: str | None = None
    push: bool = False
    private: bool = True
    trackio_space_id: str | None = None

    @field_validator("model_id", "dataset_repo")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        problem = None if value is None else repo_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Data(_Section):
    merge_strategy: Literal["list", "file"] = "list"
    dedup: bool = True
    # replay: the new batch plus a stratified sample of earlier rows (when resuming);
    # cumulative: every row again, from the previous weights; from_base: every row, from
    # the base model. See .specs/data_pipeline.md.
    regime: Literal["replay", "cumulative", "from_base"] = "replay"
    replay_fraction: float = Field(0.2, ge=0, le=1)
    # A row longer than training.max_length: drop it, shorten its user turn (the job keeps
    # the whole answer), or refuse the step.
    overlong: Literal["drop", "truncate_prompt", "error"] = "truncate_prompt"
    batch_pattern: str = r"^batch_\d+_(\d+)$"
    # A JSONL row longer than this is a finding (row_too_large), skipped to its newline
    # without being held: what one row may cost in memory (tools/core/readfile.py).
    max_row_bytes: int = Field(4 << 20, ge=1 << 10, le=1 << 30)

    @field_validator("batch_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        if _regex(value).groups != 1:
            raise ValueError("needs exactly one group capturing the step number")
        return value


# The hold-out metrics the job computes before and after a step (tools/jobs); a gate may
# name any of them. MAE is the one where lower is better.
GATE_METRICS = ("grade_within_1", "grade_exact", "grade_mae", "parse_rate", "spearman",
                "kappa")
LOWER_IS_BETTER = frozenset({"grade_mae"})
class Gate(_Section):
    """Whether a finished step moves ``latest``: the promotion gate (approval_protocol.md).

    Non-inferiority: promoted only when the lower end of the paired 95 % interval of the
    gain (new minus latest, sign-flipped where lower is better) is above ``-margin``, and
    the same against the best version on the line; a drop the hold-out cannot rule out
    holds the version back. ``margin`` is in the metric's own units (negative demands a
    proven gain). The keys before this rule (``max_regression``, ``require_significance``,
    whose ``true`` made the gate looser) are refused with the migration spelled out.

    Every key is checked generically: strict types and finite numbers (``_Section``), and
    each key marked ``METRIC_UNITS`` within the metric's span (``_within_span``).
    """

    metric: Literal[GATE_METRICS] = "grade_within_1"  # type: ignore[valid-type]
    margin: float = Field(0.02, json_schema_extra=METRIC_UNITS)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        old = sorted({"max_regression", "require_significance"} & set(data or {})) \
            if isinstance(data, dict) else []
        if old:
            raise ValueError(
                f"{' and '.join(old)} {'were' if len(old) > 1 else 'was'} replaced: the "
                "gate now promotes only when the "
                "lower end of the gain's 95 % interval is above -margin; write "
                "'margin: <the drop you tolerate>' (max_regression's number) and drop "
                "require_significance")
        return data

    @field_validator("*")
    @classmethod
    def _within_span(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name]
        if field.json_schema_extra != METRIC_UNITS:
            return value
        span = METRIC_SPAN.get(info.data.get("metric", ""), 0.0)
        if not -span <= value < span:
            raise ValueError(f"must be from {-span:g} (no step passes: every version waits "
                             f"for a signed promotion) to below {span:g} (at {span:g} "
                             f"every step passes: say gate: null) for metric "
                             f"{info.data.get('metric')}")
        return value


class Samples(_Section):
    n: Annotated[int, Field(ge=0, le=1000)] = 20
    max_new_tokens: Annotated[int, Field(ge=1, le=32_768)] = 128


class Plan(_Section):
    """The plan's front matter. Every key has the reference run plan's default."""

    model: str = "Qwen/Qwen3-0.6B"
    model_name: str = "qwen3_webdev"
    mode: Literal["full", "lora"] = "full"
    grade_pattern: str = r"(?i)grade\s*[:=]\s*(\d+(?:\.\d+)?)"
    trackio_project: str = "tunestep"
    paths: Paths = Field(default_factory=Paths)
    training: Training = Field(default_factory=Training)
    lora: Lora = Field(default_factory=Lora)
    job: Job = Field(default_factory=Job)
    hub: Hub = Field(default_factory=Hub)
    data: Data = Field(default_factory=Data)
    samples: Samples = Field(default_factory=Samples)
    gate: Gate | None = Field(default_factory=Gate)  # null: every step moves latest

    @field_validator("grade_pattern")
    @classmethod
    def _grade_group(cls, value: str) -> str:
        if _regex(value).groups < 1:
            raise ValueError("needs a group capturing the grade")
        return value

    @model_validator(mode="after")
    def _paths_apart(self) -> Plan:
        check_path_roles(self.paths)
        return self

    @property
    def model_link(self) -> str:
        """The workspace path of the latest-checkpoint link, ``models/<name>``."""
        return f"{self.paths.models}/{self.model_name}"


class LoadedPlan(BaseModel):
    plan: Plan
    source: str | None  # workspace-relative path, or None when defaults were used
    sha256: str
    notes: list[str] = Field(default_factory=list)


def parse_plan_text(text: str, shown_path: str = PLAN_PATH) -> Plan:
    """Parse a plan document (front matter + Markdown body) into a Plan."""
    match = FRONT_MATTER.match(text.lstrip("\ufeff"))
    if match is None:
        return Plan()
    try:
        data = yaml.load(match.group(1), Loader=PlanLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else None  # +1 for 1-based, +1 for '---'
        raise TunestepError("plan_yaml", f"front matter is not valid YAML: {exc}",
                            path=shown_path, line=line) from None
    if not isinstance(data, dict):
        raise TunestepError("plan_yaml", "front matter must be a mapping of keys",
                            path=shown_path)
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        conflict = (first.get("ctx") or {}).get("error")
        if isinstance(conflict, PathConflict):
            raise conflict_error(conflict, shown_path) from None
        if first["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in first["loc"])
            raise TunestepError("plan_unknown_key", f"plan key '{key}': unknown key",
                                path=shown_path) from None
        raise value_error(Plan, first, exc.error_count(), "plan key",
                          shown_path) from None


def load_plan(ws: Workspace) -> LoadedPlan:
    """Load the workspace's plan; a missing plan means defaults plus a note.

    With a call context (``ws.call``) the plan is read once per tool call.
    """
    if ws.call is None:
        return _read_plan(ws)
    return ws.call.plan(ws.root / PLAN_PATH, lambda: _read_plan(ws))


def _read_plan(ws: Workspace) -> LoadedPlan:
    path: Path = ws.resolve(PLAN_PATH)
    if not path.is_file():
        plan = Plan()
        digest = hashlib.sha256(plan.model_dump_json().encode()).hexdigest()
        return LoadedPlan(plan=plan, source=None, sha256=digest,
                          notes=[f"no {PLAN_PATH}: using the reference defaults"])
    from tunestep.tools.core.readfile import open_regular

    with open_regular(path, PLAN_PATH) as handle:  # a FIFO here must not hang every tool
        raw = handle.read((1 << 20) + 1)
    if len(raw) > 1 << 20:
        raise TunestepError("plan_yaml", "the plan is over 1 MiB; keep it to settings and "
                            "notes", path=PLAN_PATH)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TunestepError("plan_encoding", "the plan is not UTF-8", path=PLAN_PATH) from None
    plan = parse_plan_text(text)
    try:  # the same rule through links: a folder linked onto the hold-out's is no apart
        check_path_roles(plan.paths, link_resolver(ws))
    except PathConflict as conflict:
        raise conflict_error(conflict, PLAN_PATH) from None
    return LoadedPlan(plan=plan, source=PLAN_PATH, sha256=hashlib.sha256(raw).hexdigest())


def render_plan_document(plan: Plan, body: str = "") -> str:
    """A plan document: the given plan as front matter, then a Markdown body."""
    front = yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False)
    return f"---\n{front}---\n{body}"
