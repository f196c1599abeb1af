"""The job's pieces without training: precision and the GPU check, over-long rows, the
statistics of the hold-out evaluation and the promotion gate."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tunestep.tools.jobs import job_data, job_evaluate, job_gate, job_stats, job_train, sft_data
from tunestep.tools.jobs.job_common import JobError

# ---------------------------------------------------------------------------- precision


def fake_torch(cuda: bool, native_bf16: bool, emulated_bf16: bool = True, old: bool = False):
    """A stand-in for the torch module's CUDA probes (no GPU here to ask)."""
    def is_bf16_supported(including_emulation: bool = True):
        return native_bf16 or (including_emulation and emulated_bf16)

    def old_is_bf16_supported():  # releases before the keyword checked natively
        return native_bf16

    probe = old_is_bf16_supported if old else is_bf16_supported
    return types.SimpleNamespace(
        __version__="2.13.0", version=types.SimpleNamespace(cuda="12.8" if cuda else None),
        cuda=types.SimpleNamespace(is_available=lambda: cuda, is_bf16_supported=probe))


def test_bf16_is_detected_without_emulation():
    # A T4: emulation says yes, natively no -> fp16.
    t4 = fake_torch(cuda=True, native_bf16=False, emulated_bf16=True)
    assert job_train.bf16_supported(t4) is False
    assert job_train.resolve_precision("auto", True, job_train.bf16_supported(t4)) == \
        ("fp16", None)
    a100 = fake_torch(cuda=True, native_bf16=True)
    assert job_train.resolve_precision("auto", True, job_train.bf16_supported(a100)) == \
        ("bf16", None)
    assert job_train.bf16_supported(fake_torch(cuda=True, native_bf16=True, old=True))
    assert not job_train.bf16_supported(fake_torch(cuda=False, native_bf16=False))


def test_precision_fall_back_says_why():
    resolve = job_train.resolve_precision
    assert resolve("auto", cuda=False, bf16_ok=False) == ("fp32", None)
    precision, why = resolve("bf16", cuda=True, bf16_ok=False)
    assert precision == "fp16" and "no native bf16" in why
    precision, why = resolve("fp16", cuda=False, bf16_ok=False)
    assert precision == "fp32" and "no CUDA GPU" in why
    assert resolve("fp32", cuda=True, bf16_ok=True) == ("fp32", None)


@pytest.mark.parametrize(("expect", "env", "stops"), [
    (True, {}, True),
    (False, {"ACCELERATOR": "t4-medium"}, True),
    (False, {"ACCELERATOR": "none"}, False),
    (False, {}, False),
])
def test_gpu_flavor_without_cuda_stops(expect, env, stops):
    cfg = {"expect_gpu": expect}
    no_cuda = fake_torch(cuda=False, native_bf16=False)
    if stops:
        with pytest.raises(JobError, match="CUDA is not usable") as info:
            job_train.check_gpu(cfg, no_cuda, env)
        assert info.value.code == 2
    else:
        job_train.check_gpu(cfg, no_cuda, env)
    job_train.check_gpu(cfg, fake_torch(cuda=True, native_bf16=True), env)  # CUDA: fine


def test_time_before_training_counts_from_the_job_start(monkeypatch):
    import time

    from tunestep.tools.jobs import job_process, train_sft

    monkeypatch.delenv("TUNESTEP_OUTPUT_REPO", raising=False)
    monkeypatch.delenv("TUNESTEP_JOB_STARTED", raising=False)
    alone = job_process.startup_seconds(train_sft.T_PROCESS)
    assert alone["process_to_training"] > 0 and alone["job_to_training"] is None
    monkeypatch.setenv("TUNESTEP_JOB_STARTED", str(time.time() - 100))
    launched = job_process.startup_seconds(train_sft.T_PROCESS)
    assert 100 <= launched["job_to_training"] < 200


# ---------------------------------------------------------------------------- over-long rows


