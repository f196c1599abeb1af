"""Benchmark and load driver: many clients on one workspace (issue 22).

    .venv/bin/python tests/bench/bench_load.py [--seconds 60] [--processes 20]

1. First use: ``--processes`` ``tunestep check --json`` processes started at once on a
   sample workspace that has no ledger yet; how many ended with their report.
2. Mixed load for ``--seconds`` (and until the job has ended): an MCP session over stdio
   and two over streamable HTTP (the real ``mcp`` client, each server a ``tunestep serve``
   subprocess) and two CLI loops, each running check, inspect, draft, status and
   list_jobs in turn; a quarter in, ``tunestep approve`` signs the draft and submit_job
   starts a local job on the tiny model (then the same token is tried again over HTTP
   and on the CLI: refused). Every call ends with its result or a named error.
   Baseline in the same run, after the load: the same five tools, one call at a time.

Prints calls/s held and the p95 latency of check and job_status under load against the
same calls one at a time, and the ratios; asserts nothing (``tests/test_load.py`` asserts
what must hold, on a shorter run). ``first_use_burst`` and ``mixed_load`` are that test's
driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SPECS = Path(__file__).resolve().parents[2] / ".specs" / "error_codes.md"
CODE = re.compile(r"^[a-z][a-z0-9_]+$")
KINDS = ("check", "inspect", "draft", "status", "list_jobs")
BATCH = "batch_20_01"  # load_workspace's first batch
CALL_TIMEOUT = 300.0  # one call, however loaded the machine: a hang is a failure


def documented_codes() -> set[str]:
    return set(re.findall(r"`([a-z][a-z0-9_]+)`", SPECS.read_text(encoding="utf-8")))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunestep.server.cli", *args]


# --- 1. first use ---------------------------------------------------------------------------

@dataclass
class Burst:
    ok: int
    failures: list[str]
    seconds: float


def first_use_burst(root: Path, processes: int) -> Burst:
    """``processes`` ``tunestep check`` at once on ``root``; which did not get a report."""
    started = time.monotonic()
    procs = [subprocess.Popen(cli("check", "--json", "--workspace", str(root)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    ok, failures = 0, []
    for proc in procs:
        out, err = proc.communicate(timeout=CALL_TIMEOUT)
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            report = None
        if proc.returncode in (0, 1) and isinstance(report, dict) and "error" not in report \
                and "batch" in report:
            ok += 1
        else:
            failures.append(f"exit {proc.returncode}: {(err or out).strip()[-300:]}")
    return Burst(ok=ok, failures=failures, seconds=time.monotonic() - started)


# --- 2. mixed load --------------------------------------------------------------------------

def load_workspace(base: Path, tiny_model: Path | None = None) -> Path:
    """A sample workspace small enough that its local job ends within the load on 2 cores:
    40 base rows, batches of 20, a hold-out set of 10, one epoch, 2 short samples."""
    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    store = base / "store"
    if tiny_model is not None:
        shutil.copytree(tiny_model, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(base / "ws", store=store, with_model=True, base_rows=40,
                           batch_rows=20, holdout_rows=10, plan_overrides={
                               "training": {"num_train_epochs": 1},
                               "samples": {"n": 2, "max_new_tokens": 8}})
    return base / "ws"


@dataclass
class Call:
    channel: str
    kind: str
    seconds: float
    code: str | None = None  # a named error's code
    unnamed: str | None = None  # anything else that was not a result
    message: str = ""  # the named error's text


@dataclass
class LoadRun:
    calls: int = 0
    mcp_calls: int = 0  # of which over MCP (the rest: CLI processes)
    seconds: float = 0.0
    channels: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    codes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # one message per code
    unnamed: list[str] = field(default_factory=list)
    submit_refusals: list[str] = field(default_factory=list)
    job_id: str | None = None
    job_status: str | None = None
    job_seconds: float = 0.0  # from submit_job's answer to job_status saying it ended
    latencies: dict[str, list[float]] = field(default_factory=dict)  # MCP, under load
    baseline: dict[str, list[float]] = field(default_factory=dict)  # MCP, one at a time


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.known = documented_codes()

    def add(self, call: Call) -> Call:
        if call.code is not None and (not CODE.match(call.code) or call.code not in self.known):
            call.unnamed, call.code = f"not a named code: {call.code!r}", None
        with self.lock:
            self.calls.append(call)
        return call


def _mcp_call_args(kind: str, job_id: str | None) -> tuple[str, dict] | None:
    if kind == "check":
        return "check_batch", {}
    if kind == "inspect":
        return "run_inspector", {"path": f"datasets/incremental/{BATCH}"}
    if kind == "draft":
        return "draft_job", {"batch": BATCH}
    if kind == "status":
        return ("job_status", {"job_id": job_id}) if job_id else None
    return "list_jobs", {}


def _cli_args(kind: str, job_id: str | None) -> list[str] | None:
    return {"check": ["check"], "inspect": ["inspect", f"datasets/incremental/{BATCH}"],
            "draft": ["draft", BATCH], "status": ["status", job_id] if job_id else None,
            "list_jobs": ["status"]}[kind]


async def mcp_call(client, channel: str, kind: str, tool: str, args: dict,
                   rec: Recorder) -> tuple[Call, object]:
    import anyio

    from tunestep.server.mcp_tools import error_code

    started = time.monotonic()
    result = None
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await client.call_tool(tool, args)
    except Exception as exc:  # a transport failure or a hang: never a named error
        return rec.add(Call(channel, kind, time.monotonic() - started,
                            unnamed=f"{tool}: {type(exc).__name__}: {exc}")), None
    call = Call(channel, kind, time.monotonic() - started)
    if result.is_error:
        call.code = error_code(result) or ""
        call.message = result.content[0].text if result.content else ""
    return rec.add(call), result


def cli_call(channel: str, kind: str, argv: list[str], root: Path, env: dict,
             rec: Recorder) -> tuple[Call, dict | None]:
    started = time.monotonic()
    try:
        proc = subprocess.run(cli(*argv, "--json", "--workspace", str(root)), env=env,
                              capture_output=True, text=True, timeout=CALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return rec.add(Call(channel, kind, time.monotonic() - started,
                            unnamed=f"{argv}: no answer")), None
    call = Call(channel, kind, time.monotonic() - started)
    try:
        body = json.loads(proc.stdout)
    except json.JSONDecodeError:
        body = None
    if proc.returncode not in (0, 1) or not isinstance(body, dict) \
            or "internal error" in proc.stderr:
        call.unnamed = f"{argv}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    elif "error" in body:
        call.code = body["error"].get("code") or ""
        call.message = str(body["error"].get("message"))
    return rec.add(call), body


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def http_server(root: Path, public_key: Path, env: dict, log: Path):
    """A ``tunestep serve --transport http`` on a loopback port; yields its MCP URL."""
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli("serve", "--transport", "http", "--port", str(port),
                                    "--workspace", str(root), "--operator-key", str(public_key)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the HTTP server exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the HTTP server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def mixed_load(root: Path, operator_info, passphrase: bytes, *, seconds: float, work: Path,
               http_sessions: int = 2, cli_loops: int = 2, baseline: int = 0,
               job_timeout: float = 900.0) -> LoadRun:
    """The mixed load on ``root`` (a workspace whose model store holds a checkpoint).

    ``operator_info``: the operator's key pair (``operator_keys.OperatorKeyInfo``). Returns what
    happened; ``baseline`` > 0 adds that many one-at-a-time check_batch and job_status
    calls after the load.
    """
    import anyio

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    rec = Recorder()
    state: dict = {"job_id": None, "stop": False, "job_done": False}
    run = LoadRun()

    async def session_loop(client, channel: str, offset: int) -> None:
        turn = offset
        while not state["stop"]:
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            planned = _mcp_call_args(kind, state["job_id"])
            if planned is not None:
                await mcp_call(client, channel, kind, *planned, rec)
            await anyio.sleep(0)

    def cli_loop(offset: int) -> None:
        turn = offset
        while not state["stop"]:
            kind = KINDS[turn % len(KINDS)]
            turn += 1
            argv = _cli_args(kind, state["job_id"])
            if argv is not None:
                cli_call("cli", kind, argv, root, env, rec)

    async def controller(stdio, http) -> None:
        try:
            await drive(stdio, http)
        finally:  # the loops end with it, whatever happened (the CLI threads cannot be
            state["stop"] = True  # cancelled: they look at this flag)

    async def drive(stdio, http) -> None:
        started = time.monotonic()
        await anyio.sleep(seconds / 4)
        _, drafted = await mcp_call(stdio, "stdio", "draft", "draft_job", {"batch": BATCH},
                                    rec)
        draft_id = drafted.structured_content["draft_id"]
        approve_env = {**env, "TUNESTEP_OPERATOR_PASSPHRASE": passphrase.decode()}
        approved = await anyio.to_thread.run_sync(lambda: subprocess.run(
            cli("approve", draft_id, "--workspace", str(root), "--yes", "--name",
                operator_info.name, "--key", str(operator_info.private_key_path)),
            env=approve_env, capture_output=True, text=True, timeout=CALL_TIMEOUT))
        if approved.returncode != 0:
            raise RuntimeError(f"approve failed: {approved.stderr[-2000:]}")
        token = approved.stdout.strip().splitlines()[-1]
        call, handle = await mcp_call(stdio, "stdio", "submit", "submit_job",
                                      {"draft_id": draft_id, "approval_token": token}, rec)
        if handle is None or handle.is_error:
            raise RuntimeError(f"submit failed: {call} {handle}")
        state["job_id"] = handle.structured_content["job_id"]
        # The same token again, from another client: each token starts one job.
        call, _ = await mcp_call(http, "http", "submit", "submit_job",
                                 {"draft_id": draft_id, "approval_token": token}, rec)
        run.submit_refusals.append(call.code or "")
        call, _ = await anyio.to_thread.run_sync(lambda: cli_call(
            "cli", "submit", ["submit", draft_id, token, "--operator-key",
                              str(operator_info.public_key_path)], root, env, rec))
        run.submit_refusals.append(call.code or "")
        submitted = time.monotonic()
        deadline = started + seconds + job_timeout
        while time.monotonic() < deadline:
            _, status = await mcp_call(stdio, "stdio", "status", "job_status",
                                       {"job_id": state["job_id"]}, rec)
            if status is not None and not status.is_error:
                run.job_status = status.structured_content["status"]
                if status.structured_content["terminal"]:
                    run.job_seconds = run.job_seconds or time.monotonic() - submitted
                    if time.monotonic() - started >= seconds:
                        break
            await anyio.sleep(1.0)

    async def one_at_a_time(stdio) -> None:
        for kind in KINDS:  # the same tools the sessions called, on the same server
            tool, args = _mcp_call_args(kind, state["job_id"])
            for _ in range(baseline):
                call, _ = await mcp_call(stdio, "baseline", kind, tool, args, rec)
                run.baseline.setdefault(kind, []).append(call.seconds)

    async def main() -> None:
        from mcp import Client, StdioServerParameters

        stdio_params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "tunestep.server", "--workspace", str(root), "--operator-key",
                  str(operator_info.public_key_path)], env=env)
        with http_server(root, operator_info.public_key_path, env, work / "http.log") as url:
            async with Client(stdio_params) as stdio, Client(url) as http:
                extra = [Client(url) for _ in range(http_sessions - 1)]
                async with contextlib.AsyncExitStack() as stack:
                    clients = [await stack.enter_async_context(c) for c in extra]
                    started = time.monotonic()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(session_loop, stdio, "stdio", 0)
                        for i, client in enumerate([http, *clients]):
                            tg.start_soon(session_loop, client, "http", i + 1)
                        for i in range(cli_loops):
                            tg.start_soon(anyio.to_thread.run_sync, cli_loop, i + 3)
                        tg.start_soon(controller, stdio, http)
                    run.seconds = time.monotonic() - started
                if baseline:
                    await one_at_a_time(stdio)

    try:
        anyio.run(main)
    finally:
        state["stop"] = True
    loaded = [c for c in rec.calls if c.channel != "baseline"]
    run.calls = len(loaded)
    run.job_id = state["job_id"]
    for call in loaded:
        run.channels.add(call.channel)
        run.kinds.add(call.kind)
        if call.code:
            run.codes[call.code] = run.codes.get(call.code, 0) + 1
            run.examples.setdefault(call.code, f"{call.channel} {call.kind}: {call.message}")
        if call.unnamed:
            run.unnamed.append(f"{call.channel} {call.kind}: {call.unnamed}")
        if call.channel in ("stdio", "http"):
            run.mcp_calls += 1
            if call.code is None and not call.unnamed:
                run.latencies.setdefault(call.kind, []).append(call.seconds)
    return run


# --- the benchmark --------------------------------------------------------------------------

def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run(seconds: float, processes: int, baseline: int = 10) -> dict:
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.signing.operator_keys import create_operator_key

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        base = Path(tmp)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRACKIO_DIR", str(base / "trackio"))
        build_sample_workspace(base / "fresh")
        burst = first_use_burst(base / "fresh", processes)
        root = load_workspace(base)
        passphrase = b"bench passphrase"
        key = create_operator_key("bench", passphrase, base / "keys")
        load = mixed_load(root, key, passphrase, seconds=seconds, work=base / "work",
                          baseline=baseline)
    return {"burst": burst, "load": load}


def report(results: dict) -> None:
    burst, load = results["burst"], results["load"]
    print(f"first use: {burst.ok}/{burst.ok + len(burst.failures)} processes got their "
          f"report in {burst.seconds:.1f} s")
    for failure in burst.failures[:5]:
        print(f"  failed: {failure}")
    print(f"mixed load: {load.calls} calls in {load.seconds:.1f} s "
          f"({load.calls / load.seconds:.2f} calls/s) over {sorted(load.channels)}; "
          f"job {load.job_status} after {load.job_seconds:.0f} s; named errors {load.codes}; "
          f"unnamed {len(load.unnamed)}")
    for line in load.unnamed[:5]:
        print(f"  unnamed: {line}")
    for code, example in sorted(load.examples.items()):
        print(f"  {code}, e.g. {example[:300]}")
    for kind in ("check", "status"):
        under, alone = load.latencies.get(kind, []), load.baseline.get(kind, [])
        if under and alone:
            print(f"{kind} p95: {p95(under) * 1000:.0f} ms under load ({len(under)} calls), "
                  f"{p95(alone) * 1000:.0f} ms one at a time ({len(alone)}): "
                  f"{p95(under) / p95(alone):.1f}x")
    held, alone = rates(load)
    if alone:
        print(f"calls/s: {held:.2f} held by the MCP sessions under load "
              f"({load.calls / load.seconds:.2f} with the CLI processes), {alone:.2f} one at "
              f"a time over the same tools: {held / alone:.2f}x")


def rates(load: LoadRun) -> tuple[float, float]:
    """MCP calls/s held under the load, and the same tools' calls/s one at a time."""
    alone = [s for values in load.baseline.values() for s in values]
    return load.mcp_calls / load.seconds, (len(alone) / sum(alone) if alone else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="mixed load duration")
    parser.add_argument("--processes", type=int, default=20, help="first-use processes")
    parser.add_argument("--baseline", type=int, default=10, help="one-at-a-time calls each")
    args = parser.parse_args()
    report(run(args.seconds, args.processes, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
