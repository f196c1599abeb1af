"""Benchmark: preprocess speed against the bare fast tokenizer, and growth with history.

    python tests/bench/bench_preprocess.py [--rows 1000] [--batches 50] [--fake-inspector]

1. Throughput. preprocess tokenizes a step cold (select rows, template, tokenize, labels,
   write); the baseline is the bare fast tokenizer, batched, on the very texts the chat
   template renders for those rows, in the same process. Goal: >= 0.8x.
2. Growth. Preparing step 50 (49 earlier batches of 100 rows, already prepared by the
   earlier steps) against step 1 (base + batch 1, nothing prepared). Goal: <= 1.2x. Also
   shown: step 1 with the base set already tokenized (both sides tokenize 100 new rows,
   so the ratio is the cost of history alone), and step_datasets (draft_job's view).

Prints numbers and ratios; asserts nothing (timings are not test outcomes). Uses the
real inspector when it is importable, else a stand-in that answers READY (said so).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import orjson

from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.data import merge, preprocess, step_sources
from tunestep.tools.demo.sample_workspace import build_sample_workspace

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def use_inspector(fake: bool) -> str:
    try:
        from tunestep.tools.inspector import run_inspector  # noqa: F401
    except ImportError:
        fake = True
    if fake:
        step_sources._inspect = lambda ws, path: types.SimpleNamespace(
            status="READY", errors=[], error_count=0)
        return "stand-in (READY)"
    return "real run_inspector"


def make_ws(root: Path, model: Path, *, base: int, batches: int, rows: int) -> Workspace:
    build_sample_workspace(root, base_rows=base, batch_rows=rows, batches=batches,
                           holdout_rows=40,
                           plan_overrides={"model": str(model), "training": {"max_length": 2048}})
    ws = open_workspace(root)
    if batches >= 2:  # the sample's second batch is ShareGPT: map it as apply_mapping would
        name = f"batch_{rows}_02"
        src = root / "datasets/incremental" / name / "conversations.json"
        mapped = [{"messages": [{"role": ROLES[t["from"]], "content": t["value"]}
                                for t in r["conversations"]]}
                  for r in orjson.loads(src.read_bytes())]
        out = root / "datasets/processed_webdev_coding_mapped" / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "mapped.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in mapped))
    return ws


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def forget(ws: Workspace, batch: str, files: list[str]) -> None:
    """Remove a step's folder and the parts of ``files`` so the next run redoes them."""
    root = ws.root / "datasets/tokenized"
    record = orjson.loads((root / batch / preprocess.CACHE_FILE).read_bytes())
    shutil.rmtree(root / batch)
    for part in record["parts"]:
        if part["path"] in files:
            shutil.rmtree(root / preprocess.PARTS_DIR / part["part_key"], ignore_errors=True)


def throughput(work: Path, model: Path, rows: int, repeats: int = 5) -> dict:
    from transformers import AutoTokenizer

    from tunestep.tools.jobs import sft_data

    ws = make_ws(work / "speed", model, base=rows, batches=1, rows=10)
    batch = "batch_10_01"
    result = preprocess.preprocess(ws, batch)  # warm-up: imports, template compilation
    sources = [f.path for f in merge.step_datasets(ws, batch).sources]
    tok = AutoTokenizer.from_pretrained(str(model))
    template = sft_data.training_chat_template(tok)
    chats = sft_data.load_chat_rows([ws.root / f for f in sources])
    texts = [tok.apply_chat_template(c["messages"], chat_template=template, tokenize=False)
             for c in chats]
    encoded = tok(texts, add_special_tokens=False)
    bare_tokens = sum(len(ids) for ids in encoded["input_ids"])
    # Interleaved, best of N: on a shared machine the minimum is the least disturbed run.
    ours, bare, shared, batched = [], [], [], []
    for _ in range(repeats):
        forget(ws, batch, sources)
        ours.append(timed(preprocess.preprocess, ws, batch)[0])
        bare.append(timed(tok, texts, add_special_tokens=False)[0])
        shared.append(timed(sft_data.tokenize_chat, chats, tok, 2048,
                            chat_template=template)[0])
        batched.append(timed(tok.apply_chat_template, [c["messages"] for c in chats],
                             chat_template=template, tokenize=True, return_dict=True,
                             return_assistant_tokens_mask=True)[0])
    rate = {name: result.tokens / min(runs) for name, runs in
            (("ours", ours), ("bare", bare), ("shared", shared), ("batched", batched))}

    print(f"throughput: {result.rows} rows, {result.tokens} tokens "
          f"(bare tokenizer counted {bare_tokens}); best of {repeats}, interleaved")
    print(f"  preprocess (cold, end to end)   {rate['ours']:12,.0f} tokens/s")
    print(f"  bare fast tokenizer, batched    {rate['bare']:12,.0f} tokens/s")
    print(f"  ratio preprocess / bare         {rate['ours'] / rate['bare']:.2f}x"
          "   (goal >= 0.8x)")
    print(f"  of which sft_data.tokenize_chat {rate['shared']:12,.0f} tokens/s "
          f"({rate['shared'] / rate['bare']:.2f}x bare): the shared per-row function")
    print(f"  batched apply_chat_template     {rate['batched']:12,.0f} tokens/s "
          f"({rate['batched'] / rate['bare']:.2f}x bare; what batching it would give)")
    return {"rows": result.rows, "tokens": result.tokens, "preprocess_tok_s": rate["ours"],
            "bare_tok_s": rate["bare"], "repeats": repeats}


