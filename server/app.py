"""The MCP server: each tool is a thin view of one domain function in tunestep.tools.

Tools parse nothing and decide nothing: they open the workspace given at launch, call
the domain function, and turn a TunestepError into a ToolError whose message starts
with the error code, so the model reads what to fix. Heavy libraries load inside the
domain functions, never here, so ``tools/list`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import BaseModel, WithJsonSchema

from tunestep.server import cards
from tunestep.server.assistant import register_prompts, register_resources
from tunestep.server.mcp_tools import (
    ASK_THE_PERSON,
    FETCHES_MODEL,
    MOVES_LATEST,
    READ_ONLY,
    REMOTE_READ,
    STARTS_JOB,
    STOPS_JOB,
    WRITES_DERIVED,
    card_tool,
    inline_schema,
    run_with_progress,
    tool,
    tool_errors,
)
from tunestep.tools import inspector
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace, find_workspace
from tunestep.tools.data import holdout_repin, merge, preflight
from tunestep.tools.data import mapping as mappings
from tunestep.tools.data import preprocess as preprocessing
from tunestep.tools.drafts import draft as drafts
from tunestep.tools.lineage import model_sync, promotion
from tunestep.tools.runs import job_control, submit

T = TypeVar("T")

INSTRUCTIONS = """\
tunestep prepares one incremental fine-tuning step at a time. Work in this order:
check_batch (preflight) -> run_inspector -> apply_mapping when the status is
NEEDS_MAPPING -> draft_job. Then STOP: only the human operator can approve a draft, by
running `tunestep approve DRAFT_ID` in their own terminal and pasting the token to you.
Never claim an approval you were not given; submit_job refuses anything else. While a job
runs, job_status says when to ask again (ask_again_after_s); pass wait_s to wait in one
call instead of asking in a loop."""

# job_status(wait_s=...) polls at most this long in one call: under the common 60 s
# client request timeouts.
MAX_WAIT_S = 50


# What a result adds when the client renders MCP Apps (cards.offer); the rest of the text is
# the same for every client.
REVIEW_OFFERED = ("The operator sees this draft as stored in tunestep's review card, with the "
                  "approve command and a copy button. Still give them the approve_command; "
                  "only their terminal can approve.")
RESULTS_OFFERED = ("The operator sees this step's results card: the gate's decision, the "
                   "metrics with intervals and the progression of steps.")
RUNNING_OFFERED = "The operator sees this job's progress in tunestep's results card."


# The client sees MappingSpec's schema; the server validates the spec itself, so a wrong
# one is refused as mapping_spec_invalid naming the field and an example, not with the
# SDK's validator text.
MappingArg = Annotated[dict[str, Any] | None, WithJsonSchema(
    {"anyOf": [inline_schema(inspector.MappingSpec), {"type": "null"}], "default": None})]


class ServerConfig(BaseModel):
    """What the server is launched with; never read from inside the workspace."""

    workspace: Path | None = None
    operator_keys: list[Path | str] = []  # key file paths, or inline PEM text
    operator_key_fingerprints: list[str] = []  # when given, every key must match one


def build_server(config: ServerConfig | None = None) -> MCPServer:
    """The tunestep MCP server for one workspace."""
    config = config or ServerConfig()

    # Read once, now: a key file replaced under the running server is never trusted.
    pinned = _pin_keys(config) if config.operator_keys else {}

    def workspace() -> Workspace:
        # One call's context: every tool reads the ledger's line with the pinned keys
        # (signed promotions), reads the plan once and hashes each unchanged file once.
        return find_workspace(config.workspace, trusted_keys=pinned)

    # The Apps extension is applied when the server is made: the card-bound tools are
    # declared on it first.
    apps = cards.build_apps(workspace, tool_errors)

    @card_tool(apps, cards.REVIEW_URI, "Draft a training job", WRITES_DERIVED)
    def draft_job(batch: str | None = None, mode: Literal["full", "lora"] | None = None,
                  backend: Literal["local", "hf-jobs"] = "local", flavor: str | None = None,
                  timeout: str | None = None,
                  overrides: dict[str, float | int | str] | None = None,
                  kind: Literal["train", "inspect"] = "train",
                  ctx: Context | None = None) -> Annotated[CallToolResult, drafts.JobDraft]:
        """Prepare the complete job for a batch; it does NOT start anything.

        Returns the job payload (model, resume point, datasets with sha256,
        hyperparameters, LoRA settings, outputs; for hf-jobs the exact submission with
        secrets by name), its digest and draft_id, a time and cost estimate with
        warnings, and writes the human-readable run plan. The same inputs give the same
        draft_id. Next: show the operator the summary and the `approve_command`; only the
        operator can approve, in their own terminal. Never claim an approval.

        `kind="inspect"` drafts the inspector as a Hugging Face Job instead (backend
        "hf-jobs" only; flavor cpu-basic and timeout 15m by default; no mode or
        overrides): it costs money, so it is approved like training. Locally,
        run_inspector is free and needs no draft.
        """
        request = drafts.DraftRequest(kind=kind, batch=batch, mode=mode, backend=backend,
                                      flavor=flavor, timeout=timeout,
                                      overrides=overrides or {})
        return cards.offer(ctx, drafts.draft_job(workspace(), request), REVIEW_OFFERED)

    # Not read-only: a finished job's outputs are fetched and its model brought home.
    @card_tool(apps, cards.RESULTS_URI, "Job status", FETCHES_MODEL)
    async def job_status(job_id: str, wait_s: int = 0,
                         ctx: Context | None = None
                         ) -> Annotated[CallToolResult, job_control.JobStatus]:
        """Where a job is now (running, succeeded, failed, cancelled, lost), with its result.

        A running job's `progress` (stage, epoch, hold-out rows evaluated, from the job's
        own output) and `ask_again_after_s`: asking sooner gets the same answer (an
        hf-jobs job's Hub status is asked at most every 10 s). `wait_s` (0-50) waits in
        this call until the job ends or that many seconds pass, sending progress
        notifications meanwhile. When an hf-jobs step has succeeded, its reports are
        merged into the workspace and the model it pushed is downloaded into the local
        model store (as `sync_model`).
        """
        def check(progress) -> job_control.JobStatus:
            if not 0 <= wait_s <= MAX_WAIT_S:
                raise TunestepError("bad_argument", f"wait_s must be between 0 and {MAX_WAIT_S}")
            ws = workspace()  # here, so workspace_not_found comes back by its code
            if not wait_s:
                return job_control.job_status(ws, job_id)

            polls = 0

            def said(status: job_control.JobStatus) -> None:
                nonlocal polls  # MCP progress must grow with every notification
                polls += 1
                p = status.progress
                stage = p.stage if p and p.stage else status.status
                epoch = f", epoch {p.epoch:g}" if p and p.epoch is not None else ""
                progress(polls, None, f"{status.status}: {stage}{epoch}")

            return job_control.wait_for_job(ws, job_id, timeout=wait_s, poll=2.0,
                                            on_poll=said)

        status = await run_with_progress(ctx, check)
        finished = status.terminal and status.status == "succeeded"
        return cards.offer(ctx, status, RESULTS_OFFERED if finished else RUNNING_OFFERED)

    server = MCPServer(name="tunestep", title="tunestep", instructions=INSTRUCTIONS,
                       version=_version(), extensions=[apps])

    def trusted_keys() -> dict:
        from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace

        ensure_keys_outside_workspace(config.operator_keys, workspace().root)
        if hasattr(pinned, "check_unchanged"):
            pinned.check_unchanged()
        return pinned

    @tool(server, "Preflight the next batch", READ_ONLY)
    def check_batch(batch: str | None = None) -> preflight.PreflightReport:
        """Preflight for the next fine-tuning step, before anything is run.

        Finds the next untrained batch under datasets/incremental/ (or the one named),
        lists its data files with row counts and sha256, checks that the hold-out
        validation set is present and unchanged since it was first pinned, that the
        latest checkpoint is reachable through the model-store link, and whether a
        Hugging Face token is available (never its value). `ready` is true when no
        problem has severity 'error'; `next_actions` says what to do next.
        """
        return preflight.check_batch(workspace(), batch)

    @tool(server, "Inspect a dataset", READ_ONLY)
    async def run_inspector(path: str, tokens: bool = False, max_errors: int = 100,
                            ctx: Context | None = None) -> inspector.InspectionReport:
        """Validate every row of a data file or folder inside the workspace.

        Detects the format (chat messages, ShareGPT, Alpaca, prompt/completion, text,
        typed content parts) and reports READY (canonical chat, no errors),
        NEEDS_MAPPING (a known foreign format; `suggested_mapping` is included) or
        INVALID, with line-numbered findings (the first `max_errors` listed, all
        counted), stats, duplicates within the input and against earlier batches, and
        leakage into the hold-out set. `tokens=true` adds exact token counts with the
        plan model's tokenizer. Cached by content: an unchanged input costs one hash.
        """
        return await run_with_progress(ctx, inspector.run_inspector, ws=workspace(), path=path,
                                       tokens=tokens, max_errors=max_errors)

    @tool(server, "Map a foreign format to chat", WRITES_DERIVED)
    async def apply_mapping(source: str, mapping: MappingArg = None,
                            ctx: Context | None = None) -> mappings.MappingResult:
        """Write `source` as canonical chat JSONL into the plan's *_mapped/ folder.

        `mapping` is a declarative MappingSpec (never code); leave it out to use the
        inspector's suggested mapping, or edit that suggestion and pass it. The originals
        and the hold-out set are never written; the output folder gets a manifest with
        every dropped row and why. The same source and spec again is a no-op. Run
        run_inspector on the output afterwards: it should say READY.
        """
        ws = workspace()

        def apply(progress) -> mappings.MappingResult:
            from tunestep.tools.inspector.spec import parse_mapping_spec

            spec = None if mapping is None else parse_mapping_spec(mapping)
            if spec is None:
                suggestion = mappings.suggest_mapping(ws, source, progress=progress)
                if suggestion.mapping is None:
                    raise TunestepError("mapping_none", suggestion.reason, path=source)
                spec = suggestion.mapping
            return mappings.apply_mapping(ws, source, spec, progress=progress)

        return await run_with_progress(ctx, apply)

    @tool(server, "Merge the step's training data", WRITES_DERIVED)
    async def merge_datasets(batch: str | None = None,
                             strategy: Literal["list", "file"] | None = None,
                             dedup: bool | None = None,
                             ctx: Context | None = None) -> merge.MergeResult:
        """Assemble the step's training data: base train, then every batch up to this one.

        Strategy 'list' (the plan's default) only lists the ordered files with sha256;
        'file' writes one merged JSONL (optional exact dedup, replay of earlier data)
        with a manifest of every source and its row range. Refuses a batch that is not
        READY, and any row equal to a hold-out row. Same inputs again: a no-op.
        """
        return await run_with_progress(ctx, merge.merge_datasets, ws=workspace(), batch=batch,
                                       strategy=strategy, dedup=dedup)

    @tool(server, "Tokenize the step's data", WRITES_DERIVED)
    async def preprocess(batch: str | None = None, max_length: int | None = None,
                         ctx: Context | None = None) -> preprocessing.PreprocessResult:
        """Tokenize the step's training data with the model's chat template, ahead of a job.

        Writes datasets/tokenized/<batch>/ (input_ids, attention_mask, labels masked to
        the assistant turns) and reports tokens, truncated rows and padding waste. Cached
        by the content of every input, the tokenizer and max_length: a hit returns at once.
        The job uses a matching tokenized dataset when present.
        """
        return await run_with_progress(ctx, preprocessing.preprocess, ws=workspace(),
                                       batch=batch, max_length=max_length)

    @tool(server, "Submit an approved job", STARTS_JOB, meta=ASK_THE_PERSON)
    def submit_job(draft_id: str, approval_token: str) -> submit.JobHandle:
        """Start the job of a draft the operator approved; refuses anything else.

        `approval_token` is the string the operator got from `tunestep approve DRAFT_ID`
        and pasted to you; do not invent, alter or reuse one. A refusal names its reason
        (approval_missing, approval_bad_signature, approval_expired, approval_replayed,
        draft_stale, ...). A stale draft must be drafted and approved again.
        """
        return submit.submit_job(workspace(), draft_id, approval_token, trusted_keys())

    @tool(server, "Promote or roll back a model version", MOVES_LATEST, meta=ASK_THE_PERSON)
    def promote_version(version: str,
                        approval_token: str | None = None) -> promotion.PromotionOutcome:
        """Make a recorded model version the store's `latest` (promote, or roll back).

        Without `approval_token`: stores a promotion request for `version` (a folder under
        the store's versions/, e.g. 0002_batch_100_02) with its content identity, moves
        nothing, and returns `request.approve_command` for the operator. A step that
        failed its promotion gate is such a version. With the token the operator pasted
        (from `tunestep approve promote-...`): checks it (signature, trusted key,
        act "promote", this request and version, content unchanged, nonce unused) and
        swaps `latest` atomically. You cannot move `latest` without that token.
        """
        return promotion.promote(workspace(), version, approval_token, trusted_keys())

    @tool(server, "Re-pin the hold-out set", MOVES_LATEST, meta=ASK_THE_PERSON)
    def repin_holdout(approval_token: str | None = None) -> holdout_repin.RepinOutcome:
        """Pin the hold-out set as it is now, when the operator changed it on purpose.

        Without `approval_token`: stores a re-pin request (old and new sha256, rows
        added and removed), pins nothing, and returns `request.approve_command` for the
        operator to review and sign. With the token the operator pasted (from `tunestep
        approve repin-...`): checks it (signature, trusted key, act "repin_holdout", this
        request, the file still the signed bytes, nonce unused) and pins the new sha256:
        every later draft and gate measures it. You cannot re-pin without that token;
        restoring the original file needs none.
        """
        return holdout_repin.repin(workspace(), approval_token, trusted_keys())

    @tool(server, "Job logs", REMOTE_READ)
    def job_logs(job_id: str, tail: int = 50, raw: bool = False) -> job_control.JobLogs:
        """The last `tail` lines (1-5000) of a job's output.

        By default only the job's own log lines and its last error, without escape codes
        (`left_out` counts the rest); `raw=true` gives every line as the job wrote it
        (progress bars, library output, escape codes), as the CLI's `logs --raw` does.
        """
        return job_control.job_logs(workspace(), job_id, tail, raw=raw)

    @tool(server, "Bring a pushed model home", FETCHES_MODEL)
    def sync_model(version: str | None = None) -> model_sync.SyncReport:
        """Download the model a step pushed to the Hub into the local model store.

        job_status does this when an hf-jobs step succeeds; call it again when that
        download failed or was interrupted (it is safe to repeat). `version` is
        `NNNN_<batch>`, a batch name or a step number; by default every remote step
        whose model is not in the store yet. `latest` moves as after a local step, unless
        the job did not promote the step.
        """
        return model_sync.sync_model(workspace(), version)

    @tool(server, "Cancel a job", STOPS_JOB)
    def cancel_job(job_id: str) -> job_control.JobStatus:
        """Stop a running job. Stopping spends nothing, so it needs no approval."""
        return job_control.cancel_job(workspace(), job_id)

    @tool(server, "Recent jobs", READ_ONLY)
    def list_jobs(limit: int = 20) -> job_control.JobList:
        """The most recent jobs of this workspace, newest first."""
        return job_control.list_jobs(workspace(), limit)

    register_prompts(server)
    register_resources(server, workspace)
    return server


def _pin_keys(config: ServerConfig) -> dict:
    from tunestep.tools.signing.trusted_keys import pin_trusted_keys

    return pin_trusted_keys(config.operator_keys, config.operator_key_fingerprints)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunestep")
    except PackageNotFoundError:
        return "0"
