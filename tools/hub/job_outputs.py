"""A job's outputs, fetched back: what it pushed under ``outputs/<draft_id>`` of the repo.

Names and bytes come from the Hub, written by the job: untrusted like an archive's
members. Every name is checked (``hf_output_unsafe_name``), the total is capped
(``hf_outputs_too_large``), every file is read from one pinned commit and checked against
the tree listing's size and hash before it lands, atomically.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi
from huggingface_hub.errors import RemoteEntryNotFoundError
from pydantic import BaseModel, ConfigDict

from tunestep.tools.core.atomic import atomic_open
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub.errors import hub_call, hub_timeout
from tunestep.tools.hub.repos import api_token, check_relative, check_repo_id

logger = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 1 << 30


class HfOutputFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path_in_repo: str
    name: str  # relative to the outputs prefix; also the path under dest_dir
    local_path: Path
    size: int
    sha256: str


class HfJobOutputs(BaseModel):
    """What a job pushed back, downloaded from one pinned commit of the repo."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    revision: str
    prefix: str
    dest_dir: Path
    files: list[HfOutputFile]
    skipped: list[str] = []



def _output_entries(
    api: HfApi, repo_id: str, prefix: str, revision: str
) -> list[tuple[str, str, int, str | None, str | None]]:
    """(path in repo, name under prefix, size, git blob id, LFS sha256) under ``prefix``."""
    from huggingface_hub.hf_api import RepoFile

    with hub_call(f"list outputs in {repo_id}", api_token(api)):
        try:
            tree = list(
                api.list_repo_tree(
                    repo_id,
                    path_in_repo=prefix,
                    recursive=True,
                    revision=revision,
                    repo_type="dataset",
                )
            )
        except RemoteEntryNotFoundError:
            return []  # the prefix folder does not exist: the job has not pushed yet
    entries = []
    for item in tree:
        if not isinstance(item, RepoFile) or not item.path.startswith(f"{prefix}/"):
            continue
        name = item.path[len(prefix) + 1 :]
        # Names come from the Hub, written by the job: untrusted, like any archive member.
        check_relative(name, "output file name", "hf_output_unsafe_name")
        lfs = item.lfs.sha256 if item.lfs is not None else None
        entries.append((item.path, name, int(item.size), item.blob_id, lfs))
    if sum(entry[2] for entry in entries) > MAX_OUTPUT_BYTES:
        raise TunestepError(
            "hf_outputs_too_large", f"outputs under {prefix} exceed {MAX_OUTPUT_BYTES} bytes"
        )
    return sorted(entries)


def _inside(dest_dir: Path, name: str) -> Path:
    """``dest_dir/name``, refusing a name that a symlink already there would lead outside."""
    target = dest_dir.joinpath(*PurePosixPath(name).parts)
    if not target.resolve().is_relative_to(dest_dir.resolve()):
        raise TunestepError(
            "hf_output_unsafe_name", f"output {name!r} would be written outside {dest_dir}"
        )
    return target


def _copy_hashed(source: Path, target: Path, size: int, blob_id: str | None,
                 lfs_sha256: str | None) -> str:
    """Copy atomically; the bytes must be the ones the tree listing described.

    A regular file's git blob id (sha1 of ``blob <size>\\0`` + bytes) or an LFS file's
    sha256 is checked before the file lands, so a download the Hub (or the path to it)
    garbled never replaces anything.
    """
    digest = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)  # git object id, not security
    written = 0
    with open(source, "rb") as reader, atomic_open(target, "wb") as writer:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            blob.update(chunk)
            written += len(chunk)
            writer.write(chunk)
        wrong = written != size or (
            lfs_sha256 is not None and digest.hexdigest() != lfs_sha256) or (
            lfs_sha256 is None and blob_id is not None and blob.hexdigest() != blob_id)
        if wrong:
            raise TunestepError("hub_bad_response", f"the download of {target.name} does not "
                                "match the Hub's listing (size or hash); try again")
    return digest.hexdigest()


def _allowed(name: str, allow: Sequence[str] | None) -> bool:
    if allow is None:
        return True
    return any(name == entry or (entry.endswith("/") and name.startswith(entry)) for entry in allow)


def fetch_job_outputs(
    api: HfApi,
    repo_id: str,
    prefix: str,
    dest_dir: Path,
    *,
    revision: str | None = None,
    allow: Sequence[str] | None = None,
) -> HfJobOutputs:
    """Download the files a job pushed under ``prefix`` (e.g. ``outputs/<draft_id>``).

    Files land at ``dest_dir/<name relative to prefix>``, each written atomically; all are
    read from one commit (``revision``, default the current head), so a push in progress
    never yields a mix. Nothing pushed yet gives an empty list. With ``allow`` (exact
    names, or folders ending in ``/`` such as ``"logs/"``), any other name is not
    downloaded and is listed in ``skipped``: pass it when ``dest_dir`` holds files a job
    must never replace (the workspace root holds the plan and the hold-out set).
    """
    check_repo_id(repo_id)
    prefix = str(check_relative(prefix.strip("/"), "outputs prefix"))
    dest_dir = Path(dest_dir)
    token = api_token(api)
    with hub_call(f"resolve {repo_id}", token):
        sha = api.dataset_info(repo_id, revision=revision or "main", timeout=hub_timeout()).sha
    if not sha:
        raise TunestepError("hf_hub_error", f"the Hub gave no commit for {repo_id}")
    files, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="tunestep-hf-") as cache:
        for path_in_repo, name, size, blob_id, lfs in _output_entries(api, repo_id, prefix, sha):
            if not _allowed(name, allow):
                skipped.append(name)
                continue
            with hub_call(f"download {path_in_repo}", token):
                local = api.hf_hub_download(
                    repo_id, path_in_repo, repo_type="dataset", revision=sha, cache_dir=cache
                )
            target = _inside(dest_dir, name)
            files.append(
                HfOutputFile(
                    path_in_repo=path_in_repo,
                    name=name,
                    local_path=target,
                    size=size,
                    sha256=_copy_hashed(Path(local), target, size, blob_id, lfs),
                )
            )
    if skipped:
        logger.warning("not fetched (outside the allowed outputs): %s", ", ".join(skipped))
    return HfJobOutputs(
        repo_id=repo_id,
        revision=sha,
        prefix=prefix,
        dest_dir=dest_dir,
        files=files,
        skipped=skipped,
    )
