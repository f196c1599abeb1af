"""Every plan value is checked at load: strict types, finite numbers, stated ranges.

The issue's cases (gate.margin NaN, inf, 1e308, true, '5'; seed 2**70 or -1;
infinite epochs; batch size 0; a 5,000-digit timeout; learning rate inf; precision fp64;
max_steps -5) and their neighbours, each refused with ``plan_value_invalid`` naming the
key and what it allows; the same for draft_job's overrides, through the real draft.
"""

from __future__ import annotations

import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import PLAN_PATH, parse_plan_text
from tunestep.tools.core.plan_values import check_overrides
from tunestep.tools.drafts.draft import DraftRequest, draft_job

DIGITS = "9" * 5000

# (front matter, the key the refusal names, a word of what it allows)
REFUSED = [
    ("gate:\n  margin: .nan", "gate.margin", "span"),
    ("gate:\n  margin: .inf", "gate.margin", "span"),
    ("gate:\n  margin: -.inf", "gate.margin", "span"),
    ("gate:\n  margin: 1e308", "gate.margin", "span"),
    ("gate:\n  margin: 1.0e+309", "gate.margin", "span"),
    ("gate:\n  margin: true", "gate.margin", "span"),
    ("gate:\n  margin: '5'", "gate.margin", "span"),
    ("gate:\n  margin: 1", "gate.margin", "span"),  # = promote everything
    ("gate:\n  metric: kappa\n  margin: -2.5", "gate.margin", "span"),
    ("gate:\n  margin: -1.01", "gate.margin", "span"),
    ("gate:\n  metric: grade_mae\n  margin: 100", "gate.margin", "span"),
    # the keys before the non-inferiority rule: refused, naming the migration
    ("gate:\n  require_significance: true", "gate", "mapping"),
    ("gate:\n  max_regression: 0.0", "gate", "mapping"),
    (f"training:\n  seed: {2**70}", "training.seed", "4,294,967,295"),
    ("training:\n  seed: -1", "training.seed", ">= 0"),
    ("training:\n  seed: '5'", "training.seed", "an integer"),
    ("training:\n  seed: 4.5", "training.seed", "an integer"),
    ("training:\n  num_train_epochs: .inf", "training.num_train_epochs", "1,000"),
    ("training:\n  num_train_epochs: 0", "training.num_train_epochs", "> 0"),
    ("training:\n  per_device_train_batch_size: 0", "training.per_device_train_batch_size",
     ">= 1"),
    ("training:\n  per_device_train_batch_size: true",
     "training.per_device_train_batch_size", "an integer"),
    (f"job:\n  timeout: {DIGITS}", "job.timeout", "1m to 7d"),
    (f"job:\n  timeout: '{DIGITS}h'", "job.timeout", "1m to 7d"),
    (f"training:\n  seed: {DIGITS}", "training.seed", "an integer"),
    ("job:\n  timeout: 8d", "job.timeout", "1m to 7d"),
    ("job:\n  timeout: 30s", "job.timeout", "1m to 7d"),
    ("job:\n  timeout: 7200", "job.timeout", "1m to 7d"),  # a number is no string
    ("training:\n  learning_rate: .inf", "training.learning_rate", "<= 1"),
    ("training:\n  learning_rate: 5", "training.learning_rate", "<= 1"),
    ("training:\n  resume_learning_rate: -1e-5", "training.resume_learning_rate", "> 0"),
    ("training:\n  precision: fp64", "training.precision", "fp32"),
    ("training:\n  warmup_ratio: 1", "training.warmup_ratio", "< 1"),
    ("training:\n  max_length: 1e6", "training.max_length", "an integer"),
    ("lora:\n  dropout: .nan", "lora.dropout", "< 1"),
    ("lora:\n  r: 0", "lora.r", ">= 1"),
    ("lora:\n  target_modules: []", "lora.target_modules", "list of strings"),
    ("hub:\n  push: 1", "hub.push", "true or false"),
    ("hub:\n  private: 'false'", "hub.private", "true or false"),
    ("data:\n  replay_fraction: 1.5", "data.replay_fraction", "<= 1"),
    ("data:\n  dedup: 0", "data.dedup", "true or false"),
    ("samples:\n  n: -1", "samples.n", ">= 0"),
    ("model: 5", "model", "a string"),
    ("gate: 3", "gate", "or null"),
]


@pytest.mark.parametrize("front, key, allows", REFUSED,
                         ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(REFUSED)])
