"""Streamable HTTP: `tunestep serve --transport http` answers on 127.0.0.1, nowhere else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

pytestmark = pytest.mark.anyio

START_TIMEOUT = 30.0


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(*args: str) -> list[str]:
    # `python -m tunestep.server.cli` is the `tunestep` console script without needing
    # the venv's bin folder on PATH.
    return [sys.executable, "-m", "tunestep.server.cli", "serve", *args]


def wait_until_accepting(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the server did not accept on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s:"
                f"\n{log.read_text()}")


@pytest.fixture
def http_server(sample_ws, tmp_path) -> Iterator[str]:
    """A `tunestep serve --transport http` subprocess; yields its MCP URL; always killed."""
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            serve_command("--transport", "http", "--port", str(port),
                          "--workspace", str(sample_ws.root)),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until_accepting(proc, port, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def test_check_batch_over_streamable_http(http_server):
    with anyio.fail_after(30):
        async with Client(http_server) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("check_batch", {})
    assert {"check_batch", "draft_job", "submit_job"} <= tools
    assert not result.is_error
    report = result.structured_content
    assert report["batch"] == "batch_100_01"
    assert report["step"] == 1
    assert report["ready"] is True
    assert report["validation"]["present"] is True


async def test_tool_errors_keep_their_code_over_http(http_server):
    from tunestep.server.mcp_tools import error_code

    with anyio.fail_after(30):
        async with Client(http_server) as client:
            result = await client.call_tool("check_batch", {"batch": "../../etc"})
    assert result.is_error
    assert error_code(result) == "path_escape"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_binding_beyond_loopback_needs_allow_remote(sample_ws, host):
    # If the refusal were missing the server would start; the timeout then kills it.
    done = subprocess.run(
        serve_command("--transport", "http", "--host", host, "--port", str(free_port()),
                      "--workspace", str(sample_ws.root)),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        env={**os.environ, "COLUMNS": "200"})
    assert done.returncode != 0
    assert "bind_refused" in done.stderr
    assert "--allow-remote" in done.stderr
