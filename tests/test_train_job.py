"""The job script end to end on CPU: tiny Qwen3, real TRL/PEFT/Trackio, run as a backend runs it.

Every training test starts ``tools/jobs/train_sft.py`` as a subprocess with a job config,
exactly as the local backend does, and checks what it leaves behind: the metrics CSV,
samples, plots, history, the versioned model store and its ``latest`` link.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hub_stub
import pytest
from conftest import FAKE_TOKEN, scan_for

from tunestep.tools.jobs import sft_data, train_sft

fake_hub = hub_stub.fake_hub  # the loopback Hub, for the push test

JOB_SCRIPT = JOB_SCRIPT_PATH = Path(sft_data.__file__).with_name("train_sft.py")
GRADE_PATTERN = r"(?i)grade\s*[:=]\s*(\d+(?:\.\d+)?)"
METRICS_COLUMNS = ["epoch", "step", "train_loss", "eval_loss", "grade_exact", "grade_within1",
                   "grade_mae", "learning_rate", "tokens", "seconds", "eval_rows", "parse_rate",
                   "grade_exact_low", "grade_exact_high", "grade_within1_low",
                   "grade_within1_high", "grade_mae_low", "grade_mae_high", "spearman", "kappa"]
SNIPPETS = [
    '<div class="card"><h1>Title</h1></div>',
    "function add(a, b) { return a + b; }",
    "body { margin: 0; display: flex; }",
    "<button onclick=\"save()\">Save</button>",
    "const xs = data.filter((x) => x.active);",
    "fetch('/api').then((r) => r.json());",
]

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------------------- helpers


def chat_rows(n: int, seed: int) -> list[dict]:
    """Grading conversations whose answers end in "Grade: N" (N follows the snippet)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randrange(len(SNIPPETS))
        grade = (k * 2 + i % 2) % 11
        rows.append({"messages": [
            {"role": "system", "content": "You grade web code from 0 to 10."},
            {"role": "user", "content": f"Grade this code:\n{SNIPPETS[k]}"},
            {"role": "assistant", "content": f"Review: clear code. Grade: {grade}"},
        ], "source": "synthetic"})  # an extra key the loader must drop
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_workspace(root: Path, store: Path) -> Path:
    """A workspace whose models/<name> links to a store outside it, as in DESIGN §2."""
    ws = root / "ws"
    data = ws / "datasets" / "processed"
    write_jsonl(data / "train.jsonl", chat_rows(40, seed=1))
    write_jsonl(data / "validation.jsonl", chat_rows(20, seed=2))
    write_jsonl(ws / "datasets/incremental/batch_100_02/rows.jsonl", chat_rows(16, seed=3))
    store.mkdir(parents=True, exist_ok=True)
    (ws / "models").mkdir()
    (ws / "models" / "tiny_webdev").symlink_to(store, target_is_directory=True)
    return ws


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_config(ws: Path, base_model: Path, *, step: int, batch: str, mode: str = "full",
               resume_from: str | None = None, train: list[str] | None = None,
               samples_n: int = 4, **hp_overrides) -> dict:
    train = train or ["datasets/processed/train.jsonl"]
    hp = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
          "learning_rate": 5e-3, "num_train_epochs": 3, "max_length": 256, "seed": 42,
          "save_total_limit": 3, "precision": "auto", "max_steps": -1, "warmup_ratio": 0.05,
          "save_strategy": "no", **hp_overrides}
    return {
        "schema": 1, "draft_id": f"d{step:03d}{mode}", "step": step, "batch": batch,
        "mode": mode, "base_model": str(base_model), "resume_from": resume_from,
        "train_files": [{"path": p, "sha256": sha(ws / p)} for p in train],
        "eval_file": {"path": "datasets/processed/validation.jsonl",
                      "sha256": sha(ws / "datasets/processed/validation.jsonl")},
        "tokenized_dir": None,
        "hyperparameters": hp,
        "lora": ({"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
                 if mode == "lora" else None),
        "outputs": {"model_store": "models/tiny_webdev", "model_name": "tiny_webdev",
                    "metrics_csv": f"logs/metrics_step_{batch}.csv", "train_log": "logs/train.log",
                    "samples_md": f"logs/samples_step_{batch}.md", "plots_dir": ".specs/plots",
                    "history_json": ".specs/plots/history.json",
                    "eval_json": f"logs/eval_step_{batch}.json",
                    "eval_md": f"logs/eval_step_{batch}.md"},
        "samples": {"n": samples_n, "max_new_tokens": 16},
        "grade_pattern": GRADE_PATTERN,
        "trackio": {"project": "tunestep-test", "space_id": None, "dir": None},
        "hub": {"model_id": None, "private": True, "push": False},
        "data": {"overlong": "truncate_prompt"},
        "evaluation": {"batch_size": 8, "max_new_tokens": None},
        "gate": None,
        "expect_gpu": False,
        "tokenized_files": [],
        "checkpoint": checkpoint_of(ws, resume_from),
        "merge_adapter": None,
    }


def files_of(folder: Path) -> list[dict]:
    """Every file under ``folder`` by its sha256, as a draft lists a job's inputs."""
    return [{"path": p.relative_to(folder).as_posix(), "sha256": sha(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def checkpoint_of(ws: Path, resume_from: str | None) -> dict | None:
    """A local resume folder's files, each by sha256 (the job loads only a copy of them)."""
    if not resume_from or resume_from.startswith("hf://"):
        return None
    return {"of": "resume_from", "files": files_of((ws / resume_from).resolve())}


def use_tokenized(ws: Path, cfg: dict, rel: str) -> None:
    cfg["tokenized_dir"] = rel
    cfg["tokenized_files"] = files_of(ws / rel)


def job_env(tmp: Path, **extra: str) -> dict:
    """Offline, token-free, Trackio under tmp: the environment a local job gets.

    One BLAS thread: the tiny model gains nothing from two, and on a shared runner idle
    OpenMP threads spin and triple the CPU time of every run.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRACKIO_DIR=str(tmp / "trackio"), TOKENIZERS_PARALLELISM="false",
               HF_HOME=str(tmp / "hf_home"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_job(ws: Path, cfg: dict, name: str = "job.json", **env: str) -> subprocess.CompletedProcess:
    path = ws.parent / name
    path.write_text(json.dumps(cfg), encoding="utf-8")
    command = [sys.executable, str(JOB_SCRIPT), "--config", str(path), "--root", str(ws)]
    return subprocess.run(command, capture_output=True, text=True, env=job_env(ws.parent, **env),
                          timeout=300)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("TUNESTEP_RESULT "), last
    return json.loads(last[len("TUNESTEP_RESULT "):])


def read_metrics(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == METRICS_COLUMNS
        return list(reader)


def assert_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def full_steps(tmp_path_factory, tiny_model_dir):
    """Step 1 (fresh full fine-tune, 20 samples) then step 2 resumed from store/latest."""
    tmp = tmp_path_factory.mktemp("full")
    store = tmp / "store"
    ws = make_workspace(tmp, store)
    first = run_job(ws, job_config(ws, tiny_model_dir, step=1, batch="batch_100_01", samples_n=20))
    after_first = {"latest": os.readlink(store / "latest") if first.returncode == 0 else None,
                   "history": json.loads((ws / ".specs/plots/history.json").read_text())
                   if first.returncode == 0 else None}
    second = run_job(ws, job_config(
        ws, tiny_model_dir, step=2, batch="batch_100_02", resume_from="models/tiny_webdev/latest",
        train=["datasets/processed/train.jsonl", "datasets/incremental/batch_100_02/rows.jsonl"],
        learning_rate=1e-3), name="job2.json")
    # Step 3: a gate that cannot pass (a whole point of exact-grade accuracy gained), and a
    # batch with one row far longer than max_length.
    long_row = chat_rows(1, seed=9)[0]
    long_row["messages"][1]["content"] = "Grade this code:\n" + " ".join(SNIPPETS * 12)
    write_jsonl(ws / "datasets/incremental/batch_100_03/rows.jsonl",
                [long_row, *chat_rows(7, seed=4)])
    cfg3 = job_config(ws, tiny_model_dir, step=3, batch="batch_100_03",
                      resume_from="models/tiny_webdev/latest", num_train_epochs=1,
                      train=["datasets/incremental/batch_100_03/rows.jsonl"], max_length=128)
    cfg3["gate"] = {"metric": "grade_exact", "margin": -1.0}
    third = run_job(ws, cfg3, name="job3.json")
    return ws, store, first, second, after_first, third


# ---------------------------------------------------------------------------- sft_data


def test_tokenize_chat_matches_trl_preparation(tmp_path, tiny_model_dir):
    """Preprocess (sft_data.tokenize_chat) and the trainer build the same ids and labels."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": r["messages"]} for r in chat_rows(6, seed=5)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    template = tokenizer.chat_template
    labels = [sft_data.tokenize_row(r["messages"], tokenizer, template, None)["labels"]
              for r in rows]
    firsts = [next(i for i, t in enumerate(lab) if t != -100) for lab in labels]
    # Whole rows; every row cut inside its answer; the earliest answers cut, later ones dropped.
    for max_length in (256, max(firsts) + 2, min(firsts) + 1):
        ours = sft_data.tokenize_chat(rows, tokenizer, max_length=max_length)
        trainer = SFTTrainer(
            model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
            args=SFTConfig(output_dir=str(tmp_path / "unused"), max_length=max_length,
                           assistant_only_loss=True, bf16=False, report_to=[],
                           activation_checkpointing=False))
        theirs = trainer.train_dataset
        assert ours["input_ids"] == theirs["input_ids"]
        assert ours["labels"] == theirs["labels"]
    # The end-of-turn token is trained, the prompt is not.
    labels = sft_data.tokenize_chat(rows, tokenizer, max_length=256)["labels"][0]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in labels and labels[0] == -100


def test_training_template_falls_back_for_templates_without_markers(tiny_model_dir):
    from importlib.resources import files

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stock_qwen3 = files("trl").joinpath("chat_templates/qwen3.jinja").read_text()
    plain_chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                    "<|im_end|>\n{% endfor %}")
    for template in (stock_qwen3, plain_chatml):  # one TRL knows, one it does not
        tokenizer.chat_template = template
        assert not sft_data.has_generation_markers(template)
        chosen = sft_data.training_chat_template(tokenizer)
        assert sft_data.has_generation_markers(chosen)
        assert sft_data.tokenize_chat([{"messages": chat_rows(1, 0)[0]["messages"]}],
                                      tokenizer, 256, chat_template=chosen).num_rows == 1
    # Neither markers, nor a template TRL knows, nor ChatML tokens: refuse, never mask nothing.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(
        models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    other.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(ValueError, match="no training variant is known"):
        sft_data.training_chat_template(other)


def test_load_chat_rows_drops_extra_keys_and_names_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    write_jsonl(good, chat_rows(2, seed=0))
    assert sft_data.load_chat_rows([good])[0].keys() == {"messages"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows(1, 0)[0]) + "\n" + '{"messages": [{"role": "bot"}]}\n')
    with pytest.raises(sft_data.DataError, match=r"bad\.jsonl:2: messages\[0\]\.role"):
        sft_data.load_chat_rows([bad])


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.pop("grade_pattern"), "missing key(s) ['grade_pattern'] in config"),
    (lambda c: c["hyperparameters"].update(seed=True), "hyperparameters.seed must be int"),
    (lambda c: c.update(mode="qlora"), "mode must be 'full' or 'lora'"),
    (lambda c: c.update(lora=None, mode="lora"), "mode 'lora' needs a lora block"),
    (lambda c: c.update(grade_pattern=r"grade \d+"), "needs a capturing group"),
    (lambda c: c["hub"].update(push=True), "hub.push needs hub.model_id"),
    (lambda c: c.update(batch="../x"), "batch must match"),
    (lambda c: c.update(resume_from="hf://no-owner"), "resume_from must be a path, hf://"),
    (lambda c: c.update(resume_from="hf://owner/.."), "resume_from must be a path, hf://"),
    (lambda c: c.update(resume_from="hf://../name"), "resume_from must be a path, hf://"),
    (lambda c: c.update(resume_from="hf://a/b@../../c"), "resume_from must be a path, hf://"),
    (lambda c: c.update(resume_from="hf://a--b/c"), "resume_from must be a path, hf://"),
    (lambda c: c["hyperparameters"].update(warmup_ratio=1.0), "warmup_ratio must be in [0, 1)"),
    (lambda c: c["data"].update(overlong="cut"), "data.overlong must be one of"),
    (lambda c: c.update(gate={"metric": "accuracy", "margin": 0.0}),
     "gate.metric must be one of"),
    (lambda c: c.update(gate={"metric": "grade_exact", "max_regression": 0.0,
                              "require_significance": True}), "unknown key(s)"),
    (lambda c: c.update(gate={"metric": "grade_exact", "margin": float("inf")}),
     "gate.margin must be a finite number"),
    (lambda c: c["evaluation"].update(batch_size=0), "evaluation.batch_size must be >= 1"),
    (lambda c: c.update(expect_gpu="yes"), "config.expect_gpu must be bool"),
    (lambda c: c.update(merge_adapter={"base_files": []}),
     "merge_adapter needs resume_from (the adapter)"),
    (lambda c: c.update(merge_adapter={"base_files": [{"path": "../x", "sha256": "0" * 64}]},
                        resume_from="hf://a/b@c"), "merge_adapter.base_files[0].path must be"),
    (lambda c: c.update(merge_adapter={"base": "x"}), "unknown key(s) ['base']"),
    (lambda c: c.update(merge_adapter={"base_files": []}, resume_from="hf://a/b@c",
                        mode="lora", lora={"r": 8, "alpha": 16, "dropout": 0.0,
                                           "target_modules": "all-linear"}),
     "merge_adapter needs mode 'full'"),
])
def test_config_contract_is_enforced(tmp_path, change, message):
    ws = make_workspace(tmp_path, tmp_path / "store")
    cfg = job_config(ws, tmp_path / "model", step=1, batch="b1")
    change(cfg)
    with pytest.raises(train_sft.JobError, match=re.escape(message)) as info:
        train_sft.validate_config(cfg)
    assert info.value.code == 2