def test_a_plan_value_out_of_type_or_range_is_refused_naming_the_key(front, key, allows):
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{front}\n---\n")
    assert err.value.code == "plan_value_invalid"
    message = err.value.message
    assert f"plan key '{key}'" in message and "allowed:" in message, message
    assert allows in message.split("allowed:")[1], message
    assert len(message) < 600  # a 5,000-digit value is never echoed whole


@pytest.mark.parametrize("front, check", [
    ("training:\n  learning_rate: 1e-4", lambda p: p.training.learning_rate == 1e-4),
    ("training:\n  num_train_epochs: 2", lambda p: p.training.num_train_epochs == 2),
    ("training:\n  seed: 4294967295", lambda p: p.training.seed == 2**32 - 1),
    ("gate:\n  margin: -0.05", lambda p: p.gate.margin == -0.05),
    ("gate:\n  margin: -1", lambda p: p.gate.margin == -1),  # promote by hand only
    ("gate:\n  metric: grade_mae\n  margin: 0.5",
     lambda p: p.gate.margin == 0.5),
    ("gate:\n  metric: spearman\n  margin: 1.5",
     lambda p: p.gate.margin == 1.5),
    ("job:\n  timeout: 1h30m", lambda p: p.job.timeout == "1h30m"),
    ("job:\n  timeout: 7d", lambda p: p.job.timeout == "7d"),
    ("lora:\n  target_modules: [q_proj, v_proj]",
     lambda p: p.lora.target_modules == ["q_proj", "v_proj"]),
    ("gate: null", lambda p: p.gate is None),
])
def test_values_in_range_are_taken_as_written(front, check):
    assert check(parse_plan_text(f"---\n{front}\n---\n"))


# (override, value, a word of what it allows)
REFUSED_OVERRIDES = [
    ("seed", 2**70, "4,294,967,295"),
    ("seed", -1, ">= 0"),
    ("seed", True, "an integer"),
    ("seed", "5", "an integer"),
    ("learning_rate", float("inf"), "<= 1"),
    ("learning_rate", float("nan"), "<= 1"),
    ("learning_rate", "1e-4", "a finite number"),
    ("num_train_epochs", float("inf"), "1,000"),
    ("per_device_train_batch_size", 0, ">= 1"),
    ("per_device_train_batch_size", 2.0, "an integer"),
    ("precision", "fp64", "fp32"),
    ("max_steps", -5, ">= -1"),
    ("max_steps", 0, ">= -1"),
    ("max_length", int(DIGITS[:30]), "131,072"),
    ("lora_dropout", 1.0, "< 1"),
    ("lora_r", 0, ">= 1"),
]


@pytest.mark.parametrize("key, value, allows", REFUSED_OVERRIDES,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(REFUSED_OVERRIDES)])
def test_an_override_out_of_type_or_range_is_refused_naming_the_key(key, value, allows):
    with pytest.raises(TunestepError) as err:
        check_overrides({key: value})
    assert err.value.code == "plan_value_invalid"
    assert f"override '{key}'" in err.value.message
    assert allows in err.value.message.split("allowed:")[1], err.value.message


def test_an_unknown_override_names_the_ones_there_are():
    with pytest.raises(TunestepError) as err:
        check_overrides({"gate.margin": 5})
    assert err.value.code == "draft_bad_override" and "max_steps" in err.value.message
    check_overrides({"max_steps": -1, "lora_r": 8, "learning_rate": 1, "seed": 0})


def test_the_draft_refuses_before_anything_is_signed(model_ws):
    """Through the real draft: a bad override, a bad timeout, then a bad plan value."""
    for request, key in [
        (DraftRequest(batch="batch_100_01", overrides={"max_steps": -5}), "max_steps"),
        (DraftRequest(batch="batch_100_01", overrides={"seed": 2**70}), "seed"),
        (DraftRequest(batch="batch_100_01", timeout="9" * 5000), "timeout"),
    ]:
        with pytest.raises(TunestepError) as err:
            draft_job(model_ws, request)
        assert err.value.code == "plan_value_invalid" and key in err.value.message
    plan = model_ws.resolve(PLAN_PATH)
    plan.write_text(plan.read_text().replace("margin: 0.02", "margin: .nan"))
    with pytest.raises(TunestepError) as err:
        draft_job(model_ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "plan_value_invalid"
    assert "gate.margin" in err.value.message and err.value.path == PLAN_PATH
