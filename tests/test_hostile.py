"""The hostile workspace: the assistant writes the plan, the data files and the shell.

Issue 12's table, beside the crash-safety and confinement tables: each case is a thing
an adversarial assistant can do to the workspace, and the refusal (error code) or the
finding the tools must answer with. Nothing here needs a network or a model download.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan, load_plan, parse_plan_text
from tunestep.tools.core.plan_paths import FIXED_PATHS, PATH_ROLES
from tunestep.tools.core.workspace import open_workspace

PLAN = ".specs/training/plan.md"


def write_plan(root: Path, front: str) -> None:
    (root / PLAN).parent.mkdir(parents=True, exist_ok=True)
    (root / PLAN).write_text(f"---\n{front}\n---\n# plan\n")


# --- 1. roles of paths --------------------------------------------------------------------

SETTABLE = [k for k in PATH_ROLES if k.startswith("paths.")]
DEFAULTS = {f"paths.{k}": v for k, v in Plan().paths.model_dump().items()} | FIXED_PATHS


def _front(key: str, value: str) -> str:
    return f"paths:\n  {key.removeprefix('paths.')}: '{value}'"


@pytest.mark.parametrize("first, second", [
    pair for pair in itertools.permutations(PATH_ROLES, 2) if pair[0] in SETTABLE])
def test_a_path_key_at_another_keys_location_is_refused(first, second):
    """Case: paths.X set to paths.Y's location (every ordered pair) -> plan_path_conflict."""
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{_front(first, DEFAULTS[second])}\n---\n")
    assert err.value.code == "plan_path_conflict"
    named = [first, second if second.startswith("paths.") else FIXED_PATHS[second]]
    assert all(n in err.value.message for n in named), err.value.message


@pytest.mark.parametrize("key", SETTABLE)
def test_a_path_inside_a_batch_folder_is_refused(key):
    """Case: any path key inside a batch folder (datasets/incremental/batch_100_02/...)."""
    if key == "paths.incremental":
        value = "datasets/incremental/batch_100_02/nested"  # the input inside itself
        front = _front("paths.train", value + "/train.jsonl")
    else:
        front = _front(key, "datasets/incremental/batch_100_02/sharegpt.jsonl")
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{front}\n---\n")
    assert err.value.code == "plan_path_conflict" and "paths.incremental" in err.value.message


@pytest.mark.parametrize("front", [
    "paths:\n  run_plan: datasets/processed_webdev_coding/validation.jsonl",
    "paths:\n  run_plan: .tunestep/state.sqlite",
    "paths:\n  run_plan: .specs/training/plan.md",
    "paths:\n  merged: datasets/incremental/batch_100_02/sharegpt.jsonl",
    "paths:\n  logs: .",
    "paths:\n  plots: ./datasets//processed_webdev_coding/",
])
def test_the_issues_plans_are_refused_at_load_and_nothing_is_written(sample_ws, front):
    """Case: the plans of issue 12 §1, through load_plan (what every tool calls first)."""
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    root = sample_ws.root
    before = {p: p.read_bytes() for p in (root / "datasets").rglob("*") if p.is_file()}
    write_plan(root, front)
    with pytest.raises(TunestepError) as err:
        draft_job(sample_ws, DraftRequest())
    assert err.value.code == "plan_path_conflict"
    after = {p: p.read_bytes() for p in (root / "datasets").rglob("*") if p.is_file()}
    assert after == before and not (root / ".tunestep" / "state.sqlite").exists()


def test_a_link_onto_the_holdout_folder_is_a_conflict_too(sample_ws):
    """Case: paths.merged through a link that lands on the hold-out set."""
    root = sample_ws.root
    os.symlink("processed_webdev_coding", root / "datasets" / "alias")
    write_plan(root, "paths:\n  merged: datasets/alias/validation.jsonl")
    with pytest.raises(TunestepError) as err:
        load_plan(open_workspace(root))
    assert err.value.code == "plan_path_conflict"
    assert "paths.merged" in err.value.message and "paths.validation" in err.value.message


