"""One call's context: draft_job reads the plan once and hashes each file once (counts,
not timings), with the context the view builds and hands down (``ws.call``).

The readers behind ``load_plan`` and ``sha256_file`` (``plan._read_plan``,
``hashing._sha256_file``) are wrapped, so every real read of the plan and every real
hash counts, whoever asked. Measured before tools/core/call_context.py, on this workspace:
9 plan reads; the base training set hashed 10 times, the hold-out 8, the batch 5.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tunestep.tools.core import hashing, plan
from tunestep.tools.drafts.draft import DraftRequest, draft_job, load_draft, recompute


@pytest.fixture
def counted(monkeypatch):
    reads: Counter[str] = Counter()
    real_read, real_hash = plan._read_plan, hashing._sha256_file

    def read_plan(ws):
        reads["plan"] += 1
        return real_read(ws)

    def sha256_file(path):
        reads[str(Path(path).resolve())] += 1
        return real_hash(path)

    monkeypatch.setattr(plan, "_read_plan", read_plan)
    monkeypatch.setattr(hashing, "_sha256_file", sha256_file)
    return reads


def _data_files(ws, draft) -> list[str]:
    return [str(ws.resolve(f.path).resolve()) for f in draft.files
            if f.role in ("train", "eval")]


def test_draft_reads_the_plan_once_and_hashes_each_file_once(model_ws, counted) -> None:
    call = model_ws.for_call()  # what the view does, once per tool call
    draft = draft_job(call, DraftRequest(batch="batch_100_01"))
    data = _data_files(model_ws, draft)
    assert len(data) == 3  # base set, the batch, the hold-out
    assert counted["plan"] == 1
    assert {path: counted[path] for path in data} == dict.fromkeys(data, 1)
    assert max(n for key, n in counted.items() if key != "plan") == 1

    counted.clear()  # the next call starts afresh: nothing is remembered between calls
    call = model_ws.for_call()
    again = recompute(call, load_draft(call, draft.draft_id))
    assert again.digest == draft.digest
    assert counted["plan"] == 1
    assert {path: counted[path] for path in data} == dict.fromkeys(data, 1)


def test_a_changed_file_is_hashed_again(sample_ws, counted) -> None:
    path = sample_ws.root / "datasets/processed_webdev_coding/train.jsonl"
    call = sample_ws.for_call().call
    first = hashing.sha256_file(path, call)
    assert hashing.sha256_file(path, call) == first
    assert counted[str(path.resolve())] == 1
    data = path.read_bytes()
    path.write_bytes(data + data)  # in place: a new size and mtime
    second = hashing.sha256_file(path, call)
    assert second != first and counted[str(path.resolve())] == 2
    stat = path.stat()
    path.write_bytes(data[::-1] if data[::-1] != data else data + b"\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert hashing.sha256_file(path, call) != second


def test_same_size_rewrite_with_mtime_set_back_is_hashed_again(sample_ws, counted) -> None:
    # Whoever writes the file can set its mtime back (os.utime), not its ctime: a
    # same-size rewrite dressed up as the old file is still a new file to the memo.
    path = sample_ws.root / "datasets/processed_webdev_coding/train.jsonl"
    call = sample_ws.for_call().call
    first = hashing.sha256_file(path, call)
    before = path.stat()
    data = path.read_bytes()
    path.write_bytes(bytes(reversed(data)) if data[::-1] != data else data.upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    assert hashing.sha256_file(path, call) != first
    assert counted[str(path.resolve())] == 2


def test_without_a_call_context_nothing_is_remembered(sample_ws, counted) -> None:
    path = sample_ws.root / "datasets/processed_webdev_coding/train.jsonl"
    hashing.sha256_file(path)
    hashing.sha256_file(path)
    plan.load_plan(sample_ws)
    plan.load_plan(sample_ws)
    assert counted[str(path.resolve())] == 2 and counted["plan"] == 2


def test_a_plan_edited_by_a_caller_does_not_change_the_next_read(sample_ws) -> None:
    # Plan itself is frozen; LoadedPlan (its notes) is not, so each caller gets a copy.
    ws = sample_ws.for_call()
    first = plan.load_plan(ws)
    first.notes.append("edited by a caller")
    first.sha256 = "0" * 64
    second = plan.load_plan(ws)
    assert "edited by a caller" not in second.notes and second.sha256 != "0" * 64


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_mcp_view_builds_one_context_per_tool_call(model_ws, counted) -> None:
    # Through the server's front door: the view builds the context, each tool call gets
    # its own (a second call reads the plan again), and within a call the plan is read once.
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server

    async with Client(build_server(ServerConfig(workspace=model_ws.root))) as client:
        first = await client.call_tool("draft_job", {"batch": "batch_100_01"})
        assert not first.is_error, first
        assert counted["plan"] == 1
        hashed = {k: n for k, n in counted.items() if "processed_webdev_coding" in k}
        assert hashed and set(hashed.values()) == {1}, hashed
        counted.clear()
        second = await client.call_tool("check_batch", {})
        assert not second.is_error and counted["plan"] == 1


def test_a_ledger_connection_carries_the_calls_keys(sample_ws) -> None:
    # A reader holding only the connection (lineage(conn)) verifies with the keys of the
    # call the connection was opened for; none for a workspace opened without a context.
    from tunestep.tools.core import ledger
    from tunestep.tools.core.workspace import open_workspace

    keys = {"k": object()}
    with ledger.open_ledger(sample_ws.for_call(keys)) as conn:
        assert conn.trusted_keys is keys
    with ledger.open_ledger(open_workspace(sample_ws.root)) as conn:
        assert conn.trusted_keys is None


def test_no_ambient_state_in_the_domain_or_the_views() -> None:
    # One context per call, handed down: no ContextVar anywhere in tools/ or server/.
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [*root.glob("tools/**/*.py"), *root.glob("server/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.ImportFrom | ast.Import)
                     else [])
            module = getattr(node, "module", None) or ""
            if module == "contextvars" or "contextvars" in names or "ContextVar" in names:
                found.append(str(path.relative_to(root)))
    assert not found, found
