"""Hub repos a user expects: <user>/<model_name>[-steps] by default, private, never public."""

from __future__ import annotations

import pytest
from chain_helpers import host_base_model, hub_base_workspace
from conftest import FAKE_TOKEN, Operator

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.hub.ids import _cache
from tunestep.tools.runs.submit import submit_job

REMOTE = {"batch": "batch_100_01", "backend": "hf-jobs", "flavor": "t4-medium"}


@pytest.fixture
def unnamed(tmp_path, tiny_model_dir, fake_hub, monkeypatch):
    """A workspace whose plan names no Hub repos; the token belongs to `tester`."""
    _cache.clear()
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    made: list[int] = []

    def make(**hub):
        made.append(1)
        return hub_base_workspace(tmp_path / f"w{len(made)}", plan={"hub": hub},
                                  base_rows=40, holdout_rows=10)
    return make


def test_repos_default_to_the_tokens_user_and_the_draft_shows_them(unnamed, fake_hub):
    ws = unnamed()
    draft = draft_job(ws, DraftRequest(**REMOTE))
    assert draft.job_config["hub"]["model_id"] == "tester/qwen3_webdev"
    assert draft.job_config["hub"]["push"] is True
    assert draft.submission.dataset_repo == "tester/qwen3_webdev-steps"
    plan_md = (ws.root / draft.run_plan).read_text()
    assert "`tester/qwen3_webdev` (private)" in plan_md
    assert "`tester/qwen3_webdev-steps`" in plan_md
    draft_job(ws, DraftRequest(**REMOTE))  # again: the same names, whoami not asked again
    assert len(fake_hub.requests_to("GET", "/api/whoami-v2")) == 1


def test_without_a_token_or_offline_the_draft_is_refused_with_the_way_out(unnamed, fake_hub,
                                                                        monkeypatch):
    ws = unnamed()
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(**REMOTE))
    assert err.value.code == "hub_namespace_unknown" and "hub.model_id" in err.value.message
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    fake_hub.inject("GET", "/api/whoami-v2", "drop", times=None)
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(**REMOTE))
    assert err.value.code.startswith("hub_") and "set both in the plan" in err.value.message
    assert FAKE_TOKEN not in str(err.value)
    # A plan that names both repos drafts without asking the Hub.
    named = unnamed(model_id="tester/m", dataset_repo="tester/d")
    assert draft_job(named, DraftRequest(**REMOTE)).submission.dataset_repo == "tester/d"


@pytest.mark.parametrize("public", ["model", "dataset"])
def test_an_existing_public_repo_is_refused_unless_the_plan_says_public(unnamed, fake_hub,
                                                                       tmp_path, public):
    ws = unnamed()
    repo = "tester/qwen3_webdev" + ("-steps" if public == "dataset" else "")
    fake_hub.add_repo(repo, public, private=False)
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(**REMOTE))
    with pytest.raises(TunestepError) as err:
        submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id), operator.trusted)
    assert err.value.code == "hub_repo_public" and "hub.private: false" in err.value.message
    assert not fake_hub.jobs
    assert not fake_hub.requests_to("POST", "/api/datasets/tester/qwen3_webdev-steps/commit/")

    public_ws = unnamed(private=False)
    draft = draft_job(public_ws, DraftRequest(**REMOTE))
    assert draft.job_config["hub"]["private"] is False
    handle = submit_job(public_ws, draft.draft_id, operator.approve(public_ws, draft.draft_id),
                        operator.trusted)
    assert handle.external_id in fake_hub.jobs


def test_missing_repos_are_created_private(unnamed, fake_hub, tmp_path):
    ws = unnamed()
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(**REMOTE))
    submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id), operator.trusted)
    assert fake_hub.repo("tester/qwen3_webdev", "model").private is True
    assert fake_hub.repo("tester/qwen3_webdev-steps", "dataset").private is True
