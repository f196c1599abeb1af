"""Benchmark: the training job's efficient defaults, each beside a baseline from the same run.

    python tests/bench/bench_job.py [--rows 200] [--eval-rows 64]

1. Padding share of a training epoch's batches (batch 2, the sample workspace's train set,
   tiny Qwen3 tokenizer): transformers' random sampler (the old default) against its
   LengthGroupedSampler (``train_sampling_strategy="group_by_length"``, the job's).
2. Bytes a step writes into the model store, as a multiple of one copy of the model:
   the old save policy (a checkpoint every epoch, save_total_limit 3, kept under the
   version) against the job's (final weights only), both real job runs, 3 epochs.
3. The job's wall time outside training (start-up, whole hold-out evaluation, saving,
   reports) as a share of its wall time, from the same runs' ``timing``.
4. Whole hold-out generation, rows/s: the job's batched greedy generation (left padding,
   length-sorted batches of 16) against one prompt at a time, tiny model on CPU.

Prints numbers and ratios; asserts nothing (timings are not test outcomes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.demo.sample_workspace import build_sample_workspace
from tunestep.tools.demo.tiny_model import build_tiny_model
from tunestep.tools.jobs import JOB_SCRIPT, job_evaluate, sft_data

JOBS = Path(sft_data.__file__).resolve().parent
TRAIN = "datasets/processed_webdev_coding/train.jsonl"
EVAL = "datasets/processed_webdev_coding/validation.jsonl"
PATTERN = r"(?i)grade\s*[:=]\s*(\d+(?:\.\d+)?)"


def padding_share(lengths: list[int], order: list[int], batch: int) -> float:
    padded = real = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start:start + batch]]
        padded += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / padded


def padding(ws: Path, model: Path, batch: int = 2, seed: int = 42) -> dict:
    import torch
    from torch.utils.data import RandomSampler
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tok = AutoTokenizer.from_pretrained(model)
    rows = sft_data.load_chat_rows([ws / TRAIN])
    ds = sft_data.tokenize_chat(rows, tok, None, chat_template=sft_data.training_chat_template(tok))
    lengths = [len(x) for x in ds["input_ids"]]
    gen = torch.Generator().manual_seed(seed)
    random_order = list(RandomSampler(range(len(lengths)), generator=gen))
    gen = torch.Generator().manual_seed(seed)
    grouped = list(LengthGroupedSampler(batch, lengths=lengths, generator=gen))
    return {"rows": len(lengths), "batch": batch,
            "random": padding_share(lengths, random_order, batch),
            "grouped": padding_share(lengths, grouped, batch)}


def job_config(ws: Path, model: Path, step: int, batch: str, save_strategy: str) -> dict:
    return {
        "schema": 1, "draft_id": f"bench-{batch}", "step": step, "batch": batch,
        "mode": "full", "base_model": str(model), "resume_from": None,
        "train_files": [{"path": TRAIN, "sha256": sha256_file(ws / TRAIN)}],
        "eval_file": {"path": EVAL, "sha256": sha256_file(ws / EVAL)},
        "tokenized_dir": None,
        "hyperparameters": {
            "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
            "learning_rate": 5e-3, "num_train_epochs": 3, "max_length": 512, "seed": 42,
            "save_total_limit": 3, "precision": "auto", "max_steps": -1,
            "warmup_ratio": 0.05, "save_strategy": save_strategy},
        "lora": None,
        "outputs": {"model_store": "models/qwen3_webdev", "model_name": "qwen3_webdev",
                    "metrics_csv": f"logs/metrics_step_{batch}.csv",
                    "train_log": "logs/train.log",
                    "samples_md": f"logs/samples_step_{batch}.md",
                    "plots_dir": ".specs/plots", "history_json": "logs/steps_history.json",
                    "eval_json": f"logs/eval_step_{batch}.json",
                    "eval_md": f"logs/eval_step_{batch}.md"},
        "samples": {"n": 4, "max_new_tokens": 16},
        "grade_pattern": PATTERN,
        "trackio": {"project": "bench", "space_id": None, "dir": ".tunestep/trackio"},
        "hub": {"model_id": None, "private": True, "push": False},
        "data": {"overlong": "truncate_prompt"},
        "evaluation": {"batch_size": 16, "max_new_tokens": None},
        "gate": None, "expect_gpu": False,
    }


def run_job(ws: Path, cfg: dict) -> dict:
    path = ws.parent / f"{cfg['batch']}.json"
    path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", TRACKIO_DIR=str(ws.parent / "trackio"))
    proc = subprocess.run([sys.executable, str(JOBS / JOB_SCRIPT), "--config", str(path),
                           "--root", str(ws)], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1].split(" ", 1)[1])


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_bytes(ws: Path, model: Path) -> dict:
    out = {}
    for step, (name, policy) in enumerate((("old", "epoch"), ("new", "no")), start=1):
        result = run_job(ws, job_config(ws, model, step, f"bench_{name}", policy))
        version = Path(result["model_path"])
        one_copy = sum(p.stat().st_size for p in version.glob("*.safetensors"))
        out[name] = {"bytes": du(version), "model_copy": one_copy,
                     "copies": du(version) / one_copy, "timing": result["timing"]}
    return out


def generation(ws: Path, model: Path, rows: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model)
    held = sft_data.load_chat_rows([ws / EVAL])
    rng = random.Random(0)
    held = [held[rng.randrange(len(held))] for _ in range(rows)]
    holdout = job_evaluate.HoldOut.from_rows(held, PATTERN)
    budget, _, _ = job_evaluate.answer_budget(tok, holdout.references,
                                              {"max_new_tokens": None}, 16)
    out = {"rows": rows, "max_new_tokens": budget}
    for name, batch in (("one_at_a_time", 1), ("batched", 16)):
        t0 = time.perf_counter()
        job_evaluate.generate_answers(lm, tok, holdout.prompts, budget, batch)
        out[name] = rows / (time.perf_counter() - t0)
    return out


def run(eval_rows: int = 64) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model")
        ws = work / "ws"
        build_sample_workspace(ws)
        return {"padding": padding(ws, model), "store": store_bytes(ws, model),
                "generation": generation(ws, model, eval_rows)}


def report(results: dict) -> None:
    p, s, g = results["padding"], results["store"], results["generation"]
    print(f"padding share, batch {p['batch']}, {p['rows']} rows: random {p['random']:.1%}, "
          f"length-grouped {p['grouped']:.1%}")
    for name in ("old", "new"):
        r = s[name]
        print(f"store bytes per step ({name} policy): {r['bytes'] / 1e6:.2f} MB = "
              f"{r['copies']:.2f} copies of the model; timing {r['timing']}")
    print(f"generation rows/s ({g['rows']} rows, max_new_tokens {g['max_new_tokens']}): "
          f"one at a time {g['one_at_a_time']:.1f}, batched {g['batched']:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-rows", type=int, default=64)
    args = parser.parse_args()
    results = run(eval_rows=args.eval_rows)
    report(results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
