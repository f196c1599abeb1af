"""Hugging Face Jobs backend: run an approved step's exact bytes on HF infrastructure.

Pure functions over an ``HfApi``; the caller builds it with ``hub_api(token)`` at submit
time (token from ``huggingface_hub.get_token()``), and nothing here stores or logs the
token. Every Hub failure becomes a ``TunestepError`` whose message has the token removed.

How a step reaches the job, and why (checked against huggingface_hub 2.4 source):

1. ``upload_step_bundle`` commits the whole bundle (job script, sibling modules,
   ``job.json``, data files) to a **private** dataset repo in **one** commit, under
   ``steps/<draft_id>/``, and returns the commit sha.
2. ``submit_hf_job`` calls ``HfApi.run_job`` with the uv image and a read-only dataset
   ``Volume(type="dataset", source=repo, revision=<commit sha>, path="steps/<draft_id>",
   mount_path="/tunestep/step")``; the default command is
   ``uv run /tunestep/step/train_sft.py --config /tunestep/step/job.json``.
   Because the revision is a commit sha (a branch name is refused), the job sees exactly
   the committed bytes, whatever is pushed to the repo later.

   Not ``run_uv_job``: given a local script path it uploads the script to a storage
   bucket over the xet protocol, and it raises for a ``.py`` path that does not exist
   locally, so it cannot point at a file inside a mounted volume. Both call the same
   ``POST /api/jobs/<namespace>`` endpoint; ``run_job`` with the uv image is the same job.
   Nor ``hf download`` inside the job: the mounted volume needs no token in the command.

The job learns where it is from environment variables (``TUNESTEP_*``, see
``job_environment``) and pushes its outputs back to ``outputs/<draft_id>/`` in the same
repo, with the ``HF_TOKEN`` secret; ``fetch_job_outputs`` downloads them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, Volume, constants
from huggingface_hub.errors import RemoteEntryNotFoundError
from pydantic import BaseModel, ConfigDict

from tunestep.tools.atomic import atomic_open
from tunestep.tools.errors import TunestepError
from tunestep.tools.hub_errors import configure_client, hub_call, hub_timeout, scrub
from tunestep.tools.repo_ids import repo_id_problem

logger = logging.getLogger(__name__)

DEFAULT_UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
STEP_MOUNT_PATH = "/tunestep/step"
STEPS_PREFIX = "steps"
OUTPUTS_PREFIX = "outputs"
DEFAULT_SCRIPT = "train_sft.py"
DEFAULT_CONFIG = "job.json"
# Secrets whose value tunestep knows how to supply: the Hub token, read at submit time.
SUPPORTED_SECRETS = frozenset({"HF_TOKEN"})
TERMINAL_STAGES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
MAX_OUTPUT_BYTES = 1 << 30
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
JOB_HUB_TIMEOUT_S = 60

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")
_FLAVOR_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_UNIT_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


# --------------------------------------------------------------------------- models


class _HfJob(BaseModel):
    """What the Hub says of any job, submitted just now or looked up later."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    namespace: str
    url: str
    stage: str
    message: str | None = None
    flavor: str | None = None
    created_at: datetime | None = None


class HfJobRef(_HfJob):
    """A submitted job: where to find it. Never carries secrets or environment."""

    repo_id: str
    revision: str


class HfJobStatus(_HfJob):
    """Where a job is now; ``terminal`` once it can no longer change."""

    terminal: bool
    started_at: datetime | None = None
    finished_at: datetime | None = None
    running_seconds: int | None = None
    labels: dict[str, str] = {}
    revision: str | None = None  # the pinned revision of its first mounted repo
    image: str | None = None
    command: list[str] | None = None  # command and arguments, as the Hub runs them
    volume: str | None = None  # "<repo>:<path>" of its first mounted repo


