"""Benchmark: MCP server cold start, and check_batch p95 on a workspace with 100 batches.

    .venv/bin/python tests/bench/bench_server.py [--repeats 5] [--batches 100] [--rounds 3]

1. Cold start. Spawn ``python -m tunestep.server --workspace WS`` with pipes, speak raw
   JSON-RPC over stdio (initialize, notifications/initialized, tools/list) and time from
   the spawn to the tools/list answer; the median of ``--repeats`` runs. Baseline, run
   interleaved with it: the same server started after ``import torch, transformers, trl,
   peft, datasets`` (what start-up would cost if the server imported them). Also shown:
   a bare ``python -c pass``. Goal: <= 0.7 s.
2. check_batch. A sample workspace with ``--batches`` batch folders of 100 rows each;
   check_batch on every named batch plus the next-batch discovery (no name), ``--rounds``
   times; the 95th percentile per call, both as the domain function and through the
   in-memory MCP client (what an assistant waits for). Baseline in the same run: hashing
   and row-counting the files check_batch reads for that batch (the batch's files and the
   hold-out set) and nothing else. Goal: <= 50 ms.

Prints numbers and ratios; asserts nothing (timings are not test outcomes). ``measure_*``
return dicts for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = "torch, transformers, trl, peft, datasets"
SERVE = "from tunestep.server.cli import main; sys.exit(main(['serve', *sys.argv[1:]]))"
PROTOCOL = "2025-06-18"


# --- 1. cold start -----------------------------------------------------------------------

def _send(proc: subprocess.Popen, message: dict) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def _answer(proc: subprocess.Popen, reader: selectors.BaseSelector, want: int,
            deadline: float) -> dict:
    """The JSON-RPC response with id ``want`` (notifications and logs are skipped)."""
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not reader.select(left):
            raise TimeoutError(f"no answer to request {want}")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited (code {proc.poll()}) before answering")
        message = json.loads(line)
        if message.get("id") == want:
            if "error" in message:
                raise RuntimeError(f"request {want} failed: {message['error']}")
            return message["result"]


def time_to_tools_list(command: list[str], env: dict, timeout: float = 120) -> tuple[float, int]:
    """Seconds from spawn to the tools/list answer, and how many tools it listed."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    reader = selectors.DefaultSelector()
    assert proc.stdout is not None
    reader.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        _send(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"}}})
        _answer(proc, reader, 1, deadline)
        _send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        tools = _answer(proc, reader, 2, deadline)["tools"]
        elapsed = time.perf_counter() - started
    finally:
        reader.close()
        assert proc.stdin is not None
        proc.stdin.close()  # end of input: a stdio server exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return elapsed, len(tools)


def time_python_start(env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def measure_cold_start(workspace: Path, repeats: int = 5) -> dict:
    """Median spawn-to-tools/list of the server, and of the server with heavy imports first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ours_cmd = [sys.executable, "-m", "tunestep.server", "--workspace", str(workspace)]
    heavy_cmd = [sys.executable, "-c", f"import sys; import {HEAVY}; {SERVE}",
                 "--workspace", str(workspace)]
    time_to_tools_list(ours_cmd, env)  # warm the OS page cache and .pyc files, untimed
    time_to_tools_list(heavy_cmd, env)
    ours, heavy, bare = [], [], []
    tools = 0
    for _ in range(repeats):  # interleaved: a load spike hits both sides
        seconds, tools = time_to_tools_list(ours_cmd, env)
        ours.append(seconds)
        heavy.append(time_to_tools_list(heavy_cmd, env)[0])
        bare.append(time_python_start(env))
    return {"server_s": statistics.median(ours), "heavy_s": statistics.median(heavy),
            "python_s": statistics.median(bare), "server_runs": ours, "heavy_runs": heavy,
            "tools": tools, "repeats": repeats}


# --- 2. check_batch p95 ------------------------------------------------------------------

def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def build_batches_workspace(root: Path, batches: int, rows: int = 100) -> list[str]:
    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    return build_sample_workspace(root, batches=batches, batch_rows=rows).batches


def _baseline_once(ws, plan, name: str | None, names: list[str]) -> float:
    """Hash and row-count what check_batch reads for ``name``: its files and the hold-out."""
    from tunestep.tools.core.datafiles import count_rows, list_data_files
    from tunestep.tools.core.hashing import sha256_file

    started = time.perf_counter()
    folder = ws.root / plan.paths.incremental / (name or names[0])
    for path in [*list_data_files(folder), ws.root / plan.paths.validation]:
        sha256_file(path)
        count_rows(path)
    return time.perf_counter() - started


def measure_check_batch(workspace: Path, rounds: int = 3) -> dict:
    """p95 per check_batch call (domain function and MCP), and of hashing + counting alone."""
    import anyio

    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.data.preflight import check_batch

    ws = open_workspace(workspace)
    plan = load_plan(ws).plan
    names = sorted(p.name for p in (ws.root / plan.paths.incremental).iterdir())
    calls: list[str | None] = [*names, None]  # every named batch, then next-batch discovery
    report = check_batch(ws, None)  # first sight pins the hold-out set: not a steady state
    assert report.ready and len(report.batches) == len(names), report.problems
    ours, base = [], []
    for _ in range(rounds):
        for name in calls:
            started = time.perf_counter()
            check_batch(ws, name)
            ours.append(time.perf_counter() - started)
            base.append(_baseline_once(ws, plan, name, names))
    mcp = anyio.run(_mcp_calls, workspace, calls, rounds)
    return {"check_p95_s": p95(ours), "check_median_s": statistics.median(ours),
            "mcp_p95_s": p95(mcp), "mcp_median_s": statistics.median(mcp),
            "baseline_p95_s": p95(base), "baseline_median_s": statistics.median(base),
            "calls": len(ours), "batches": len(names)}


async def _mcp_calls(workspace: Path, calls: list[str | None], rounds: int) -> list[float]:
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server

    times = []
    async with Client(build_server(ServerConfig(workspace=workspace))) as client:
        await client.call_tool("check_batch", {})  # warm-up
        for _ in range(rounds):
            for name in calls:
                args = {} if name is None else {"batch": name}
                started = time.perf_counter()
                result = await client.call_tool("check_batch", args)
                times.append(time.perf_counter() - started)
                assert not result.is_error, result.content
    return times


# --- the driver ---------------------------------------------------------------------------

def run(repeats: int = 5, batches: int = 100, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        root = Path(tmp) / "ws"
        build_batches_workspace(root, batches)
        cold = measure_cold_start(root, repeats)
        check = measure_check_batch(root, rounds)
    return {"cold_start": cold, "check_batch": check}


def report(results: dict) -> None:
    cold, check = results["cold_start"], results["check_batch"]
    ms = 1000
    print(f"cold start to tools/list over stdio ({cold['tools']} tools), median of "
          f"{cold['repeats']}, interleaved")
    print(f"  tunestep server                      {cold['server_s']:7.3f} s   (goal <= 0.7 s)")
    print(f"  same, {HEAVY} imported first  {cold['heavy_s']:7.3f} s   "
          f"({cold['server_s'] / cold['heavy_s']:.2f}x)")
    print(f"  bare python -c pass                  {cold['python_s']:7.3f} s")
    print(f"check_batch on {check['batches']} batches of 100 rows: {check['calls']} calls "
          "(each named batch and the next-batch discovery)")
    print(f"  check_batch (domain function)   p95 {check['check_p95_s'] * ms:7.1f} ms   "
          f"median {check['check_median_s'] * ms:6.1f} ms   (goal p95 <= 50 ms)")
    print(f"  check_batch via MCP (in-memory) p95 {check['mcp_p95_s'] * ms:7.1f} ms   "
          f"median {check['mcp_median_s'] * ms:6.1f} ms")
    print(f"  hash + count rows alone         p95 {check['baseline_p95_s'] * ms:7.1f} ms   "
          f"median {check['baseline_median_s'] * ms:6.1f} ms   "
          f"(ratio {check['check_p95_s'] / check['baseline_p95_s']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="cold starts per side")
    parser.add_argument("--batches", type=int, default=100, help="batch folders of 100 rows")
    parser.add_argument("--rounds", type=int, default=3, help="passes over every batch")
    args = parser.parse_args()
    report(run(args.repeats, args.batches, args.rounds))


if __name__ == "__main__":
    main()
