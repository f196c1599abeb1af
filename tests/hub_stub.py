"""A loopback stand-in for the Hugging Face Hub, strict where the real one is strict.

The real ``huggingface_hub`` client builds the real requests; this server answers the
endpoints tunestep's flows use, the way the Hub answers them (checked against the
huggingface_hub 2.4 client: ``hf_api.py``, ``_commit_api.py``, ``utils/_http.py``), and
records every request for assertions:

=========  ===========================================================  ==================
method     path                                                         used by
=========  ===========================================================  ==================
GET        /api/whoami-v2                                               whoami
POST       /api/repos/create                                            create_repo
DELETE     /api/repos/delete                                            delete_repo
PUT        /api/{type}s/{id}/settings                                   update_repo_settings
GET        /api/{type}s/{id}[/revision/{rev}]                           repo_info
GET        /api/{type}s/{id}/refs                                       list_repo_refs
GET        /api/{type}s/{id}/commits/{rev}                              list_repo_commits
POST       /api/{type}s/{id}/preupload/{rev}                            create_commit
POST       /api/{type}s/{id}/commit/{rev}         (NDJSON body)         create_commit
GET        /api/{type}s/{id}/tree/{rev}[/{path}]?recursive=             list_repo_tree
POST       /api/{type}s/{id}/paths-info/{rev}     (form body)           get_paths_info
HEAD/GET   /[{type}s/]{id}/resolve/{rev}/{path}                         hf_hub_download,
                                                                        snapshot_download
POST/GET   /api/jobs/{namespace}                  (?label=k=v&stage=)   run_job, list_jobs
GET        /api/jobs/{namespace}/{job_id}                               inspect_job
GET        /api/jobs/{namespace}/{job_id}/logs    (server-sent events)  fetch_job_logs
POST       /api/jobs/{namespace}/{job_id}/cancel                        cancel_job
GET        /api/jobs/hardware                                           list_jobs_hardware
=========  ===========================================================  ==================

What it holds like the Hub does:

- **Repos keep every commit.** A new repo starts with the Hub's initial commit (a
  ``.gitattributes``); each commit has a sha, a parent and a full tree; ``main`` (and any
  other branch) points at one. Reads take a branch, a full sha or a unique short sha; an
  unknown revision is 404 ``RevisionNotFound``, a missing file 404 ``EntryNotFound``, a
  missing repo 404 ``RepoNotFound`` (401 for an anonymous caller), all with the
  ``X-Error-Code`` header the client maps to its named errors.
- **Tokens matter.** No ``Authorization`` header: public reads only; writes, jobs and
  ``whoami`` are 401. A token that is not valid (``FakeHub.tokens`` when set, else any
  ``hf_`` + 20 or more alphanumerics) is 401 ``Invalid credentials in Authorization
  header``. Private repos of another namespace read as not found; writes into another
  namespace are 403.
- **Refusals**: 409 on creating an existing repo (with its url, as the Hub answers),
  400 on an invalid repo name, an unknown hardware flavor or a malformed job spec,
  412 when a commit's ``parentCommit`` is not the branch head.
- **Jobs** go SCHEDULING, and with ``FakeHub.runner`` set (see ``JobRunner``) really run:
  the dataset/model volumes are materialised at their pinned revision, the ``uv run`` /
  ``accelerate launch`` launcher is swapped for this interpreter, and the job's pushes
  land as real commits here. Without a runner a job stays SCHEDULING until a test moves
  it (``set_job_stage``), as on a Hub with no free hardware.
- **Faults** on demand: ``FakeHub.inject`` (500/503, 429 with ``Retry-After``, malformed
  JSON, a hang, a dropped connection, and each of those *after* the request took effect).

Small files only: preupload always answers ``uploadMode: regular``, so commits carry the
file bytes base64-encoded inline and no LFS/xet transfer is ever needed (see the module's
``DIFFERENCES`` for what else is not like the real service).

Use the ``fake_hub`` fixture (import it into a conftest): it starts the server on
127.0.0.1 port 0, points ``HF_ENDPOINT`` at it and patches the values huggingface_hub
computed from it at import (``constants.ENDPOINT`` and the ``resolve`` URL template that
downloads use), hides any real token, and yields the ``FakeHub``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "tester"

DIFFERENCES = """\
What this stand-in does not do like the real Hub:
- no LFS or xet storage: every file is a regular git blob sent inline (the real Hub asks
  for LFS/xet for large or binary files, and the client then uploads them elsewhere);
  no `.gitattributes`-driven behaviour beyond the initial commit's file;
- jobs run as a local subprocess with this interpreter, not in the Docker image: no GPU,
  no image pull, no `uv` dependency install or lock check (billed minutes on the real
  service); the volume is a copied folder at another path (`$TUNESTEP_STEP_DIR` says
  where), not a read-only mount at `mountPath`; `/tmp` and `$HOME` are scratch folders;
- no billing, credits (402), quotas, scheduling delay or hardware shortage; rate limits
  and faults only when a test sets `rate_limit` or injects them;
- every valid token has write access (no read-only or fine-grained tokens), orgs are
  `FakeHub.orgs`; no gated repos, tags, PRs or branch creation;
- listings are paged only when `page_size` is set; the job answer echoes secret values
  (the worst case for a client), which the real Hub does not;