class HfJobLogs(BaseModel):
    """The job's log lines available now (the last ``tail`` when given)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    lines: list[str]
    tail: int | None = None


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


# --------------------------------------------------------------------------- helpers


def hub_api(token: str | None = None, *, endpoint: str | None = None) -> HfApi:
    """An ``HfApi`` for tunestep's calls, endpoint from ``HF_ENDPOINT`` read now.

    huggingface_hub reads ``HF_ENDPOINT`` once at import; reading it here and passing it
    explicitly keeps every request pointed where the environment says at call time.
    """
    base = endpoint or os.environ.get("HF_ENDPOINT", "").strip() or constants.ENDPOINT
    configure_client()  # every request through it has a client-side timeout
    return HfApi(endpoint=base.rstrip("/"), token=token, library_name="tunestep")


def step_path(draft_id: str) -> str:
    """``steps/<draft_id>``: where a draft's bundle lives in the repo."""
    return f"{STEPS_PREFIX}/{_check_id(draft_id, 'draft id')}"


def output_path(draft_id: str) -> str:
    """``outputs/<draft_id>``: where the job pushes its results back."""
    return f"{OUTPUTS_PREFIX}/{_check_id(draft_id, 'draft id')}"


def step_command(
    script: str = DEFAULT_SCRIPT, config: str = DEFAULT_CONFIG, mount_path: str = STEP_MOUNT_PATH
) -> list[str]:
    """The default job command: ``uv run <mount>/<script> --config <mount>/<config>``.

    ``uv run`` reads the script's PEP 723 header and installs its dependencies first.
    """
    return ["uv", "run", f"{mount_path}/{script}", "--config", f"{mount_path}/{config}"]


def job_environment(repo_id: str, draft_id: str, revision: str) -> dict[str, str]:
    """Environment the job script reads to find its bundle and where to push outputs."""
    return {
        "TUNESTEP_DRAFT_ID": draft_id,
        "TUNESTEP_STEP_DIR": STEP_MOUNT_PATH,
        "TUNESTEP_BUNDLE_REPO": repo_id,
        "TUNESTEP_BUNDLE_REVISION": revision,
        "TUNESTEP_OUTPUT_REPO": repo_id,
        "TUNESTEP_OUTPUT_PATH": output_path(draft_id),
        # The job's own downloads (the resume checkpoint, the base model) must not hang for
        # ever on billed time either: huggingface_hub reads these at import.
        "HF_HUB_DOWNLOAD_TIMEOUT": str(JOB_HUB_TIMEOUT_S),
        "HF_HUB_ETAG_TIMEOUT": str(JOB_HUB_TIMEOUT_S),
        # `python -P`: the script's folder is not put on the import path (uv run starts
        # the interpreter, so the flag travels as the variable); the job script loads its
        # own modules by file (train_sft.py), nothing else from the bundle.
        "PYTHONSAFEPATH": "1",
    }


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise TunestepError(
            "hf_bad_argument", f"{what} must be 1-128 characters [A-Za-z0-9._-], no '..'"
        )
    return value


def _check_repo_id(repo_id: str) -> str:
    problem = repo_id_problem(repo_id)
    if problem:
        raise TunestepError("hf_bad_argument", problem)
    return repo_id


def _check_relative(path: str, what: str, code: str = "hf_bad_argument") -> PurePosixPath:
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


def _api_token(api: HfApi) -> str | None:
    return api.token if isinstance(api.token, str) else None


# --------------------------------------------------------------------------- bundle


# A bundle file larger than this is sent from its path (the client streams it) instead of
# from memory: a checkpoint that travels in the bundle is gigabytes. Callers pass such files
# as a private copy they verified (hf_submit spools a local start and checks its sha256).
BUNDLE_INLINE_MAX = 32 << 20


def _read_bundle(files: Mapping[str, Path | bytes]) -> dict[str, bytes | str]:
    if not files:
        raise TunestepError("hf_bad_argument", "a step bundle needs at least one file")
    contents: dict[str, bytes | str] = {}
    for name, source in files.items():
        _check_relative(name, "bundle file name")
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