def test_a_full_step_merges_an_adapter_only_when_its_signed_config_says_so(tmp_path):
    """A full job whose resume_from holds an adapter refuses it unless merge_adapter is
    set, and merge_adapter on a folder without an adapter is refused: never a silent
    merge, nor a full model trained where an adapter merge was signed."""
    from tunestep.tools.jobs import job_config as jc
    from tunestep.tools.jobs import job_train

    ws = make_workspace(tmp_path, tmp_path / "store")
    adapter, full = tmp_path / "adapter", tmp_path / "full"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    full.mkdir()
    (full / "config.json").write_text("{}")
    for resume, merge, said in [(adapter, None, "asks for no merge (merge_adapter)"),
                                (full, {"base_files": []}, "resume_from holds no LoRA")]:
        cfg = job_config(ws, tmp_path / "model", step=1, batch="b1")
        cfg.update(draft_id="d", resume_from=str(resume), merge_adapter=merge,
                   checkpoint={"of": "resume_from", "files": files_of(resume)})
        paths = jc.resolve_paths(train_sft.validate_config(cfg), ws)
        with pytest.raises(train_sft.JobError, match=re.escape(said)):
            job_train.load_model_and_tokenizer(cfg, paths, lambda line: None)


def test_parse_grade_and_metrics():
    assert sft_data.parse_grade("Nice. Grade: 7", GRADE_PATTERN) == 7.0
    assert sft_data.parse_grade("<think>Grade: 2?</think>grade = 8.5", GRADE_PATTERN) == 8.5
    assert sft_data.parse_grade("no number", GRADE_PATTERN) is None
    m = sft_data.grade_metrics([(7, 7), (5, 6), (3, None), (None, 4)])
    assert m["grade_exact"] == pytest.approx(1 / 3)
    assert m["grade_within1"] == pytest.approx(2 / 3)
    assert m["grade_mae"] == pytest.approx(0.5)
    assert sft_data.grade_metrics([(None, None)])["grade_mae"] is None


