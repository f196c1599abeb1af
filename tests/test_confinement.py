"""Confinement: every MCP tool that takes a path, a batch name or an id stays inside.

One table over all of them, through the in-memory MCP client: ``..``, absolute paths,
links inside the workspace that point out (as the path itself, as a folder on the way, as
a file inside a folder the tool lists, as an earlier batch, as an output folder), and
names holding NUL or control characters. Each call must come back as a tool error with
the named code, and the outside world must be untouched: every file there keeps its
bytes and its access time (reads are detected: the sentinel's atime is set before its
mtime, so under relatime or strictatime any read moves it), and no new path appears
beside the workspace.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tunestep.server.app import ServerConfig, build_server
from tunestep.server.mcp_tools import error_code
from tunestep.tools.demo.sample_workspace import build_sample_workspace, make_row

pytestmark = pytest.mark.anyio

OLD_ATIME = 1_000_000_000  # 2001: any read of a file whose atime < mtime moves it to now
OUT = "{OUT}"  # stands for the absolute path of the outside folder in a case's argument


@pytest.fixture
def anyio_backend():
    return "asyncio"


# --- the world outside the workspace ------------------------------------------------------

def _rows(seed: int, count: int = 20) -> bytes:
    import random

    rng = random.Random(seed)
    return b"".join(orjson.dumps(make_row(rng, 9000 + i)) + b"\n" for i in range(count))


def build_outside(folder: Path) -> None:
    """Valid chat data (a tool that followed a link would happily read it) and empty dirs."""
    folder.mkdir()
    (folder / "secret.jsonl").write_bytes(_rows(1))
    (folder / "batch").mkdir()
    (folder / "batch" / "examples.jsonl").write_bytes(_rows(2))
    (folder / "merged_train.jsonl").write_bytes(b"outside: not a merge output\n")
    (folder / "run_plan.md").write_bytes(b"outside: not a run plan\n")
    for empty in ("mapped", "tokenized", "tok_batch", "mapped_batch"):
        (folder / empty).mkdir()


def age_atimes(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (OLD_ATIME, path.stat().st_mtime))


def snapshot(tmp: Path, workspace: Path) -> dict[str, tuple]:
    """Every path under ``tmp`` outside the workspace: (bytes, atime) of files, dirs as None."""
    seen: dict[str, tuple] = {}
    for path in sorted(tmp.rglob("*")):
        if path == workspace or workspace in path.parents:
            continue
        if path.is_symlink():
            seen[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            seen[str(path)] = (path.read_bytes(), path.stat().st_atime)
        else:
            seen[str(path)] = ("dir",)
    return seen


# --- links a case plants inside the workspace ---------------------------------------------

def link(rel: str, target: str) -> Callable[[Path, Path], None]:
    def plant(ws: Path, outside: Path) -> None:
        where = ws / rel
        where.parent.mkdir(parents=True, exist_ok=True)
        if where.is_dir() and not where.is_symlink():
            where.rmdir()
        elif where.exists() or where.is_symlink():
            where.unlink()
        os.symlink(outside / target, where)

    return plant


LINK_DIR = link("datasets/incremental/linked", "")
LINK_FILE = link("datasets/incremental/leak.jsonl", "secret.jsonl")
LINK_IN_BATCH = link("datasets/incremental/batch_100_01/leak.jsonl", "secret.jsonl")
LINK_BATCH = link("datasets/incremental/batch_100_04", "batch")
LINK_EARLIER_BATCH = link("datasets/incremental/batch_100_00", "batch")
LINK_MAPPED_ROOT = link("datasets/processed_webdev_coding_mapped", "mapped")
LINK_MAPPED_OUT = link("datasets/processed_webdev_coding_mapped/batch_100_02", "mapped_batch")
LINK_MERGED = link("datasets/processed_webdev_coding/merged_train.jsonl", "merged_train.jsonl")
LINK_TOKENIZED_ROOT = link("datasets/tokenized", "tokenized")
LINK_TOKENIZED_OUT = link("datasets/tokenized/batch_100_01", "tok_batch")
LINK_RUN_PLAN = link(".specs/training/run_plan_preparation.md", "run_plan.md")


@dataclass
class Case:
    id: str
    tool: str
    args: dict
    codes: set[str]
    setup: Callable[[Path, Path], None] | None = None
    marks: list = field(default_factory=list)


ESCAPE, ABSOLUTE, CONTROL = {"path_escape"}, {"path_absolute"}, {"path_control_char"}

# Paths as the path-taking tools get them (run_inspector path, apply_mapping source).
BAD_PATHS: list[tuple[str, str, set[str], Callable | None]] = [
    ("dotdot", "../outside/secret.jsonl", ESCAPE, None),
    ("dotdot-deep", "datasets/incremental/../../../outside/secret.jsonl", ESCAPE, None),
    ("dotdot-backslash", "..\\outside\\secret.jsonl", ESCAPE, None),
    ("dotdot-only", "..", ESCAPE, None),
    ("absolute", f"{OUT}/secret.jsonl", ABSOLUTE, None),
    ("absolute-folder", OUT, ABSOLUTE, None),
    ("absolute-system", "/etc/passwd", ABSOLUTE, None),
    ("drive-letter", "C:\\outside\\secret.jsonl", ABSOLUTE, None),
    ("link-dir", "datasets/incremental/linked", ESCAPE, LINK_DIR),
    ("through-link-dir", "datasets/incremental/linked/secret.jsonl", ESCAPE, LINK_DIR),
    ("link-file", "datasets/incremental/leak.jsonl", ESCAPE, LINK_FILE),
    ("link-batch", "datasets/incremental/batch_100_04", ESCAPE, LINK_BATCH),
    ("folder-holding-link", "datasets/incremental/batch_100_01", ESCAPE, LINK_IN_BATCH),
    ("nul", "datasets/incremental/batch_100_01\x00/examples.jsonl", CONTROL, None),
    ("newline", "datasets/incremental/batch_100_01\n", CONTROL, None),
    ("tab", "datasets/incremental/\tbatch_100_01", CONTROL, None),
    ("escape-seq", "datasets/\x1b[2Jincremental/batch_100_01", CONTROL, None),
    ("del", "datasets/incremental/batch_100_01\x7f", CONTROL, None),
    ("carriage-return", "datasets/incremental/batch_100_01\r../../outside", CONTROL, None),
    ("empty", "", {"path_empty"}, None),
]

# Batch names as check_batch, merge_datasets, preprocess and draft_job get them.
BAD_BATCHES: list[tuple[str, str, set[str], Callable | None]] = [
    ("dotdot", "../../../outside", ESCAPE, None),
    ("dotdot-after-name", "batch_100_01/../../../../outside", ESCAPE, None),
    ("absolute", OUT, ABSOLUTE, None),
    ("absolute-batch", "/batch_100_01", ABSOLUTE, None),
    ("a-path-not-a-name", "datasets/incremental/batch_100_01", {"batch_name"}, None),
    ("file-in-batch", "batch_100_01/examples.jsonl", {"batch_name"}, None),
    ("nul", "batch_100_01\x00", CONTROL, None),
    ("newline", "batch_100_01\n", CONTROL, None),
    ("escape-seq", "\x1b]0;batch_100_01", CONTROL, None),
    ("link-batch", "batch_100_04", ESCAPE, LINK_BATCH),
    ("batch-holding-link", "batch_100_01", ESCAPE, LINK_IN_BATCH),
]

PATH_TOOLS = {"run_inspector": "path", "apply_mapping": "source"}
BATCH_TOOLS = ("check_batch", "merge_datasets", "preprocess", "draft_job")

ID_TOOLS = ("job_status", "job_logs", "cancel_job", "results_card")
BAD_IDS = ["../../../outside/secret.jsonl", f"{OUT}/secret.jsonl", "job-\x00../x",
           "job-\n\x1b[31m", "", "%2e%2e%2f%2e%2e%2foutside", "job-0123456789ab"]


def cases() -> list[Case]:
    table: list[Case] = []
    for tool, arg in PATH_TOOLS.items():
        for name, value, codes, setup in BAD_PATHS:
            table.append(Case(f"{tool}-{name}", tool, {arg: value}, codes, setup))
    for tool in BATCH_TOOLS:
        for name, value, codes, setup in BAD_BATCHES:
            table.append(Case(f"{tool}-{name}", tool, {"batch": value}, codes, setup))
    for name, value, codes, setup in BAD_BATCHES:  # the remote inspector's draft
        table.append(Case(f"draft_job-inspect-{name}", "draft_job",
                          {"batch": value, "kind": "inspect", "backend": "hf-jobs"},
                          codes, setup))
    table += [
        # Next-batch discovery: the lowest untrained batch is a link out.
        *[Case(f"{tool}-next-batch-is-link", tool, {}, ESCAPE, LINK_EARLIER_BATCH)
          for tool in BATCH_TOOLS],
        # An earlier batch (compared for duplicates) is a link out.
        Case("run_inspector-earlier-batch-is-link", "run_inspector",
             {"path": "datasets/incremental/batch_100_01"}, ESCAPE, LINK_EARLIER_BATCH),
        # Outputs: the folder or file a tool writes is a link out.
        Case("apply_mapping-output-root-is-link", "apply_mapping",
             {"source": "datasets/incremental/batch_100_02"}, ESCAPE, LINK_MAPPED_ROOT),
        Case("apply_mapping-output-is-link", "apply_mapping",
             {"source": "datasets/incremental/batch_100_02"}, ESCAPE, LINK_MAPPED_OUT),
        Case("merge_datasets-merged-file-is-link", "merge_datasets",
             {"batch": "batch_100_01", "strategy": "file"}, ESCAPE, LINK_MERGED),
        Case("preprocess-output-root-is-link", "preprocess", {"batch": "batch_100_01"},
             ESCAPE, LINK_TOKENIZED_ROOT),
        Case("preprocess-output-is-link", "preprocess", {"batch": "batch_100_01"},
             ESCAPE, LINK_TOKENIZED_OUT),
        Case("draft_job-run-plan-is-link", "draft_job", {"batch": "batch_100_01"},
             ESCAPE, LINK_RUN_PLAN),
    ]
    # Ids reach the ledger only (a parameterised lookup), never a file name.
    for tool in ID_TOOLS:
        for number, value in enumerate(BAD_IDS):
            table.append(Case(f"{tool}-id{number}", tool, {"job_id": value}, {"job_unknown"}))
    for number, value in enumerate(BAD_IDS):
        table.append(Case(f"submit_job-id{number}", "submit_job",
                          {"draft_id": value, "approval_token": "SIGNED"}, {"draft_unknown"}))
        table.append(Case(f"review_card-id{number}", "review_card", {"draft_id": value},
                          {"draft_unknown"}))
    return table


CASES = cases()


# --- the test -------------------------------------------------------------------------------

@pytest.fixture
def arena(tmp_path, tiny_model_dir):
    """A sample workspace (the tiny model as the plan's tokenizer) beside an outside folder."""
    ws = tmp_path / "ws"
    build_sample_workspace(ws, plan_overrides={"model": str(tiny_model_dir)})
    outside = tmp_path / "outside"
    build_outside(outside)
    return ws.resolve(), outside.resolve(), tmp_path


def _fill(value, outside: Path):
    if isinstance(value, str):
        return value.replace(OUT, str(outside))
    return value


def _signed_token(tmp: Path, ws: Path) -> tuple[str, Path]:
    """A genuinely signed approval (for a draft that does not exist) and its public key."""
    from tunestep.tools.signing.approval import sign_approval
    from tunestep.tools.signing.operator_keys import create_operator_key, load_private_key

    key = create_operator_key("confiner", b"pass phrase", tmp / "keys")
    token = sign_approval(load_private_key(key.private_key_path, b"pass phrase"),
                          draft_id="draft-0123456789ab", digest="ab" * 32, workspace=str(ws),
                          op="confiner", ttl_seconds=600, ledger_id="00" * 16)
    return token, key.public_key_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_every_tool_refuses_to_leave_the_workspace(arena, case: Case):
    ws, outside, tmp = arena
    keys: list[Path] = []
    args = {k: _fill(v, outside) for k, v in case.args.items()}
    if args.get("approval_token") == "SIGNED":
        args["approval_token"], public = _signed_token(tmp, ws)
        keys.append(public)
    if case.setup is not None:
        case.setup(ws, outside)
    age_atimes(outside)
    before = snapshot(tmp, ws)

    server = build_server(ServerConfig(workspace=ws, operator_keys=keys))
    with anyio.fail_after(120):
        async with Client(server) as client:
            result = await client.call_tool(case.tool, args)

    text = result.content[0].text if result.content else ""
    assert result.is_error, f"{case.tool}({args!r}) was not refused: {text[:300]}"
    assert error_code(result) in case.codes, text
    after = snapshot(tmp, ws)
    assert after.keys() == before.keys(), "a path appeared or vanished outside the workspace"
    for path, state in before.items():
        assert after[path] == state, f"{path} was read or written"


# --- resources that take an id ---------------------------------------------------------------

RESOURCE_IDS = ["..%2F..%2F..%2Foutside%2Fsecret.jsonl", "%2Fetc%2Fpasswd", "%00", "..",
                "draft%0A%1B%5B31m", "job-0123456789ab"]


@pytest.mark.parametrize("kind", ["drafts", "jobs"])
@pytest.mark.parametrize("value", RESOURCE_IDS)
async def test_resources_taking_an_id_stay_in_the_ledger(arena, kind, value):
    ws, outside, tmp = arena
    age_atimes(outside)
    before = snapshot(tmp, ws)
    async with Client(build_server(ServerConfig(workspace=ws))) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource(f"tunestep://{kind}/{value}")
    # Either the SDK's template did not match (encoded '/', NUL), or the id was looked up
    # in the ledger and not found: nothing in between touches a file.
    message = exc.value.error.message
    assert message.startswith(("Unknown resource", f"{kind[:-1]}_unknown")), message
    assert snapshot(tmp, ws) == before


async def test_links_inside_the_workspace_still_work(arena):
    """The rule is "resolves inside", not "no links": a link that stays inside is fine."""
    ws, _outside, _tmp = arena
    os.symlink(ws / "datasets/incremental/batch_100_01", ws / "datasets/incremental/alias")
    async with Client(build_server(ServerConfig(workspace=ws))) as client:
        result = await client.call_tool("run_inspector", {"path": "datasets/incremental/alias"})
    assert not result.is_error, result.content[0].text
    assert result.structured_content["status"] == "READY"


def test_the_atime_probe_sees_a_read(tmp_path):
    """The table's "never read" check is only as good as this: a read must move atime."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    age_atimes(tmp_path)
    probe.read_bytes()
    if probe.stat().st_atime == OLD_ATIME:
        pytest.skip("this filesystem does not record reads (noatime): bytes-only checks")
    assert probe.stat().st_atime > OLD_ATIME


def test_the_table_covers_every_tool_that_takes_a_path_name_or_id(sample_ws):
    """A new tool with a path, batch or id argument must be added to the table."""
    async def listed():
        async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
            return (await client.list_tools()).tools

    tools = anyio.run(listed)
    watched = {"path", "source", "batch", "job_id", "draft_id"}
    takes = {t.name for t in tools if watched & set(t.input_schema.get("properties", {}))}
    covered = {c.tool for c in CASES}
    assert takes <= covered, f"not in the confinement table: {sorted(takes - covered)}"
