"""The workspace root and the one rule every path obeys: it resolves inside the root.

The assistant writes every path argument, so a path is refused when it is absolute and
leads elsewhere (an absolute path into the workspace is taken as its relative form), climbs
with ``..``, holds a NUL or control character, or passes through a link that
points out of the workspace. The single exception is reading through the model-store
link (``models/<name>`` -> e.g. ``~/.openclaw/models/qwen3_webdev``), which only a
job writes.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunestep.tools.core.call_context import CallContext
from tunestep.tools.core.errors import TunestepError

WORKSPACE_ENV = "TUNESTEP_WORKSPACE"
STATE_DIR = ".tunestep"
# What makes a folder a workspace (any one): the plan, the ledger folder, or the default
# batch folder of a workspace that has no plan yet. Checked before anything is written, so
# a command run in the wrong folder leaves no ledger behind (.specs/layout.md).
WORKSPACE_MARKERS = (".specs/training/plan.md", STATE_DIR, "datasets/incremental")


class Workspace(BaseModel):
    """An opened workspace: its resolved root folder, and the call it was opened for.

    ``call`` is the one context of a tool call (``core/call_context.py``): the view builds
    it with ``find_workspace`` and hands it down inside this object, the parameter every
    domain function already takes. ``None`` (``open_workspace``): no memo, no trusted key.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    root: Path
    call: CallContext | None = Field(default=None, exclude=True, repr=False)

    def for_call(self, trusted_keys: Any = None, *, remember: bool = True) -> Workspace:
        """This workspace with a fresh context for one call, trusting ``trusted_keys``
        (``remember=False``: a memo-less context, for a workspace kept across calls)."""
        return Workspace(root=self.root,
                         call=CallContext(trusted_keys=trusted_keys, remember=remember))

    @property
    def trusted_keys(self) -> Any:
        """The operator keys this call verifies signed records with (None: none known)."""
        return self.call.trusted_keys if self.call is not None else None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def resolve(self, relative: str | Path, *, must_exist: bool = False) -> Path:
        """Resolve a workspace-relative path, refusing anything that lands outside."""
        return resolve_inside(self.root, relative, must_exist=must_exist)

    def resolve_model_store(self, relative: str | Path) -> Path:
        """Resolve ``models/<name>``; the link may point outside, into the model store."""
        return resolve_inside(self.root, relative, allow_final_link=True)

    def relative(self, path: Path) -> str:
        """The workspace-relative POSIX form of a path inside the workspace."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def open_workspace(path: str | Path | None = None) -> Workspace:
    """The workspace from the argument, else ``TUNESTEP_WORKSPACE``, else the current folder."""
    chosen = path or os.environ.get(WORKSPACE_ENV) or os.getcwd()
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise TunestepError(
            "workspace_missing", "the workspace folder does not exist", path=str(root)
        )
    return Workspace(root=root.resolve())


def is_workspace(root: Path) -> bool:
    return any((Path(root) / marker).exists() for marker in WORKSPACE_MARKERS)


def find_workspace(path: str | Path | None = None, *, trusted_keys: Any = None) -> Workspace:
    """``open_workspace``, refusing a folder that is not a workspace (nothing is written).

    The CLI and the server use this, once per command or tool call: a command run in the
    wrong folder must not create a ledger there. The workspace it returns carries a fresh
    call context trusting ``trusted_keys`` (``core/call_context.py``).
    ``open_workspace`` stays lenient for callers that build one.
    """
    source = "--workspace" if path else (WORKSPACE_ENV if os.environ.get(WORKSPACE_ENV)
                                         else "the current folder")
    try:
        ws = open_workspace(path)
    except TunestepError as exc:
        raise TunestepError(exc.code, f"{exc.message} (from {source}); give the workspace "
                            f"with --workspace DIR or {WORKSPACE_ENV}", path=exc.path) from None
    if not is_workspace(ws.root):
        near = nearby_workspace(ws.root)
        if near is not None:
            raise TunestepError(
                "workspace_not_found",
                f"{ws.root} (from {source}) is not a tunestep workspace; did you mean "
                f"{near}? Give it with --workspace {near} or {WORKSPACE_ENV}={near}")
        raise TunestepError(
            "workspace_not_found",
            f"{ws.root} (from {source}) is not a tunestep workspace: it has none of "
            f"{', '.join(WORKSPACE_MARKERS)}; give the workspace with --workspace DIR or "
            f"{WORKSPACE_ENV}=DIR")
    return ws.for_call(trusted_keys)


def nearby_workspace(root: Path) -> Path | None:
    """The workspace a user probably meant: one that holds ``root`` (a folder inside a
    workspace), else the only workspace one level down (e.g. the demo's folder, which
    holds ``workspace/``). None when there is none, or several one level down."""
    for parent in root.parents:
        if is_workspace(parent):
            return parent
    try:  # a look, not a search: the first few hundred entries of a large folder
        children = sorted(itertools.islice(root.iterdir(), 500))
        below = [child for child in children
                 if child.is_dir() and not child.name.startswith(".") and is_workspace(child)]
    except OSError:
        return None
    return below[0] if len(below) == 1 else None


def check_relative(relative: str | Path) -> PurePosixPath:
    """Reject the shapes of path that are never allowed, before touching the disk."""
    text = str(relative)
    if not text or text.strip() == "":
        raise TunestepError("path_empty", "an empty path was given")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise TunestepError(
            "path_control_char", "the path holds a NUL or control character", path=repr(text)
        )
    pure = PurePosixPath(text.replace("\\", "/"))
    if pure.is_absolute() or Path(text).is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise TunestepError(
            "path_absolute", "give a path relative to the workspace, not an absolute one",
            path=text,
        )
    if ".." in pure.parts:
        raise TunestepError("path_escape", "'..' is not allowed in workspace paths", path=text)
    return pure


def _inside_form(root: Path, given: str | Path) -> str | Path:
    """An absolute path into the workspace (what tab completion gives) as its relative form.

    Anything else is returned as given, for ``check_relative`` to judge: an absolute path
    that leads elsewhere stays ``path_absolute``.
    """
    text = str(given)
    if not text or not os.path.isabs(text) or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return given
    path = Path(text)
    for form in (path, Path(os.path.abspath(text))):
        try:
            return form.relative_to(root).as_posix()
        except ValueError:
            pass
    try:  # the root reached through a link (e.g. /tmp -> /private/tmp)
        return path.resolve().relative_to(root).as_posix()
    except (ValueError, OSError):
        return given


def resolve_inside(
    root: Path,
    relative: str | Path,
    *,
    must_exist: bool = False,
    allow_final_link: bool = False,
) -> Path:
    """Resolve ``relative`` under ``root``; links that lead outside are refused.

    With ``allow_final_link`` the last component may be a link pointing anywhere (the
    model store); every folder above it must still be inside.
    """
    pure = check_relative(_inside_form(root, relative))
    candidate = root.joinpath(*pure.parts) if pure.parts != (".",) else root
    try:
        return _resolve_checked(root, candidate, relative, must_exist, allow_final_link)
    except RuntimeError:  # Python < 3.13 says "Symlink loop" this way
        raise TunestepError("path_link_loop", "the path is a loop of symbolic links",
                            path=str(relative)) from None
    except OSError as exc:
        import errno

        if exc.errno == errno.ENAMETOOLONG:  # a caller's argument, never a traceback
            shown = str(relative)
            raise TunestepError("path_too_long", f"the path ({len(shown):,} characters) or "
                                "one of its names is longer than the file system allows",
                                path=shown[:80]) from None
        if exc.errno != errno.ELOOP:
            raise
        raise TunestepError("path_link_loop", "the path is a loop of symbolic links",
                            path=str(relative)) from None


def _resolve_checked(root: Path, candidate: Path, relative: str | Path, must_exist: bool,
                     allow_final_link: bool) -> Path:
    if allow_final_link:
        parent = candidate.parent.resolve()
        _require_inside(root, parent, str(relative))
        resolved = parent / candidate.name
    else:
        resolved = candidate.resolve()
        _require_inside(root, resolved, str(relative))
    if must_exist and not resolved.exists():
        raise TunestepError("path_missing", "no such file or folder", path=str(relative))
    return resolved


def _require_inside(root: Path, resolved: Path, shown: str) -> None:
    try:
        resolved.relative_to(root)
    except ValueError:
        raise TunestepError(
            "path_escape",
            "the path leads outside the workspace (through '..' or a link)",
            path=shown,
        ) from None
