"""MCP Apps cards: the review card of a draft and the results card of a step.

Declared with the SDK's Apps extension (``mcp.server.apps``): two ``ui://`` HTML
resources, the tools that render them (``draft_job`` -> review card, ``job_status`` ->
results card, bound in ``server/app.py``) and two tools only the cards call
(visibility ``["app"]``, hidden from the model): ``review_card`` returns the draft as
``load_draft`` reads it from the ledger, ``results_card`` a finished step's outcome.
A card shows what the ledger holds, never text the assistant wrote.

The HTML is one self-contained document per card, assembled from ``assets/`` (package
data): ``card.html`` with ``card.css``, ``bridge.js`` (the postMessage JSON-RPC of the
Apps spec, plain script) and the card's own script inlined. No build step, no external
script, no network: the resources declare an empty CSP (the host's default: nothing
outside the frame) and ask for one permission, ``clipboardWrite``, for the copy button.

Nothing depends on a card: every tool's text result stays complete. Whether the client
negotiated Apps (``client_supports_apps``) decides only whether the result also says a
card is shown (``offer``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import pydantic_core
from mcp.server.apps import Apps, ResourceCsp, ResourcePermissions, client_supports_apps
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft_model import DraftManifest, JobDraft
from tunestep.tools.drafts.review import DraftReview
from tunestep.tools.runs.step_outcome import StepOutcome

REVIEW_URI = "ui://tunestep/review-card.html"
RESULTS_URI = "ui://tunestep/results-card.html"
# The draft's top-level fields the signature fixes: those of the signed manifest
# (tools/drafts/draft_model.py DraftManifest; the digest is sha256 over its canonical bytes, and
# load_draft parses them back only after they hash to it).
DIGEST_COVERS = tuple(name for name in DraftManifest.model_fields if name in JobDraft.model_fields)

APP_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False,
                           idempotent_hint=True, open_world_hint=False)
_SLOT = re.compile(r"__(TITLE|CSS|BRIDGE|CARD)__")


class ReviewCard(BaseModel):
    """What the review card shows: the stored draft, and which of its fields are signed."""

    draft: JobDraft
    signed: list[str]  # top-level fields of ``draft`` that its digest (the signature) covers
    # The same field-by-field reading `tunestep approve` shows (tools/drafts/review.py): the
    # worst case at the higher of the table and the quoted price, the resume point's
    # content identity.
    review: DraftReview


def card_html(card: str, title: str) -> str:
    """One card as a self-contained HTML document (``card`` is ``review`` or ``results``)."""
    assets = files(__package__) / "assets"
    parts = {"TITLE": title, "CSS": (assets / "card.css").read_text(encoding="utf-8"),
             "BRIDGE": (assets / "bridge.js").read_text(encoding="utf-8"),
             "CARD": (assets / f"{card}.js").read_text(encoding="utf-8")}
    for name in ("BRIDGE", "CARD", "CSS"):  # inlined: a closing tag would end the element
        if "</" in parts[name]:
            raise ValueError(f"{card} card asset {name} holds '</'")
    template = (assets / "card.html").read_text(encoding="utf-8")
    return _SLOT.sub(lambda m: parts[m.group(1)], template)  # one pass: no re-expansion


def build_apps(workspace: Callable[[], Workspace],
               errors: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Apps:
    """The Apps extension with both cards and the tools only they call.

    ``errors`` maps a TunestepError to the ToolError the client reads (server/app.py).
    """
    apps = Apps()
    clipboard = ResourcePermissions(clipboard_write={})
    apps.add_html_resource(
        REVIEW_URI, card_html("review", "tunestep: review a draft"), name="review-card",
        title="Review a draft", csp=ResourceCsp(), permissions=clipboard, prefers_border=True,
        description="The draft as stored and signed, and the `tunestep approve` command")
    apps.add_html_resource(
        RESULTS_URI, card_html("results", "tunestep: a step's results"), name="results-card",
        title="A step's results", csp=ResourceCsp(), permissions=clipboard,
        prefers_border=True,
        description="The gate's decision, metrics with intervals, the progression of steps")

    @apps.tool(resource_uri=REVIEW_URI, visibility=["app"], name="review_card",
               title="Review card data", annotations=APP_READ,
               description="The stored draft for the review card (called by the card).")
    @errors
    def review_card(draft_id: str) -> ReviewCard:
        from tunestep.tools.drafts.draft import load_draft
        from tunestep.tools.drafts.review import review

        ws = workspace()
        draft = load_draft(ws, draft_id)
        return ReviewCard(draft=draft, signed=list(DIGEST_COVERS),
                          review=review(draft, str(ws.root)))

    @apps.tool(resource_uri=RESULTS_URI, visibility=["app"], name="results_card",
               title="Results card data", annotations=APP_READ,
               description="A finished step's outcome for the results card (called by the card).")
    @errors
    def results_card(job_id: str) -> StepOutcome:
        from tunestep.tools.runs.step_outcome import step_outcome

        return step_outcome(workspace(), job_id)

    return apps


def offer(ctx: Any, result: BaseModel, card: str) -> CallToolResult:
    """The tool's result as the SDK would send it, plus one line naming the card when the
    client negotiated MCP Apps (it renders the card itself; the text stays complete)."""
    structured = result.model_dump(mode="json", by_alias=True)
    content = [TextContent(type="text",
                           text=pydantic_core.to_json(structured, indent=2).decode())]
    if ctx is not None and client_supports_apps(ctx):
        content.append(TextContent(type="text", text=card))
    return CallToolResult(content=content, structured_content=structured)