def test_job_files_list_every_sibling_the_job_imports():
    """JOB_FILES is what the draft hashes and the backends ship: a module the job imports
    but the list lacks would pass here and fail on HF Jobs."""
    import ast

    from tunestep.tools.jobs import JOB_FILES, JOB_SCRIPT

    folder = JOB_SCRIPT_PATH.parent
    shipped = set(JOB_FILES)
    assert JOB_SCRIPT in shipped and all((folder / name).is_file() for name in shipped)
    siblings = {p.stem for p in folder.glob("*.py")}
    for name in (n for n in shipped if n.endswith(".py")):
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert not mod.startswith("tunestep"), f"{name} imports {mod}"
                if mod in siblings:
                    assert f"{mod}.py" in shipped, f"{name} imports {mod}, not in JOB_FILES"


# ---------------------------------------------------------------------------- full fine-tune


def test_fresh_full_step_writes_every_output(full_steps):
    ws, store, first, _, after_first, _ = full_steps
    result = result_of(first)
    rows = read_metrics(ws / "logs/metrics_step_batch_100_01.csv")
    # An epoch-0 row (before training: hold-out loss and the base model's evaluation),
    # then one row per epoch; the new version's evaluation on the last.
    assert len(rows) == 4 and rows[0]["epoch"] == "0" and rows[0]["train_loss"] == ""
    assert float(rows[0]["eval_loss"]) == pytest.approx(result["eval_loss_before"])
    assert rows[0]["parse_rate"] == "0.0" and rows[0]["eval_rows"] == "20"
    losses = [float(r["train_loss"]) for r in rows[1:]]
    assert losses[-1] < losses[0], losses
    assert all(r["eval_loss"] for r in rows)
    assert rows[-1]["grade_exact"] != "" and rows[1]["grade_exact"] == ""
    assert float(rows[-1]["grade_exact_low"]) <= float(rows[-1]["grade_exact"]) \
        <= float(rows[-1]["grade_exact_high"])
    assert int(rows[-1]["tokens"]) > int(rows[1]["tokens"]) > 0

    samples = (ws / "logs/samples_step_batch_100_01.md").read_text()
    assert samples.count("\n## Sample ") == 20
    assert samples.count("**Before**") == 20 and samples.count("**After**") == 20
    assert_png(ws / ".specs/plots/loss_step_batch_100_01.png")
    assert_png(ws / ".specs/plots/val_progression.png")

    assert after_first["latest"] == "versions/0001_batch_100_01"
    assert [h["step"] for h in after_first["history"]] == [1]
    version = store / "versions" / "0001_batch_100_01"
    assert (version / "config.json").is_file() and (version / "tokenizer.json").is_file()
    meta = json.loads((version / "tunestep_version.json").read_text())
    assert meta["step"] == 1 and meta["datasets"]["eval_file"]["sha256"]
    assert result["model_path"] == str(version)
    assert result["metrics_after"]["n"] == 20 and result["train_tokens"] > 0
    # The random model answers nothing gradable; after training the "Grade: N" format parses.
    # Nothing parsed: MAE, Spearman and kappa are undefined (never imputed), with the reason.
    before, after = result["metrics_before"], result["metrics_after"]
    assert before["n_parsed"] == 0 and before["parse_rate"] == 0
    assert before["grade_mae"] is None and before["spearman"] is None and before["kappa"] is None
    assert "only 0 of 20" in result["evaluation"]["before"]["grade_mae"]["undefined"]
    assert after["n_parsed"] > 0
    assert result["evaluation"]["before_reused"] is False  # a fresh start: the base answers
    assert result["promoted"] is True and result["promotion"]["metric"] is None  # no gate
    assert result["saved_dtype"] == "float32" and result["precision"] == "fp32"  # CPU


