"""A real external MCP client drives the server: the MCP Inspector CLI (Node).

The inspector is installed once per checkout by the session fixture below, at a pinned
version, into ``.test-cache/npm`` in the repository (git ignores it; ``$TUNESTEP_NPM_CACHE``
moves it), with npm's own download cache beside it: `make test` writes nothing outside
the repository and its temporary folders. Later runs reuse it.

Without node/npm, or when the install fails, the tests FAIL when ``CI`` is set and are
skipped otherwise, with a message that says what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunestep.tools.core import ledger

# 0.15.0 is the newest release that runs on Node 20: from 0.16.0 on, `engines` asks for
# Node >= 22.7.5 (and 2.x for >= 22.19). It speaks stdio and streamable HTTP, and passes
# --tool-arg values as strings.
INSPECTOR_VERSION = "0.15.0"
INSPECTOR_PACKAGE = f"@modelcontextprotocol/inspector@{INSPECTOR_VERSION}"
MIN_NODE_MAJOR = 18
INSTALL_TIMEOUT = 300
CALL_TIMEOUT = 60


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(message: str):
    if in_ci():
        pytest.fail(f"external-client test cannot run in CI: {message}", pytrace=False)
    pytest.skip(f"{message} (this test fails instead of skipping when CI is set)")


def npm_cache_root() -> Path:
    configured = os.environ.get("TUNESTEP_NPM_CACHE")
    return Path(configured).expanduser() if configured else (
        Path(__file__).resolve().parents[1] / ".test-cache" / "npm")


@pytest.fixture(scope="session")
def inspector() -> Path:
    """The pinned mcp-inspector executable, installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the MCP Inspector CLI; install Node.js 20+")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_NODE_MAJOR:
        unavailable(f"Node {version or '?'} is too old for the inspector; need >= "
                    f"{MIN_NODE_MAJOR}")

    target = npm_cache_root() / f"inspector-{INSPECTOR_VERSION}"
    binary = target / "node_modules" / ".bin" / "mcp-inspector"
    done = target / ".installed"
    if done.is_file() and binary.exists():
        return binary
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
             "--ignore-scripts", "--loglevel=error", "--no-update-notifier",
             "--cache", str(target.parent / "npm-cache"), INSPECTOR_PACKAGE],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        unavailable(f"`npm install {INSPECTOR_PACKAGE}` took over {INSTALL_TIMEOUT} s")
    if result.returncode != 0 or not (staging / "node_modules/.bin/mcp-inspector").exists():
        shutil.rmtree(staging, ignore_errors=True)
        unavailable(f"`npm install {INSPECTOR_PACKAGE}` failed ({result.returncode}):\n"
                    f"{result.stderr[-2000:]}")
    (staging / ".installed").write_text(INSPECTOR_PACKAGE + "\n")
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # another run installed it at the same moment: use theirs
        shutil.rmtree(staging, ignore_errors=True)
    if not binary.exists():
        unavailable(f"the inspector is missing at {binary} after the install")
    return binary


# The server with prompts and resources, whether or not build_server registers them yet.
SERVE_WITH_ASSISTANT = """\
import sys, anyio
from tunestep.server.app import ServerConfig, build_server
from tunestep.server.assistant import register_prompts, register_resources
from tunestep.tools.core.workspace import open_workspace
server = build_server(ServerConfig(workspace=sys.argv[1]))
if not anyio.run(server.list_prompts):
    register_prompts(server)
if not anyio.run(server.list_resources):
    register_resources(server, lambda: open_workspace(sys.argv[1]))
server.run("stdio")
"""


def run_inspector(binary: Path, workspace: Path, *method_args: str, server: list[str] | None = None,
                  ok: bool = True) -> dict | str:
    """One inspector CLI call against the server over stdio: its JSON (or, with ok=False,
    the error it printed). The server is `python -m tunestep.server` unless given."""
    server = server or ["-m", "tunestep.server", "--workspace", str(workspace)]
    command = [str(binary), "--cli", sys.executable, *server, *method_args]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT, env={**os.environ})
    if not ok:
        assert done.returncode != 0, f"expected a failure, got:\n{done.stdout}"
        return done.stderr
    assert done.returncode == 0, f"inspector exited {done.returncode}:\n{done.stderr}"
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"inspector printed no JSON:\n{done.stdout}\n{done.stderr}")


