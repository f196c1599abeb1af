"""How a domain function becomes an MCP tool: its annotations, its errors, its progress.

Each tool of ``app.py`` is registered with ``tool`` (or ``card_tool`` when a card renders
its result): its docstring is its description, and a ``TunestepError`` becomes the
``ToolError`` the model reads, message first with the error code, never a traceback or the
SDK's generic "Error executing tool". Long tools run in a worker thread and relay their
progress (``run_with_progress``). Apart from ``app.py`` so the tool table there reads as
a table.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from mcp.server.apps import Apps
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError

T = TypeVar("T")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False,
                            idempotent_hint=True, open_world_hint=False)
WRITES_DERIVED = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                 idempotent_hint=True, open_world_hint=False)
STARTS_JOB = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                             idempotent_hint=False, open_world_hint=True)
STOPS_JOB = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                            idempotent_hint=True, open_world_hint=True)
FETCHES_MODEL = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                idempotent_hint=True, open_world_hint=True)
# Replaces what `latest` points at (reversibly: any recorded version can be made latest).
MOVES_LATEST = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                               idempotent_hint=False, open_world_hint=False)
REMOTE_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False,
                              idempotent_hint=True, open_world_hint=True)
# Claude hosts ask the person before every call of a tool carrying this, even in modes
# that skip permission prompts (.specs/mcp_surface.md says which hosts honour it). The
# operator's signed token stays the real gate; this keeps a person in the loop in chat.
ASK_THE_PERSON = {"anthropic/requiresUserInteraction": True}

def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs inlined (it sits inside another schema)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)



def tool_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the caller-fixable TunestepError into the ToolError the model reads."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except TunestepError as exc:
            raise ToolError(str(exc)) from None

    return wrapper


async def run_with_progress(ctx: Context | None, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a long domain function in a worker thread, relaying its progress to the client."""

    def progress(done: int, total: int | None, message: str) -> None:
        if ctx is not None:
            anyio.from_thread.run(ctx.report_progress, done, total, message)

    call = functools.partial(tool_errors(fn), progress=progress, **kwargs)
    return await anyio.to_thread.run_sync(call)


def tool(server: MCPServer, title: str, annotations: ToolAnnotations,
         meta: dict[str, Any] | None = None) -> Callable:
    """Register a domain-calling function as a tool: docstring as description, errors mapped."""

    def register(fn: Callable[..., T]) -> Callable[..., T]:
        # Async tools map their errors inside run_with_progress, in the worker thread.
        wrapped = fn if inspect.iscoroutinefunction(fn) else tool_errors(fn)
        server.add_tool(wrapped, title=title, annotations=annotations, meta=meta,
                        description=inspect.cleandoc(fn.__doc__ or ""))
        return fn

    return register


def card_tool(apps: Apps, resource_uri: str, title: str,
              annotations: ToolAnnotations) -> Callable:
    """Like ``tool``, for a tool whose result a card renders (``_meta.ui.resourceUri``)."""

    def register(fn: Callable[..., T]) -> Callable[..., T]:
        wrapped = fn if inspect.iscoroutinefunction(fn) else tool_errors(fn)
        apps.tool(resource_uri=resource_uri, title=title, annotations=annotations,
                  description=inspect.cleandoc(fn.__doc__ or ""))(wrapped)
        return fn

    return register


def error_code(result: Any) -> str | None:
    """The tunestep code of a failed tool call (the SDK prefixes 'Error executing tool X: ')."""
    if not getattr(result, "is_error", False) or not result.content:
        return None
    text = result.content[0].text
    _, _, rest = text.partition(": ") if text.startswith("Error executing tool") else ("", "", text)
    return rest.split(":", 1)[0]