def ensure_repo(api: HfApi, repo_id: str, repo_type: str, *, private: bool = True) -> None:
    """Create the repo (private unless ``private`` is False), or refuse an existing public
    one while the plan wants private repos (``hub_repo_public``).

    ``create_repo(exist_ok=True)`` ignores ``private`` for an existing repo, so an
    existing public repo would otherwise receive the training data or the model.
    """
    _check_repo_id(repo_id)
    token = _api_token(api)
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
    _check_repo_id(repo_id)
    prefix = step_path(draft_id)
    contents = _read_bundle(files)  # read once: the commit carries what was read here
    _ensure_private_dataset(api, repo_id, private)
    operations = [
        CommitOperationAdd(path_in_repo=f"{prefix}/{name}", path_or_fileobj=data)
        for name, data in sorted(contents.items())
    ]
    with hub_call(f"commit step bundle to {repo_id}", _api_token(api)):
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"tunestep: step bundle {draft_id}",
            repo_type="dataset",
        )
    logger.info("committed %d bundle files for %s to %s", len(operations), draft_id, repo_id)
    return info.oid


# --------------------------------------------------------------------------- jobs


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise TunestepError("hf_bad_argument", "job labels must be strings")
        if not (_LABEL_RE.fullmatch(key) and _LABEL_RE.fullmatch(value)):
            raise TunestepError(
                "hf_bad_argument",
                f"job label {key!r}: keys and values must be 1-100 characters [A-Za-z0-9_-]",
            )
    return dict(labels)


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:100]


def _job_secrets(secret_names: list[str], token: str | None) -> dict[str, str]:
    unknown = sorted(set(secret_names) - SUPPORTED_SECRETS)
    if unknown:
        raise TunestepError(
            "hf_secret_unsupported",
            f"tunestep can only supply the secret(s) {sorted(SUPPORTED_SECRETS)}; not {unknown}",
        )
    if secret_names and not token:
        raise TunestepError(
            "hf_token_missing", "the job needs HF_TOKEN but no Hugging Face token was found"
        )
    return {name: token for name in secret_names if token}


def _check_submit_args(
    repo_id: str, revision: str, flavor: str, timeout_seconds: int, command: list[str]
) -> None:
    _check_repo_id(repo_id)
    if not isinstance(revision, str) or not _COMMIT_RE.fullmatch(revision):
        raise TunestepError(
            "hf_revision_unpinned",
            "the bundle revision must be a 40-hex commit sha, so the job runs the approved bytes",
        )
    if not isinstance(flavor, str) or not _FLAVOR_RE.fullmatch(flavor):
        raise TunestepError("hf_bad_argument", f"unknown hardware flavor {flavor!r}")
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
        raise TunestepError("hf_bad_argument", "timeout must be a whole number of seconds")
    if not 0 < timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise TunestepError("hf_bad_argument", "timeout must be between 1 second and 7 days")
    if not command or not all(isinstance(part, str) and part for part in command):
        raise TunestepError("hf_bad_argument", "the job command must be a list of strings")


def _job_env(
    repo_id: str, draft_id: str, revision: str, extra: Mapping[str, str] | None, token: str | None
) -> dict[str, str]:
    env = dict(extra or {})
    for name, value in env.items():
        if not _ENV_NAME_RE.fullmatch(name) or not isinstance(value, str):
            raise TunestepError("hf_bad_argument", f"bad environment variable {name!r}")
        # Environment is stored and shown in clear by the Hub; secrets are not.
        if token and token in value:
            raise TunestepError(
                "hf_secret_in_env", f"environment variable {name} would expose the token"
            )
    env.update(job_environment(repo_id, draft_id, revision))
    return env