def test_the_default_paths_are_apart():
    Plan()  # the defaults must pass their own rule


# --- 2. one token, one job, whatever the local files say ----------------------------------

def test_a_recreated_ledger_refuses_the_old_token(model_ws, operator):
    """Case: delete .tunestep/state.sqlite*, draft again (same id) -> approval_wrong_ledger."""
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.runs.submit import submit_job

    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    token = operator.approve(model_ws, draft.draft_id)
    for path in model_ws.state_dir.glob("state.sqlite*"):
        path.unlink()
    again = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert (again.draft_id, again.digest) == (draft.draft_id, draft.digest)
    with pytest.raises(TunestepError) as err:
        submit_job(model_ws, draft.draft_id, token, operator.trusted)
    assert err.value.code == "approval_wrong_ledger"


def _call(server, tool: str, args: dict):
    import anyio
    from mcp import Client

    async def go():
        async with Client(server) as client:
            return await client.call_tool(tool, args)

    return anyio.run(go)


def test_a_key_file_replaced_under_the_server_is_refused(sample_ws, tmp_path):
    """Case: the trusted key file is overwritten with the assistant's own key after the
    server started, and a token signed by that key is submitted -> operator_key_changed."""
    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code
    from tunestep.tools.core import ledger
    from tunestep.tools.signing.approval import sign_approval
    from tunestep.tools.signing.operator_keys import create_operator_key, load_private_key

    real = create_operator_key("op", b"pass", tmp_path / "real")
    mallory = create_operator_key("mallory", b"pass", tmp_path / "mallory")
    server = build_server(ServerConfig(workspace=sample_ws.root,
                                       operator_keys=[real.public_key_path]))
    real.public_key_path.write_bytes(mallory.public_key_path.read_bytes())
    with ledger.open_ledger(sample_ws) as conn:
        identity = ledger.ledger_id(conn)
    token = sign_approval(load_private_key(mallory.private_key_path, b"pass"),
                          draft_id="draft-0123456789ab", digest="ab" * 32,
                          workspace=str(sample_ws.root), op="mallory", ttl_seconds=600,
                          ledger_id=identity)
    result = _call(server, "submit_job", {"draft_id": "draft-0123456789ab",
                                          "approval_token": token})
    assert error_code(result) == "operator_key_changed"


def test_keys_pinned_by_fingerprint_and_given_inline(tmp_path):
    """Case: the key file differs from the fingerprint in the client config (swapped
    before the server started) -> operator_key_fingerprint_mismatch; an inline PEM works."""
    from tunestep.tools.signing.operator_keys import create_operator_key
    from tunestep.tools.signing.trusted_keys import pin_trusted_keys

    real = create_operator_key("op", b"pass", tmp_path / "real")
    mallory = create_operator_key("mallory", b"pass", tmp_path / "mallory")
    assert real.kid in pin_trusted_keys([real.public_key_path], [real.fingerprint])
    with pytest.raises(TunestepError) as err:
        pin_trusted_keys([mallory.public_key_path], [real.fingerprint])
    assert err.value.code == "operator_key_fingerprint_mismatch"
    inline = real.public_key_path.read_text()
    pinned = pin_trusted_keys([inline], [real.fingerprint.upper().replace("SHA256:", "")])
    assert list(pinned) == [real.kid] and not pinned.files


def test_serve_takes_an_inline_key_and_a_fingerprint_flag(tmp_path):
    from tunestep.server.cli import build_parser
    from tunestep.server.cli_common import _fingerprints, _trusted_key_paths
    from tunestep.tools.signing.operator_keys import create_operator_key
    from tunestep.tools.signing.trusted_keys import pin_trusted_keys

    real = create_operator_key("op", b"pass", tmp_path / "real")
    pem = real.public_key_path.read_text()
    args = build_parser().parse_args(["serve", "--operator-key", pem,
                                      "--operator-key-fingerprint", real.fingerprint])
    assert list(pin_trusted_keys(_trusted_key_paths(args), _fingerprints(args))) == [real.kid]


