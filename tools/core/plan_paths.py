"""The plan's paths: where things live, and the rule that keeps outputs off inputs.

Every path key's role (input, hold-out, derived output, report) and the two fixed
locations (the plan, the ledger); no two may share a location, neither as written
(checked while the plan validates) nor through links in the workspace (checked when it
is loaded, ``link_resolver``). Apart from ``plan.py`` because the rule is about locations,
not values: its refusal is ``plan_path_conflict``, naming both keys and their roles.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan_values import STRICT
from tunestep.tools.core.workspace import Workspace

PLAN_PATH = ".specs/training/plan.md"


class Paths(BaseModel):
    """Where things live, relative to the workspace root."""

    model_config = STRICT  # as every plan section (plan._Section)

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


def _label(key: str) -> str:
    if key in FIXED_PATHS:
        return f"the {'ledger' if key == 'state' else 'plan'} ({FIXED_PATHS[key]})"
    return f"'{key}' ({PATH_ROLES[key]})"


def conflict_error(conflict: PathConflict, shown_path: str) -> TunestepError:
    return TunestepError(
        "plan_path_conflict",
        f"plan key {_label(conflict.first)} and {_label(conflict.second)} {conflict.how}: "
        "an output must never overwrite an input, the hold-out set, the plan, the ledger "
        "or another output; give each its own location", path=shown_path)


def link_resolver(ws: Workspace):
    def resolve(value: str) -> PurePosixPath | None:
        try:
            return PurePosixPath(ws.resolve(value).relative_to(ws.root).as_posix())
        except (TunestepError, ValueError, OSError, RuntimeError):
            return None  # refused where it is used; here only links are the concern
    return resolve
