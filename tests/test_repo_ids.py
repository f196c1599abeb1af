"""Hub repo ids: tunestep's check accepts what huggingface_hub's validate_repo_id accepts
(with the namespace tunestep always needs), and no '.' or '..' segment passes into a Hub
path, whichever door it comes through (an inspected hf:// dataset, the plan, HF Jobs)."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import HFValidationError, validate_repo_id
from hypothesis import given, settings
from hypothesis import strategies as st

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.repo_ids import is_repo_id, repo_id_problem


def hf_accepts(value: str) -> bool:
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


CASES = [
    ("someone/some-data", True),
    ("Qwen/Qwen3-0.6B", True),
    ("a/b", True),
    ("_/_", True),
    ("user_1/foo.bar_baz-2", True),
    ("a" * 96 + "/" + "b" * 96, True),
    ("a" * 97 + "/b", False),
    ("a/" + "b" * 97, False),
    ("../x", False),
    ("./x", False),
    ("x/..", False),
    ("x/.", False),
    ("..", False),
    ("../..", False),
    ("a/b/../c", False),
    ("a..b/c", False),
    ("a/b..c", False),
    ("a--b/c", False),
    ("a/b--c", False),
    ("-a/b", False),
    ("a-/b", False),
    ("a/-b", False),
    ("a/b-", False),
    (".a/b", False),
    ("a/b.", False),
    ("a/b.git", False),
    ("a/b c", False),
    ("a/b\n", False),
    ("a/b/c", False),
    ("/a/b", False),
    ("a/", False),
    ("/b", False),
    ("", False),
    ("a\\b/c", False),
]


@pytest.mark.parametrize(("value", "valid"), CASES)
def test_the_table_and_huggingface_hub_agree(value, valid):
    assert is_repo_id(value) is valid
    assert hf_accepts(value) is valid
    if not valid:
        assert "not a Hub repo id" in repo_id_problem(value)


def test_a_bare_name_is_valid_for_the_hub_but_tunestep_wants_the_owner():
    assert hf_accepts("some-data") and not is_repo_id("some-data")


def test_a_non_ascii_letter_is_refused_as_hf_refuses_it():
    assert not hf_accepts("usér/data") and not is_repo_id("usér/data")


ID_TEXT = st.text(alphabet="ab9_-./", max_size=12)


@settings(max_examples=400, deadline=None)
@given(ID_TEXT)
def test_on_ascii_tunestep_accepts_exactly_what_hf_accepts_with_an_owner(value):
    assert is_repo_id(value) == (hf_accepts(value) and value.count("/") == 1)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20) | st.text(alphabet="aé٣_-./\n", max_size=12))
def test_on_any_text_tunestep_accepts_exactly_what_hf_accepts_with_an_owner(value):
    assert is_repo_id(value) == (hf_accepts(value) and value.count("/") == 1)
    if is_repo_id(value):
        assert not {"", ".", ".."} & set(value.split("/"))


@pytest.mark.parametrize("dataset", ["../x", "x/..", "..", "./x", "a/b-", "a--b/c"])
def test_the_inspector_refuses_a_traversing_hub_dataset(sample_ws, dataset):
    from tunestep.tools.inspector import run_inspector

    with pytest.raises(TunestepError) as bad:
        run_inspector(sample_ws, f"hf://datasets/{dataset}:train")
    assert bad.value.code == "hub_id" and "not a Hub repo id" in bad.value.message


@pytest.mark.parametrize("key", ["model_id", "dataset_repo"])
def test_the_plan_refuses_a_traversing_hub_id(key):
    from tunestep.tools.core.plan import parse_plan_text

    with pytest.raises(TunestepError) as bad:
        parse_plan_text(f"---\nhub:\n  {key}: ../x\n---\n")
    assert bad.value.code == "plan_value_invalid"
    assert f"hub.{key}" in bad.value.message and "not a Hub repo id" in bad.value.message
    assert parse_plan_text(f"---\nhub:\n  {key}: me/x\n---\n").hub.model_dump()[key] == "me/x"