def growth(work: Path, model: Path, batches: int) -> dict:
    ws = make_ws(work / "growth", model, base=200, batches=batches, rows=100)
    first, last = "batch_100_01", f"batch_100_{batches:02d}"
    before_last = f"batch_100_{batches - 1:02d}"
    sd1, _ = timed(merge.step_datasets, ws, first)
    cold = []
    for _ in range(3):  # imports already warm from the throughput run
        seconds, step1 = timed(preprocess.preprocess, ws, first)
        cold.append(seconds)
        forget(ws, first, [p.path for p in step1.parts])
    cold1 = statistics.median(cold)
    prep, _ = timed(preprocess.preprocess, ws, before_last)  # = the history of steps 2..49
    preprocess.preprocess(ws, first)
    batch1_path = step1.parts[1].path
    warm1 = []
    for _ in range(3):
        forget(ws, first, [batch1_path])
        warm1.append(timed(preprocess.preprocess, ws, first)[0])
    last_runs = []
    for _ in range(3):
        seconds, result = timed(preprocess.preprocess, ws, last)
        last_runs.append(seconds)
        new_file = result.parts[-1].path
        forget(ws, last, [new_file])
    step_last = statistics.median(last_runs)
    sd50, _ = timed(merge.step_datasets, ws, last)
    hit, cached = timed(preprocess.preprocess, ws, before_last)

    print(f"growth: base 200 rows + {batches} batches of 100 ({batches * 100 + 200} rows "
          f"at step {batches}); steps 2..{batches - 1} prepared in {prep:.2f} s")
    print(f"  step 1 preprocess, cold                      {cold1:7.3f} s")
    print(f"  step 1 preprocess, base already tokenized    {statistics.median(warm1):7.3f} s")
    print(f"  step {batches} preprocess, earlier steps prepared  {step_last:7.3f} s "
          f"({result.rows} rows, {sum(not p.cached for p in result.parts)} file tokenized)")
    print(f"  ratio step {batches} / step 1 (cold)               {step_last / cold1:.2f}x"
          "   (goal <= 1.2x)")
    print(f"  ratio step {batches} / step 1 (base tokenized)     "
          f"{step_last / statistics.median(warm1):.2f}x   (history overhead alone)")
    print(f"  step_datasets step 1 / step {batches}              {sd1:.3f} s / {sd50:.3f} s "
          f"({sd50 / sd1:.2f}x)")
    print(f"  preprocess again, step {batches - 1}                    {hit:7.3f} s "
          f"(cached: {cached.cached})")
    return {"batches": batches, "step_last_s": step_last, "step1_cold_s": cold1,
            "step1_warm_s": statistics.median(warm1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows for the throughput run")
    parser.add_argument("--batches", type=int, default=50, help="steps for the growth run")
    parser.add_argument("--fake-inspector", action="store_true",
                        help="measure without the inspector's cost")
    args = parser.parse_args()
    from tunestep.tools.demo.tiny_model import build_tiny_model

    print(f"inspector: {use_inspector(args.fake_inspector)}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="tunestep-bench-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model")
        throughput(work, model, args.rows)
        growth(work, model, args.batches)


if __name__ == "__main__":
    main()
