"""The fault table: every Hub call tunestep makes x every fault -> one named error.

Each case injects a fault on one endpoint of the loopback Hub (every matching request,
so the SDK's own retries meet it too), makes the call through the real client, and
checks the code, that the token is not in the message, and that no exception chain
leaks the request. The SDK's retry pauses are skipped and the client timeout is 0.3 s,
so a hang costs a fraction of a second.
"""

from __future__ import annotations

import types

import hub_stub
import pytest
from huggingface_hub.utils import _http

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub import bundle, job_outputs
from tunestep.tools.hub import jobs_api as hf_jobs
from tunestep.tools.hub import prices as hub_prices
from tunestep.tools.hub.errors import configure_client

fake_hub = hub_stub.fake_hub

TOKEN = "hf_" + "FaultTableTokenValue0123456789"
REPO = f"{hub_stub.USER}/steps"
DRAFT = "d0001"
OUT = f"outputs/{DRAFT}"
BUNDLE = {"train_sft.py": b"print('hi')\n", "job.json": b"{}"}

EXPECTED = {"500": "hub_unavailable", "503": "hub_unavailable", "429": "hub_rate_limited",
            "bad_json": "hub_bad_response", "hang": "hub_timeout",
            "drop": "hub_connection_lost"}


@pytest.fixture
def hub(fake_hub, monkeypatch):
    monkeypatch.setenv("TUNESTEP_HUB_TIMEOUT", "0.3")
    # The SDK's backoff pauses (1-8 s, or Retry-After + 1) are not what is tested here.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _s: None))
    api = hf_jobs.hub_api(TOKEN)
    sha = bundle.upload_step_bundle(api, REPO, DRAFT, BUNDLE)
    job = _submit(api, sha)
    fake_hub.push_files(REPO, {f"{OUT}/result.json": b'{"ok": true}'})
    fake_hub.requests.clear()
    yield types.SimpleNamespace(hub=fake_hub, api=api, sha=sha, job=job)
    # Leave the process's shared client with the normal timeout for the tests after us.
    monkeypatch.delenv("TUNESTEP_HUB_TIMEOUT")
    configure_client()


def _submit(api, sha):
    return hf_jobs.submit_hf_job(
        api, repo_id=REPO, revision=sha, draft_id=DRAFT, flavor="cpu-basic",
        timeout_seconds=600, secret_names=["HF_TOKEN"], token=TOKEN,
        labels={"tunestep-nonce": "n1"}, namespace=hub_stub.USER)


# name -> (method, path glob, call)
CALLS = {
    "whoami": ("GET", "/api/whoami-v2", lambda c, tmp: hf_jobs.hub_whoami(c.api)),
    "repo_create": ("POST", "/api/repos/create",
                    lambda c, tmp: bundle.upload_step_bundle(c.api, REPO, "d0002", BUNDLE)),
    "repo_info": ("GET", f"/api/datasets/{REPO}",
                  lambda c, tmp: bundle.upload_step_bundle(c.api, REPO, "d0002", BUNDLE)),
    "preupload": ("POST", f"/api/datasets/{REPO}/preupload/*",
                  lambda c, tmp: bundle.upload_step_bundle(c.api, REPO, "d0002", BUNDLE)),
    "commit": ("POST", f"/api/datasets/{REPO}/commit/*",
               lambda c, tmp: bundle.upload_step_bundle(c.api, REPO, "d0002", BUNDLE)),
    "job_create": ("POST", f"/api/jobs/{hub_stub.USER}", lambda c, tmp: _submit(c.api, c.sha)),
    "inspect": ("GET", f"/api/jobs/{hub_stub.USER}/*",
                lambda c, tmp: hf_jobs.hf_job_status(c.api, c.job.job_id,
                                                     namespace=hub_stub.USER)),
    "logs": ("GET", f"/api/jobs/{hub_stub.USER}/*/logs",
             lambda c, tmp: hf_jobs.hf_job_logs(c.api, c.job.job_id, 10,
                                                namespace=hub_stub.USER)),
    "cancel": ("POST", f"/api/jobs/{hub_stub.USER}/*/cancel",
               lambda c, tmp: hf_jobs.hf_job_cancel(c.api, c.job.job_id,
                                                    namespace=hub_stub.USER)),
    "list_jobs": ("GET", f"/api/jobs/{hub_stub.USER}",
                  lambda c, tmp: hf_jobs.find_hf_jobs(c.api, {"tunestep-nonce": "n1"},
                                                      namespace=hub_stub.USER)),
    "tree": ("GET", f"/api/datasets/{REPO}/tree/*",
             lambda c, tmp: job_outputs.fetch_job_outputs(c.api, REPO, OUT, tmp / "got")),
    "download": ("GET", f"/datasets/{REPO}/resolve/*",
                 lambda c, tmp: job_outputs.fetch_job_outputs(c.api, REPO, OUT, tmp / "got")),
    "hardware": ("GET", "/api/jobs/hardware", lambda c, tmp: hub_prices.hardware_prices(c.api)),
}