def submit_hf_job(
    api: HfApi,
    *,
    repo_id: str,
    revision: str,
    draft_id: str,
    flavor: str,
    timeout_seconds: int,
    labels: Mapping[str, str] | None = None,
    image: str = DEFAULT_UV_IMAGE,
    command: list[str] | None = None,
    secret_names: list[str] | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    namespace: str | None = None,
) -> HfJobRef:
    """Start an HF Job that runs the bundle committed at ``revision`` (a commit sha).

    Mounts ``steps/<draft_id>`` of the dataset repo at that commit, read-only, at
    ``/tunestep/step`` and runs ``command`` (default ``step_command()``) in ``image``
    on ``flavor`` for at most ``timeout_seconds``. Each name in ``secret_names`` (only
    ``HF_TOKEN``) is sent as a job secret with the value ``token``; the token is sent
    nowhere else and is not in the result. Labels get ``tunestep-draft=<draft_id>``.
    ``namespace`` defaults to the token's user.
    """
    _check_id(draft_id, "draft id")
    command = list(command) if command is not None else step_command()
    _check_submit_args(repo_id, revision, flavor, timeout_seconds, command)
    if constants.HF_DEBUG:
        # With HF_DEBUG set, huggingface_hub logs each request body as a curl command, and
        # it redacts OAuth fields but not job secrets: the token would land in the log.
        raise TunestepError(
            "hf_debug_enabled",
            "HF_DEBUG is set: huggingface_hub would log the job's secret values; unset it",
        )
    job_labels = _check_labels({**(labels or {}), "tunestep-draft": _label_value(draft_id)})
    secrets = _job_secrets(list(secret_names or []), token)
    volume = Volume(
        type="dataset",
        source=repo_id,
        mount_path=STEP_MOUNT_PATH,
        revision=revision,
        read_only=True,
        path=step_path(draft_id),
    )
    with hub_call(f"submit job for {draft_id}", token, _api_token(api)):
        job = api.run_job(
            image=image,
            command=command,
            env=_job_env(repo_id, draft_id, revision, env, token),
            secrets=secrets or None,
            flavor=flavor,
            timeout=timeout_seconds,
            name=f"tunestep-{_label_value(draft_id)}"[:100],
            labels=job_labels,
            volumes=[volume],
            namespace=namespace,
        )
    logger.info("submitted HF job %s for draft %s on %s", job.id, draft_id, flavor)
    return HfJobRef(**_job_fields(job), repo_id=repo_id, revision=revision)


def _stage(stage: Any) -> str:
    return getattr(stage, "value", stage)


def _job_fields(job: Any) -> dict[str, Any]:
    """The fields every _HfJob takes from the client's JobInfo, read one way for both
    (an enum's value, not its repr, for the stage and the flavor)."""
    return {"job_id": job.id, "namespace": job.owner.name, "url": job.url,
            "stage": str(_stage(job.status.stage)), "message": job.status.message,
            "flavor": str(_stage(job.flavor)) if job.flavor else None,
            "created_at": job.created_at}


def _hub_labels(value: Any) -> dict[str, str]:
    """A job's labels as the Hub answered them: an object of strings, or a named error
    (a list, say, is a malformed answer, never a traceback)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TunestepError("hub_bad_response", "the Hub answered a job's labels as "
                            f"{type(value).__name__}, not an object of strings")
    return dict(value)


def _hub_command(job: Any) -> list[str] | None:
    command = getattr(job, "command", None)
    arguments = getattr(job, "arguments", None) or []
    if command is None:
        return None
    if not isinstance(command, list) or not isinstance(arguments, list) or not all(
            isinstance(a, str) for a in [*command, *arguments]):
        raise TunestepError("hub_bad_response", "the Hub answered a job's command as "
                            "something other than a list of strings")
    return [*command, *arguments]


def _status_of(job: Any) -> HfJobStatus:
    try:
        stage = str(_stage(job.status.stage))
        durations = getattr(job, "durations", None)
        volume = next((v for v in getattr(job, "volumes", None) or []
                       if getattr(v, "revision", None)), None)
        return HfJobStatus(
            **_job_fields(job),
            terminal=stage in TERMINAL_STAGES,
            started_at=getattr(job, "started_at", None),
            finished_at=getattr(job, "finished_at", None),
            running_seconds=durations.running_secs if durations else None,
            labels=_hub_labels(getattr(job, "labels", None)),
            revision=volume.revision if volume is not None else None,
            image=getattr(job, "docker_image", None),
            command=_hub_command(job),
            volume=f"{volume.source}:{volume.path or ''}" if volume is not None else None,
        )
    except TunestepError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # pydantic's too
        raise TunestepError("hub_bad_response", "the Hub's answer about a job is malformed "
                            f"({type(exc).__name__})") from None


def hf_job_status(api: HfApi, job_id: str, *, namespace: str | None = None) -> HfJobStatus:
    """The job's current stage (SCHEDULING, RUNNING, COMPLETED, CANCELED, ERROR, DELETED)."""
    _check_id(job_id, "job id")
    with hub_call(f"inspect job {job_id}", _api_token(api), not_found="hf_job_not_found"):
        job = api.inspect_job(job_id=job_id, namespace=namespace)
    return _status_of(job)


