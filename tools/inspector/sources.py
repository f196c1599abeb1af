"""What an inspection reads and what it compares the input with.

``data_sources`` lists the files a path names; ``comparison_context`` finds the hold-out
set, the base train set and the earlier batches the input is checked against (never a
file of the input itself). Apart from ``run.py`` because ``apply_mapping`` and an inspect
draft gather the same sources and context before their own scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunestep.tools.core.datafiles import DATA_SUFFIXES, batch_step, list_data_files
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.plan import Plan
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.inspector.reader import container_of
from tunestep.tools.inspector.scan_state import Source

MAPPING_MANIFEST = "manifest.json"  # apply_mapping's record inside a mapped folder


@dataclass
class Context:
    """What a scan compares against, and which of it the input itself contains."""

    holdout: tuple[Path, str, str] | None = None  # (path, shown, sha256)
    train: tuple[Path, str, str] | None = None
    references: list[tuple[Path, str, str]] = field(default_factory=list)
    holdout_note: str | None = None


def resolve_data_path(ws: Workspace, plan: Plan, path: str) -> Path:
    """``ws.resolve(path, must_exist=True)``; a bare batch name gets a "did you mean"."""
    try:
        return ws.resolve(path, must_exist=True)
    except TunestepError as exc:
        if exc.code != "path_missing":
            raise
        meant = next((c for c in _candidates(ws, plan, path)), None)
        if meant is None:
            raise
        raise TunestepError("path_missing", f"no such file or folder; did you mean {meant}?",
                            path=path) from None


def _candidates(ws: Workspace, plan: Plan, path: str):
    """Where a name that is not a workspace path may live: the batch and mapped folders."""
    for folder in (plan.paths.incremental, plan.paths.mapped):
        candidate = f"{folder.rstrip('/')}/{path.strip('/')}"
        try:
            if ws.resolve(candidate).exists():
                yield candidate
        except TunestepError:
            continue


def data_sources(ws: Workspace, plan: Plan, target: Path) -> list[Source]:
    """The data files a path names: the file itself, or the files of the folder."""
    if target.is_dir():
        mapped = ws.resolve(plan.paths.mapped)
        files = [p for p in list_data_files(target, ws.root)
                 if not (p.name == MAPPING_MANIFEST and _inside(p, mapped))]
    elif target.suffix.lower() in DATA_SUFFIXES:
        files = [target]
    else:
        raise TunestepError("data_format", f"unsupported data file type '{target.suffix}': "
                                           "give a .jsonl, .json or .parquet file or a folder",
                            path=ws.relative(target))
    return [Source(shown=ws.relative(p), path=p, container=container_of(p),
                   sha256=sha256_file(p, ws.call)) for p in files]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def comparison_context(ws: Workspace, plan: Plan, target: Path,
                       sources: list[Source]) -> Context:
    """The hold-out set, the base train set and the earlier batches this input is checked
    against; a file the input itself contains is never compared with itself."""
    own = {s.path.resolve() for s in sources if s.path}
    context = Context()
    holdout = _file(ws, plan.paths.validation)
    if holdout is not None and holdout[0] in own:
        context.holdout_note = "the input is (or holds) the hold-out set itself"
    elif holdout is not None:
        context.holdout = holdout
    else:
        context.holdout_note = f"no hold-out set at {plan.paths.validation}"
    train = _file(ws, plan.paths.train)
    if train is not None and train[0] not in own:
        context.train = train
        context.references.append(train)
    step = _step_of(target, plan.data.batch_pattern)
    if step is not None:
        context.references.extend(f for f in _earlier_batches(ws, plan, step)
                                  if f[0] not in own)
    return context


def _file(ws: Workspace, rel: str) -> tuple[Path, str, str] | None:
    try:
        path = ws.resolve(rel)
    except TunestepError:
        return None
    if not path.is_file():
        return None
    return path.resolve(), ws.relative(path), sha256_file(path, ws.call)


def _step_of(target: Path, pattern: str) -> int | None:
    """The batch step a path belongs to: its own name, else its folder's name."""
    for name in (target.name, target.stem, target.parent.name):
        step = batch_step(name, pattern)
        if step is not None:
            return step
    return None


def _earlier_batches(ws: Workspace, plan: Plan, step: int) -> list[tuple[Path, str, str]]:
    try:
        folder = ws.resolve(plan.paths.incremental)
    except TunestepError:
        return []
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir()):
        number = batch_step(child.name, plan.data.batch_pattern)
        if number is None or number >= step or not child.is_dir():
            continue
        for path in list_data_files(child, ws.root):
            found.append((path.resolve(), ws.relative(path), sha256_file(path)))
    return found