# Where a call answers a fault without an error, by design (all else: EXPECTED).
NOT_AN_ERROR = {
    # The price list is advisory: any failure means "use the table".
    **{("hardware", f): None for f in EXPECTED},
    # No-follow log fetching ends at a silent or unreadable stream (the SDK's rule): the
    # answer is "no lines yet", not an error.
    ("logs", "bad_json"): "no lines",
    ("logs", "hang"): "no lines",
    # cancel_job does not read the answer's body.
    ("cancel", "bad_json"): "not cancelled",
}


@pytest.mark.parametrize("fault", list(EXPECTED))
@pytest.mark.parametrize("call", list(CALLS))
def test_every_call_meets_every_fault_with_a_named_error(hub, call, fault, tmp_path):
    method, path, run = CALLS[call]
    injected = hub.hub.inject(method, path, fault, times=None, retry_after=7,
                              hang_seconds=5)
    if (call, fault) in NOT_AN_ERROR:
        outcome = run(hub, tmp_path)
        want = NOT_AN_ERROR[(call, fault)]
        if want is None:
            assert outcome is None
        elif want == "no lines":
            assert outcome.lines == []
        else:
            assert outcome.stage != "CANCELED"
        assert injected.hits >= 1
        return
    with pytest.raises(TunestepError) as err:
        run(hub, tmp_path)
    assert injected.hits >= 1, "the fault was never met: the table tests nothing"
    assert err.value.code == EXPECTED[fault], str(err.value)
    assert TOKEN not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    if fault == "429":
        assert err.value.retry_after == 7 and "7 s" in err.value.message
    if call in ("tree", "download"):
        assert not (tmp_path / "got" / "result.json").exists()


def test_a_transient_fault_is_ridden_out_by_the_sdks_retries(hub, tmp_path):
    """One 503 on the tree listing: the SDK retries, the fetch succeeds."""
    injected = hub.hub.inject("GET", f"/api/datasets/{REPO}/tree/*", "503", times=1)
    out = job_outputs.fetch_job_outputs(hub.api, REPO, OUT, tmp_path / "got")
    assert [f.name for f in out.files] == ["result.json"] and injected.hits == 1


def test_wrong_token_and_missing_repo_are_named(hub, tmp_path):
    hub.hub.tokens = {TOKEN}
    wrong = hf_jobs.hub_api("hf_" + "SomeoneElsesTokenValue000")
    with pytest.raises(TunestepError) as err:
        hf_jobs.hf_job_status(wrong, hub.job.job_id, namespace=hub_stub.USER)
    assert err.value.code == "hub_auth_failed"
    with pytest.raises(TunestepError) as err:
        job_outputs.fetch_job_outputs(hub.api, f"{hub_stub.USER}/nope", OUT, tmp_path)
    assert err.value.code == "hf_repo_not_found"