def long_row(words: int) -> dict:
    return {"messages": [
        {"role": "system", "content": "You grade web code from 0 to 10."},
        {"role": "user", "content": "Grade this code:\n" + " ".join(
            f"<div class='c{i}'>item {i}</div>" for i in range(words))},
        {"role": "assistant", "content": "Review: tidy markup, no semantics. Grade: 6"},
    ]}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_truncate_prompt_keeps_the_whole_answer(tokenizer):
    template = sft_data.training_chat_template(tokenizer)
    rows = [long_row(3), long_row(200)]
    lengths = [len(sft_data.tokenize_row(r["messages"], tokenizer, template, None)["input_ids"])
               for r in rows]
    max_length = 160
    assert lengths[0] <= max_length < lengths[1]
    lines: list[str] = []
    kept, shortened, dropped = job_data.fit_rows(rows, ["a row 1", "a row 2"], tokenizer,
                                                 template, max_length, "truncate_prompt",
                                                 lines.append, "train")
    assert (shortened, dropped) == (1, 0) and kept[0] == rows[0]
    fixed = kept[1]["messages"]
    assert fixed[2] == rows[1]["messages"][2] and fixed[0] == rows[1]["messages"][0]
    user = fixed[1]["content"]
    assert job_data.OMISSION in user and user.startswith("Grade this code:")
    assert user.endswith(rows[1]["messages"][1]["content"][-20:])  # the middle went
    rec = sft_data.tokenize_row(fixed, tokenizer, template, max_length)
    assert len(rec["input_ids"]) <= max_length
    trained = tokenizer.decode([t for t in rec["labels"] if t != -100])
    assert "Grade: 6" in trained and trained.rstrip().endswith("<|im_end|>")
    assert any("a row 2" in line and "shortened" in line for line in lines)


def test_drop_and_error_policies(tokenizer):
    template = sft_data.training_chat_template(tokenizer)
    rows = [long_row(3), long_row(200)]
    lines: list[str] = []
    kept, shortened, dropped = job_data.fit_rows(rows, ["r1", "r2"], tokenizer, template, 160,
                                                 "drop", lines.append, "train")
    assert kept == rows[:1] and (shortened, dropped) == (0, 1)
    assert any("dropped train r2" in line for line in lines)
    with pytest.raises(JobError, match=r"train r2: .* longer than max_length 160") as info:
        job_data.fit_rows(rows, ["r1", "r2"], tokenizer, template, 160, "error", print, "train")
    assert info.value.code == 2
    # An answer that cannot fit at all is dropped under truncate_prompt, never cut.
    huge = long_row(3)
    huge["messages"][2]["content"] = "word " * 300 + "Grade: 4"
    kept, shortened, dropped = job_data.fit_rows([rows[0], huge], ["r1", "r2"], tokenizer,
                                                 template, 160, "truncate_prompt", print,
                                                 "train")
    assert kept == rows[:1] and dropped == 1


def test_answer_budget_reaches_every_grade(tokenizer):
    refs = ["Short. Grade: 3", "A much longer review of the markup and the styles. " * 6
            + "Grade: 7"]
    longest = len(tokenizer(refs[1], add_special_tokens=False)["input_ids"])
    budget, got, warnings = job_evaluate.answer_budget(
        tokenizer, refs, {"batch_size": 8, "max_new_tokens": None}, 16)
    assert got == longest and budget > longest  # the end token fits too
    assert len(warnings) == 1 and "samples.max_new_tokens=16 is shorter than 1 of 2" in \
        warnings[0]
    budget, _, warnings = job_evaluate.answer_budget(
        tokenizer, refs, {"batch_size": 8, "max_new_tokens": 12}, 16)
    assert budget == 12 and "evaluation.max_new_tokens=12" in warnings[0]
    assert job_evaluate.answer_budget(tokenizer, refs[:1], {"batch_size": 8,
                                                            "max_new_tokens": None}, 64)[2] == []


# ---------------------------------------------------------------------------- statistics