def test_eval_report_covers_every_hold_out_row(full_steps):
    ws, _, first, *_ = full_steps
    result = result_of(first)
    report = json.loads((ws / "logs/eval_step_batch_100_01.json").read_text())
    holdout = sft_data.load_chat_rows([ws / "datasets/processed/validation.jsonl"])
    assert report["rows"] == report["graded_rows"] == len(holdout) == 20
    assert [r["row"] for r in report["per_row"]] == list(range(20))
    assert [r["reference"] for r in report["per_row"]] == [
        sft_data.parse_grade(row["messages"][-1]["content"], GRADE_PATTERN) for row in holdout]
    # every grade reachable: the budget covers the longest reference answer
    assert report["max_new_tokens"] > report["longest_reference_tokens"] > 0
    for version in ("before", "after"):
        for name, m in report[version].items():
            if m["value"] is not None:
                assert m["low"] <= m["value"] <= m["high"], (version, name, m)
    paired = report["paired"]
    assert paired["wins"] + paired["losses"] + paired["ties"] == 20
    assert paired["wins"] > paired["losses"] and paired["p_value"] < 0.05
    assert result["evaluation"]["delta"] == report["delta"]
    assert report["delta"]["parse_rate"]["value"] == pytest.approx(
        report["after"]["parse_rate"]["value"] - report["before"]["parse_rate"]["value"])
    md = (ws / "logs/eval_step_batch_100_01.md").read_text()
    assert "| grade_within_1 |" in md and "promoted" in md
    history = json.loads((ws / ".specs/plots/history.json").read_text())
    assert history[0]["grade_within1_low"] is not None and history[0]["promoted"] is True