- log lines carry the time they were captured, not the container's clock.
"""

# Every flavor of huggingface_hub 2.4's JobHardware, shaped like the live
# /api/jobs/hardware answer (cost per minute in micro-USD, as the Hub reports it). Hourly
# prices: the Jobs pricing page for CPU, T4, L4, A10G, L40S, A100 and H200 single-GPU
# flavors (DESIGN §4); multi-GPU and RTX PRO 6000 prices are this stand-in's own numbers
# (n x the single-GPU price): the point is that the client reads whatever the Hub says.
_HW: list[tuple[str, str, float, str | None, int, str]] = [
    # name, pretty name, USD/hour, GPU model, GPU count, VRAM per GPU
    ("cpu-basic", "CPU Basic", 0.01, None, 0, ""),
    ("cpu-upgrade", "CPU Upgrade", 0.03, None, 0, ""),
    ("cpu-performance", "CPU Performance", 1.90, None, 0, ""),
    ("cpu-xl", "CPU XL", 1.00, None, 0, ""),
    ("t4-small", "Nvidia T4 - small", 0.40, "T4", 1, "16 GB"),
    ("t4-medium", "Nvidia T4 - medium", 0.60, "T4", 1, "16 GB"),
    ("l4x1", "1x Nvidia L4", 0.80, "L4", 1, "24 GB"),
    ("l4x4", "4x Nvidia L4", 3.20, "L4", 4, "24 GB"),
    ("l40sx1", "1x Nvidia L40S", 1.80, "L40S", 1, "48 GB"),
    ("l40sx4", "4x Nvidia L40S", 7.20, "L40S", 4, "48 GB"),
    ("l40sx8", "8x Nvidia L40S", 14.40, "L40S", 8, "48 GB"),
    ("a10g-small", "Nvidia A10G - small", 1.00, "A10G", 1, "24 GB"),
    ("a10g-large", "Nvidia A10G - large", 1.50, "A10G", 1, "24 GB"),
    ("a10g-largex2", "2x Nvidia A10G - large", 3.00, "A10G", 2, "24 GB"),
    ("a10g-largex4", "4x Nvidia A10G - large", 6.00, "A10G", 4, "24 GB"),
    ("a100-large", "Nvidia A100 - large", 2.50, "A100", 1, "80 GB"),
    ("a100x4", "4x Nvidia A100", 10.00, "A100", 4, "80 GB"),
    ("a100x8", "8x Nvidia A100", 20.00, "A100", 8, "80 GB"),
    ("h200", "Nvidia H200", 5.00, "H200", 1, "141 GB"),
    ("h200x2", "2x Nvidia H200", 10.00, "H200", 2, "141 GB"),
    ("h200x4", "4x Nvidia H200", 20.00, "H200", 4, "141 GB"),
    ("h200x8", "8x Nvidia H200", 40.00, "H200", 8, "141 GB"),
    ("rtx-pro-6000", "Nvidia RTX PRO 6000", 2.70, "RTX PRO 6000", 1, "96 GB"),
    ("rtx-pro-6000x2", "2x Nvidia RTX PRO 6000", 5.40, "RTX PRO 6000", 2, "96 GB"),
    ("rtx-pro-6000x4", "4x Nvidia RTX PRO 6000", 10.80, "RTX PRO 6000", 4, "96 GB"),
    ("rtx-pro-6000x8", "8x Nvidia RTX PRO 6000", 21.60, "RTX PRO 6000", 8, "96 GB"),
]


def _hardware_entry(name: str, pretty: str, usd_h: float, gpu: str | None, n: int,
                    vram: str) -> dict[str, Any]:
    micro = round(usd_h * 1_000_000 / 60)
    return {
        "name": name,
        "prettyName": pretty,
        "cpu": "2 vCPU" if gpu is None else f"{8 * max(n, 1)} vCPU",
        "ram": "16 GB" if gpu is None else f"{30 * max(n, 1)} GB",
        "ephemeralStorage": "50 GB",
        "accelerator": None if gpu is None else {
            "type": "gpu", "model": gpu, "quantity": str(n), "vram": vram,
            "manufacturer": "Nvidia"},
        "unitCostMicroUSD": micro,
        "unitCostUSD": micro / 1_000_000,
        "unitLabel": "minute",
    }


HARDWARE = [_hardware_entry(*row) for row in _HW]
FLAVORS = frozenset(row[0] for row in _HW)
TERMINAL_STAGES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
GITATTRIBUTES = (b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                 b"*.bin filter=lfs diff=lfs merge=lfs -text\n")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
FAULTS = ("500", "503", "429", "bad_json", "hang", "drop")
# accelerate launch flags that take no value
_ACCELERATE_SWITCHES = frozenset({"--multi_gpu", "--cpu", "--use_deepspeed", "--use_fsdp",
                                  "--use_megatron_lm", "--no_python", "-m", "--module",
                                  "--debug", "--quiet", "-q"})


@dataclass
class RecordedRequest:
    """One request as the stub saw it; ``json`` is the parsed body where it was JSON."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any = None
    ndjson: list[Any] | None = None
    form: dict[str, list[str]] | None = None


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    tree: dict[str, bytes]
    at: str


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    log: dict[str, Commit] = field(default_factory=dict)  # sha -> commit
    commits: list[str] = field(default_factory=list)  # every sha, oldest first
    created_at: str = ""

    def __post_init__(self) -> None:
        self.created_at = self.created_at or _now()
        if not self.commits:  # the Hub's own first commit, as create_repo makes it
            self.commit({".gitattributes": GITATTRIBUTES}, message="initial commit")

    @property
    def head(self) -> str:
        return self.branches["main"]

    @property
    def files(self) -> dict[str, bytes]:
        """The tree at ``main``."""
        return self.log[self.head].tree

    @property
    def snapshots(self) -> dict[str, dict[str, bytes]]:
        return {sha: c.tree for sha, c in self.log.items()}

    def resolve(self, revision: str) -> str | None:
        """Branch name, full sha or unique short sha (7+ hex) -> the commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.log:
            return revision
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            found = [sha for sha in self.log if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def tree(self, revision: str) -> dict[str, bytes]:
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(revision)
        return self.log[sha].tree

    def commit(self, changes: dict[str, bytes], deletes: tuple[str, ...] = (), *,
               message: str = "", branch: str = "main") -> str:
        parent = self.branches.get(branch)
        tree = dict(self.log[parent].tree) if parent else {}
        for path in deletes:
            prefix = path.rstrip("/") + "/"
            for name in [n for n in tree if n == path or n.startswith(prefix)]:
                del tree[name]
        tree.update(changes)
        sha = hashlib.sha1(
            f"{parent}\0{message}\0{sorted(changes)}".encode() + uuid.uuid4().bytes
        ).hexdigest()
        self.log[sha] = Commit(sha=sha, parent=parent, message=message, tree=tree, at=_now())
        self.commits.append(sha)
        self.branches[branch] = sha
        return sha

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        out, sha = [], self.resolve(revision)
        while sha:
            out.append(self.log[sha])
            sha = self.log[sha].parent
        return out


@dataclass
class Fault:
    """One injected fault: ``kind`` in FAULTS, on requests whose method and path match.

    ``path`` is a glob over the unquoted request path (``/api/jobs/*``). ``after_effect``:
    the request is carried out first (a job created, a commit made), then the answer is
    replaced by the fault, as when a Hub's answer is lost on the way back. ``times``: how
    many matching requests get it (None: all), after the first ``skip`` matching ones
    went through untouched. ``retry_after``: the 429's header value.
    """

    method: str
    path: str
    kind: str
    times: int | None = 1
    after_effect: bool = False
    retry_after: int = 30
    hang_seconds: float = 30.0
    skip: int = 0
    hits: int = 0
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.method == "*" or self.method == method)
                and fnmatch.fnmatchcase(path, self.path)
                and (self.times is None or self.hits < self.times))


class FakeHub:
    """State and request log of the stand-in Hub. Safe to read from the test thread."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.repos: dict[str, FakeRepo] = {}  # key: "<type>s/<repo_id>"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_logs: dict[str, list[str]] = {}
        self.hardware: list[dict[str, Any]] | None = HARDWARE
        # Valid tokens; None accepts any token shaped like a Hub token.
        self.tokens: set[str] | None = None
        self.orgs: list[str] = []
        # (method, path) -> (status, message): answer that request with an error instead.
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}
        self.faults: list[Fault] = []
        self.runner: JobRunner | None = None
        # Listings (tree, jobs) in pages of this many with a Link: rel="next" header, as
        # the Hub pages them (it uses 1,000 for trees); None: one page.
        self.page_size: int | None = None
        # (calls, window seconds): the account's API rate limit; beyond it 429 with
        # Retry-After and RateLimit headers. None: unlimited.
        self.rate_limit: tuple[int, float] | None = None
        self._calls: list[float] = []
        self.lock = threading.RLock()
        self.closing = threading.Event()

    # -- helpers for tests -------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "dataset") -> FakeRepo:
        return self.repos[f"{repo_type}s/{repo_id}"]

    def add_repo(self, repo_id: str, repo_type: str = "dataset", *, private: bool) -> FakeRepo:
        repo = FakeRepo(repo_id=repo_id, repo_type=repo_type, private=private)
        with self.lock:
            self.repos[f"{repo_type}s/{repo_id}"] = repo
        return repo

    def push_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset",
                   message: str = "push") -> str:
        """Commit files directly, as a job pushing its outputs back would."""
        with self.lock:
            return self.repo(repo_id, repo_type).commit(files, message=message)

    def set_job_stage(self, job_id: str, stage: str, message: str | None = None) -> None:
        with self.lock:
            job = self.jobs[job_id]
            job["status"] = {"stage": stage, "message": message}
            if stage == "RUNNING" and not job.get("startedAt"):
                job["startedAt"] = _now()
            if stage in TERMINAL_STAGES and not job.get("finishedAt"):
                job["finishedAt"] = _now()

    def inject(self, method: str, path: str, kind: str, **options: Any) -> Fault:
        """Make matching requests meet a fault (see ``Fault``); returns it (``.hits``)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        fault = Fault(method=method, path=path, kind=kind, **options)
        with self.lock:
            self.faults.append(fault)
        return fault

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def jobs_labelled(self, **labels: str) -> list[dict[str, Any]]:
        return [j for j in self.jobs.values()
                if all((j.get("labels") or {}).get(k) == v for k, v in labels.items())]

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """Block until the job is terminal (a runner is running it); returns the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.jobs[job_id]["status"]["stage"] in TERMINAL_STAGES:
                return self.jobs[job_id]
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {self.jobs[job_id]['status']}")

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.seen += 1
                    if fault.seen <= fault.skip:
                        continue
                    fault.hits += 1
                    return fault
        return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Dropped(Exception):
    """Raised inside a handler to close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection and the body ends when the connection closes,
    # which is exactly how a finished server-sent-event stream must look to the client.
    protocol_version = "HTTP/1.0"
    hub: FakeHub  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    # -- plumbing ----------------------------------------------------------------------

    def _record(self) -> RecordedRequest:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = RecordedRequest(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        # Path segments unquoted one by one, so a revision like refs%2Fpr%2F1 stays one.
        self._parts = [unquote(p) for p in split.path.strip("/").split("/")]
        ctype = rec.headers.get("content-type", "")
        if body and "ndjson" in ctype:
            with contextlib.suppress(ValueError):
                rec.ndjson = [json.loads(line) for line in body.splitlines() if line.strip()]
        elif body and "x-www-form-urlencoded" in ctype:
            rec.form = parse_qs(body.decode())
        elif body:
            with contextlib.suppress(ValueError):
                rec.json = json.loads(body)
        with self.hub.lock:
            self.hub.requests.append(rec)
        return rec

    def _send(
        self,
        status: int,
        payload: Any = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        if self._swallow:  # the effect happened; the fault answers instead
            return
        data = body if body is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        """An error the way the Hub sends one: X-Error-Code / X-Error-Message and a body."""
        all_headers = {"X-Error-Message": message, **(headers or {})}
        if code:
            all_headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=all_headers)

    def _handle(self) -> None:
        self._dispatch(self._record())

    # http.server calls do_<METHOD>; every method is recorded and routed the same way.
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def _limited(self) -> float | None:
        """Seconds until the window frees a call, when this one is over the limit."""
        if self.hub.rate_limit is None:
            return None
        calls, window = self.hub.rate_limit
        now = time.monotonic()
        with self.hub.lock:
            self.hub._calls = [t for t in self.hub._calls if now - t < window]
            if len(self.hub._calls) >= calls:
                return window - (now - self.hub._calls[0])
            self.hub._calls.append(now)
        return None

    def _dispatch(self, rec: RecordedRequest) -> None:
        self._swallow = False
        wait = self._limited()
        if wait is not None:
            after = max(1, int(wait + 0.999))
            calls, window = self.hub.rate_limit or (0, 0)
            self._error(429, "You have exceeded our hourly quotas for action: api",
                        headers={"Retry-After": str(after), "RateLimit": f'"api";r=0;t={after}',
                                 "RateLimit-Policy": f'"fixed window";"api";q={calls};'
                                                     f'w={int(window)}'})
            return
        fault = self.hub._take_fault(rec.method, rec.path)
        try:
            if fault is not None and fault.after_effect:
                self._swallow = True
                self._guarded_route(rec)
                self._swallow = False
            if fault is not None:
                self._answer_fault(fault)
            else:
                self._guarded_route(rec)
        except _Dropped:
            self._drop()

    def _guarded_route(self, rec: RecordedRequest) -> None:
        try:
            self._route(rec)
        except _Dropped:
            raise
        except Exception as exc:  # a stub bug should fail the test, not hang it
            self._swallow = False
            self._error(500, f"stub error: {type(exc).__name__}: {exc}")

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _answer_fault(self, fault: Fault) -> None:
        if fault.kind in ("500", "503"):
            self._error(int(fault.kind), "Internal Error - We're working hard to fix this"
                        if fault.kind == "500" else "Service Unavailable")
        elif fault.kind == "429":
            self._error(429, "You have exceeded our hourly quotas for action: api",
                        headers={"Retry-After": str(fault.retry_after),
                                 "RateLimit": f'"api";r=0;t={fault.retry_after}',
                                 "RateLimit-Policy": '"fixed window";"api";q=1000;w=300'})
        elif fault.kind == "bad_json":
            self._send(200, body=b'{"id": "trunc', content_type="application/json")
        elif fault.kind == "hang":
            self.hub.closing.wait(fault.hang_seconds)
            raise _Dropped
        elif fault.kind == "drop":
            raise _Dropped

    # -- auth --------------------------------------------------------------------------

    def _caller(self, rec: RecordedRequest) -> str | bool | None:
        """The user name, None when anonymous, False (and answered 401) when invalid."""
        auth = rec.headers.get("authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        valid = (token in self.hub.tokens) if self.hub.tokens is not None \
            else bool(_TOKEN_RE.fullmatch(token))
        if not valid:
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return USER

    def _namespaces(self, user: str) -> set[str]:
        return {user, *self.hub.orgs}

    def _user(self, rec: RecordedRequest) -> str | None:
        """A signed-in caller, or None after answering 401."""
        user = self._caller(rec)
        if user is None:
            self._error(401, "Invalid username or password.")
            return None
        return user or None

    # -- routing -----------------------------------------------------------------------

    def _route(self, rec: RecordedRequest) -> None:
        parts = self._parts
        if (rec.method, rec.path) in self.hub.fail:
            self._error(*self.hub.fail[(rec.method, rec.path)])
        elif rec.path == "/api/whoami-v2":
            if (user := self._user(rec)) is not None:
                self._send(200, {"type": "user", "name": user, "id": "u1", "fullname": "Tester",
                                 "orgs": [{"name": o, "type": "org"} for o in self.hub.orgs],
                                 "auth": {"type": "access_token",
                                          "accessToken": {"displayName": "test",
                                                          "role": "write"}}})
        elif rec.path == "/api/repos/create" and rec.method == "POST":
            self._create_repo(rec)
        elif rec.path == "/api/repos/delete" and rec.method == "DELETE":
            self._delete_repo(rec)
        elif parts[:2] == ["api", "jobs"]:
            self._jobs(rec, parts[2:])
        elif len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets", "spaces"):
            self._repo_api(rec, parts[1], "/".join(parts[2:4]), parts[4:])
        elif len(parts) >= 5 and parts[0] in ("datasets", "spaces") and parts[3] == "resolve":
            self._resolve(rec, parts[0], "/".join(parts[1:3]), parts[4], "/".join(parts[5:]))
        elif len(parts) >= 4 and parts[2] == "resolve":
            self._resolve(rec, "models", "/".join(parts[0:2]), parts[3], "/".join(parts[4:]))
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    # -- repos -------------------------------------------------------------------------

    def _create_repo(self, rec: RecordedRequest) -> None:
        if (user := self._user(rec)) is None:
            return
        payload = rec.json or {}
        repo_type = payload.get("type") or "model"
        name, namespace = payload.get("name"), payload.get("organization") or user
        if repo_type not in ("model", "dataset", "space") or not isinstance(name, str) \
                or not _NAME_RE.fullmatch(name) or ".." in name or "--" in name \
                or name.endswith(".git"):
            self._error(400, "Invalid repo name: use letters, digits, '-', '_' and '.', "
                        "at most 96 characters, not starting with '-' or '.'")
            return
        if namespace not in self._namespaces(user):
            self._error(403, f"You don't have the rights to create a {repo_type} under the "
                        f"namespace \"{namespace}\"")
            return
        repo_id = f"{namespace}/{name}"
        key = f"{repo_type}s/{repo_id}"
        with self.hub.lock:
            exists = key in self.hub.repos
            if not exists:
                private = payload.get("visibility", "public") == "private"
                self.hub.repos[key] = FakeRepo(repo_id=repo_id, repo_type=repo_type,
                                               private=private)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if exists:
            # As the Hub does: 409, and the existing repo's url (create_repo(exist_ok) reads it).
            message = "You already created this repo"
            self._send(409, {"error": message, "url": url}, headers={"X-Error-Message": message})
            return
        self._send(200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _delete_repo(self, rec: RecordedRequest) -> None:
        if (user := self._user(rec)) is None:
            return
        payload = rec.json or {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        with self.hub.lock:
            repo = self.hub.repos.pop(f"{repo_type}s/{repo_id}", None)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
        else:
            self._send(200, {})

    def _readable(self, rec: RecordedRequest, kind: str, repo_id: str) -> FakeRepo | None:
        """The repo if the caller may read it, else None after answering as the Hub does."""
        caller = self._caller(rec)
        if caller is False:
            return None
        repo = self.hub.repos.get(f"{kind}/{repo_id}")
        visible = repo is not None and (
            not repo.private
            or (caller and repo_id.split("/")[0] in self._namespaces(caller)))
        if not visible:
            # Missing and private-to-someone-else look the same; anonymous callers get 401.
            self._error(401 if caller is None else 404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _writable(self, rec: RecordedRequest, repo: FakeRepo) -> bool:
        caller = self._caller(rec)
        if caller is None:
            self._error(401, "Invalid username or password.")
            return False
        if caller is False:
            return False
        if repo.repo_id.split("/")[0] not in self._namespaces(caller):
            self._error(403, "You don't have the rights to write to this repo")
            return False
        return True

    def _revision(self, repo: FakeRepo, revision: str) -> str | None:
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def _repo_api(self, rec: RecordedRequest, kind: str, repo_id: str, rest: list[str]) -> None:
        repo = self._readable(rec, kind, repo_id)
        if repo is None:
            return
        action = rest[0] if rest else ""
        if action == "" and rec.method == "GET":
            self._info(repo, "main")
        elif action == "revision" and len(rest) >= 2 and rec.method == "GET":
            self._info(repo, "/".join(rest[1:]))
        elif action == "settings" and rec.method == "PUT":
            if self._writable(rec, repo):
                settings = rec.json or {}
                if "visibility" in settings:
                    repo.private = settings["visibility"] != "public"
                elif "private" in settings:
                    repo.private = bool(settings["private"])
                self._send(200, {})
        elif action == "refs" and rec.method == "GET":
            self._send(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}",
                                           "targetCommit": sha}
                                          for b, sha in repo.branches.items()],
                             "converts": [], "tags": []})
        elif action == "commits" and len(rest) >= 2 and rec.method == "GET":
            if (sha := self._revision(repo, "/".join(rest[1:]))) is not None:
                self._send(200, [{"id": c.sha, "title": c.message, "message": c.message,
                                  "authors": [{"user": USER}], "date": c.at}
                                 for c in repo.history(sha)])
        elif action == "preupload" and len(rest) >= 2 and rec.method == "POST":
            self._preupload(rec, repo, "/".join(rest[1:]))
        elif action == "commit" and len(rest) >= 2 and rec.method == "POST":
            self._commit(rec, repo, "/".join(rest[1:]))
        elif action == "tree" and len(rest) >= 2 and rec.method == "GET":
            self._tree(repo, rest[1], "/".join(rest[2:]), rec)
        elif action == "paths-info" and len(rest) >= 2 and rec.method == "POST":
            self._paths_info(repo, rest[1], rec)
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    def _info(self, repo: FakeRepo, revision: str) -> None:
        if (sha := self._revision(repo, revision)) is None:
            return
        commit = repo.log[sha]
        self._send(200, {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": sha,
            "private": repo.private, "gated": False, "disabled": False,
            "createdAt": repo.created_at, "lastModified": commit.at,
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(commit.tree)],
        })

    def _preupload(self, rec: RecordedRequest, repo: FakeRepo, revision: str) -> None:
        if not self._writable(rec, repo):
            return
        if revision not in repo.branches:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return
        tree = repo.tree(revision)
        files = []
        for f in (rec.json or {}).get("files", []):
            # The Hub answers the remote blob id of a file that is already there, so the
            # client can drop unchanged files from the commit.
            current = tree.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": _git_blob_oid(current) if current is not None else None})
        self._send(200, {"files": files, "commitOid": repo.branches[revision]})

    def _commit(self, rec: RecordedRequest, repo: FakeRepo, revision: str) -> None:
        if not self._writable(rec, repo):
            return
        if revision not in repo.branches:
            if _SHA_RE.fullmatch(revision) and revision in repo.log:
                self._error(400, "Cannot commit to a commit sha; commit to a branch")
            else:
                self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return
        if rec.ndjson is None:
            self._error(400, "Invalid commit payload: expected NDJSON")
            return
        changes: dict[str, bytes] = {}
        deletes: list[str] = []
        header: dict[str, Any] = {}
        for item in rec.ndjson:
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path", "")
            if key != "header" and (not path or path.startswith("/")
                                    or ".." in path.split("/")):
                self._error(400, f"Invalid path in commit: {path!r}")
                return
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    self._error(400, "file content must be base64")
                    return
                changes[path] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deletes.append(path)
            else:  # lfsFile, copy: this stand-in stores regular blobs only
                self._error(400, f"stub supports regular file commits only, got {key}")
                return
        with self.hub.lock:
            parent = header.get("parentCommit")
            if parent and parent != repo.branches[revision]:
                self._error(412, "A commit has happened since. Please refresh and try again.")
                return
            sha = repo.commit(changes, tuple(deletes), message=header.get("summary", ""),
                              branch=revision)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{sha}"
        self._send(200, {"commitUrl": url, "commitOid": sha, "success": True})

    def _entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        base = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rel = path[len(base):].split("/")
            if len(rel) > 1:
                folders.update(base + "/".join(rel[: i + 1]) for i in range(len(rel) - 1))
                if not recursive:
                    continue
            entries.append(self._file_entry(path, files[path]))
        shown = folders if recursive else {f for f in folders if "/" not in f[len(base):]}
        entries += [self._folder_entry(f, files) for f in sorted(shown)]
        return entries

    def _send_page(self, rec: RecordedRequest, items: list[Any]) -> None:
        """A listing, one page of it when ``page_size`` is set (``cursor`` = offset)."""
        size = self.hub.page_size
        if not size:
            self._send(200, items)
            return
        start = int((rec.query.get("cursor") or ["0"])[0])
        page, rest = items[start:start + size], items[start + size:]
        headers = {}
        if rest:
            query = [(k, v) for k, values in rec.query.items() if k != "cursor" for v in values]
            query.append(("cursor", str(start + size)))
            from urllib.parse import quote, urlencode

            headers["Link"] = (f'<{self.hub.url}{quote(rec.path)}?{urlencode(query)}>; '
                               'rel="next"')
        self._send(200, page, headers=headers)

    @staticmethod
    def _file_entry(path: str, data: bytes) -> dict[str, Any]:
        return {"type": "file", "path": path, "size": len(data), "oid": _git_blob_oid(data)}

    @staticmethod
    def _folder_entry(path: str, files: dict[str, bytes]) -> dict[str, Any]:
        inside = sorted(p for p in files if p.startswith(path + "/"))
        return {"type": "directory", "path": path,
                "oid": hashlib.sha1("\0".join(inside).encode()).hexdigest()}

    def _tree(self, repo: FakeRepo, revision: str, prefix: str, rec: RecordedRequest) -> None:
        if (sha := self._revision(repo, revision)) is None:
            return
        files = repo.log[sha].tree
        recursive = rec.query.get("recursive", ["False"])[0].lower() in ("true", "1")
        prefix = prefix.strip("/")
        if prefix and prefix in files:  # a file, not a folder
            self._error(404, f"{prefix} is not a directory", "EntryNotFound")
            return
        if prefix and not any(p.startswith(prefix + "/") for p in files):
            self._error(404, "Entry not found", "EntryNotFound")
            return
        self._send_page(rec, self._entries(files, prefix, recursive))

    def _paths_info(self, repo: FakeRepo, revision: str, rec: RecordedRequest) -> None:
        if (sha := self._revision(repo, revision)) is None:
            return
        files = repo.log[sha].tree
        out = []
        for path in (rec.form or {}).get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(self._file_entry(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append(self._folder_entry(path, files))
        self._send(200, out)

    def _resolve(self, rec: RecordedRequest, kind: str, repo_id: str, revision: str,
                 path: str) -> None:
        repo = self._readable(rec, kind, repo_id)
        if repo is None:
            return
        if (sha := self._revision(repo, revision)) is None:
            return
        files = repo.log[sha].tree
        if path not in files:
            self._send(
                404,
                {"error": "Entry not found"},
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                         "X-Repo-Commit": sha},
            )
            return
        data = files[path]
        self._send(
            200,
            body=data,
            content_type="application/octet-stream",
            headers={"X-Repo-Commit": sha, "ETag": f'"{_git_blob_oid(data)}"'},
        )

    # -- jobs --------------------------------------------------------------------------

    def _jobs(self, rec: RecordedRequest, rest: list[str]) -> None:
        if rest == ["hardware"] and rec.method == "GET":
            if self.hub.hardware is None:
                self._error(503, "hardware list unavailable")
            else:
                self._send(200, self.hub.hardware)
            return
        if (user := self._user(rec)) is None:
            return
        if not rest or rest[0] not in self._namespaces(user):
            self._error(403, "You don't have the rights to run jobs in this namespace")
        elif len(rest) == 1 and rec.method == "POST":
            self._create_job(rest[0], rec.json)
        elif len(rest) == 1 and rec.method == "GET":
            self._list_jobs(rest[0], rec)
        elif len(rest) >= 2:
            job = self.hub.jobs.get(rest[1])
            if job is None or job["owner"]["name"] != rest[0]:
                self._error(404, "Job not found")
            elif len(rest) == 2 and rec.method == "GET":
                self._send(200, job)
            elif rest[2:] == ["logs"] and rec.method == "GET":
                self._logs(rest[1], rec)
            elif rest[2:] == ["cancel"] and rec.method == "POST":
                self._cancel(rest[1])
            else:
                self._error(404, f"no stub route for {rec.method} {rec.path}")
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    def _bad_spec(self, spec: Any) -> str | None:
        if not isinstance(spec, dict):
            return "the job spec must be a JSON object"
        if not (spec.get("dockerImage") or spec.get("spaceId")):
            return "dockerImage or spaceId is required"
        command = spec.get("command")
        if not isinstance(command, list) or not command or \
                not all(isinstance(c, str) for c in command):
            return "command must be a non-empty list of strings"
        if spec.get("flavor") not in FLAVORS:
            return f"Invalid flavor: {spec.get('flavor')!r}"
        timeout = spec.get("timeoutSeconds")
        if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
            return "timeoutSeconds must be a positive integer"
        for mapping in ("environment", "secrets", "labels"):
            value = spec.get(mapping) or {}
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                return f"{mapping} must map strings to strings"
        for volume in spec.get("volumes") or []:
            if volume.get("type") not in ("dataset", "model", "bucket", "space") \
                    or not volume.get("source") or not str(volume.get("mountPath", "")
                                                             ).startswith("/"):
                return f"Invalid volume: {volume}"
        return None

    def _create_job(self, namespace: str, spec: Any) -> None:
        problem = self._bad_spec(spec)
        if problem:
            self._error(400, problem)
            return
        for volume in spec.get("volumes") or []:
            if volume["type"] in ("dataset", "model"):
                repo = self.hub.repos.get(f"{volume['type']}s/{volume['source']}")
                if repo is None or repo.resolve(volume.get("revision") or "main") is None:
                    self._error(400, f"Volume {volume['source']}@{volume.get('revision')} "
                                "cannot be mounted: no such repo or revision")
                    return
        job_id = uuid.uuid4().hex[:24]
        # Echo the whole spec back, secrets included: the worst case a client must survive.
        job = {
            **spec,
            "id": job_id,
            "createdAt": _now(),
            "status": {"stage": "SCHEDULING", "message": None},
            "owner": {"id": "u1", "name": namespace, "type": "user"},
            "initiator": {"type": "user", "id": "u1", "name": USER},
        }
        with self.hub.lock:
            self.hub.jobs[job_id] = job
            self.hub.job_logs.setdefault(job_id, [])
        if self.hub.runner is not None:
            self.hub.runner.start(self.hub, job_id)
        self._send(200, job)

    def _list_jobs(self, namespace: str, rec: RecordedRequest) -> None:
        wanted = [label.partition("=") for label in rec.query.get("label", [])]
        stages = {s.upper() for s in rec.query.get("stage", [])}
        with self.hub.lock:
            jobs = [j for j in self.hub.jobs.values() if j["owner"]["name"] == namespace]
        jobs = [j for j in jobs
                if all((j.get("labels") or {}).get(k) == v for k, _, v in wanted)
                and (not stages or j["status"]["stage"] in stages)]
        jobs.sort(key=lambda j: j["createdAt"], reverse=True)
        self._send_page(rec, jobs)

    def _cancel(self, job_id: str) -> None:
        with self.hub.lock:
            stage = self.hub.jobs[job_id]["status"]["stage"]
        if stage not in TERMINAL_STAGES:
            if self.hub.runner is not None:
                self.hub.runner.cancel(job_id)
            self.hub.set_job_stage(job_id, "CANCELED")
        self._send(200, {})

    def _logs(self, job_id: str, rec: RecordedRequest) -> None:
        with self.hub.lock:
            captured = list(self.hub.job_logs[job_id])
        lines = [("", "===== Job started at 2026-01-01 00:00:00 ====="),
                 *[(item if isinstance(item, tuple) else ("", item)) for item in captured]]
        tail = rec.query.get("tail")
        if tail:
            lines = lines[-int(tail[0]):]
        stamp = _now()
        body = b"".join(
            b"data: " + json.dumps({"timestamp": at or stamp, "data": line}).encode() + b"\n\n"
            for at, line in lines
        )
        if self._swallow:
            return
        # No Content-Length: under HTTP/1.0 the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(body)


# --------------------------------------------------------------------------- job runner


class JobRunner:
    """Runs a created job's command as a subprocess, as HF Jobs would run it in a container.

    - Each ``dataset``/``model`` volume is materialised from the repo at its pinned revision
      (only ``path`` inside it, when given) into a scratch folder; the job's command,
      arguments and environment see that folder where the spec said ``mountPath``.
    - ``/tmp`` and ``$HOME`` of the container are the job's own scratch folders.
    - The launcher is swapped: ``uv run [options] script`` and ``accelerate launch
      [options] script`` become ``<this interpreter> script`` (what was dropped is kept in
      ``job["stub"]["launcher"]``; ``--num_processes N`` in ``job["stub"]["num_processes"]``).
    - The environment is the job's ``environment`` and ``secrets`` over a minimal base, with
      ``HF_ENDPOINT`` pointing back here, so the job's pushes become commits in this Hub.
    - stdout and stderr lines become the job's logs; exit 0 is COMPLETED, else ERROR;
      ``timeoutSeconds`` (capped by ``max_seconds``) kills it (ERROR); cancel kills it.
    """

    def __init__(self, *, env: dict[str, str] | None = None, max_seconds: float = 300) -> None:
        self.extra_env = dict(env or {})
        self.max_seconds = max_seconds
        self.procs: dict[str, subprocess.Popen] = {}
        self.cancelled: set[str] = set()
        self.scratch: dict[str, Path] = {}

    def start(self, hub: FakeHub, job_id: str) -> None:
        self.hub = hub
        threading.Thread(target=self._run, args=(hub, job_id), name=f"job-{job_id}",
                         daemon=True).start()

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)
        proc = self.procs.get(job_id)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def close(self) -> None:
        for job_id in list(self.procs):
            self.cancel(job_id)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for folder in self.scratch.values():
            shutil.rmtree(folder, ignore_errors=True)

    # -- the run -----------------------------------------------------------------------

    def _materialise(self, hub: FakeHub, job: dict, root: Path) -> dict[str, str]:
        mounts: dict[str, str] = {}
        for i, volume in enumerate(job.get("volumes") or []):
            if volume["type"] not in ("dataset", "model"):
                continue
            repo = hub.repos[f"{volume['type']}s/{volume['source']}"]
            with hub.lock:
                tree = dict(repo.tree(volume.get("revision") or "main"))
            inner = (volume.get("path") or "").strip("/")
            target = root / f"mount{i}"
            target.mkdir(parents=True)
            for name, data in tree.items():
                if inner and not name.startswith(inner + "/"):
                    continue
                rel = name[len(inner) + 1:] if inner else name
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                if volume.get("readOnly"):
                    path.chmod(0o444)
            mounts[volume["mountPath"].rstrip("/")] = str(target)
        return mounts

    @staticmethod
    def _rewrite(text: str, mapping: dict[str, str]) -> str:
        for container in sorted(mapping, key=len, reverse=True):
            if text == container or text.startswith(container + "/"):
                return mapping[container] + text[len(container):]
            text = text.replace(f"={container}/", f"={mapping[container]}/")
        return text

    @staticmethod
    def _swap_launcher(argv: list[str], job: dict) -> list[str]:
        dropped: list[str] = []
        num_processes = 1
        while argv:
            if argv[:2] == ["uv", "run"]:
                dropped += argv[:2]
                argv = argv[2:]
                while argv and argv[0].startswith("-"):
                    takes_value = argv[0] in ("--with", "--python", "-p", "--index-url",
                                              "--extra-index-url", "--env-file")
                    dropped += argv[: 2 if takes_value else 1]
                    argv = argv[2 if takes_value else 1:]
            elif argv[:2] == ["accelerate", "launch"]:
                dropped += argv[:2]
                argv = argv[2:]
                while argv and argv[0].startswith("-"):
                    flag, argv = argv[0], argv[1:]
                    dropped.append(flag)
                    name, has_value, value = flag.partition("=")
                    if not has_value and name not in _ACCELERATE_SWITCHES and argv:
                        value, argv = argv[0], argv[1:]
                        dropped.append(value)
                    if name == "--num_processes":
                        num_processes = int(value)
            elif argv[0] in ("python", "python3"):
                dropped.append(argv[0])
                argv = argv[1:]
            else:
                break
        job["stub"] = {"launcher": dropped, "num_processes": num_processes}
        return [sys.executable, *argv]

    def _env(self, hub: FakeHub, job: dict, home: Path, tmp: Path,
             mounts: dict[str, str]) -> dict[str, str]:
        env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
               if key in os.environ}
        env.update({"HOME": str(home), "TMPDIR": str(tmp), "HF_HOME": str(home / ".cache/hf"),
                    "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONUNBUFFERED": "1", "JOB_ID": job["id"]})
        env.update(self.extra_env)
        for key, value in {**(job.get("environment") or {}), **(job.get("secrets") or {})}.items():
            env[key] = self._rewrite(value, mounts)
        # The job talks to this Hub, whatever the spec says.
        env.update({"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                    "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"})
        return env

    def _run(self, hub: FakeHub, job_id: str) -> None:
        job = hub.jobs[job_id]
        root = Path(tempfile.mkdtemp(prefix=f"fakejob-{job_id[:8]}-"))
        self.scratch[job_id] = root
        try:
            home, tmp = root / "home", root / "tmp"
            home.mkdir()
            tmp.mkdir()
            mounts = self._materialise(hub, job, root)
            mapping = {**mounts, "/tmp": str(tmp), "/root": str(home)}
            argv = [self._rewrite(a, mapping)
                    for a in [*job["command"], *(job.get("arguments") or [])]]
            argv = self._swap_launcher(argv, job)
            env = self._env(hub, job, home, tmp, mapping)
        except Exception as exc:  # a broken spec is the job's failure, as on the Hub
            hub.set_job_stage(job_id, "ERROR", f"could not start: {exc}")
            return
        if job_id in self.cancelled:
            return
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[job_id] = proc
        hub.set_job_stage(job_id, "RUNNING")
        limit = min(job.get("timeoutSeconds") or self.max_seconds, self.max_seconds)
        timer = threading.Timer(limit, self._time_out, args=(job_id,))
        timer.daemon = True
        timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with hub.lock:
                hub.job_logs[job_id].append((_now(), line))
        code = proc.wait()
        timer.cancel()
        if job_id in self.cancelled:
            hub.set_job_stage(job_id, "CANCELED")
        elif job.get("stub", {}).get("timed_out"):
            hub.set_job_stage(job_id, "ERROR", "Job timeout")
        elif code == 0:
            hub.set_job_stage(job_id, "COMPLETED")
        else:
            hub.set_job_stage(job_id, "ERROR", f"Job failed with exit code: {code}")
        job.setdefault("stub", {})["exit_code"] = code

    def _time_out(self, job_id: str) -> None:
        proc = self.procs.get(job_id)
        if proc is not None and proc.poll() is None:
            self.hub.jobs[job_id].setdefault("stub", {})["timed_out"] = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def start_fake_hub() -> tuple[FakeHub, ThreadingHTTPServer]:
    """Start a FakeHub on 127.0.0.1, on a free port, in a daemon thread."""
    hub = FakeHub()
    handler = type("BoundHandler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval keeps shutdown() (one per test) from costing half a second.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-hub", daemon=True
    ).start()
    return hub, server


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """A running FakeHub; HF_ENDPOINT and huggingface_hub's cached endpoint point at it.

    The developer's own token, token file and cache are hidden from the client, so a test
    can only authenticate with the token it passes.
    """
    from huggingface_hub import constants

    home = tmp_path_factory.mktemp("hf_home")

    hub, server = start_fake_hub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    # Never let a developer's real token or offline setting leak into a test.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    if hasattr(constants, "AGENT_HARNESSES_PATH"):  # a registry cache the client may write
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agents.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_DEBUG", False)
    try:
        yield hub
    finally:
        hub.closing.set()  # releases any injected hang
        if hub.runner is not None:
            hub.runner.close()
        server.shutdown()
        server.server_close()
