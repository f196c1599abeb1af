"""The assistant's side of the MCP server: prompts and read-only resources.

Prompts are the Markdown templates of ``tunestep.prompts``, served with their declared
arguments so ``prompts/list`` shows each one's name, description and whether it is
required, and ``prompts/get`` renders the template. A refused render (unknown prompt,
missing or bad argument) reaches the client as an invalid-params error whose message
starts with the tunestep code.

Resources are read-only JSON views of domain functions, by URI:

=================================  ==============================================
``tunestep://plan``                the loaded plan (``plan``, ``source``, ``sha256``, ``notes``)
``tunestep://steps``               the ledger's trained steps, oldest first
``tunestep://drafts/{draft_id}``   one stored draft (``tools.draft.load_draft``)
``tunestep://inspections/latest``  the most recent inspection report in the ledger
``tunestep://jobs/{job_id}``       ``job_status`` plus the last 50 log lines
=================================  ==============================================

A TunestepError becomes a resource error whose message starts with its code;
``*_unknown`` codes (and no inspection yet) are "not found" (-32602), the rest -32603.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.prompts.base import Message, Prompt, UserMessage
from mcp.server.mcpserver.prompts.base import PromptArgument as MCPPromptArgument
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, Annotations

from tunestep import prompts
from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace

JSON = "application/json"
LOG_TAIL = 50
NOT_FOUND_CODES = {"draft_unknown", "job_unknown", "inspection_none"}
FOR_BOTH = Annotations(audience=["user", "assistant"])


class TemplatePrompt(Prompt):
    """A prompt rendered from a Markdown template by ``tunestep.prompts.render``.

    ``render`` is overridden so the template loader alone decides what is missing or
    invalid, and its code reaches the client (the SDK's default would reduce any
    failure to "Error rendering prompt NAME").
    """

    async def render(self, arguments: dict[str, Any] | None, context: Any) -> list[Message]:
        try:
            text = prompts.render(self.name, **(arguments or {}))
        except TunestepError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
        return [UserMessage(text)]


def register_prompts(server: MCPServer) -> None:
    """Serve every template of ``tunestep.prompts`` as an MCP prompt with its arguments."""
    for template in prompts.list_templates():
        arguments = [MCPPromptArgument(name=a.name, required=a.required,
                                       description=_describe(a))
                     for a in template.arguments]
        server.add_prompt(TemplatePrompt(name=template.name, title=template.title,
                                         description=template.description, arguments=arguments,
                                         fn=functools.partial(prompts.render, template.name)))


def _describe(arg: prompts.PromptArgument) -> str:
    if arg.required or not arg.default:
        return arg.description
    return f"{arg.description} (default: {arg.default})"


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _resource_errors(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TunestepError as exc:
        kind = ResourceNotFoundError if exc.code in NOT_FOUND_CODES else ResourceError
        raise kind(str(exc)) from None


def register_resources(server: MCPServer, workspace: Callable[[], Workspace]) -> None:
    """Register the read-only resources; ``workspace`` opens the server's workspace."""

    @server.resource("tunestep://plan", name="plan", title="Training plan", mime_type=JSON,
                     annotations=FOR_BOTH, description=(
                         "The plan's settings as loaded: `plan` (every key, defaults filled "
                         "in), `source` (the plan file, or null when the reference defaults "
                         "are used), `sha256`, `notes`."))
    def plan() -> str:
        from tunestep.tools.core.plan import load_plan

        return _resource_errors(lambda: _dump(load_plan(workspace()).model_dump(mode="json")))

    @server.resource("tunestep://steps", name="steps", title="Trained steps", mime_type=JSON,
                     annotations=FOR_BOTH, description=(
                         "The ledger's trained steps, oldest first: step, batch, draft_id, "
                         "job_id, digest, mode, datasets (path and sha256 of every file), "
                         "model_path, metrics, recorded_at."))
    def steps() -> str:
        return _resource_errors(lambda: _dump({"steps": _steps(workspace())}))

    @server.resource("tunestep://drafts/{draft_id}", name="draft", title="A stored draft",
                     mime_type=JSON, annotations=FOR_BOTH, description=(
                         "A stored job draft as the operator will approve it: request, job "
                         "config, files with sha256, estimate, warnings, run plan path and "
                         "the exact approve command."))
    def draft(draft_id: str) -> str:
        from tunestep.tools.drafts.draft import load_draft

        return _resource_errors(
            lambda: _dump(load_draft(workspace(), draft_id).model_dump(mode="json")))

    @server.resource("tunestep://inspections/latest", name="latest_inspection",
                     title="Latest inspection report", mime_type=JSON, annotations=FOR_BOTH,
                     description=("The most recent run_inspector report recorded in the "
                                  "ledger, with the path it inspected and when."))
    def latest_inspection() -> str:
        return _resource_errors(lambda: _dump(_latest_inspection(workspace())))

    @server.resource("tunestep://jobs/{job_id}", name="job", title="Job status and log tail",
                     mime_type=JSON, annotations=FOR_BOTH, description=(
                         "A job's status (refreshed from its backend, as job_status) and "
                         f"the last {LOG_TAIL} lines of its log."))
    def job(job_id: str) -> str:
        return _resource_errors(lambda: _dump(_job(workspace(), job_id)))


def _steps(ws: Workspace) -> list[dict[str, Any]]:
    with ledger.open_ledger(ws) as conn:
        rows = conn.execute("SELECT * FROM steps ORDER BY step").fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["datasets"] = ledger.loads(item["datasets"]) or []
        item["metrics"] = ledger.loads(item["metrics"]) or {}
        out.append(item)
    return out


def _latest_inspection(ws: Workspace) -> dict[str, Any]:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT path, report, created_at FROM inspections"
                           " ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    if row is None:
        raise TunestepError("inspection_none",
                            "no inspection recorded yet: call run_inspector on a batch first")
    return {"path": row["path"], "created_at": row["created_at"],
            "report": ledger.loads(row["report"])}


def _job(ws: Workspace, job_id: str) -> dict[str, Any]:
    from tunestep.tools.runs.job_control import job_logs, job_status

    status = job_status(ws, job_id)
    try:
        logs: dict[str, Any] = job_logs(ws, job_id, LOG_TAIL).model_dump(mode="json")
    except TunestepError as exc:  # the status is still worth showing without the logs
        logs = {"job_id": job_id, "lines": [], "total_lines": None, "error": str(exc)}
    return {"status": status.model_dump(mode="json"), "logs": logs}
