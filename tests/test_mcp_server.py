"""The MCP surface: in-memory client for behaviour, one real stdio subprocess for the wire."""

from __future__ import annotations

import os
import re
import sys

import anyio
import pytest
from conftest import REPO_ROOT
from mcp import Client, StdioServerParameters

from tunestep.server.app import ServerConfig, build_server
from tunestep.server.mcp_tools import error_code

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_tools_have_annotations_and_output_schema(sample_ws):
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    tool = tools["check_batch"]
    assert tool.annotations.read_only_hint is True
    assert tool.annotations.open_world_hint is False
    assert tool.output_schema and "ready" in tool.output_schema["properties"]
    assert "hold-out" in tool.description


async def test_annotations_are_the_ones_mcp_surface_md_lists(sample_ws):
    # The table in .specs/mcp_surface.md is what clients are promised: a tool that writes
    # (job_status brings a model home) must not be announced as read-only.
    spec = (REPO_ROOT / ".specs" / "mcp_surface.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)\(.*?\| (yes|no) \| (yes|no) \| (yes|no) \| (yes|no) \|",
                      spec, flags=re.M)
    assert len(rows) >= 10
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name, *flags in rows:
        a = tools[name].annotations
        got = [a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint]
        assert got == [f == "yes" for f in flags], name


async def test_check_batch_returns_structured_report(sample_ws):
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        result = await client.call_tool("check_batch", {})
    assert not result.is_error
    assert result.structured_content["batch"] == "batch_100_01"
    assert result.structured_content["ready"] is True


async def test_caller_errors_come_back_as_tool_errors_with_the_code(sample_ws):
    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        result = await client.call_tool("check_batch", {"batch": "../../etc"})
    assert result.is_error
    assert error_code(result) == "path_escape"


async def test_stdio_subprocess_lists_tools_and_answers(sample_ws):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "tunestep.server", "--workspace", str(sample_ws.root)],
        env={**os.environ})
    with anyio.fail_after(60):
        async with Client(params) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool("check_batch", {})
    assert "check_batch" in names
    assert result.structured_content["ready"] is True


async def test_long_tools_report_progress(sample_ws):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
        result = await client.call_tool(
            "run_inspector", {"path": "datasets/incremental/batch_100_02"},
            progress_callback=on_progress)
        mapped = await client.call_tool(
            "apply_mapping", {"source": "datasets/incremental/batch_100_02"},
            progress_callback=on_progress)
    assert result.structured_content["status"] == "NEEDS_MAPPING"
    assert mapped.structured_content["rows_out"] == 100
    assert seen and all(isinstance(p, int | float) for p, _, _ in seen)
    assert any(m for _, _, m in seen)