# --- 6 (part). first use of a workspace under concurrency ---------------------------------

def test_concurrent_first_use_of_a_fresh_workspace(sample_ws):
    """Case: eight callers open a fresh workspace at once (migrations, the hold-out pin)."""
    import threading

    from tunestep.tools.core import ledger
    from tunestep.tools.data.preflight import check_batch

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            check_batch(sample_ws)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with ledger.open_ledger(sample_ws) as conn:
        assert conn.execute("SELECT count(*) FROM validation_pins").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM identity").fetchone()[0] == 1


# --- 7. the screen tells the truth --------------------------------------------------------

HOSTILE_NAMES = {
    "[conceal]": "[conceal]",                      # rich markup: must print as written
    "[/][bold red]OK[/]": "[/][bold red]OK[/]",
    "a\x1b[8mhidden": "a\\x1b[8mhidden",           # ANSI: hide what follows
    "line\nfake: approved": "line\\x0afake: approved",
    "back\rover": "back\\x0dover",
    "\u202egnp.exe": "\\u202egnp.exe",             # RTL override: reverses what follows
    "zero\u200bwidth": "zero\\u200bwidth",
    "csi\x9b31m": "csi\\x9b31m",
}


@pytest.mark.parametrize("raw, shown", HOSTILE_NAMES.items(), ids=list(range(len(HOSTILE_NAMES))))
def test_safe_text_shows_what_is_there(raw, shown):
    """Case: a hostile string -> what the terminal shows, character for character."""
    from rich.console import Console

    from tunestep.server.render import safe_text

    console = Console(record=True, width=300, color_system=None, highlight=False)
    console.print(safe_text(raw))
    assert console.export_text() == shown + "\n"


def _screen(result, approving: bool = False) -> str:
    from rich.console import Console

    from tunestep.server.render import render

    console = Console(record=True, width=400, color_system=None, highlight=False)
    render(console, result, as_json=False, approving=approving)
    return console.export_text()


