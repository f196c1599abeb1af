"""Every tunestep benchmark in one run, summed up in one table (`make bench`).

    .venv/bin/python tests/bench/run_all.py          # a few minutes on a small machine
    .venv/bin/python tests/bench/run_all.py --full   # the issues' sizes (500k-row inspector file)

Each row is a measurement beside its baseline measured in the same run, the ratio, the
goal from the issues, and whether this run met it. The benchmarks' own detail lines go
to stderr; stdout is the machine line and the Markdown table (paste it into the README).
Nothing is asserted: timings are reported, never tested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling bench_* modules, imported by the sections


@dataclass
class Row:
    benchmark: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    met: str


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:,.0f}k tok/s"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


# --- the benchmarks -----------------------------------------------------------------------

def server_rows(args) -> list[Row]:
    import bench_server

    results = bench_server.run(repeats=args.server_repeats, batches=100, rounds=3)
    bench_server.report(results)
    cold, check = results["cold_start"], results["check_batch"]
    base = check["baseline_p95_s"]
    return [
        Row(f"server cold start to tools/list, stdio (median of {cold['repeats']})",
            _s(cold["server_s"]),
            f"{_s(cold['heavy_s'])} with torch, transformers, trl, peft, datasets imported",
            f"{cold['server_s'] / cold['heavy_s']:.2f}x", "<= 0.7 s",
            _met(cold["server_s"] <= 0.7)),
        Row(f"check_batch p95, {check['batches']} batches of 100 rows "
            f"({check['calls']} calls)", _ms(check["check_p95_s"]),
            f"{_ms(base)} hashing + counting rows alone", f"{check['check_p95_s'] / base:.1f}x",
            "<= 50 ms", _met(check["check_p95_s"] <= 0.05)),
        Row("check_batch p95 through MCP (in-memory client)", _ms(check["mcp_p95_s"]),
            f"{_ms(base)} hashing + counting rows alone", f"{check['mcp_p95_s'] / base:.1f}x",
            "<= 50 ms", _met(check["mcp_p95_s"] <= 0.05)),
    ]


def inspector_rows(args) -> list[Row]:
    import bench_inspector

    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-inspector-") as tmp:
        root = Path(tmp) / "ws"
        build_sample_workspace(root, plan_overrides={"model": args.model})
        batch = "datasets/incremental/batch_bench_04"
        (root / batch).mkdir(parents=True)
        size = bench_inspector.generate(root / batch / "rows.jsonl", args.rows)
        what = f"{args.rows:,} rows, {size / 1e6:.0f} MB"
        parse = bench_inspector.best_of(args.repeats, "parse", root, batch, env)
        structural = bench_inspector.best_of(args.repeats, "structural", root, batch, env)
        full = bench_inspector.best_of(args.repeats, "full", root, batch, env)
        print(f"inspector on {what}: parse {parse}\n  structural {structural}\n  full {full}")
        rows += [
            Row(f"inspector structural checks + duplicate hashing ({what})",
                _s(structural["wall"]), f"{_s(parse['wall'])} orjson line-by-line parse",
                f"{structural['wall'] / parse['wall']:.2f}x", "<= 1.5x",
                _met(structural["wall"] <= 1.5 * parse["wall"])),
            Row("run_inspector, everything (leakage, grades, stats, cache write)",
                _s(full["wall"]), f"{_s(parse['wall'])} orjson line-by-line parse",
                f"{full['wall'] / parse['wall']:.2f}x", "(for reference)", "-"),
            Row("inspector peak RSS (run_inspector, the larger of the two)",
                f"{max(full['rss_mb'], structural['rss_mb']):.0f} MB",
                f"{parse['rss_mb']:.0f} MB orjson parse",
                f"{max(full['rss_mb'], structural['rss_mb']) / parse['rss_mb']:.2f}x",
                "<= 150 MB", _met(max(full["rss_mb"], structural["rss_mb"]) <= 150)),
        ]
        tokens = "datasets/incremental/batch_tokens_05"
        (root / tokens).mkdir(parents=True)
        bench_inspector.generate(root / tokens / "rows.jsonl", args.token_rows, seed=11)
        bench_inspector.run_child("tokenizer_backend", root, tokens, env)  # build it, untimed
        bare = bench_inspector.best_of(args.repeats, "tokenizer_hf", root, tokens, env)
        ours = bench_inspector.best_of(args.repeats, "tokens", root, tokens, env)
        print(f"inspector tokens: bare {bare}\n  run_inspector(tokens=True) {ours}")
        same = ours.get("tokens") == bare["tokens"]
        ours_rate, bare_rate = ours["tokens"] / ours["wall"], bare["tokens"] / bare["wall"]
        rows.append(Row(
            f"inspector tokens/s, {args.token_rows:,} rows, {args.model}"
            + ("" if same else " (TOKEN COUNTS DIFFER)"),
            _rate(ours_rate), f"{_rate(bare_rate)} bare fast tokenizer, batches of 512",
            f"{ours_rate / bare_rate:.2f}x", ">= 0.8x", _met(ours_rate >= 0.8 * bare_rate)))
    return rows


def preprocess_rows(args) -> list[Row]:
    import bench_preprocess

    from tunestep.tools.demo.tiny_model import build_tiny_model

    print(f"preprocess, inspector: {bench_preprocess.use_inspector(False)}")
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model")
        speed = bench_preprocess.throughput(work, model, args.preprocess_rows)
        grow = bench_preprocess.growth(work, model, args.batches)
    ratio = speed["preprocess_tok_s"] / speed["bare_tok_s"]
    growth = grow["step_last_s"] / grow["step1_cold_s"]
    return [
        Row(f"preprocess tokens/s, {speed['rows']:,} rows (tiny Qwen3 tokenizer)",
            _rate(speed["preprocess_tok_s"]),
            f"{_rate(speed['bare_tok_s'])} bare fast tokenizer, batched",
            f"{ratio:.2f}x", ">= 0.8x", _met(ratio >= 0.8)),
        Row(f"preprocess step {grow['batches']} ({grow['batches'] - 1} earlier batches "
            "of 100 prepared)", _s(grow["step_last_s"]),
            f"{_s(grow['step1_cold_s'])} step 1", f"{growth:.2f}x", "<= 1.2x",
            _met(growth <= 1.2)),
    ]


def job_rows(args) -> list[Row]:
    import bench_job

    results = bench_job.run(eval_rows=args.eval_rows)
    bench_job.report(results)
    pad, store, gen = results["padding"], results["store"], results["generation"]
    old, new = store["old"], store["new"]
    share_old = old["timing"]["outside_training_share"]
    share_new = new["timing"]["outside_training_share"]
    return [
        Row(f"training padding share, batch {pad['batch']} ({pad['rows']} rows), "
            "length-grouped", f"{pad['grouped']:.1%}", f"{pad['random']:.1%} random order",
            f"{pad['grouped'] / pad['random']:.2f}x", "< 1 %", _met(pad["grouped"] < 0.01)),
        Row("model-store bytes written per step, final weights only (3 epochs)",
            f"{new['copies']:.2f} model copies",
            f"{old['copies']:.2f} copies with a checkpoint each epoch",
            f"{new['copies'] / old['copies']:.2f}x", "<= 1.2 copies",
            _met(new["copies"] <= 1.2)),
        Row("job wall time outside training (start-up, whole hold-out eval, save, reports)",
            f"{share_new:.0%} of {new['timing']['wall']:.0f} s",
            f"{share_old:.0%} with epoch checkpoints", f"{share_new / share_old:.2f}x",
            "(for reference)", "-"),
        Row(f"whole hold-out generation, {gen['rows']} rows, batches of 16 (tiny model, CPU)",
            f"{gen['batched']:.1f} rows/s", f"{gen['one_at_a_time']:.1f} rows/s one at a time",
            f"{gen['batched'] / gen['one_at_a_time']:.1f}x", ">= 3x",
            _met(gen["batched"] >= 3 * gen["one_at_a_time"])),
    ]


def load_rows(args) -> list[Row]:
    import bench_load

    results = bench_load.run(args.load_seconds, args.load_processes)
    bench_load.report(results)
    burst, load = results["burst"], results["load"]
    total = burst.ok + len(burst.failures)
    held, one = bench_load.rates(load)
    rows = [
        Row(f"first use: {total} `tunestep check` at once on a new workspace",
            f"{burst.ok}/{total} reports", "(every one)", "-", "no failure",
            _met(not burst.failures)),
        Row(f"MCP calls/s held, {load.seconds:.0f} s of mixed load (stdio + 2 HTTP sessions, "
            f"2 CLI loops, a local job; {load.calls} calls, {len(load.unnamed)} unnamed errors)",
            f"{held:.2f} calls/s", f"{one:.2f} calls/s, same tools one at a time",
            f"{held / one:.2f}x" if one else "-", "every call named, job succeeded",
            _met(not load.unnamed and load.job_status == "succeeded")),
    ]
    for kind, tool in (("check", "check_batch"), ("status", "job_status")):
        under, base = load.latencies.get(kind, []), load.baseline.get(kind, [])
        if under and base:
            p_under, p_base = bench_load.p95(under), bench_load.p95(base)
            rows.append(Row(f"{tool} p95 under that load, MCP ({len(under)} calls)",
                            _ms(p_under), f"{_ms(p_base)} one at a time ({len(base)} calls)",
                            f"{p_under / p_base:.1f}x", "(reference)", "-"))
    return rows


BENCHMARKS: list[tuple[str, Callable]] = [
    ("server", server_rows), ("inspector", inspector_rows), ("preprocess", preprocess_rows),
    ("job", job_rows), ("load", load_rows)]


# --- the report ---------------------------------------------------------------------------

def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in ("torch", "transformers", "tokenizers", "mcp"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} -")
    return (f"{os.cpu_count()} cores, {model}; {platform.system()} {platform.machine()}; "
            f"python {platform.python_version()}; " + ", ".join(versions))


def load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def table(rows: list[Row]) -> str:
    head = Row("benchmark", "measured", "baseline (same run)", "ratio", "goal", "met?")
    cells = [[getattr(r, f) for f in Row.__dataclass_fields__] for r in [head, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run_section(name: str, argv: list[str]) -> list[Row]:
    """One benchmark in a fresh interpreter: nothing loaded by another one skews it (peak RSS
    of a spawned child starts from its parent's on Linux, so the parent stays small)."""
    print(f"== {name}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-rows-") as tmp:
        out = Path(tmp) / "rows.json"
        done = subprocess.run([sys.executable, __file__, *argv, "--section", name,
                               "--out", str(out)], stdout=sys.stderr, check=False)
        if done.returncode != 0 or not out.is_file():  # the others' rows still print
            return [Row(name, f"failed (exit {done.returncode}, see above)", "-", "-", "-",
                        "-")]
        return [Row(**row) for row in json.loads(out.read_text())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="the issues' sizes: 500k inspector rows, 10k token rows")
    parser.add_argument("--rows", type=int, help="inspector rows (default 100k; --full 500k)")
    parser.add_argument("--token-rows", type=int, help="rows for tokens/s (default 5k)")
    parser.add_argument("--model", default="Qwen/Qwen3-0.6B",
                        help="tokenizer for the inspector's tokens/s (built offline)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N (inspector)")
    parser.add_argument("--server-repeats", type=int, default=5, help="cold starts per side")
    parser.add_argument("--preprocess-rows", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=50, help="steps for the growth run")
    parser.add_argument("--eval-rows", type=int, default=64,
                        help="hold-out rows for the job's generation rows/s")
    parser.add_argument("--load-seconds", type=float, default=60.0,
                        help="mixed load duration (issue 22: about a minute)")
    parser.add_argument("--load-processes", type=int, default=20,
                        help="tunestep check processes of first use at once")
    parser.add_argument("--only", choices=[name for name, _ in BENCHMARKS], action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--section", choices=[name for name, _ in BENCHMARKS],
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rows = args.rows or (500_000 if args.full else 100_000)
    args.token_rows = args.token_rows or (10_000 if args.full else 5_000)

    if args.section:  # a child: run one benchmark, hand its rows back as JSON
        with contextlib.redirect_stdout(sys.stderr):
            rows = dict(BENCHMARKS)[args.section](args)
        Path(args.out).write_text(json.dumps([asdict(r) for r in rows]))
        return 0

    started, load_before = time.monotonic(), load()
    rows = []
    for name, _bench in BENCHMARKS:
        if not args.only or name in args.only:
            rows += run_section(name, sys.argv[1:])
    print(f"\nmachine: {machine()}")
    print(f"load average (1/5/15 min) before {load_before}, after {load()}; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
