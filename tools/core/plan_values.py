"""Plan values: the ranges of the plan's keys and the words that explain a refusal.

Below ``plan.py`` (which builds its models from these types) so that draft_job's
overrides (``check_overrides``) and a draft's own timeout are held to exactly the rules of
their plan keys, and so that a refusal (``plan_value_invalid``) names the key, the value
given and what the key allows, read from the key's own type and constraints. Each bound
is explained in .specs/plan_format.md ("Values and ranges").
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunestep.tools.core.errors import TunestepError

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


class PlanLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loading with YAML 1.2 floats: ``1e-4`` is a number (YAML 1.1 needs a dot,
    so PyYAML reads it as a string); a quoted ``'5'`` stays a string."""


def _number(loader, node, construct):
    text = loader.construct_scalar(node)
    if len(text) > MAX_NUMBER_DIGITS:
        return _Oversized(text)
    return construct(loader, node)


PlanLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
PlanLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: _number(
    loader, node, yaml.constructor.SafeConstructor.construct_yaml_int))
PlanLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: _number(
    loader, node, yaml.constructor.SafeConstructor.construct_yaml_float))

# strict: no coercion (true is not 1, '5' is not 5, 5 is not '5'; an int is a float);
# allow_inf_nan: NaN and infinities are refused, whatever the key.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

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


# How far apart two values of a metric can be: rates lie in [0, 1], Spearman's rho and
# Cohen's kappa in [-1, 1]; a mean absolute grade error has no bound the plan states (the
# grade pattern reads any number), so 100 covers 0-10 and 0-100 grade scales. A gate
# value in the metric's units (marked METRIC_UNITS) lies in [-span, +span): at +span
# every step passes (that is `gate: null`; 1e308 did so silently); -span holds every
# step back for a signed promotion by hand, which is a choice an operator may make.
METRIC_SPAN = {"grade_within_1": 1.0, "grade_exact": 1.0, "parse_rate": 1.0,
               "spearman": 2.0, "kappa": 2.0, "grade_mae": 100.0}
METRIC_UNITS = {"unit": "metric"}  # json_schema_extra of a gate key in the metric's units


class Overrides(BaseModel):
    """draft_job's per-draft overrides: each the type and range of its plan key (``lora_*``
    are ``lora.*``); ``max_steps`` is draft-only: -1 (the epochs decide) or a step count.
    The defaults (None) only mean "not given": a given null is refused."""

    model_config = STRICT

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
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                None)


def allowed_values(model: type[BaseModel], names: list[str]) -> str | None:
    """What a plan key allows, in words, from its type and its constraints."""
    owner: Any = model
    for name in names[:-1]:
        owner = _model_in(owner.model_fields[name].annotation)
    field = owner.model_fields[names[-1]]
    if field.json_schema_extra == METRIC_UNITS:
        return ("a finite number from -span to below +span of the gate's metric (span 1 "
                "for the rates, 2 for spearman and kappa, 100 for grade_mae)")
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