def hub_whoami(api: HfApi) -> str:
    """The token's user name: the namespace jobs and repos default to."""
    with hub_call("ask the Hub who the token belongs to", _api_token(api)):
        name = api.whoami()["name"]
    if not isinstance(name, str) or not name:
        raise TunestepError("hub_bad_response", "the Hub's whoami answer names no user")
    return name


def find_hf_jobs(api: HfApi, labels: Mapping[str, str], *, namespace: str | None = None
                 ) -> list[HfJobStatus]:
    """Jobs on the Hub carrying every one of ``labels`` (newest first).

    ``namespace`` should be given: ``HfApi.list_jobs`` without one asks the module-level
    ``whoami``, which talks to the endpoint huggingface_hub read at import, not this API's.
    """
    wanted = _check_labels(dict(labels))
    token = _api_token(api)
    with hub_call("list jobs by label", token):
        namespace = namespace or api.whoami()["name"]
        jobs = [_status_of(job) for job in api.list_jobs(
            labels=wanted, namespace=namespace, timeout=hub_timeout())]
    # Filter again here: a Hub that ignored the filter must not make us adopt a stranger.
    return [job for job in jobs if all(job.labels.get(k) == v for k, v in wanted.items())]


def hf_job_logs(
    api: HfApi, job_id: str, tail: int | None = 200, *, namespace: str | None = None
) -> HfJobLogs:
    """The job's log lines available now, without waiting; the last ``tail`` if given.

    Any Hub token that shows up in a line (a script that printed one) is masked.
    """
    _check_id(job_id, "job id")
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise TunestepError("hf_bad_argument", "tail must be a positive number of lines")
    token = _api_token(api)
    with hub_call(f"fetch logs of job {job_id}", token, not_found="hf_job_not_found"):
        lines = [
            scrub(line, token)
            for line in api.fetch_job_logs(
                job_id=job_id, namespace=namespace, follow=False, tail=tail
            )
        ]
    return HfJobLogs(job_id=job_id, lines=lines, tail=tail)


def hf_job_cancel(api: HfApi, job_id: str, *, namespace: str | None = None) -> HfJobStatus:
    """Ask the Hub to cancel the job, then report its stage as the Hub now sees it."""
    _check_id(job_id, "job id")
    with hub_call(f"cancel job {job_id}", _api_token(api), not_found="hf_job_not_found"):
        api.cancel_job(job_id=job_id, namespace=namespace)
    logger.info("cancel requested for HF job %s", job_id)
    return hf_job_status(api, job_id, namespace=namespace)


# --------------------------------------------------------------------------- outputs


def _output_entries(
    api: HfApi, repo_id: str, prefix: str, revision: str
) -> list[tuple[str, str, int, str | None, str | None]]:
    """(path in repo, name under prefix, size, git blob id, LFS sha256) under ``prefix``."""
    from huggingface_hub.hf_api import RepoFile

    with hub_call(f"list outputs in {repo_id}", _api_token(api)):
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
        _check_relative(name, "output file name", "hf_output_unsafe_name")
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
    _check_repo_id(repo_id)
    prefix = str(_check_relative(prefix.strip("/"), "outputs prefix"))
    dest_dir = Path(dest_dir)
    token = _api_token(api)
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


# --------------------------------------------------------------------------- prices


def hardware_prices(api: HfApi) -> dict[str, float] | None:
    """USD per hour for each Jobs hardware flavor, from the Hub; None when unreachable.

    Prices are advisory (for cost estimates), so any failure gives None and the caller
    falls back to its own table.
    """
    try:
        with hub_call("list jobs hardware", _api_token(api)):
            hardware = api.list_jobs_hardware()
    except TunestepError as exc:
        logger.info("hardware prices unavailable: %s", exc.message)
        return None
    prices: dict[str, float] = {}
    for item in hardware:
        factor = _UNIT_PER_HOUR.get(str(item.unit_label).lower())
        if factor is None:
            continue  # an unknown billing unit: better no price than a wrong one
        # The Hub bills per minute in whole micro-dollars: 4 decimals undo that rounding.
        prices[item.name] = round(item.unit_cost_micro_usd * factor / 1_000_000, 4)
    return prices
