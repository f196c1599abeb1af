"""The plan: YAML front matter of ``.specs/training/plan.md``, read into one typed model.

Defaults are the reference run plan's (DESIGN §2), so a workspace without a plan still
works, with a note saying so. Unknown keys are errors naming the key: a typo in a
hyperparameter must never silently fall back to a default. Every value is checked at
load (``plan_value_invalid`` naming the key and what it allows): strict types (``true``
is no number, ``'5'`` is no number, a number is no string), finite numbers, and each
number within the range stated beside its key here and in .specs/plan_format.md, so that
nothing the job would refuse after it started can be signed. The ranges are types
(``Annotated``) shared with draft_job's overrides (``check_overrides``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunestep.tools.errors import TunestepError
from tunestep.tools.workspace import Workspace

PLAN_PATH = ".specs/training/plan.md"
# The C loader when libyaml is there: the plan is read on every tool call.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NUMBER_DIGITS = 100  # a plan number longer than this is refused, never converted


class _Oversized:
    """A YAML number too long to convert (Python refuses ints over 4,300 digits with a
    ValueError): kept as this marker so validation names the key instead."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<a number of {len(self.text):,} characters>"


class _SafeLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loading with YAML 1.2 floats: ``1e-4`` is a number (YAML 1.1 needs a dot,
    so PyYAML reads it as a string); a quoted ``'5'`` stays a string."""


def _number(loader, node, construct):
    text = loader.construct_scalar(node)
    if len(text) > MAX_NUMBER_DIGITS:
        return _Oversized(text)
    return construct(loader, node)


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
_SafeLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: _number(
    loader, node, yaml.constructor.SafeConstructor.construct_yaml_int))
_SafeLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: _number(
    loader, node, yaml.constructor.SafeConstructor.construct_yaml_float))
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)


def _regex(value: str):
    """A plan pattern compiled on the linear-time engine, or refused (tools/patterns.py)."""
    from tunestep.tools.patterns import compile_pattern

    return compile_pattern(value)


class _Section(BaseModel):
    # strict: no coercion (true is not 1, '5' is not 5, 5 is not '5'; an int is a float);
    # allow_inf_nan: NaN and infinities are refused in every section, whatever its keys.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True,
                              allow_inf_nan=False)


# The ranges, one type per kind of value (plan_format.md says why each bound is there).
UINT32 = 2**32 - 1
BatchSize = Annotated[int, Field(ge=1, le=1024)]
AccumulationSteps = Annotated[int, Field(ge=1, le=1024)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
Epochs = Annotated[float, Field(gt=0, le=1000)]
MaxLength = Annotated[int, Field(ge=16, le=131_072)]
CheckpointsKept = Annotated[int, Field(ge=1, le=100)]
Seed = Annotated[int, Field(ge=0, le=UINT32)]
Ratio = Annotated[float, Field(ge=0, lt=1)]
Precision = Literal["auto", "fp16", "bf16", "fp32"]
LoraRank = Annotated[int, Field(ge=1, le=1024)]
LoraAlpha = Annotated[int, Field(ge=1, le=4096)]
MaxSteps = Annotated[int, Field(ge=-1, le=10_000_000)]  # -1 (epochs decide) or >= 1
MIN_TIMEOUT_SECONDS = 60
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
_DURATION = re.compile(r"(?:(\d{1,4})d)?(?:(\d{1,6})h)?(?:(\d{1,8})m)?(?:(\d{1,9})s)?")


def duration_seconds(text: str) -> int | None:
    """'2h', '90m', '1h30m', '1d', '45s' or plain seconds (at most 9 digits) -> seconds;
    None when it is none of these (never a huge int: every group is bounded)."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text) if len(text) <= 9 else None
    parts = _DURATION.fullmatch(text)
    if not text or parts is None or not any(parts.groups()):
        return None
    d, h, m, s = (int(g or 0) for g in parts.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def check_timeout(text: str) -> str:
    """A job timeout: a duration from 1 minute to 7 days (the billing cap a signature
    commits to: the worst-case cost is the flavor's price times this)."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError("must be a duration like 30m, 2h, 1h30m or 1d")
    if not MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"must be from 1m to 7d ({seconds:,} s)")
    return text


class Paths(_Section):
    """Where things live, relative to the workspace root."""

    train: str = "datasets/processed_webdev_coding/train.jsonl"
    validation: str = "datasets/processed_webdev_coding/validation.jsonl"
    incremental: str = "datasets/incremental"
    mapped: str = "datasets/processed_webdev_coding_mapped"
    merged: str = "datasets/processed_webdev_coding/merged_train.jsonl"
    replay: str = "datasets/processed_webdev_coding/replay"  # the replay sample per batch
    tokenized: str = "datasets/tokenized"
    models: str = "models"
    logs: str = "logs"
    plots: str = ".specs/plots"
    run_plan: str = ".specs/training/run_plan_preparation.md"


# The role of every path the plan can set, and of the two fixed locations. Outputs are
# written by tunestep or a job; inputs and the hold-out set are only read. Every pair must
# be apart (neither the same place nor one inside the other): an output at an input's,
# the hold-out set's, the plan's, the ledger's or another output's location would
# overwrite it, and an output inside the batch folder would become training data.
PATH_ROLES: dict[str, str] = {
    "paths.train": "input", "paths.validation": "hold-out", "paths.incremental": "input",
    "paths.mapped": "derived output", "paths.merged": "derived output",
    "paths.replay": "derived output",
    "paths.tokenized": "derived output", "paths.models": "derived output",
    "paths.logs": "report", "paths.plots": "report", "paths.run_plan": "report",
    "plan": "plan", "state": "state",
}
FIXED_PATHS = {"plan": PLAN_PATH, "state": ".tunestep"}


class PathConflict(ValueError):
    """Two plan paths share a location (raised inside validation, reported by key)."""

    def __init__(self, first: str, second: str, how: str) -> None:
        super().__init__(f"{first} and {second} {how}")
        self.first, self.second, self.how = first, second, how


def _norm(value: str) -> PurePosixPath:
    parts = [p for p in PurePosixPath(value.replace("\\", "/")).parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def path_locations(paths: Paths) -> dict[str, list[str]]:
    """Each path key's locations (merged brings its manifest), plus the fixed ones."""
    found = {f"paths.{name}": [value] for name, value in paths.model_dump().items()}
    merged = PurePosixPath(paths.merged)
    found["paths.merged"].append(str(merged.with_name(f"{merged.stem}.manifest.json")))
    found.update({key: [value] for key, value in FIXED_PATHS.items()})
    return found


def _apart(first: PurePosixPath, second: PurePosixPath) -> str | None:
    if first == second:
        return "are the same location"
    if second == PurePosixPath(".") or second in first.parents:
        return "lie one inside the other"
    if first == PurePosixPath(".") or first in second.parents:
        return "lie one inside the other"
    return None


def check_path_roles(paths: Paths, resolve=None) -> None:
    """Refuse two path keys sharing a location (``resolve`` also follows links)."""
    places = path_locations(paths)
    keys = list(places)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            for a in places[first]:
                for b in places[second]:
                    pair = (_norm(a), _norm(b)) if resolve is None else (resolve(a), resolve(b))
                    if None in pair:
                        continue
                    how = _apart(*pair)
                    if how:
                        raise PathConflict(first, second, how)


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
    # without being held: what one row may cost in memory (tools/readfile.py).
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
# How far apart two values of a metric can be: rates lie in [0, 1], Spearman's rho and
# Cohen's kappa in [-1, 1]; a mean absolute grade error has no bound the plan states (the
# grade pattern reads any number), so 100 covers 0-10 and 0-100 grade scales. A gate
# value in the metric's units (marked METRIC_UNITS) must lie strictly inside
# (-span, span): at the span it promotes everything (that is `gate: null`) or nothing.
METRIC_SPAN = {"grade_within_1": 1.0, "grade_exact": 1.0, "parse_rate": 1.0,
               "spearman": 2.0, "kappa": 2.0, "grade_mae": 100.0}
METRIC_UNITS = {"unit": "metric"}  # json_schema_extra of a gate key in the metric's units


class Gate(_Section):
    """Whether a finished step moves ``latest``: the promotion gate (approval_protocol.md).

    The new version is promoted unless ``metric`` is worse than the previous version's by
    more than ``max_regression`` (in the metric's own units; negative demands an
    improvement). With ``require_significance`` the decision rests on the paired
    comparison's 95 % interval rather than on the point estimate.

    Every key is checked generically: strict types and finite numbers (``_Section``), and
    each key marked ``METRIC_UNITS`` within the metric's span (``_within_span``).
    """

    metric: Literal[GATE_METRICS] = "grade_within_1"  # type: ignore[valid-type]
    max_regression: float = Field(0.0, json_schema_extra=METRIC_UNITS)
    require_significance: bool = True

    @field_validator("*")
    @classmethod
    def _within_span(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name]
        if field.json_schema_extra != METRIC_UNITS:
            return value
        span = METRIC_SPAN.get(info.data.get("metric", ""), 0.0)
        if not -span < value < span:
            raise ValueError(f"must lie strictly between {-span:g} and {span:g} for "
                             f"metric {info.data.get('metric')} (at the span it would "
                             "promote every step, which is gate: null, or none)")
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


class Overrides(_Section):
    """draft_job's per-draft overrides: each the type and range of its plan key (``lora_*``
    are ``lora.*``); ``max_steps`` is draft-only: -1 (the epochs decide) or a step count.
    The defaults (None) only mean "not given": a given null is refused."""

    per_device_train_batch_size: BatchSize = None  # type: ignore[assignment]
    gradient_accumulation_steps: AccumulationSteps = None  # type: ignore[assignment]
    learning_rate: LearningRate = None  # type: ignore[assignment]
    num_train_epochs: Epochs = None  # type: ignore[assignment]
    max_length: MaxLength = None  # type: ignore[assignment]
    seed: Seed = None  # type: ignore[assignment]
    save_total_limit: CheckpointsKept = None  # type: ignore[assignment]
    precision: Precision = None  # type: ignore[assignment]
    max_steps: MaxSteps = None  # type: ignore[assignment]
    lora_r: LoraRank = None  # type: ignore[assignment]
    lora_alpha: LoraAlpha = None  # type: ignore[assignment]
    lora_dropout: Ratio = None  # type: ignore[assignment]

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the epochs decide) or at least 1")
        return value


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse an override the plan key itself would refuse (``plan_value_invalid``)."""
    unknown = sorted(str(k) for k in overrides if k not in Overrides.model_fields)
    if unknown:
        raise TunestepError("draft_bad_override", f"'{unknown[0]}' cannot be overridden; "
                            f"allowed: {', '.join(sorted(Overrides.model_fields))}")
    try:
        Overrides.model_validate(overrides)
    except ValidationError as exc:
        raise value_error(Overrides, exc.errors()[0], exc.error_count(),
                          "override") from None


def check_request_timeout(timeout: str) -> None:
    """A draft's own timeout: the rule of the plan key ``job.timeout``."""
    try:
        check_timeout(timeout)
    except ValueError as exc:
        raise TunestepError("plan_value_invalid", f"timeout {_short(timeout)}: {exc}; "
                            "allowed: a duration from 1m to 7d (e.g. 30m, 2h, 1h30m, "
                            "1d)") from None


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
        data = yaml.load(match.group(1), Loader=_SafeLoader) or {}
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
            raise _conflict_error(conflict, shown_path) from None
        if first["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in first["loc"])
            raise TunestepError("plan_unknown_key", f"plan key '{key}': unknown key",
                                path=shown_path) from None
        raise value_error(Plan, first, exc.error_count(), "plan key",
                          shown_path) from None


def value_error(model: type[BaseModel], error: Any, count: int = 1, what: str = "plan key",
                path: str | None = None, prefix: str = "") -> TunestepError:
    """``plan_value_invalid`` for a pydantic error: the key, why, the value given and
    what the key allows."""
    names = field_path(model, error["loc"])
    key = prefix + ".".join(names or [str(p) for p in error["loc"]])
    detail = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f", got {_short(given)}"
    allowed = allowed_values(model, names) if names else None
    more = f" (and {count - 1} more)" if count > 1 else ""
    return TunestepError("plan_value_invalid",
                         f"{what} '{key}': {detail}{shown}"
                         + (f"; allowed: {allowed}" if allowed else "") + more, path=path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def field_path(model: type[BaseModel], loc: tuple) -> list[str]:
    """The leading parts of an error location that name fields (not union members or
    list indexes)."""
    names: list[str] = []
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            break
        names.append(part)
        current = _model_in(fields[part].annotation)
    return names


def _model_in(annotation: Any) -> Any:
    """The pydantic model a field holds (also inside ``X | None``), else None."""
    import typing

    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                None)


def allowed_values(model: type[BaseModel], names: list[str]) -> str | None:
    """What a plan key allows, in words, from its type and its constraints."""
    import typing

    owner: Any = model
    for name in names[:-1]:
        owner = _model_in(owner.model_fields[name].annotation)
    field = owner.model_fields[names[-1]]
    if field.json_schema_extra == METRIC_UNITS:
        return ("a finite number strictly between -span and span of the gate's metric "
                "(span 1 for the rates, 2 for spearman and kappa, 100 for grade_mae)")
    annotation = field.annotation
    nullable = type(None) in typing.get_args(annotation)
    if nullable:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if _model_in(annotation) is not None:
        words = "a mapping of its keys"
    elif typing.get_origin(annotation) is Literal:
        words = "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    elif annotation is bool:
        words = "true or false"
    elif annotation in (int, float):
        words = _number_range(annotation, field.metadata)
    elif names[-1] == "timeout":
        words = "a duration from 1m to 7d (e.g. 30m, 2h, 1h30m, 1d)"
    elif annotation is str:
        words = "a string"
    else:
        words = "a string or a list of strings" if "str" in str(annotation) else None
    if words and nullable:
        words += ", or null"
    return words


def _number_range(kind: type, metadata: list) -> str:
    lower = upper = ""
    for rule in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(rule, attr, None) is not None:
                lower = f"{sign} {getattr(rule, attr):,}"
        for attr, sign in (("le", "<="), ("lt", "<")):
            if getattr(rule, attr, None) is not None:
                upper = f"{sign} {getattr(rule, attr):,}"
    noun = "an integer" if kind is int else "a finite number (an integer or a decimal)"
    bounds = " and ".join(b for b in (lower, upper) if b)
    return f"{noun} {bounds}".strip()


def _label(key: str) -> str:
    if key in FIXED_PATHS:
        return f"the {'ledger' if key == 'state' else 'plan'} ({FIXED_PATHS[key]})"
    return f"'{key}' ({PATH_ROLES[key]})"


def _conflict_error(conflict: PathConflict, shown_path: str) -> TunestepError:
    return TunestepError(
        "plan_path_conflict",
        f"plan key {_label(conflict.first)} and {_label(conflict.second)} {conflict.how}: "
        "an output must never overwrite an input, the hold-out set, the plan, the ledger "
        "or another output; give each its own location", path=shown_path)


def _resolver(ws: Workspace):
    def resolve(value: str) -> PurePosixPath | None:
        try:
            return PurePosixPath(ws.resolve(value).relative_to(ws.root).as_posix())
        except (TunestepError, ValueError, OSError, RuntimeError):
            return None  # refused where it is used; here only links are the concern
    return resolve


def load_plan(ws: Workspace) -> LoadedPlan:
    """Load the workspace's plan; a missing plan means defaults plus a note.

    Inside a step context (tools/step_context.py) the plan is read once per tool call.
    """
    from tunestep.tools.step_context import memo_plan

    return memo_plan(ws, ws.root / PLAN_PATH, _read_plan)


def _read_plan(ws: Workspace) -> LoadedPlan:
    path: Path = ws.resolve(PLAN_PATH)
    if not path.is_file():
        plan = Plan()
        digest = hashlib.sha256(plan.model_dump_json().encode()).hexdigest()
        return LoadedPlan(plan=plan, source=None, sha256=digest,
                          notes=[f"no {PLAN_PATH}: using the reference defaults"])
    from tunestep.tools.readfile import open_regular

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
        check_path_roles(plan.paths, _resolver(ws))
    except PathConflict as conflict:
        raise _conflict_error(conflict, PLAN_PATH) from None
    return LoadedPlan(plan=plan, source=PLAN_PATH, sha256=hashlib.sha256(raw).hexdigest())


def render_plan_document(plan: Plan, body: str = "") -> str:
    """A plan document: the given plan as front matter, then a Markdown body."""
    front = yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False)
    return f"---\n{front}---\n{body}"