def test_tools_list(inspector, sample_ws):
    listed = run_inspector(inspector, sample_ws.root, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert {"check_batch", "draft_job", "submit_job", "job_status", "job_logs",
            "cancel_job", "list_jobs"} <= set(tools)
    check = tools["check_batch"]
    assert check["annotations"]["readOnlyHint"] is True
    assert "ready" in check["outputSchema"]["properties"]
    assert tools["submit_job"]["inputSchema"]["required"] == ["draft_id", "approval_token"]


def test_check_batch_call(inspector, sample_ws):
    result = run_inspector(inspector, sample_ws.root, "--method", "tools/call",
                           "--tool-name", "check_batch")
    assert not result.get("isError")
    report = result["structuredContent"]
    assert report["batch"] == "batch_100_01"
    assert report["ready"] is True
    assert json.loads(result["content"][0]["text"]) == report


def test_check_batch_call_with_an_argument(inspector, sample_ws):
    result = run_inspector(inspector, sample_ws.root, "--method", "tools/call",
                           "--tool-name", "check_batch", "--tool-arg", "batch=batch_100_02")
    assert result["structuredContent"]["batch"] == "batch_100_02"


@pytest.mark.parametrize(("token", "code"), [
    ("not-a-real-token", "approval_malformed"),
    ("tsa1.e30.AAAA", "approval_malformed"),
    # The inspector refuses an empty `key=` pair; a blank paste is the empty token.
    (" ", "approval_missing"),
])
def test_submit_job_without_a_real_token_is_refused(inspector, sample_ws, token, code):
    result = run_inspector(inspector, sample_ws.root, "--method", "tools/call",
                           "--tool-name", "submit_job",
                           "--tool-arg", "draft_id=draft-0123456789ab",
                           "--tool-arg", f"approval_token={token}")
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith("Error executing tool submit_job: ")
    assert code in text
    with ledger.open_ledger(sample_ws) as conn:
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        refusals = [ledger.loads(r["detail"]) for r in conn.execute(
            "SELECT detail FROM audit WHERE action = 'job.submit' AND outcome = 'refused'")]
    assert jobs == 0
    assert refusals == [{"code": code}]


def test_prompts_and_resources_through_the_inspector(inspector, sample_ws):
    server = ["-c", SERVE_WITH_ASSISTANT, str(sample_ws.root)]
    listed = run_inspector(inspector, sample_ws.root, "--method", "prompts/list", server=server)
    prompts = {p["name"]: p for p in listed["prompts"]}
    assert set(prompts) == {"prepare_next_batch", "request_approval", "review_results"}
    assert prompts["request_approval"]["arguments"][0] == {
        "name": "draft_id", "required": True,
        "description": "The draft to present, as returned by draft_job (e.g. "
                       "draft-0123456789ab)."}
    got = run_inspector(inspector, sample_ws.root, "--method", "prompts/get",
                        "--prompt-name", "request_approval",
                        "--prompt-args", "draft_id=draft-0123456789ab", server=server)
    assert "tunestep approve draft-0123456789ab" in got["messages"][0]["content"]["text"]
    error = run_inspector(inspector, sample_ws.root, "--method", "prompts/get",
                          "--prompt-name", "request_approval", server=server, ok=False)
    assert "prompt_argument_missing" in error

    plan = run_inspector(inspector, sample_ws.root, "--method", "resources/read",
                         "--uri", "tunestep://plan", server=server)
    (content,) = plan["contents"]
    assert content["mimeType"] == "application/json"
    assert json.loads(content["text"])["source"] == ".specs/training/plan.md"
    error = run_inspector(inspector, sample_ws.root, "--method", "resources/read",
                          "--uri", "tunestep://jobs/job-nope", server=server, ok=False)
    assert "job_unknown" in error