def test_gate_that_cannot_pass_records_the_version_and_keeps_latest(full_steps):
    ws, store, *_, third = full_steps
    result = result_of(third)
    assert result["promoted"] is False
    promotion = result["promotion"]
    assert promotion["metric"] == "grade_exact" and promotion["margin"] == -1.0
    assert "is not above +1" in promotion["reason"] and "latest stays" in promotion["reason"]
    assert promotion["interval"][1] < 1.0 and promotion["p_value"] is not None
    assert os.readlink(store / "latest") == "versions/0002_batch_100_02"  # unchanged
    version = store / "versions" / "0003_batch_100_03"
    assert (version / "config.json").is_file()  # recorded all the same
    meta = json.loads((version / "tunestep_version.json").read_text())
    assert meta["promotion"]["promoted"] is False
    assert "NOT promoted" in (ws / "logs/train.log").read_text()
    history = json.loads((ws / ".specs/plots/history.json").read_text())
    assert [h["promoted"] for h in history] == [True, True, False]
    # The over-long row kept its answer: its prompt was shortened, nothing dropped.
    assert result["rows_shortened"] == 1 and result["rows_dropped"] == 0
    assert "overlong: shortened the prompt of train" in (ws / "logs/train.log").read_text()
    log = (ws / "logs/train.log").read_text()
    assert "start:" in log and "done:" in log
    # Trackio logged offline into TRACKIO_DIR; no workspace checkpoints.
    assert any((ws.parent / "trackio").iterdir())
    assert not list(ws.rglob("checkpoint-*"))