def test_intervals_and_tests():
    low, high = job_stats.wilson(2, 20)  # issue 13: exact 2/20 -> [0.03, 0.30]
    assert low == pytest.approx(0.0279, abs=1e-3) and high == pytest.approx(0.3010, abs=1e-3)
    assert job_stats.wilson(0, 10)[0] == 0.0 and job_stats.wilson(10, 10)[1] == pytest.approx(1)
    assert job_stats.sign_test(8, 2) == pytest.approx(0.109375)  # 2 * 56 / 1024
    assert job_stats.sign_test(0, 0) is None
    assert job_stats.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert job_stats.spearman([1, 2, 3], [5, 5, 5]) is None
    assert job_stats.quadratic_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert job_stats.quadratic_kappa([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)
    a = job_stats.bootstrap_indices(30, seed=7)
    assert a == job_stats.bootstrap_indices(30, seed=7) != job_stats.bootstrap_indices(30, 8)


def holdout(grades: list[float]) -> job_evaluate.HoldOut:
    return job_evaluate.HoldOut([[{"role": "user", "content": "q"}]] * len(grades),
                                [f"Grade: {g:g}" for g in grades], grades)


PATTERN = r"Grade:\s*(\d+(?:\.\d+)?)"


def test_unparsed_answers_are_wrong_and_never_imputed():
    h = holdout([2, 8, 5, 5, 3, 4, 6, 7])
    before = ["Grade: 2", "no idea", "Grade: 6", "", "Grade: 3", "Grade: 5", "Grade: 6",
              "Grade: 1"]
    after = ["Grade: 2", "Grade: 8", "Grade: 5", "Grade: 9", "Grade: 3", "Grade: 4",
             "Grade: 6", "Grade: 7"]
    r = job_evaluate.score_evaluation(h, before, after, PATTERN, seed=1, resamples=200)
    b, a = r["before"], r["after"]
    assert b["parse_rate"]["value"] == 0.75 and a["parse_rate"]["value"] == 1.0
    assert b["grade_exact"]["value"] == 3 / 8 and b["grade_within_1"]["value"] == 5 / 8
    # MAE on the six parsed rows only (errors 0, 1, 0, 1, 0, 6), next to its parse rate
    assert b["grade_mae"]["value"] == pytest.approx(8 / 6)
    assert b["grade_mae"]["rows"] == 6 and b["grade_mae"]["parse_rate"] == 0.75
    assert a["grade_mae"]["value"] == pytest.approx(4 / 8)
    # rows parsed by one version only: the parsed one wins
    assert r["paired"]["wins"] == 5 and r["paired"]["losses"] == 0  # rows 1, 2, 3, 5, 7
    assert r["delta"]["grade_exact"]["value"] == pytest.approx(7 / 8 - 3 / 8)


def test_a_metric_that_cannot_be_computed_is_absent_with_its_reason():
    h = holdout([1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    nothing = ["I cannot say"] * 10
    constant = ["Grade: 3"] * 10
    r = job_evaluate.score_evaluation(h, nothing, constant, PATTERN, seed=1, resamples=100)
    for name in ("grade_mae", "spearman", "kappa"):
        m = r["before"][name]
        assert m["value"] is None and m["low"] is None and "only 0 of 10" in m["undefined"]
        assert r["delta"][name]["value"] is None and r["delta"][name]["undefined"]
    # a constant predictor: Spearman is undefined, MAE and kappa are not
    after = r["after"]
    assert after["spearman"]["value"] is None and "same grade" in after["spearman"]["undefined"]
    assert after["grade_mae"]["value"] == pytest.approx(1.2) and after["kappa"]["value"] == 0
    gate = {"metric": "spearman", "margin": 0.02}
    decided = job_gate.decide_promotion(gate, r)
    assert decided["promoted"] is False and "undefined" in decided["reason"]
    assert "only 0 of 10" in decided["reason"]


def report_with(metric: str, before: float, after: float, low: float, high: float,
                rows: int = 40) -> dict:
    return {"graded_rows": rows,
            "before": {metric: {"value": before}}, "after": {metric: {"value": after}},
            "delta": {metric: {"value": after - before, "low": low, "high": high,
                               "p_value": 0.2}}}


def test_gate_decisions():
    gate = {"metric": "grade_within_1", "margin": 0.02}
    noisy_drop = report_with("grade_within_1", 0.5, 0.45, -0.15, 0.05)
    decided = job_gate.decide_promotion(gate, noisy_drop)
    assert decided["promoted"] is False  # a drop of 0.15 is not ruled out: held back
    assert "-0.15 is not above -0.02" in decided["reason"]
    assert "smaller than about 0.1 cannot be told from noise" in decided["reason"]
    shown = report_with("grade_within_1", 0.5, 0.6, -0.01, 0.21)
    decided = job_gate.decide_promotion(gate, shown)
    assert decided["promoted"] is True and "-0.01 is above -0.02" in decided["reason"]
    assert decided["gain_low"] == -0.01 and decided["rule"] == "non_inferiority"
    assert job_gate.decide_promotion({**gate, "margin": 0.0}, shown)["promoted"] is False
    demanding = {**gate, "margin": -0.05}  # a proven gain of five points
    assert not job_gate.decide_promotion(demanding, shown)["promoted"]
    assert job_gate.decide_promotion(demanding, report_with("grade_within_1", 0.0, 0.9, 0.7,
                                                            0.99))["promoted"]
    # MAE: lower is better, so a fall in MAE is a gain.
    mae = {"metric": "grade_mae", "margin": 0.0}
    assert job_gate.decide_promotion(mae, report_with("grade_mae", 3.0, 2.0, -1.5, -0.5))[
        "promoted"]
    assert not job_gate.decide_promotion(mae, report_with("grade_mae", 2.0, 3.0, 0.5, 1.5))[
        "promoted"]
    assert job_gate.decide_promotion(None, noisy_drop)["promoted"] is True
    # Old configs' keys are read under the same rule: never more lenient than before.
    old = {"metric": "grade_within_1", "max_regression": 0.0, "require_significance": True}
    assert job_gate.decide_promotion(old, noisy_drop)["promoted"] is False


def test_the_gate_also_compares_with_the_line_best():
    gate = {"metric": "grade_within_1", "margin": 0.02}
    report = report_with("grade_within_1", 0.6, 0.62, 0.0, 0.05)
    report["versus_best"] = {"version": "versions/0002_b", "metrics": {
        "grade_within_1": {"value": 0.8}}, "delta": {"grade_within_1": {
            "value": -0.18, "low": -0.3, "high": -0.06, "p_value": 0.01}}}
    decided = job_gate.decide_promotion(gate, report)
    assert decided["promoted"] is False and decided["versus_best"]["passed"] is False
    assert "against the line's best (versions/0002_b)" in decided["reason"]
    report["versus_best"]["delta"]["grade_within_1"].update(low=0.0, high=0.1, value=0.05)
    assert job_gate.decide_promotion(gate, report)["promoted"] is True


def test_the_job_grades_with_a_linear_time_engine():
    # `(a|aa)*(c)` passes the plan's checks (no nested repeat) but backtracks
    # exponentially on Python's re; the job grades every generated answer with it.
    import subprocess
    import sys

    from tunestep.tools.core.patterns import compile_pattern

    pattern = "(a|aa)*(c)"
    compile_pattern(pattern)  # the plan accepts it
    assert type(sft_data._grade_regex(pattern)).__module__.startswith("re2")
    assert "google-re2" in (Path(sft_data.__file__).parent / "train_sft.py").read_text()
    # 60 a's: on `re` this is ~2^40 steps; RE2 answers at once. A child process, so a
    # regression fails this test instead of hanging the suite.
    code = ("from tunestep.tools.jobs import sft_data;"
            "print(sft_data.parse_grade('a' * 60 + 'b', '(a|aa)*(c)'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None"
    assert sft_data.parse_grade("Grade: 4", r"Grade:\s*(\d+)") == 4.0


def test_the_progression_plot_follows_the_lineage(tmp_path):
    from tunestep.tools.jobs import job_report

    def entry(step, parent, promoted, mode="full", within=0.5):
        return {"step": step, "batch": f"b{step}", "version": f"versions/000{step}_b{step}",
                "parent": parent, "promoted": promoted, "mode": mode, "eval_loss": 1.0,
                "grade_within1": within, "grade_within1_low": within - 0.1,
                "grade_within1_high": within + 0.1, "grade_within1_before": 0.0,
                "eval_loss_before": 3.0}

    history = [entry(1, "base", True), entry(2, "versions/0001_b1", False, within=0.3),
               entry(3, "versions/0001_b1", True, mode="lora", within=0.7),
               entry(4, "versions/0003_b3", True, within=0.8)]
    layout = job_report.lineage_layout(history)
    assert layout["latest"] == "versions/0004_b4"
    # step 2 was held back: a branch off step 1; the line is base -> 1 -> 3 -> 4
    assert layout["on_line"] == {"versions/0001_b1", "versions/0003_b3", "versions/0004_b4"}
    assert layout["parents"]["versions/0003_b3"] == "versions/0001_b1"
    assert layout["parents"]["versions/0001_b1"] is None  # the base
    # an operator's roll-back: step 5 resumed from step 1, so 3 and 4 become a branch
    history.append(entry(5, "versions/0001_b1", True, within=0.6))
    layout = job_report.lineage_layout(history)
    assert layout["on_line"] == {"versions/0001_b1", "versions/0005_b5"}
    out = tmp_path / "val_progression.png"
    job_report.plot_history(history, out)
    import matplotlib.image

    assert matplotlib.image.imread(str(out)).shape[0] > 100
