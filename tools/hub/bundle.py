"""The step bundle on the Hub: where a draft's files and outputs live, and their upload.

A step's bundle (job script, sibling modules, ``job.json``, data files) is committed to a
**private** dataset repo in **one** commit under ``steps/<draft_id>/``; the job mounts that
commit (``jobs_api.submit_hf_job``) and pushes its results to ``outputs/<draft_id>/`` of the
same repo (``job_outputs.fetch_job_outputs`` reads them back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub.errors import hub_call
from tunestep.tools.hub.repos import api_token, check_id, check_relative, check_repo_id, ensure_repo

logger = logging.getLogger(__name__)

STEPS_PREFIX = "steps"
OUTPUTS_PREFIX = "outputs"

# A bundle file larger than this is sent from its path (the client streams it) instead of
# from memory: a checkpoint that travels in the bundle is gigabytes. Callers pass such files
# as a private copy they verified (hf_submit spools a local start and checks its sha256).
BUNDLE_INLINE_MAX = 32 << 20


def step_path(draft_id: str) -> str:
    """``steps/<draft_id>``: where a draft's bundle lives in the repo."""
    return f"{STEPS_PREFIX}/{check_id(draft_id, 'draft id')}"


def output_path(draft_id: str) -> str:
    """``outputs/<draft_id>``: where the job pushes its results back."""
    return f"{OUTPUTS_PREFIX}/{check_id(draft_id, 'draft id')}"


def _read_bundle(files: Mapping[str, Path | bytes]) -> dict[str, bytes | str]:
    if not files:
        raise TunestepError("hf_bad_argument", "a step bundle needs at least one file")
    contents: dict[str, bytes | str] = {}
    for name, source in files.items():
        check_relative(name, "bundle file name")
        if isinstance(source, bytes | bytearray):
            contents[name] = bytes(source)
            continue
        try:
            if Path(source).stat().st_size > BUNDLE_INLINE_MAX:
                contents[name] = str(source)
                continue
            contents[name] = Path(source).read_bytes()
        except OSError as exc:
            raise TunestepError(
                "hf_bundle_unreadable", f"cannot read bundle file: {exc.strerror}", path=str(source)
            ) from None
    return contents


def _ensure_private_dataset(api: HfApi, repo_id: str, private: bool = True) -> None:
    ensure_repo(api, repo_id, "dataset", private=private)


def upload_step_bundle(
    api: HfApi, repo_id: str, draft_id: str, files: Mapping[str, Path | bytes],
    *, private: bool = True,
) -> str:
    """Upload a step's bundle to a private dataset repo in one commit; return its sha.

    ``files`` maps a relative name (e.g. ``train_sft.py``, ``job.json``,
    ``data/train.jsonl``) to a local path or the exact bytes to send; each lands at
    ``steps/<draft_id>/<name>``. The repo is created private if missing; an existing
    public repo is refused (``hub_repo_public``) unless ``private`` is False (the plan's
    ``hub.private: false``). Pass the returned sha to ``submit_hf_job`` so the job runs
    exactly these bytes.
    """
    check_repo_id(repo_id)
    prefix = step_path(draft_id)
    contents = _read_bundle(files)  # read once: the commit carries what was read here
    _ensure_private_dataset(api, repo_id, private)
    operations = [
        CommitOperationAdd(path_in_repo=f"{prefix}/{name}", path_or_fileobj=data)
        for name, data in sorted(contents.items())
    ]
    with hub_call(f"commit step bundle to {repo_id}", api_token(api)):
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"tunestep: step bundle {draft_id}",
            repo_type="dataset",
        )
    logger.info("committed %d bundle files for %s to %s", len(operations), draft_id, repo_id)
    return info.oid
