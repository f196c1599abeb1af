"""The MCP prompts: templates load and render, prompts/list shows typed arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tunestep import prompts
from tunestep.server.app import ServerConfig, build_server
from tunestep.server.assistant import register_prompts
from tunestep.tools.core.errors import TunestepError

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
# Arguments that make each template render; required ones first.
SAMPLE_ARGS = {
    "prepare_next_batch": {"batch": "batch_100_03", "mode": "lora", "backend": "hf-jobs"},
    "request_approval": {"draft_id": "draft-0123456789ab"},
    "review_results": {"job_id": "job-0123456789ab", "compare_with": "batch_100_01"},
}
REQUIRED = {"prepare_next_batch": set(), "request_approval": {"draft_id"},
            "review_results": {"job_id"}}


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def prompt_server(root: Path):
    """The server with its prompts (registered here until build_server does it)."""
    server = build_server(ServerConfig(workspace=root))
    if not await server.list_prompts():
        register_prompts(server)
    return server


# ----------------------------------------------------------------------- the loader


def test_every_template_file_is_listed_with_its_arguments():
    files = sorted(p.stem for p in (REPO / "prompts").glob("*.md"))
    templates = {t.name: t for t in prompts.list_templates()}
    assert sorted(templates) == files == sorted(SAMPLE_ARGS)
    for name, template in templates.items():
        assert template.title and template.description
        assert {a.name for a in template.arguments if a.required} == REQUIRED[name]
        assert {a.name for a in template.arguments} == set(SAMPLE_ARGS[name])
        assert all(a.description for a in template.arguments)


@pytest.mark.parametrize("name", sorted(SAMPLE_ARGS))
def test_render_fills_every_placeholder(name):
    text = prompts.render(name, **SAMPLE_ARGS[name])
    for value in SAMPLE_ARGS[name].values():
        assert value in text
    declared = {a.name for a in prompts.get_template(name).arguments}
    leftovers = set(re.findall(r"\{([A-Za-z_]\w*)\}", text)) & declared
    assert not leftovers
    assert not text.startswith("---")  # the front matter is not part of the prompt


def test_optional_arguments_take_their_defaults():
    text = prompts.render("prepare_next_batch")
    assert "batch: the next untrained batch" in text
    assert "backend: local" in text
    blank = prompts.render("prepare_next_batch", batch="  ", mode="", backend=None)
    assert blank == text


def test_missing_or_blank_required_argument_is_refused():
    for args in ({}, {"draft_id": ""}, {"draft_id": "   "}):
        with pytest.raises(TunestepError) as exc:
            prompts.render("request_approval", **args)
        assert exc.value.code == "prompt_argument_missing"
        assert "draft_id" in exc.value.message


def test_unknown_prompt_and_unknown_argument_are_refused():
    with pytest.raises(TunestepError) as exc:
        prompts.render("approve_for_me")
    assert exc.value.code == "prompt_unknown"
    assert "request_approval" in exc.value.message  # names the real ones
    with pytest.raises(TunestepError) as exc:
        prompts.render("request_approval", draft_id="draft-1", token="x")
    assert exc.value.code == "prompt_argument_unknown"


def test_bad_argument_values_are_refused():
    for value in ("draft\x00id", "x" * 5000):
        with pytest.raises(TunestepError) as exc:
            prompts.render("request_approval", draft_id=value)
        assert exc.value.code == "prompt_argument_invalid"


def test_values_are_substituted_once_not_expanded_again():
    text = prompts.render("request_approval", draft_id="{draft_id} {batch}")
    assert "approve draft {draft_id} {batch}" in text


@pytest.mark.parametrize(("text", "problem"), [
    ("no front matter\n", "front matter"),
    ("---\nname: t\ntitle: T\ndescription: d\n---\nHello {who}\n", "who"),
    ("---\nname: t\ntitle: T\ndescription: d\narguments:\n  - name: who\n    description: w\n"
     "---\nHello\n", "never uses"),
    ("---\nname: other\ntitle: T\ndescription: d\n---\nHi\n", "differs"),
    ("---\nname: t\ntitle: T\ndescription: d\narguments:\n  - name: who\n    description: w\n"
     "    required: true\n    default: x\n---\n{who}\n", "cannot have a default"),
    ("---\nname: t\ntitle: T\ndescription: d\ncolour: red\n---\nHi\n", "colour"),
])
def test_broken_templates_are_named_not_served(text, problem):
    with pytest.raises(TunestepError) as exc:
        prompts.parse_template("t", text)
    assert exc.value.code == "prompt_template_invalid"
    assert problem in exc.value.message
    assert exc.value.path == "prompts/t.md"


# ------------------------------------------------------------ what the prompts say


def test_prepare_next_batch_walks_the_tools_in_order_and_stops():
    text = prompts.render("prepare_next_batch")
    order = ["check_batch", "run_inspector", "apply_mapping", "merge_datasets", "preprocess",
             "draft_job"]
    positions = [text.index(f"`{tool}") for tool in order]
    assert positions == sorted(positions)
    for status in ("READY", "NEEDS_MAPPING", "INVALID"):
        assert status in text
    assert "STOP" in text and "approve_command" in text
    assert "Never run `tunestep approve` yourself" in text


def test_request_approval_covers_every_refusal_code_of_submit():
    text = prompts.render("request_approval", draft_id="draft-0123456789ab")
    source = (REPO / "tools/signing/approval.py").read_text() + (REPO / "tools/runs/submit.py"
                                                              ).read_text()
    real = set(re.findall(r"\"(approval_[a-z_]+)\"", source))
    real.discard("approval_claims_invalid")  # an operator-side signing error, not a refusal
    mentioned = set(re.findall(r"`(approval_[a-z_]+)`", text))
    assert real and real <= mentioned, f"codes the prompt does not explain: {real - mentioned}"
    assert mentioned <= real, f"codes that do not exist: {mentioned - real}"
    assert "`draft_stale`" in text
    assert "tunestep://drafts/draft-0123456789ab" in text
    assert 'submit_job(draft_id="draft-0123456789ab"' in text


def test_review_results_reads_outputs_and_the_ledger():
    text = prompts.render("review_results", job_id="job-0123456789ab")
    for needle in ("job_status", "job_logs", "metrics_step_", "samples_step_", ".png",
                   "tunestep://steps", "tunestep://jobs/job-0123456789ab", "grade_mae"):
        assert needle in text


# ----------------------------------------------------------------- over MCP (memory)


async def test_prompts_list_shows_typed_arguments(sample_ws):
    async with Client(await prompt_server(sample_ws.root)) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(listed) == set(SAMPLE_ARGS)
    for name, prompt in listed.items():
        args = {a.name: a for a in prompt.arguments}
        assert set(args) == set(SAMPLE_ARGS[name])
        assert {n for n, a in args.items() if a.required} == REQUIRED[name]
        assert all(a.description for a in args.values())
        assert prompt.title and prompt.description
    backend = {a.name: a for a in listed["prepare_next_batch"].arguments}["backend"]
    assert "default: local" in backend.description


@pytest.mark.parametrize("name", sorted(SAMPLE_ARGS))
async def test_each_prompt_renders_through_the_client(sample_ws, name):
    async with Client(await prompt_server(sample_ws.root)) as client:
        result = await client.get_prompt(name, SAMPLE_ARGS[name])
    assert len(result.messages) == 1
    message = result.messages[0]
    assert message.role == "user"
    assert message.content.text == prompts.render(name, **SAMPLE_ARGS[name])


async def test_prompt_with_only_required_arguments_renders(sample_ws):
    async with Client(await prompt_server(sample_ws.root)) as client:
        result = await client.get_prompt("review_results", {"job_id": "job-1"})
    assert "Compare with: the step just before this one" in result.messages[0].content.text


async def test_missing_required_argument_is_an_error_with_the_code(sample_ws):
    async with Client(await prompt_server(sample_ws.root)) as client:
        for args in ({}, {"draft_id": " "}):
            with pytest.raises(MCPError) as exc:
                await client.get_prompt("request_approval", args)
            assert exc.value.message.startswith("prompt_argument_missing:")
        with pytest.raises(MCPError) as exc:
            await client.get_prompt("request_approval", {"draft_id": "d", "extra": "x"})
        assert exc.value.message.startswith("prompt_argument_unknown:")


def test_request_approval_presents_every_signed_field_and_labels_the_rest():
    """The prompt's text names each field the signature covers (what `tunestep approve`
    shows) and says the estimate and warnings are not signed."""
    from tunestep.tools.drafts.draft_model import HfSubmission

    text = " ".join(prompts.render("request_approval", draft_id="draft-0123456789ab").split())
    for field in set(HfSubmission.model_fields) - {"labels", "bundle"}:
        assert f"`submission.{field}`" in text, field
    for key in ("hub.push", "hub.model_id", "hub.private", "trackio", "gate", "resume_from",
                "base_model", "data", "timeout_seconds"):
        assert f"`job_config.{key}`" in text, key
    for needle in ("`digest`", "`files`", "`checkpoint`", "`regime`", "worst case",
                   "hf://<id>@<sha>", "/tunestep/step/start", "**Not signed**",
                   "`holdout near match`", "bound to"):
        assert needle in text, needle
    assert "Never give the suggested timeout as the timeout" in text
