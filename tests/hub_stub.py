"""A loopback stand-in for the Hugging Face Hub, for tests that drive the real client.

The real ``huggingface_hub`` client builds the real requests; this server answers the
few endpoints tunestep's flows use and records every request for assertions:

=======  ==============================================================  ===================
method   path                                                            used by
=======  ==============================================================  ===================
GET      /api/whoami-v2                                                  whoami (namespace)
POST     /api/repos/create                                               create_repo
GET      /api/{type}s/{repo_id}[/revision/{rev}]                         repo_info
POST     /api/{type}s/{repo_id}/preupload/{rev}                          create_commit
POST     /api/{type}s/{repo_id}/commit/{rev}      (NDJSON body)          create_commit
GET      /api/{type}s/{repo_id}/tree/{rev}[/{path}]?recursive=           list_repo_tree
HEAD/GET /{type}s/{repo_id}/resolve/{rev}/{path}  (models: no prefix)    hf_hub_download
POST     /api/jobs/{namespace}                                           run_job
GET      /api/jobs/{namespace}/{job_id}                                  inspect_job
GET      /api/jobs/{namespace}/{job_id}/logs      (server-sent events)   fetch_job_logs
POST     /api/jobs/{namespace}/{job_id}/cancel                           cancel_job
GET      /api/jobs/hardware                                              list_jobs_hardware
=======  ==============================================================  ===================

Small files only: preupload always answers ``uploadMode: regular``, so commits carry the
file bytes base64-encoded inline and no LFS/xet transfer is ever needed.

Use the ``fake_hub`` fixture (import it into a conftest): it starts the server on
127.0.0.1 port 0, points ``HF_ENDPOINT`` at it and patches the values huggingface_hub
computed from it at import (``constants.ENDPOINT`` and the ``resolve`` URL template that
downloads use), hides any real token, and yields the ``FakeHub`` (``.url``,
``.requests``, ``.jobs``, ``.repos``; ``.fail`` makes a route answer with an error).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "tester"

# Mirrors the shape of the live /api/jobs/hardware answer (costs per minute, as the Hub
# reports them); the prices are DESIGN §4's published hourly prices divided by 60.
HARDWARE = [
    {
        "name": "cpu-basic",
        "prettyName": "CPU Basic",
        "cpu": "2 vCPU",
        "ram": "16 GB",
        "ephemeralStorage": "50 GB",
        "accelerator": None,
        "unitCostMicroUSD": 167,
        "unitCostUSD": 0.000167,
        "unitLabel": "minute",
    },
    {
        "name": "t4-medium",
        "prettyName": "Nvidia T4 - medium",
        "cpu": "8 vCPU",
        "ram": "30 GB",
        "ephemeralStorage": "100 GB",
        "accelerator": {
            "type": "gpu",
            "model": "T4",
            "quantity": "1",
            "vram": "16 GB",
            "manufacturer": "Nvidia",
        },
        "unitCostMicroUSD": 10000,
        "unitCostUSD": 0.01,
        "unitLabel": "minute",
    },
    {
        "name": "a10g-large",
        "prettyName": "Nvidia A10G - large",
        "cpu": "12 vCPU",
        "ram": "46 GB",
        "ephemeralStorage": "200 GB",
        "accelerator": {
            "type": "gpu",
            "model": "A10G",
            "quantity": "1",
            "vram": "24 GB",
            "manufacturer": "Nvidia",
        },
        "unitCostMicroUSD": 25000,
        "unitCostUSD": 0.025,
        "unitLabel": "minute",
    },
]


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


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    # Every commit's full tree, so a pinned revision reads what it pinned.
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40

    def commit(self, changes: dict[str, bytes]) -> str:
        self.files.update(changes)
        sha = hashlib.sha1(
            (self.head + json.dumps(sorted(changes))).encode() + uuid.uuid4().bytes
        ).hexdigest()
        self.commits.append(sha)
        self.snapshots[sha] = dict(self.files)
        return sha

    def tree(self, revision: str) -> dict[str, bytes]:
        if revision in self.snapshots:
            return self.snapshots[revision]
        if revision == "main":
            return self.files
        raise KeyError(revision)


class FakeHub:
    """State and request log of the stand-in Hub. Safe to read from the test thread."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.repos: dict[str, FakeRepo] = {}  # key: "<type>s/<repo_id>"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_logs: dict[str, list[str]] = {}
        self.hardware: list[dict[str, Any]] | None = HARDWARE
        # (method, path) -> (status, message): answer that request with an error instead.
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}
        self.lock = threading.Lock()

    # -- helpers for tests -------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "dataset") -> FakeRepo:
        return self.repos[f"{repo_type}s/{repo_id}"]

    def add_repo(self, repo_id: str, repo_type: str = "dataset", *, private: bool) -> FakeRepo:
        repo = FakeRepo(repo_id=repo_id, repo_type=repo_type, private=private)
        self.repos[f"{repo_type}s/{repo_id}"] = repo
        return repo

    def push_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset") -> str:
        """Commit files directly, as a job pushing its outputs back would."""
        with self.lock:
            return self.repo(repo_id, repo_type).commit(files)

    def set_job_stage(self, job_id: str, stage: str, message: str | None = None) -> None:
        with self.lock:
            self.jobs[job_id]["status"] = {"stage": stage, "message": message}

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
        ctype = rec.headers.get("content-type", "")
        if body and "ndjson" in ctype:
            rec.ndjson = [json.loads(line) for line in body.splitlines() if line.strip()]
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
        data = body if body is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        """An error the way the Hub sends one: X-Error-Code / X-Error-Message and a body."""
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers)

    def do_GET(self) -> None:
        self._dispatch(self._record())

    def do_HEAD(self) -> None:
        self._dispatch(self._record())

    def do_POST(self) -> None:
        self._dispatch(self._record())

    def do_PUT(self) -> None:
        self._dispatch(self._record())

    # -- routing -----------------------------------------------------------------------

    def _dispatch(self, rec: RecordedRequest) -> None:
        try:
            self._route(rec)
        except Exception as exc:  # a stub bug should fail the test, not hang it
            self._error(500, f"stub error: {type(exc).__name__}: {exc}")

    def _route(self, rec: RecordedRequest) -> None:
        parts = rec.path.strip("/").split("/")
        if (rec.method, rec.path) in self.hub.fail:
            self._error(*self.hub.fail[(rec.method, rec.path)])
        elif rec.path == "/api/whoami-v2":
            self._send(200, {"type": "user", "name": USER, "id": "u1", "orgs": []})
        elif rec.path == "/api/repos/create" and rec.method == "POST":
            self._create_repo(rec)
        elif parts[:2] == ["api", "jobs"]:
            self._jobs(rec, parts[2:])
        elif len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets", "spaces"):
            self._repo_api(rec, parts[1], "/".join(parts[2:4]), parts[4:])
        elif len(parts) >= 5 and parts[0] in ("datasets", "spaces") and parts[3] == "resolve":
            self._resolve(parts[0], "/".join(parts[1:3]), parts[4], "/".join(parts[5:]))
        elif len(parts) >= 4 and parts[2] == "resolve":
            self._resolve("models", "/".join(parts[0:2]), parts[3], "/".join(parts[4:]))
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    # -- repos -------------------------------------------------------------------------

    def _create_repo(self, rec: RecordedRequest) -> None:
        payload = rec.json or {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        key = f"{repo_type}s/{repo_id}"
        with self.hub.lock:
            exists = key in self.hub.repos
            if not exists:
                private = payload.get("visibility", "public") == "private"
                self.hub.repos[key] = FakeRepo(
                    repo_id=repo_id, repo_type=repo_type, private=private
                )
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if exists:
            # As the Hub does: 409, and the existing repo's url (create_repo(exist_ok) reads it).
            message = "You already created this repo"
            self._send(409, {"error": message, "url": url}, headers={"X-Error-Message": message})
            return
        self._send(200, {"url": url, "name": repo_id})

    def _repo_api(self, rec: RecordedRequest, kind: str, repo_id: str, rest: list[str]) -> None:
        repo = self.hub.repos.get(f"{kind}/{repo_id}")
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
            return
        action = rest[0] if rest else ""
        if action in ("", "revision"):
            self._send(200, {"id": repo.repo_id, "sha": repo.head, "private": repo.private})
        elif action == "preupload" and rec.method == "POST":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in (rec.json or {}).get("files", [])
            ]
            self._send(200, {"files": files})
        elif action == "commit" and rec.method == "POST":
            self._commit(repo, rec)
        elif action == "tree":
            self._tree(repo, rest[1], "/".join(rest[2:]), rec)
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    def _commit(self, repo: FakeRepo, rec: RecordedRequest) -> None:
        changes: dict[str, bytes] = {}
        for item in rec.ndjson or []:
            if item["key"] == "file":
                value = item["value"]
                assert value["encoding"] == "base64"
                changes[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] != "header":
                self._error(400, f"stub supports plain file commits only, got {item['key']}")
                return
        with self.hub.lock:
            sha = repo.commit(changes)
        url = f"{self.hub.url}/{repo.repo_type}s/{repo.repo_id}/commit/{sha}"
        self._send(200, {"commitUrl": url, "commitOid": sha, "success": True})

    def _tree(self, repo: FakeRepo, revision: str, prefix: str, rec: RecordedRequest) -> None:
        try:
            files = repo.tree(revision)
        except KeyError:
            self._error(404, "Invalid rev id", "RevisionNotFound")
            return
        recursive = rec.query.get("recursive", ["False"])[0].lower() == "true"
        base = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rel = path[len(base) :].split("/")
            if len(rel) > 1:
                folders.update(base + "/".join(rel[: i + 1]) for i in range(len(rel) - 1))
                if not recursive:
                    continue
            data = files[path]
            entries.append(
                {"type": "file", "path": path, "size": len(data), "oid": _git_blob_oid(data)}
            )
        if not entries and not folders:
            self._error(404, "Entry not found", "EntryNotFound")
            return
        shown = folders if recursive else {f for f in folders if "/" not in f[len(base) :]}
        entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(shown)]
        self._send(200, entries)

    def _resolve(self, kind: str, repo_id: str, revision: str, path: str) -> None:
        repo = self.hub.repos.get(f"{kind}/{repo_id}")
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
            return
        try:
            files = repo.tree(revision)
        except KeyError:
            self._error(404, "Invalid rev id", "RevisionNotFound")
            return
        sha = revision if revision in repo.snapshots else repo.head
        if path not in files:
            self._send(
                404,
                {"error": "Entry not found"},
                headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
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
        if rest == ["hardware"]:
            if self.hub.hardware is None:
                self._error(503, "hardware list unavailable")
            else:
                self._send(200, self.hub.hardware)
        elif len(rest) == 1 and rec.method == "POST":
            self._create_job(rest[0], rec.json or {})
        elif len(rest) >= 2:
            job = self.hub.jobs.get(rest[1])
            if job is None or job["owner"]["name"] != rest[0]:
                self._error(404, "Job not found")
            elif len(rest) == 2 and rec.method == "GET":
                self._send(200, job)
            elif rest[2:] == ["logs"]:
                self._logs(rest[1], rec)
            elif rest[2:] == ["cancel"] and rec.method == "POST":
                self.hub.set_job_stage(rest[1], "CANCELED")
                self._send(200, {})
            else:
                self._error(404, f"no stub route for {rec.method} {rec.path}")
        else:
            self._error(404, f"no stub route for {rec.method} {rec.path}")

    def _create_job(self, namespace: str, spec: dict[str, Any]) -> None:
        job_id = uuid.uuid4().hex[:24]
        # Echo the whole spec back, secrets included: the worst case a client must survive.
        job = {
            **spec,
            "id": job_id,
            "createdAt": _now(),
            "status": {"stage": "SCHEDULING", "message": None},
            "owner": {"id": "u1", "name": namespace, "type": "user"},
        }
        with self.hub.lock:
            self.hub.jobs[job_id] = job
            self.hub.job_logs.setdefault(job_id, [])
        self._send(200, job)

    def _logs(self, job_id: str, rec: RecordedRequest) -> None:
        lines = ["===== Job started at 2026-01-01 00:00:00 =====", *self.hub.job_logs[job_id]]
        tail = rec.query.get("tail")
        if tail:
            lines = lines[-int(tail[0]) :]
        stamp = _now()
        body = b"".join(
            b"data: " + json.dumps({"timestamp": stamp, "data": line}).encode() + b"\n\n"
            for line in lines
        )
        # No Content-Length: under HTTP/1.0 the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(body)


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
        server.shutdown()
        server.server_close()
