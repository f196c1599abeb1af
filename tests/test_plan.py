import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan, load_plan, parse_plan_text, render_plan_document
from tunestep.tools.core.workspace import open_workspace


def test_missing_plan_gives_reference_defaults_and_a_note(tmp_path):
    loaded = load_plan(open_workspace(tmp_path))
    assert loaded.source is None and loaded.notes
    plan = loaded.plan
    assert (plan.training.per_device_train_batch_size, plan.training.learning_rate,
            plan.training.resume_learning_rate, plan.training.num_train_epochs,
            plan.training.seed, plan.training.save_total_limit) == (2, 2e-5, 1e-5, 3, 42, 3)
    assert (plan.lora.alpha, plan.lora.dropout, plan.lora.learning_rate) == (16, 0.05, 1e-4)
    assert plan.job.flavor == "a10g-large" and plan.job.timeout == "2h"
    assert plan.hub.private is True and plan.hub.trackio_space_id is None


def test_front_matter_overrides_and_round_trips():
    text = "---\ntraining:\n  num_train_epochs: 5\nmode: lora\n---\n# body\n"
    plan = parse_plan_text(text)
    assert plan.training.num_train_epochs == 5 and plan.mode == "lora"
    assert parse_plan_text(render_plan_document(plan, "x")) == plan


@pytest.mark.parametrize("front, code, key", [
    ("training:\n  learning_rat: 1e-4", "plan_unknown_key", "training.learning_rat"),
    ("training:\n  num_train_epochs: many", "plan_value_invalid", "training.num_train_epochs"),
    ("mode: qlora", "plan_value_invalid", "mode"),
    ("grade_pattern: 'no group'", "plan_value_invalid", "grade_pattern"),
    ("data:\n  batch_pattern: 'batch_(\\d+)_(\\d+)'", "plan_value_invalid", "data.batch_pattern"),
])
def test_plan_errors_name_the_key(front, code, key):
    with pytest.raises(TunestepError) as err:
        parse_plan_text(f"---\n{front}\n---\n")
    assert err.value.code == code
    assert key in err.value.message


def test_invalid_yaml_names_the_line():
    with pytest.raises(TunestepError) as err:
        parse_plan_text("---\nmodel: a\ntraining: [unclosed\n---\n")
    assert err.value.code == "plan_yaml" and err.value.line is not None


def test_plan_defaults_are_private():
    assert Plan().hub.private and not Plan().hub.push


def test_a_gate_names_only_metrics_the_job_computes():
    from tunestep.tools.core.plan import GATE_METRICS
    from tunestep.tools.jobs.job_evaluate import METRICS

    assert set(GATE_METRICS) == set(METRICS)
    with pytest.raises(TunestepError) as err:
        parse_plan_text("---\ngate:\n  metric: eval_loss\n---\n")
    assert err.value.code == "plan_value_invalid" and "gate.metric" in err.value.message
    assert parse_plan_text("---\ngate: null\n---\n").gate is None