def test_second_step_resumes_from_latest(full_steps):
    ws, store, first, second, _, _ = full_steps
    result = result_of(second)
    assert result["resume_from"] == str(store / "versions" / "0001_batch_100_01")
    # It really starts from step 1's weights: same hold-out loss as step 1 ended with.
    expected = result_of(first)["final_eval_loss"]
    assert result["eval_loss_before"] == pytest.approx(expected, rel=1e-4)
    assert os.readlink(store / "latest") == "versions/0002_batch_100_02"
    history = json.loads((ws / ".specs/plots/history.json").read_text())
    assert [(h["step"], h["batch"]) for h in history][:2] == [(1, "batch_100_01"),
                                                             (2, "batch_100_02")]
    assert len(read_metrics(ws / "logs/metrics_step_batch_100_02.csv")) == 4  # epoch 0 + 3
    # Its "before" is step 1's "after", kept with version 0001 and reused, not regenerated.
    assert result["evaluation"]["before_reused"] is True
    assert result["evaluation"]["seconds"]["before"] == 0
    kept = json.loads((store / "versions/0001_batch_100_01/holdout_answers.json").read_text())
    assert kept["version"] == "versions/0001_batch_100_01" and len(kept["answers"]) == 20
    step1 = json.loads((ws / "logs/eval_step_batch_100_01.json").read_text())
    step2 = json.loads((ws / "logs/eval_step_batch_100_02.json").read_text())
    assert [r["before"] for r in step2["per_row"]] == [r["after"] for r in step1["per_row"]]
    assert "**reused**" in (ws / "logs/eval_step_batch_100_02.md").read_text()
    assert (store / "versions" / "0001_batch_100_01" / "config.json").is_file()  # untouched