def _no_raw_controls(text: str) -> None:
    assert not [c for c in text if (ord(c) < 32 and c != "\n") or 0x7f <= ord(c) < 0xa0
                or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b"]


def test_the_approval_review_shows_hostile_file_names(model_ws):
    """Case: batch files named with rich markup and an RTL override, drafted and reviewed
    as `tunestep approve` renders it: every name appears exactly, nothing hidden."""
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    batch = model_ws.root / "datasets/incremental/batch_100_01"
    original = next(batch.glob("*.jsonl"))
    names = ["[conceal]secret.jsonl", "x\u202elnosj.jsonl"]
    data = original.read_bytes().splitlines(keepends=True)
    original.unlink()
    (batch / names[0]).write_bytes(b"".join(data[:50]))
    (batch / names[1]).write_bytes(b"".join(data[50:]))
    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    screen = _screen(draft, approving=True)  # what `tunestep approve` shows
    _no_raw_controls(screen)
    assert "batch_100_01/[conceal]secret.jsonl" in screen
    assert "batch_100_01/x\\u202elnosj.jsonl" in screen
    assert draft.digest in screen


def test_preflight_and_findings_show_escapes_visibly(sample_ws):
    """Case: file names with ANSI escapes and newlines, and a row whose key is markup."""
    from tunestep.tools.data.preflight import check_batch
    from tunestep.tools.inspector import run_inspector

    batch = sample_ws.root / "datasets/incremental/batch_100_03"
    (batch / "evil\x1b[8m\nname.jsonl").write_bytes(
        b'{"[conceal]x": 1, "messages": [{"role": "user", "content": "\\u001b[2Jhi"}]}\n')
    report = check_batch(sample_ws, "batch_100_03")
    screen = _screen(report)
    _no_raw_controls(screen)
    assert "evil\\x1b[8m\\x0aname.jsonl" in screen
    inspection = run_inspector(sample_ws, "datasets/incremental/batch_100_03")
    screen = _screen(inspection)
    _no_raw_controls(screen)
    assert "[conceal]x" in screen


# --- 5. linear-time patterns --------------------------------------------------------------

@pytest.mark.parametrize("key", ["grade_pattern", "data.batch_pattern"])
@pytest.mark.parametrize("pattern, why", [
    (r"(a+)+$", "repetition inside another"),          # exponential in a backtracker
    (r"(\d+\s*)*(x)", "repetition inside another"),
    (r"(a)\1", "RE2"),                                  # backreference
    (r"(?=grade)(\d+)", "RE2"),                         # lookahead
    (r"(?<!x)(\d+)", "RE2"),                            # lookbehind
    (r"\pN(\d)", "the job can use"),                    # RE2 takes it, Python's re does not
])
def test_a_pattern_that_could_stall_is_refused_at_plan_load(key, pattern, why):
    """Case: a plan pattern with catastrophic backtracking or non-RE2 syntax."""
    front = f"{key}: '{pattern}'" if "." not in key else \
        f"data:\n  batch_pattern: '{pattern}'"
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{front}\n---\n")
    assert err.value.code == "plan_value_invalid" and key in err.value.message
    assert why in err.value.message


def test_plan_patterns_run_on_a_linear_time_engine():
    """Case: a pattern RE2 accepts but Python's backtracker takes exponential time on
    (an alternation under a star); the inspector's grade check answers at once. Run in a
    child so a regression fails by its timeout instead of hanging the suite."""
    import subprocess
    import sys

    code = ("from tunestep.tools.inspector.grade import GradeCheck\n"
            "print(GradeCheck(r'(a|aa)*(c)').find('a' * 5000 + 'b'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
    from tunestep.tools.core.datafiles import batch_step

    assert batch_step("batch_100_07", r"^batch_\d+_(\d+)$") == 7


# --- 4. bounded by design -----------------------------------------------------------------

BOUNDED_CHILD = """
import resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.inspector import run_inspector
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.core.workspace import open_workspace
ws = open_workspace(sys.argv[1])
report = run_inspector(ws, sys.argv[2])
print("inspect", report.status, ",".join(sorted(report.counts)))
check_batch(ws, sys.argv[2].rsplit("/", 1)[-1])
print("check ok")
from tunestep.tools.data.merge import merge_datasets
try:
    merge_datasets(ws, sys.argv[2].rsplit("/", 1)[-1])
except TunestepError as exc:
    print("merge", exc.code)
"""
AS_LIMIT = 2 << 30  # address space for the whole child: imports, numpy, pyarrow and all


def _bounded_run(root: Path, path: str) -> list[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BOUNDED_CHILD, str(root), path,
                           str(AS_LIMIT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_a_200_mb_line_is_a_finding_under_a_memory_limit(sample_ws):
    """Case: one valid 200 MB row in a batch file -> row_too_large (INVALID), the line
    skipped in chunks; preflight counts it and merge refuses the batch, all under a 2 GiB
    address-space limit (the row alone, parsed, would take several times that)."""
    folder = sample_ws.root / "datasets/incremental/batch_100_03"
    target = folder / "examples.jsonl"
    good = target.read_bytes().splitlines(keepends=True)[:3]
    with open(target, "wb") as handle:
        handle.write(good[0])
        handle.write(b'{"messages": [{"role": "user", "content": "')
        block = b"x" * (1 << 20)
        for _ in range(200):
            handle.write(block)
        handle.write(b'"}, {"role": "assistant", "content": "Grade: 3"}]}\n')
        handle.writelines(good[1:])
    out = _bounded_run(sample_ws.root, "datasets/incremental/batch_100_03")
    assert out[0] == "inspect INVALID row_too_large"
    assert out[1:] == ["check ok", "merge batch_not_ready"]


def test_a_1_gb_sparse_json_is_a_finding_under_a_memory_limit(sample_ws):
    """Case: a 1 GB sparse .json (truncate) -> file_too_large, hashed in chunks, never
    parsed; preflight and merge stay within the same limit."""
    folder = sample_ws.root / "datasets/incremental/batch_100_03"
    with open(folder / "huge.json", "wb") as handle:
        handle.truncate(1 << 30)
    out = _bounded_run(sample_ws.root, "datasets/incremental/batch_100_03")
    assert out[0] == "inspect INVALID file_too_large"
    assert out[1:] == ["check ok", "merge batch_not_ready"]


# --- 6. odd files answered ----------------------------------------------------------------

def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    import contextlib
    import socket

    sock = socket.socket(socket.AF_UNIX)
    with contextlib.chdir(path.parent):  # AF_UNIX paths are short: bind by name
        sock.bind(path.name)
    sock.close()  # the socket file stays; nobody listens


def _loop(path: Path) -> None:
    os.symlink(path.name + ".b", path)
    os.symlink(path.name, str(path) + ".b")


def _device(path: Path) -> None:
    os.symlink("/dev/zero", path)  # a link inside the workspace to a character device


ODD = {"fifo": (_fifo, "file_not_regular"), "socket": (_socket, "file_not_regular"),
       "link loop": (_loop, "path_link_loop"), "device link": (_device, "path_escape")}


@pytest.mark.parametrize("kind", ODD)
def test_an_odd_file_given_as_the_path_is_a_named_error(sample_ws, kind):
    """Case: run_inspector on a FIFO / socket / link loop / device -> named error, no hang."""
    from tunestep.tools.inspector import run_inspector

    make, code = ODD[kind]
    path = sample_ws.root / "datasets/incremental/batch_100_03/odd.jsonl"
    make(path)
    with pytest.raises(TunestepError) as err:
        run_inspector(sample_ws, "datasets/incremental/batch_100_03/odd.jsonl")
    assert err.value.code == code


def test_a_fifo_swapped_in_after_the_check_never_blocks(tmp_path):
    """Case: a FIFO reaches the opener itself (the race after an is_file check)."""
    from tunestep.tools.core.hashing import sha256_file
    from tunestep.tools.core.readfile import open_regular

    _fifo(tmp_path / "p.jsonl")
    for call in (open_regular, sha256_file):
        with pytest.raises(TunestepError) as err:
            call(tmp_path / "p.jsonl")
        assert err.value.code == "file_not_regular" and "FIFO" in err.value.message


@pytest.mark.parametrize("kind", ["binary", "decimal", "timestamp", "nested binary"])
def test_parquet_columns_the_job_cannot_train_on_are_findings(sample_ws, kind):
    """Case: parquet with binary / decimal / temporal columns -> column_type_unsupported
    (INVALID), and apply_mapping refuses it by name instead of crashing."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunestep.tools.data.mapping import apply_mapping
    from tunestep.tools.inspector import run_inspector
    from tunestep.tools.inspector.spec import default_spec

    values = {"binary": pa.array([b"\x00\x01"] * 2),
              "decimal": pa.array([decimal.Decimal("1.5")] * 2),
              "timestamp": pa.array([datetime.datetime(2026, 1, 1)] * 2),
              "nested binary": pa.array([{"blob": b"x"}] * 2)}[kind]
    table = pa.table({"instruction": ["a", "b"], "output": ["Grade: 1", "Grade: 2"],
                      "extra": values})
    folder = sample_ws.root / "datasets/incremental/batch_100_04"
    folder.mkdir()
    pq.write_table(table, folder / "rows.parquet")
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "INVALID" and "column_type_unsupported" in report.counts
    with pytest.raises(TunestepError) as err:
        apply_mapping(sample_ws, "datasets/incremental/batch_100_04", default_spec("alpaca"))
    assert err.value.code == "mapping_source_invalid"
    assert "column_type_unsupported" in err.value.message


# --- 3. read once -------------------------------------------------------------------------

BATCH3 = "datasets/incremental/batch_100_03"
INVALID_ROW = b"{\"messages\": [{\"role\": \"user\", not json\n"  # invalid_json


def test_a_file_swapped_between_hash_and_scan_is_never_cached_ready(sample_ws, monkeypatch):
    """Case: the file is hashed, then swapped for INVALID rows before it is scanned
    -> data_changed, nothing cached; the next call judges the new bytes (INVALID)."""
    from tunestep.tools.inspector import run as inspector_run
    from tunestep.tools.inspector import run_inspector

    target = sample_ws.root / BATCH3 / "examples.jsonl"
    real = inspector_run.comparison_context
    swapped = []

    def swap_then_compare(*args, **kwargs):  # runs after the hashes, before the scan
        if not swapped:
            target.write_bytes(INVALID_ROW * 5)
            swapped.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(inspector_run, "comparison_context", swap_then_compare)
    with pytest.raises(TunestepError) as err:
        run_inspector(sample_ws, BATCH3)
    assert err.value.code == "data_changed" and "examples.jsonl" in (err.value.path or "")
    assert run_inspector(sample_ws, BATCH3).status == "INVALID"


def test_a_draft_pins_only_bytes_the_inspector_found_ready(model_ws, monkeypatch):
    """Case: the batch is READY when inspected and swapped for INVALID rows right after,
    before the draft reads it -> data_changed; no draft row, nothing to approve."""
    from tunestep.tools.core import ledger
    from tunestep.tools.data import step_sources
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    target = model_ws.root / "datasets/incremental/batch_100_01/examples.jsonl"
    real = step_sources._inspect

    def inspect_then_swap(ws, path):
        report = real(ws, path)
        if path.endswith("batch_100_01"):
            target.write_bytes(INVALID_ROW * 5)
        return report

    monkeypatch.setattr(step_sources, "_inspect", inspect_then_swap)
    with pytest.raises(TunestepError) as err:
        draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "data_changed"
    with ledger.open_ledger(model_ws) as conn:
        assert conn.execute("SELECT count(*) FROM drafts").fetchone()[0] == 0


def test_concurrent_apply_mapping_results_name_what_is_on_disk(sample_ws):
    """Case: four apply_mapping calls on one output at once, two different specs; each
    call holds .tunestep/locks/, so the one that returns last names the bytes on disk."""
    import threading

    from tunestep.tools.core.hashing import sha256_file
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping

    source = "datasets/incremental/batch_100_02"
    spec = suggest_mapping(sample_ws, source).mapping
    specs = [spec, spec.model_copy(update={"system_prompt": "You grade code."})] * 2
    finished: list = []
    errors: list = []
    barrier = threading.Barrier(len(specs))

    def run(one) -> None:
        barrier.wait()
        try:
            result = apply_mapping(sample_ws, source, one)
            finished.append(result)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(finished) == len(specs)
    last = finished[-1].files[0]
    assert sha256_file(sample_ws.root / last.output) == last.output_sha256
    assert list((sample_ws.state_dir / "locks").glob("*.lock"))


def test_the_mcp_server_answers_a_fifo_and_a_link_loop_by_name(sample_ws):
    """Case: run_inspector / apply_mapping over MCP on a FIFO and a link loop -> the named
    code in the tool error, never the SDK's generic error or a hang."""
    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    batch = sample_ws.root / "datasets/incremental/batch_100_03"
    _fifo(batch / "pipe.jsonl")
    _loop(batch / "loop.jsonl")
    server = build_server(ServerConfig(workspace=sample_ws.root))
    for tool, args, code in [
        ("run_inspector", {"path": f"{BATCH3}/pipe.jsonl"}, "file_not_regular"),
        ("run_inspector", {"path": f"{BATCH3}/loop.jsonl"}, "path_link_loop"),
        ("apply_mapping", {"source": f"{BATCH3}/pipe.jsonl"}, "file_not_regular"),
    ]:
        result = _call(server, tool, args)
        assert error_code(result) == code, (tool, args, result.content[0].text)
    # The folder itself: the FIFO and the loop are not data files; the rest is inspected.
    result = _call(server, "run_inspector", {"path": BATCH3})
    assert not result.is_error


def test_merge_refuses_a_parquet_batch_of_bytes_by_name(sample_ws):
    """Case: the first batch is parquet with a binary column -> merge names the finding
    (batch_not_ready ... column_type_unsupported), never 'not JSON serializable'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunestep.tools.data.merge import merge_datasets

    folder = sample_ws.root / "datasets/incremental/batch_100_01"
    rows = [orjson_loads(line) for line in (folder / "examples.jsonl").read_bytes()
            .splitlines()[:4]]
    (folder / "examples.jsonl").unlink()
    table = pa.table({"messages": [r["messages"] for r in rows],
                      "blob": pa.array([b"\x00"] * len(rows))})
    pq.write_table(table, folder / "rows.parquet")
    for strategy in ("list", "file"):
        with pytest.raises(TunestepError) as err:
            merge_datasets(sample_ws, "batch_100_01", strategy=strategy)
        assert err.value.code == "batch_not_ready"
        assert "column_type_unsupported" in err.value.message


def orjson_loads(raw: bytes):
    import orjson

    return orjson.loads(raw)


def test_a_holdout_swapped_before_its_index_is_built_is_never_indexed(sample_ws, monkeypatch):
    """Case: the hold-out set is hashed for the comparison, then swapped before its leakage
    index is read -> data_changed (an index cached under a sha holds those bytes only)."""
    import uuid

    import orjson

    from tunestep.tools.inspector import run as inspector_run
    from tunestep.tools.inspector import run_inspector

    holdout = sample_ws.root / "datasets/processed_webdev_coding/validation.jsonl"
    unique = {"messages": [{"role": "user", "content": f"review {uuid.uuid4().hex} now"},
                           {"role": "assistant", "content": "Grade: 4"}]}
    holdout.write_bytes(holdout.read_bytes() + orjson.dumps(unique) + b"\n")
    real = inspector_run.inspect_sources

    def swap_then_inspect(*args, **kwargs):
        holdout.write_bytes(holdout.read_bytes() + orjson.dumps(unique) + b"\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(inspector_run, "inspect_sources", swap_then_inspect)
    with pytest.raises(TunestepError) as err:
        run_inspector(sample_ws, BATCH3)
    assert err.value.code == "data_changed" and err.value.path == "validation.jsonl"


def test_the_estimate_counts_tokens_after_max_length(model_ws):
    """Case: one ~1 MB row in the batch -> the draft's estimate counts it as max_length
    tokens (what training sees), not its full length."""
    import orjson

    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.inspector import run_inspector

    target = model_ws.root / "datasets/incremental/batch_100_01/examples.jsonl"
    long_row = {"messages": [{"role": "user", "content": "review this code " * 60000},
                             {"role": "assistant", "content": "Grade: 3"}]}
    target.write_bytes(target.read_bytes() + orjson.dumps(long_row) + b"\n")
    report = run_inspector(model_ws, "datasets/incremental/batch_100_01/examples.jsonl",
                           tokens=True)
    tokens = report.stats.tokens
    max_length = load_plan(model_ws).plan.training.max_length
    assert tokens.total_tokens > tokens.trained_tokens
    assert tokens.trained_tokens <= sum(f.rows for f in report.files) * max_length
    draft = draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    rows = sum(f.rows or 0 for f in draft.files if f.role == "train")
    assert draft.estimate.train_tokens <= rows * max_length
