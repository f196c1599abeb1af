import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.drafts.estimate import (
    FLAVORS,
    estimate_job,
    format_duration,
    model_params,
    parse_duration,
)

BASE = dict(model="Qwen/Qwen3-0.6B", mode="full", train_tokens=100_000, rows=300, epochs=3,
            batch_size=2, grad_accum=1, precision="fp16", timeout="2h")


def test_durations_round_trip():
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45 and parse_duration("90") == 90
    assert format_duration(5400) == "1h30m" and format_duration(600) == "10m"
    for bad in ("", "2x", "h", "-1h"):
        with pytest.raises(TunestepError):
            parse_duration(bad)


def test_faster_hardware_is_quicker_and_cost_follows_price():
    t4 = estimate_job(flavor="t4-medium", **BASE)
    a100 = estimate_job(flavor="a100-large", **BASE)
    assert a100.tokens_per_second > t4.tokens_per_second
    assert a100.minutes < t4.minutes
    assert t4.usd == pytest.approx(0.60 * -(-t4.minutes // 1) / 60, abs=0.01)
    assert t4.total_tokens == 300_000 and t4.optimizer_steps == 450


def test_live_prices_replace_the_table():
    est = estimate_job(flavor="a10g-large", prices={"a10g-large": 3.0}, **BASE)
    assert est.usd_per_hour == 3.0


def test_warnings_for_timeout_precision_and_memory():
    t4 = estimate_job(flavor="t4-medium", **{**BASE, "precision": "bf16", "timeout": "1m"})
    assert any("no bf16" in w for w in t4.warnings)
    assert any("timeout" in w for w in t4.warnings)
    big = estimate_job(flavor="t4-small", **{**BASE, "model": "Qwen/Qwen3-4B"})
    assert any("GB" in w for w in big.warnings)
    lora = estimate_job(flavor="t4-small", **{**BASE, "model": "Qwen/Qwen3-4B", "mode": "lora"})
    assert not any("GB" in w for w in lora.warnings)
    assert lora.minutes < big.minutes


def test_suggested_timeout_has_margin():
    est = estimate_job(flavor="t4-medium", **{**BASE, "train_tokens": 5_000_000})
    assert parse_duration(est.suggested_timeout) >= est.minutes * 60 * 1.3


def test_unknown_flavor_lists_known_ones():
    with pytest.raises(TunestepError) as err:
        estimate_job(flavor="tpu-v9", **BASE)
    assert err.value.code == "unknown_flavor" and "a10g-large" in err.value.message


def test_params_from_local_config(tiny_model_dir):
    assert 1e4 < model_params(str(tiny_model_dir)) < 1e7
    assert model_params("Qwen/Qwen3-0.6B") == 0.6e9
    assert set(FLAVORS) >= {"t4-medium", "a10g-large", "h200"}


def test_expected_precision_follows_the_flavor_the_way_the_job_resolves_it():
    from tunestep.tools.drafts.estimate import expected_precision

    assert expected_precision("auto", "a10g-large") == "bf16"
    assert expected_precision("auto", "t4-medium") == "fp16"  # a T4 has no native bf16
    assert expected_precision("bf16", "t4-small") == "fp16"
    assert expected_precision("auto", "cpu-basic") == "fp32"
    assert expected_precision("fp16", "h200") == "fp16"
    assert expected_precision("auto", None) is None  # local: the hardware is not known


def test_one_evaluation_pass_when_the_previous_version_kept_its_answers(tmp_path):
    import types

    from tunestep.tools.drafts.estimate import before_answers_kept
    from tunestep.tools.drafts.eval_estimate import HoldOutLengths

    version = tmp_path / "versions" / "0001_b"
    version.mkdir(parents=True)
    start = types.SimpleNamespace(checkpoint=str(version), resume_from=None, source="bundle")
    assert not before_answers_kept(None, start)
    (version / "holdout_answers.json").write_text("{}")
    assert before_answers_kept(None, start)
    assert not before_answers_kept(None, types.SimpleNamespace(
        checkpoint=None, resume_from="hf://o/m@abc", source="hub"))  # unseen: two passes
    lengths = HoldOutLengths(rows=400, longest_reference_chars=800, prompt_chars=400_000)
    both = estimate_job(flavor="a10g-large", **{**BASE, "holdout": lengths,
                                                "eval_max_new_tokens": 200})
    once = estimate_job(flavor="a10g-large", **{**BASE, "holdout": lengths,
                                                "eval_max_new_tokens": 200,
                                                "eval_before_kept": True})
    assert (both.eval_passes, once.eval_passes) == (2, 1)
    assert once.eval_minutes < both.eval_minutes and "answers are kept" in once.eval_method


def test_memory_counts_the_fp32_logits_and_their_gradient():
    """Qwen3-0.6B full, 2 x 2,048 tokens: 9.6 GB of weights, grads and Adam + 2 GB, and
    the logits (2 x 2,048 x 151,936 x 8 bytes = 4.98 GB) on top: over 90 % of an A10G's
    24 GB is no longer called roomy, and a shorter max_length needs less."""
    short = estimate_job(flavor="a10g-small", **{**BASE, "batch_size": 2}, max_length=256)
    long = estimate_job(flavor="a10g-small", **{**BASE, "batch_size": 2}, max_length=2048)
    logits = 2 * 2048 * 151_936 * 8 / 1e9
    assert long.memory_needed_gb == pytest.approx(0.6e9 * 16 / 1e9 + 2 + logits, abs=0.05)
    assert long.memory_needed_gb - short.memory_needed_gb == pytest.approx(
        logits * (1 - 256 / 2048), abs=0.05)
    assert estimate_job(flavor="a10g-small", **{**BASE, "batch_size": 2},
                        max_length=0).memory_needed_gb == pytest.approx(11.6, abs=0.05)
