"""A version's kept hold-out answers (reused only when they are exactly the version's),
the line's best, and the continuous-batching dispatch (no GPU here: the dispatch is
tested with stand-ins, the generation itself is not measured)."""

from __future__ import annotations

import json
import types

import pytest

from tunestep.tools.jobs import job_answers, job_evaluate

PROMPTS = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
HOLDOUT = job_evaluate.HoldOut(PROMPTS, ["Grade: 1"] * 4, [1.0] * 4)


def key(budget: int = 16) -> dict:
    return job_answers.generation_key("a" * 64, HOLDOUT, budget, "{{ template }}", "base",
                                      "full")


def version(tmp_path, weights: bytes = b"weights"):
    folder = tmp_path / "versions" / "0001_b"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return folder


def test_kept_answers_are_reused_only_for_the_same_weights_and_settings(tmp_path):
    folder = version(tmp_path)
    answers = ["Grade: 1", "Grade: 2", "no", "Grade: 3"]
    best = {"version": "versions/0000_base", "answers": ["x"] * 4, "key": key()}
    job_answers.keep_answers(folder, key(), "versions/0001_b", answers, best)
    got, line_best, why = job_answers.kept_answers(folder, key(), 4)
    assert got == answers and why == "reused" and line_best["version"] == "versions/0000_base"
    # reports written later beside the model do not change the content hash
    (folder / "tunestep_version.json").write_text("{}")
    assert job_answers.kept_answers(folder, key(), 4)[0] == answers
    # other generation settings: generated again
    got, _, why = job_answers.kept_answers(folder, key(budget=32), 4)
    assert got is None and "other settings" in why
    # a hold-out of another size
    assert job_answers.kept_answers(folder, key(), 5)[0] is None
    # the weights changed under the file: not the answers of these weights
    (folder / "model.safetensors").write_bytes(b"other weights")
    got, _, why = job_answers.kept_answers(folder, key(), 4)
    assert got is None and "changed" in why
    assert job_answers.kept_answers(None, key(), 4)[0] is None


def test_a_damaged_answers_file_means_generate_again(tmp_path):
    folder = version(tmp_path)
    (folder / job_answers.ANSWERS_FILE).write_text("{not json")
    got, best, why = job_answers.kept_answers(folder, key(), 4)
    assert got is None and best is None and "cannot be read" in why


def test_the_line_best_moves_only_to_a_promoted_version_at_least_as_good():
    report = {"before": {"grade_within_1": {"value": 0.5}},
              "after": {"grade_within_1": {"value": 0.6}}, "versus_best": None}
    k = key()
    moved = job_answers.next_line_best("grade_within_1", True, report, "v0", ["b"] * 4, "v1",
                                       ["a"] * 4, None, k)
    assert moved["version"] == "v1" and moved["answers"] == ["a"] * 4
    held = job_answers.next_line_best("grade_within_1", False, report, "v0", ["b"] * 4, "v1",
                                      ["a"] * 4, None, k)
    assert held["version"] == "v0"
    # a recorded best that the new version does not reach stays the best
    report["versus_best"] = {"version": "v_best", "metrics": {
        "grade_within_1": {"value": 0.8}}}
    kept = job_answers.next_line_best("grade_within_1", True, report, "v0", ["b"] * 4, "v1",
                                      ["a"] * 4, {"version": "v_best", "answers": ["c"] * 4},
                                      k)
    assert kept["version"] == "v_best" and kept["answers"] == ["c"] * 4


def fake_model(device: str, has_batch: bool = True):
    param = types.SimpleNamespace(device=types.SimpleNamespace(type=device))
    model = types.SimpleNamespace(parameters=lambda: iter([param]))
    if has_batch:
        model.generate_batch = lambda **kw: {}
    return model