# ---------------------------------------------------------------------------- LoRA


def test_lora_fresh_then_resumed_from_adapter(tmp_path, tiny_model_dir):
    """Step 2 also trains from a tokenized_dir, as tunestep's preprocess writes it."""
    from transformers import AutoTokenizer

    store = tmp_path / "store"
    ws = make_workspace(tmp_path, store)
    lora_hp = {"learning_rate": 1e-2, "per_device_train_batch_size": 4}  # 10 steps an epoch
    first = result_of(run_job(ws, job_config(ws, tiny_model_dir, step=1, batch="b1", mode="lora",
                                             **lora_hp)))
    adapter = store / "versions" / "0001_b1"
    assert (adapter / "adapter_config.json").is_file()
    assert not (adapter / "model.safetensors").exists()  # an adapter, not a full model
    assert first["metrics_before"]["n"] == 20  # the whole hold-out, not the 4 samples

    rows = sft_data.load_chat_rows([ws / "datasets/processed/train.jsonl"])
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    sft_data.tokenize_chat(rows, tokenizer, 256).save_to_disk(str(ws / "datasets/tokenized/b2"))
    cfg = job_config(ws, tiny_model_dir, step=2, batch="b2", mode="lora",
                     resume_from="models/tiny_webdev/latest", **lora_hp)
    use_tokenized(ws, cfg, "datasets/tokenized/b2")
    second = result_of(run_job(ws, cfg, name="job2.json"))
    assert "pretokenized train rows: 40" in (ws / "logs/train.log").read_text()
    assert second["resume_from"] == str(adapter)
    assert second["eval_loss_before"] == pytest.approx(first["final_eval_loss"], rel=1e-4)
    assert os.readlink(store / "latest") == "versions/0002_b2"
    assert (store / "versions" / "0002_b2" / "adapter_config.json").is_file()
    rows = read_metrics(ws / "logs/metrics_step_b2.csv")
    assert len(rows) == 4 and float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"])


# ---------------------------------------------------------------------------- refusals


