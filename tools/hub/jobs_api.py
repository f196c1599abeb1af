"""Hugging Face Jobs backend: run an approved step's exact bytes on HF infrastructure.

Owns the job calls: submit, status, find by label, logs, cancel (and ``hub_api``, the
client they all take). Elsewhere in ``hub``: the bundle's upload (``bundle``), a job's
answer read into models (``job_info``), the outputs' fetch (``job_outputs``), the checks of
names and ``ensure_repo`` (``repos``), hardware prices (``prices``).

Pure functions over an ``HfApi``; the caller builds it with ``hub_api(token)`` at submit
time (token from ``huggingface_hub.get_token()``), and nothing here stores or logs the
token. Every Hub failure becomes a ``TunestepError`` whose message has the token removed.

How a step reaches the job, and why (checked against huggingface_hub 2.4 source):

1. ``bundle.upload_step_bundle`` commits the whole bundle (job script, sibling modules,
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
repo, with the ``HF_TOKEN`` secret; ``job_outputs.fetch_job_outputs`` downloads them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from huggingface_hub import HfApi, Volume, constants

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub.bundle import output_path, step_path
from tunestep.tools.hub.errors import configure_client, hub_call, hub_timeout, scrub
from tunestep.tools.hub.job_info import HfJobLogs, HfJobRef, HfJobStatus, job_fields, status_of
from tunestep.tools.hub.repos import api_token, check_id, check_repo_id

logger = logging.getLogger(__name__)

DEFAULT_UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
STEP_MOUNT_PATH = "/tunestep/step"
DEFAULT_SCRIPT = "train_sft.py"
DEFAULT_CONFIG = "job.json"
# Secrets whose value tunestep knows how to supply: the Hub token, read at submit time.
SUPPORTED_SECRETS = frozenset({"HF_TOKEN"})
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
JOB_HUB_TIMEOUT_S = 60

_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")
_FLAVOR_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


# --------------------------------------------------------------------------- helpers


def hub_api(token: str | None = None, *, endpoint: str | None = None) -> HfApi:
    """An ``HfApi`` for tunestep's calls, endpoint from ``HF_ENDPOINT`` read now.

    huggingface_hub reads ``HF_ENDPOINT`` once at import; reading it here and passing it
    explicitly keeps every request pointed where the environment says at call time.
    """
    base = endpoint or os.environ.get("HF_ENDPOINT", "").strip() or constants.ENDPOINT
    configure_client()  # every request through it has a client-side timeout
    return HfApi(endpoint=base.rstrip("/"), token=token, library_name="tunestep")


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
    check_repo_id(repo_id)
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
    check_id(draft_id, "draft id")
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
    with hub_call(f"submit job for {draft_id}", token, api_token(api)):
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
    return HfJobRef(**job_fields(job), repo_id=repo_id, revision=revision)


def hf_job_status(api: HfApi, job_id: str, *, namespace: str | None = None) -> HfJobStatus:
    """The job's current stage (SCHEDULING, RUNNING, COMPLETED, CANCELED, ERROR, DELETED)."""
    check_id(job_id, "job id")
    with hub_call(f"inspect job {job_id}", api_token(api), not_found="hf_job_not_found"):
        job = api.inspect_job(job_id=job_id, namespace=namespace)
    return status_of(job)


def hub_whoami(api: HfApi) -> str:
    """The token's user name: the namespace jobs and repos default to."""
    with hub_call("ask the Hub who the token belongs to", api_token(api)):
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
    token = api_token(api)
    with hub_call("list jobs by label", token):
        namespace = namespace or api.whoami()["name"]
        jobs = [status_of(job) for job in api.list_jobs(
            labels=wanted, namespace=namespace, timeout=hub_timeout())]
    # Filter again here: a Hub that ignored the filter must not make us adopt a stranger.
    return [job for job in jobs if all(job.labels.get(k) == v for k, v in wanted.items())]


def hf_job_logs(
    api: HfApi, job_id: str, tail: int | None = 200, *, namespace: str | None = None
) -> HfJobLogs:
    """The job's log lines available now, without waiting; the last ``tail`` if given.

    Any Hub token that shows up in a line (a script that printed one) is masked.
    """
    check_id(job_id, "job id")
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise TunestepError("hf_bad_argument", "tail must be a positive number of lines")
    token = api_token(api)
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
    check_id(job_id, "job id")
    with hub_call(f"cancel job {job_id}", api_token(api), not_found="hf_job_not_found"):
        api.cancel_job(job_id=job_id, namespace=namespace)
    logger.info("cancel requested for HF job %s", job_id)
    return hf_job_status(api, job_id, namespace=namespace)
