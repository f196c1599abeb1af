"""The hostile workspace: the assistant writes the plan, the data files and the shell.

Issue 12's table, beside the crash-safety and confinement tables: each case is a thing
an adversarial assistant can do to the workspace, and the refusal (error code) or the
finding the tools must answer with. Nothing here needs a network or a model download.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from tunestep.tools.errors import TunestepError
from tunestep.tools.plan import FIXED_PATHS, PATH_ROLES, Plan, load_plan, parse_plan_text
from tunestep.tools.workspace import open_workspace

PLAN = ".specs/training/plan.md"


def write_plan(root: Path, front: str) -> None:
    (root / PLAN).parent.mkdir(parents=True, exist_ok=True)
    (root / PLAN).write_text(f"---\n{front}\n---\n# plan\n")


# --- 1. roles of paths --------------------------------------------------------------------

SETTABLE = [k for k in PATH_ROLES if k.startswith("paths.")]
DEFAULTS = {f"paths.{k}": v for k, v in Plan().paths.model_dump().items()} | FIXED_PATHS


def _front(key: str, value: str) -> str:
    return f"paths:\n  {key.removeprefix('paths.')}: '{value}'"


@pytest.mark.parametrize("first, second", [
    pair for pair in itertools.permutations(PATH_ROLES, 2) if pair[0] in SETTABLE])
def test_a_path_key_at_another_keys_location_is_refused(first, second):
    """Case: paths.X set to paths.Y's location (every ordered pair) -> plan_path_conflict."""
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{_front(first, DEFAULTS[second])}\n---\n")
    assert err.value.code == "plan_path_conflict"
    named = [first, second if second.startswith("paths.") else FIXED_PATHS[second]]
    assert all(n in err.value.message for n in named), err.value.message


@pytest.mark.parametrize("key", SETTABLE)
def test_a_path_inside_a_batch_folder_is_refused(key):
    """Case: any path key inside a batch folder (datasets/incremental/batch_100_02/...)."""
    if key == "paths.incremental":
        value = "datasets/incremental/batch_100_02/nested"  # the input inside itself
        front = _front("paths.train", value + "/train.jsonl")
    else:
        front = _front(key, "datasets/incremental/batch_100_02/sharegpt.jsonl")
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{front}\n---\n")
    assert err.value.code == "plan_path_conflict" and "paths.incremental" in err.value.message


@pytest.mark.parametrize("front", [
    "paths:\n  run_plan: datasets/processed_webdev_coding/validation.jsonl",
    "paths:\n  run_plan: .tunestep/state.sqlite",
    "paths:\n  run_plan: .specs/training/plan.md",
    "paths:\n  merged: datasets/incremental/batch_100_02/sharegpt.jsonl",
    "paths:\n  logs: .",
    "paths:\n  plots: ./datasets//processed_webdev_coding/",
])
def test_the_issues_plans_are_refused_at_load_and_nothing_is_written(sample_ws, front):
    """Case: the plans of issue 12 §1, through load_plan (what every tool calls first)."""
    from tunestep.tools.draft import DraftRequest, draft_job

    root = sample_ws.root
    before = {p: p.read_bytes() for p in (root / "datasets").rglob("*") if p.is_file()}
    write_plan(root, front)
    with pytest.raises(TunestepError) as err:
        draft_job(sample_ws, DraftRequest())
    assert err.value.code == "plan_path_conflict"
    after = {p: p.read_bytes() for p in (root / "datasets").rglob("*") if p.is_file()}
    assert after == before and not (root / ".tunestep" / "state.sqlite").exists()


def test_a_link_onto_the_holdout_folder_is_a_conflict_too(sample_ws):
    """Case: paths.merged through a link that lands on the hold-out set."""
    root = sample_ws.root
    os.symlink("processed_webdev_coding", root / "datasets" / "alias")
    write_plan(root, "paths:\n  merged: datasets/alias/validation.jsonl")
    with pytest.raises(TunestepError) as err:
        load_plan(open_workspace(root))
    assert err.value.code == "plan_path_conflict"
    assert "paths.merged" in err.value.message and "paths.validation" in err.value.message


def test_the_default_paths_are_apart():
    Plan()  # the defaults must pass their own rule