def test_continuous_batching_is_never_tried_without_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(job_answers, "generate_answers",
                        lambda m, t, prompts, *a: calls.append(len(prompts)) or
                        ["Grade: 1"] * len(prompts))
    monkeypatch.setattr(job_answers, "generate_answers_continuous",
                        lambda *a: pytest.fail("continuous batching on CPU"))
    answers, how = job_answers.answer_holdout(fake_model("cpu"), None, PROMPTS * 10, 16, 2,
                                              None)
    assert len(answers) == 40 and calls == [40] and "padded batches (the model is on cpu" in how
    assert "no generate_batch" in job_answers.continuous_unavailable(
        fake_model("cuda", has_batch=False))
    assert job_answers.continuous_unavailable(fake_model("cuda")) is None


@pytest.mark.parametrize(("padded_s", "continuous_s", "chosen"), [
    (10.0, 4.0, "continuous"), (4.0, 10.0, "padded")])
def test_on_cuda_the_faster_way_answers_the_rest(monkeypatch, padded_s, continuous_s,
                                                 chosen):
    """A probe of two batches answered both ways; the faster one answers the rest. The
    clock is a stand-in: what is tested is the choice, not a speed."""
    ticks = iter([0.0, padded_s, 100.0, 100.0 + continuous_s])
    used = {"padded": 0, "continuous": 0}

    def padded(model, tok, prompts, *a):
        used["padded"] += len(prompts)
        return [f"P{len(prompts)}"] * len(prompts)

    def continuous(model, tok, prompts, budget):
        used["continuous"] += len(prompts)
        return [f"C{len(prompts)}"] * len(prompts)

    monkeypatch.setattr(job_answers, "generate_answers", padded)
    monkeypatch.setattr(job_answers, "generate_answers_continuous", continuous)
    prompts = PROMPTS * 5  # 20 prompts, batch size 2: a probe of 4
    answers, how = job_answers.answer_holdout(fake_model("cuda"), None, prompts, 16, 2, None,
                                              clock=lambda: next(ticks))
    assert len(answers) == 20 and answers[:4] == ["P4"] * 4  # the probe keeps padded answers
    assert how.startswith("continuous batching" if chosen == "continuous" else "padded")
    assert used[chosen] == (4 if chosen == "padded" else 0) + 16 + (
        4 if chosen == "continuous" else 0)


def test_a_failing_or_incomplete_continuous_run_falls_back_to_padded(monkeypatch):
    monkeypatch.setattr(job_answers, "generate_answers",
                        lambda m, t, prompts, *a: ["P"] * len(prompts))

    def broken(*a):
        raise RuntimeError("paged attention unavailable")

    monkeypatch.setattr(job_answers, "generate_answers_continuous", broken)
    answers, how = job_answers.answer_holdout(fake_model("cuda"), None, PROMPTS * 5, 16, 2,
                                              None)
    assert answers == ["P"] * 20 and "continuous batching failed" in how
    # a faster run that lost two requests: those two are answered padded
    ticks = iter([0.0, 10.0, 100.0, 101.0])
    monkeypatch.setattr(job_answers, "generate_answers_continuous",
                        lambda m, t, prompts, b: [None if i < 2 else "C"
                                                  for i in range(len(prompts))])
    answers, how = job_answers.answer_holdout(fake_model("cuda"), None, PROMPTS * 5, 16, 2,
                                              None, clock=lambda: next(ticks))
    assert answers[4:6] == ["P", "P"] and answers[6:] == ["C"] * 14


def test_the_answers_file_is_json_with_its_key(tmp_path):
    folder = version(tmp_path)
    job_answers.keep_answers(folder, key(), "versions/0001_b", ["a"] * 4,
                             {"version": "versions/0001_b", "answers": ["a"] * 4,
                              "key": key()})
    data = json.loads((folder / job_answers.ANSWERS_FILE).read_text())
    assert data["key"]["holdout_sha256"] == "a" * 64 and data["key"]["max_new_tokens"] == 16
    assert len(data["model_sha256"]) == 64
    # the line's best is the version itself: no second comparison with itself
    assert job_answers.kept_answers(folder, key(), 4)[1] is None