def test_wrong_sha256_is_refused(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    ws = make_workspace(tmp_path, store)
    cfg = job_config(ws, tiny_model_dir, step=1, batch="b1")
    cfg["train_files"][0]["sha256"] = "0" * 64
    proc = run_job(ws, cfg)
    assert proc.returncode == 2
    assert "sha256 mismatch" in proc.stderr + proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("TUNESTEP_ERROR ")
    assert not (store / "versions").exists() and not (store / "latest").exists()
    assert not (store / ".staging").exists()


def test_unknown_config_key_is_refused(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path, tmp_path / "store")
    cfg = job_config(ws, tiny_model_dir, step=1, batch="b1")
    cfg["hyperparameters"]["warmup"] = 0.1
    proc = run_job(ws, cfg)
    assert proc.returncode == 2 and "unknown key(s) ['warmup'] in hyperparameters" in proc.stderr


def test_sigterm_cancels_without_moving_latest(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    ws = make_workspace(tmp_path, store)
    cfg = job_config(ws, tiny_model_dir, step=1, batch="b1", num_train_epochs=200, samples_n=0)
    (tmp_path / "job.json").write_text(json.dumps(cfg))
    command = [sys.executable, str(JOB_SCRIPT), "--config", str(tmp_path / "job.json"),
               "--root", str(ws)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=job_env(tmp_path))
    log = ws / "logs" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and 'log {"loss"' in log.read_text():  # an epoch done: mid-training
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert "cancelled" in out
    assert not (store / "latest").exists()
    assert not list((store / "versions").iterdir())  # no version,
    assert not list((store / ".staging").iterdir())  # and nothing half-written left behind


# ---------------------------------------------------------------------------- Hub push


def test_push_is_private_resumable_and_token_free(tmp_path, tiny_model_dir, fake_hub):
    """hub.push uploads the model privately; HF Jobs outputs go back; the token never shows."""
    store = tmp_path / "store"
    ws = make_workspace(tmp_path, store)
    fake_hub.add_repo("tester/steps", "dataset", private=True)
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_TOKEN": FAKE_TOKEN, "TUNESTEP_OUTPUT_REPO": "tester/steps",
           "TUNESTEP_OUTPUT_PATH": "outputs/d001full"}
    short = {"samples_n": 2, "num_train_epochs": 1}
    cfg = job_config(ws, tiny_model_dir, step=1, batch="b1", **short)
    cfg["hub"] = {"model_id": "tester/tiny-webdev", "private": True, "push": True}
    proc = run_job(ws, cfg, **env)
    first = result_of(proc)

    model_repo = fake_hub.repo("tester/tiny-webdev", "model")
    assert model_repo.private
    assert {"config.json", "model.safetensors", "tunestep_version.json",
            "tokenizer.json", "chat_template.jinja"} <= set(model_repo.files)
    assert not any(name.startswith("checkpoints/") for name in model_repo.files)
    assert first["hub"] == {"model_id": "tester/tiny-webdev", "revision": model_repo.head,
                            "private": True}
    outputs = fake_hub.repo("tester/steps").files
    assert {"outputs/d001full/result.json", "outputs/d001full/logs/metrics_step_b1.csv",
            "outputs/d001full/logs/samples_step_b1.md",
            "outputs/d001full/.specs/plots/val_progression.png"} <= set(outputs)
    assert json.loads(outputs["outputs/d001full/result.json"])["hub"] == first["hub"]

    # A later job resumes from the pushed commit alone.
    cfg2 = job_config(ws, tiny_model_dir, step=2, batch="b2", **short,
                      resume_from=f"hf://tester/tiny-webdev@{first['hub']['revision']}")
    second = result_of(run_job(ws, cfg2, name="job2.json", **env))
    assert second["resume_from"].startswith("hf://tester/tiny-webdev@")
    assert second["eval_loss_before"] == pytest.approx(first["final_eval_loss"], rel=1e-4)

    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert scan_for(FAKE_TOKEN, ws, store) == []
    pushed = [*model_repo.files.values(), *outputs.values()]
    assert not any(FAKE_TOKEN.encode() in data for data in pushed)
