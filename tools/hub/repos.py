"""Repos on the Hub as tunestep addresses them: names checked, repos made private.

Every id, ``namespace/name`` and path inside a repo is checked here before it reaches a
request (``hf_bad_argument``), and ``ensure_repo`` creates a repo private or refuses an
existing public one. The bundle upload, the job calls and the outputs fetch all stand on
these, so they sit apart from each of them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from huggingface_hub import HfApi

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.repo_ids import repo_id_problem
from tunestep.tools.hub.errors import hub_call, hub_timeout

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise TunestepError(
            "hf_bad_argument", f"{what} must be 1-128 characters [A-Za-z0-9._-], no '..'"
        )
    return value


def check_repo_id(repo_id: str) -> str:
    problem = repo_id_problem(repo_id)
    if problem:
        raise TunestepError("hf_bad_argument", problem)
    return repo_id


def check_relative(path: str, what: str, code: str = "hf_bad_argument") -> PurePosixPath:
    """A relative POSIX path with no '..', '.', empty or hidden-drive parts."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise TunestepError(code, f"{what} {path!r} is not a safe relative path")
    return pure


def api_token(api: HfApi) -> str | None:
    return api.token if isinstance(api.token, str) else None


def ensure_repo(api: HfApi, repo_id: str, repo_type: str, *, private: bool = True) -> None:
    """Create the repo (private unless ``private`` is False), or refuse an existing public
    one while the plan wants private repos (``hub_repo_public``).

    ``create_repo(exist_ok=True)`` ignores ``private`` for an existing repo, so an
    existing public repo would otherwise receive the training data or the model.
    """
    check_repo_id(repo_id)
    token = api_token(api)
    with hub_call(f"create {repo_type} repo {repo_id}", token):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    with hub_call(f"check {repo_type} repo {repo_id}", token):
        info = api.repo_info(repo_id, repo_type=repo_type, timeout=hub_timeout())
    if private and info.private is not True:
        raise TunestepError(
            "hub_repo_public",
            f"the {repo_type} repo {repo_id} exists and is public; tunestep pushes only into "
            "private repos: make it private on the Hub (its Settings), name another repo in "
            "the plan (hub.model_id / hub.dataset_repo), or set hub.private: false to push "
            "into a public one",
        )
