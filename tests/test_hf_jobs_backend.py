"""The HF Jobs backend against the real huggingface_hub client and a loopback Hub."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket

import hub_stub
import pytest
from hub_stub import FakeHub, RecordedRequest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub import bundle, job_outputs
from tunestep.tools.hub import jobs_api as hf_jobs
from tunestep.tools.hub import prices as hub_prices

# Registers the fixture in this module too, so it runs whether or not a conftest imports it.
fake_hub = hub_stub.fake_hub

TOKEN = "hf_" + "Tok3nValueNeverToBeSeen" * 2
REPO = "tester/tunestep-steps"
DRAFT = "draft-0003"

BUNDLE = {
    "train_sft.py": b"# /// script\n# dependencies = ['trl']\n# ///\nprint('train')\n",
    "sft_data.py": b"def load():\n    return []\n",
    "job.json": b'{"model": "Qwen/Qwen3-0.6B", "epochs": 3}',
    "data/train.jsonl": b'{"messages": []}\n' * 3,
    "data/validation.jsonl": b'{"messages": [{"role": "user", "content": "hi"}]}\n',
}


@pytest.fixture
def api(fake_hub: FakeHub):
    return hf_jobs.hub_api(TOKEN)


@pytest.fixture
def bundle_sha(api, fake_hub: FakeHub) -> str:
    return bundle.upload_step_bundle(api, REPO, DRAFT, BUNDLE)


def _submit(api, sha: str, **overrides):
    args = {
        "repo_id": REPO,
        "revision": sha,
        "draft_id": DRAFT,
        "flavor": "a10g-large",
        "timeout_seconds": 7200,
        "labels": {"batch": "batch_100_03"},
        "image": hf_jobs.DEFAULT_UV_IMAGE,
        "command": None,
        "secret_names": ["HF_TOKEN"],
        "token": TOKEN,
    }
    return hf_jobs.submit_hf_job(api, **{**args, **overrides})


def _assert_token_only_in_auth(requests: list[RecordedRequest]) -> None:
    for rec in requests:
        for name, value in rec.headers.items():
            if TOKEN in value:
                assert name == "authorization", f"token in header {name} of {rec.path}"


# --------------------------------------------------------------------------- bundle


def test_upload_bundle_is_one_commit_of_every_file_to_a_private_repo(api, fake_hub):
    sha = bundle.upload_step_bundle(api, REPO, DRAFT, BUNDLE)

    (create,) = fake_hub.requests_to("POST", "/api/repos/create")
    assert create.json["type"] == "dataset"
    assert create.json["visibility"] == "private"
    assert fake_hub.repo(REPO).private is True

    (commit,) = fake_hub.requests_to("POST", f"/api/datasets/{REPO}/commit/")
    files = {
        item["value"]["path"]: base64.b64decode(item["value"]["content"])
        for item in commit.ndjson
        if item["key"] == "file"
    }
    assert files == {f"steps/{DRAFT}/{name}": data for name, data in BUNDLE.items()}
    assert [i["key"] for i in commit.ndjson].count("header") == 1
    assert sha == fake_hub.repo(REPO).head and len(sha) == 40
    # The Hub's own first commit (.gitattributes) is the parent; the bundle is one commit.
    repo = fake_hub.repo(REPO)
    assert repo.snapshots[sha] == {".gitattributes": hub_stub.GITATTRIBUTES, **files}
    assert repo.log[sha].parent == repo.commits[0] and len(repo.commits) == 2
    assert all(
        r.headers.get("authorization") == f"Bearer {TOKEN}"
        for r in fake_hub.requests
        if r.path.startswith(("/api/repos", "/api/datasets"))
    )


def test_upload_reads_paths_and_keeps_existing_private_repo(api, fake_hub, tmp_path):
    fake_hub.add_repo(REPO, private=True)
    script = tmp_path / "train_sft.py"
    script.write_bytes(BUNDLE["train_sft.py"])
    sha = bundle.upload_step_bundle(api, REPO, DRAFT, {"train_sft.py": script})
    assert fake_hub.repo(REPO).tree(sha) == {f"steps/{DRAFT}/train_sft.py": BUNDLE["train_sft.py"],
                                             ".gitattributes": hub_stub.GITATTRIBUTES}


def test_upload_refuses_an_existing_public_repo(api, fake_hub):
    fake_hub.add_repo(REPO, private=False)
    with pytest.raises(TunestepError) as err:
        bundle.upload_step_bundle(api, REPO, DRAFT, BUNDLE)
    assert err.value.code == "hub_repo_public"
    assert not fake_hub.requests_to("POST", f"/api/datasets/{REPO}/commit/")


@pytest.mark.parametrize("name", ["../escape.py", "/abs.py", "a/../b", "", "a//b", "a\\b"])
def test_upload_refuses_unsafe_names_before_any_request(api, fake_hub, name):
    with pytest.raises(TunestepError) as err:
        bundle.upload_step_bundle(api, REPO, DRAFT, {name: b"x"})
    assert err.value.code == "hf_bad_argument"
    assert fake_hub.requests == []


def test_upload_missing_file_names_it(api, fake_hub, tmp_path):
    with pytest.raises(TunestepError) as err:
        bundle.upload_step_bundle(api, REPO, DRAFT, {"job.json": tmp_path / "nope.json"})
    assert err.value.code == "hf_bundle_unreadable"
    assert err.value.path.endswith("nope.json")


# --------------------------------------------------------------------------- submit


def test_submit_sends_the_exact_job_spec(api, fake_hub, bundle_sha, caplog):
    caplog.set_level(logging.DEBUG)
    ref = _submit(api, bundle_sha)

    (req,) = fake_hub.requests_to("POST", "/api/jobs/")
    assert req.path == "/api/jobs/tester"
    mount = hf_jobs.STEP_MOUNT_PATH
    assert req.json == {
        "dockerImage": "ghcr.io/astral-sh/uv:python3.12-bookworm",
        "command": ["uv", "run", f"{mount}/train_sft.py", "--config", f"{mount}/job.json"],
        "arguments": [],
        "environment": {
            "TUNESTEP_DRAFT_ID": DRAFT,
            "TUNESTEP_STEP_DIR": mount,
            "TUNESTEP_BUNDLE_REPO": REPO,
            "TUNESTEP_BUNDLE_REVISION": bundle_sha,
            "TUNESTEP_OUTPUT_REPO": REPO,
            "TUNESTEP_OUTPUT_PATH": f"outputs/{DRAFT}",
            "HF_HUB_DOWNLOAD_TIMEOUT": "60",
            "HF_HUB_ETAG_TIMEOUT": "60",
            "PYTHONSAFEPATH": "1",  # no bundle folder on the job's import path
        },
        "flavor": "a10g-large",
        "timeoutSeconds": 7200,
        "secrets": {"HF_TOKEN": TOKEN},
        "labels": {"batch": "batch_100_03", "tunestep-draft": DRAFT, "name": f"tunestep-{DRAFT}"},
        "volumes": [
            {
                "type": "dataset",
                "source": REPO,
                "mountPath": mount,
                "revision": bundle_sha,
                "readOnly": True,
                "path": f"steps/{DRAFT}",
            }
        ],
    }
    assert ref.job_id in fake_hub.jobs
    assert ref.namespace == "tester"
    assert ref.url == f"{fake_hub.url}/jobs/tester/{ref.job_id}"
    assert (ref.stage, ref.revision, ref.flavor) == ("SCHEDULING", bundle_sha, "a10g-large")

    # The token went out as the job secret and the Authorization header, nowhere else.
    body = req.body.decode()
    assert body.count(TOKEN) == 1
    _assert_token_only_in_auth(fake_hub.requests)
    for other in fake_hub.requests:
        if other is not req:
            assert TOKEN.encode() not in other.body
    # The stub echoes the secret back (worst case); the result must not carry it.
    assert TOKEN not in ref.model_dump_json() and TOKEN not in repr(ref)
    assert TOKEN not in caplog.text
    assert DRAFT in caplog.text  # the backend did log, just not the token


def test_submit_custom_command_and_env(api, fake_hub, bundle_sha):
    _submit(
        api,
        bundle_sha,
        command=["python", "/tunestep/step/run.py"],
        env={"TRACKIO_DIR": "/data/trackio"},
        secret_names=[],
        labels=None,
    )
    (req,) = fake_hub.requests_to("POST", "/api/jobs/")
    assert req.json["command"] == ["python", "/tunestep/step/run.py"]
    assert req.json["environment"]["TRACKIO_DIR"] == "/data/trackio"
    assert "secrets" not in req.json
    assert TOKEN.encode() not in req.body


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"revision": "main"}, "hf_revision_unpinned"),
        ({"revision": "ABC"}, "hf_revision_unpinned"),
        ({"secret_names": ["OPENAI_KEY"]}, "hf_secret_unsupported"),
        ({"token": None}, "hf_token_missing"),
        ({"flavor": "A10G LARGE"}, "hf_bad_argument"),
        ({"timeout_seconds": 0}, "hf_bad_argument"),
        ({"timeout_seconds": "2h"}, "hf_bad_argument"),
        ({"labels": {"bad label": "x"}}, "hf_bad_argument"),
        ({"command": []}, "hf_bad_argument"),
        ({"draft_id": "../x"}, "hf_bad_argument"),
        ({"repo_id": "tester/.."}, "hf_bad_argument"),
        ({"repo_id": "tester/steps-"}, "hf_bad_argument"),
        ({"env": {"LEAK": f"token={TOKEN}"}}, "hf_secret_in_env"),
    ],
)
def test_submit_refusals_send_nothing(api, fake_hub, overrides, code):
    sha = "a" * 40
    with pytest.raises(TunestepError) as err:
        _submit(api, sha, **overrides)
    assert err.value.code == code
    assert TOKEN not in str(err.value)
    assert not fake_hub.requests_to("POST", "/api/jobs/")


def test_submit_refuses_when_hf_debug_would_log_secrets(api, fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_DEBUG", True)
    with pytest.raises(TunestepError) as err:
        _submit(api, "b" * 40)
    assert err.value.code == "hf_debug_enabled"
    assert fake_hub.requests == []


def test_submit_hub_error_is_scrubbed(api, fake_hub, bundle_sha):
    fake_hub.fail[("POST", "/api/jobs/tester")] = (403, f"bad secret {TOKEN}")
    with pytest.raises(TunestepError) as err:
        _submit(api, bundle_sha)
    assert err.value.code == "hub_forbidden"
    assert "403" in str(err.value) and "bad secret ***" in str(err.value)
    assert TOKEN not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


# --------------------------------------------------------------------------- follow-up


@pytest.fixture
def job(api, bundle_sha):
    return _submit(api, bundle_sha)


def test_status_maps_to_inspect(api, fake_hub, job):
    fake_hub.set_job_stage(job.job_id, "RUNNING")
    status = hf_jobs.hf_job_status(api, job.job_id, namespace=job.namespace)
    assert (status.stage, status.terminal, status.flavor) == ("RUNNING", False, "a10g-large")
    assert fake_hub.requests[-1].method == "GET"
    assert fake_hub.requests[-1].path == f"/api/jobs/tester/{job.job_id}"
    fake_hub.set_job_stage(job.job_id, "ERROR", "OOM")
    status = hf_jobs.hf_job_status(api, job.job_id, namespace=job.namespace)
    assert (status.stage, status.message, status.terminal) == ("ERROR", "OOM", True)


def test_status_without_namespace_asks_whoami(api, fake_hub, job):
    hf_jobs.hf_job_status(api, job.job_id)
    assert [r.path for r in fake_hub.requests[-2:]] == [
        "/api/whoami-v2",
        f"/api/jobs/tester/{job.job_id}",
    ]


def test_unknown_job_is_named(api, fake_hub):
    with pytest.raises(TunestepError) as err:
        hf_jobs.hf_job_status(api, "doesnotexist", namespace="tester")
    assert err.value.code == "hf_job_not_found"


def test_logs_map_to_sse_endpoint_and_mask_tokens(api, fake_hub, job):
    fake_hub.job_logs[job.job_id] += [
        "epoch 1 loss 1.0",
        f"oops {TOKEN}",
        "hf_abcdefghijklmnopqrstuvwxyz123",
    ]
    logs = hf_jobs.hf_job_logs(api, job.job_id, tail=50, namespace=job.namespace)
    assert logs.lines == ["epoch 1 loss 1.0", "oops ***", "hf_***"]
    (req,) = fake_hub.requests_to("GET", f"/api/jobs/tester/{job.job_id}/logs")
    assert req.query == {"tail": ["50"]}


def test_cancel_maps_to_cancel_endpoint(api, fake_hub, job):
    status = hf_jobs.hf_job_cancel(api, job.job_id, namespace=job.namespace)
    (req,) = fake_hub.requests_to("POST", f"/api/jobs/tester/{job.job_id}/cancel")
    assert req.body == b""
    assert (status.stage, status.terminal) == ("CANCELED", True)


# --------------------------------------------------------------------------- outputs


def test_fetch_outputs_before_any_push_is_empty(api, fake_hub, bundle_sha, tmp_path):
    out = job_outputs.fetch_job_outputs(api, REPO, f"outputs/{DRAFT}", tmp_path / "got")
    assert out.files == [] and out.revision == bundle_sha


def test_fetch_outputs_downloads_what_the_job_pushed(api, fake_hub, bundle_sha, tmp_path):
    pushed = {
        f"outputs/{DRAFT}/metrics_step_batch_100_03.csv": b"epoch,loss\n1,0.9\n",
        f"outputs/{DRAFT}/samples_step_batch_100_03.md": b"# samples\n",
        f"outputs/{DRAFT}/plots/loss.png": b"\x89PNG\r\n\x1a\n",
        "outputs/other-draft/metrics.csv": b"not ours\n",
    }
    sha = fake_hub.push_files(REPO, pushed)
    dest = tmp_path / "got"
    out = job_outputs.fetch_job_outputs(api, REPO, f"outputs/{DRAFT}", dest)
    assert out.revision == sha
    got = {f.name: f.local_path.read_bytes() for f in out.files}
    assert got == {
        "metrics_step_batch_100_03.csv": b"epoch,loss\n1,0.9\n",
        "samples_step_batch_100_03.md": b"# samples\n",
        "plots/loss.png": b"\x89PNG\r\n\x1a\n",
    }
    for f in out.files:
        assert f.local_path == dest.joinpath(*f.name.split("/"))
        assert f.sha256 == hashlib.sha256(pushed[f.path_in_repo]).hexdigest()
    # Every download read the pinned commit, not a moving branch.
    downloads = [r for r in fake_hub.requests if "/resolve/" in r.path]
    assert downloads and all(f"/resolve/{sha}/" in r.path for r in downloads)


def test_fetch_outputs_only_takes_allowed_names(api, fake_hub, bundle_sha, tmp_path):
    fake_hub.push_files(
        REPO,
        {
            f"outputs/{DRAFT}/logs/train.log": b"log\n",
            f"outputs/{DRAFT}/tunestep_result.json": b"{}",
            f"outputs/{DRAFT}/.specs/training/plan.md": b"hijacked plan",
            f"outputs/{DRAFT}/logs.txt": b"not the logs folder",
        },
    )
    out = job_outputs.fetch_job_outputs(
        api, REPO, f"outputs/{DRAFT}", tmp_path, allow=["logs/", "tunestep_result.json"]
    )
    assert sorted(f.name for f in out.files) == ["logs/train.log", "tunestep_result.json"]
    assert sorted(out.skipped) == [".specs/training/plan.md", "logs.txt"]
    assert not (tmp_path / ".specs").exists() and not (tmp_path / "logs.txt").exists()


def test_fetch_outputs_refuses_unsafe_names_from_the_hub(api, fake_hub, bundle_sha, tmp_path):
    fake_hub.push_files(REPO, {f"outputs/{DRAFT}/../../escape.txt": b"x"})
    with pytest.raises(TunestepError) as err:
        job_outputs.fetch_job_outputs(api, REPO, f"outputs/{DRAFT}", tmp_path / "got")
    assert err.value.code == "hf_output_unsafe_name"
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_outputs_does_not_follow_a_planted_symlink(api, fake_hub, bundle_sha, tmp_path):
    fake_hub.push_files(REPO, {f"outputs/{DRAFT}/plots/loss.png": b"png"})
    dest, elsewhere = tmp_path / "got", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / "plots").symlink_to(elsewhere)
    with pytest.raises(TunestepError) as err:
        job_outputs.fetch_job_outputs(api, REPO, f"outputs/{DRAFT}", dest)
    assert err.value.code == "hf_output_unsafe_name"
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- prices


def test_hardware_prices_are_per_hour(api, fake_hub):
    prices = hub_prices.hardware_prices(api)
    assert {k: prices[k] for k in ("cpu-basic", "t4-medium", "a10g-large", "h200x8")} == {
        "cpu-basic": 0.01, "t4-medium": 0.6, "a10g-large": 1.5, "h200x8": 40.0}
    assert set(prices) == set(hub_stub.FLAVORS)
    assert fake_hub.requests[-1].path == "/api/jobs/hardware"


def test_hardware_prices_none_when_hub_fails(api, fake_hub):
    fake_hub.hardware = None
    assert hub_prices.hardware_prices(api) is None


def test_hardware_prices_none_when_offline(fake_hub):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = hf_jobs.hub_api(TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert hub_prices.hardware_prices(api) is None


def test_hub_api_reads_hf_endpoint_at_call_time(fake_hub, monkeypatch):
    assert hf_jobs.hub_api(TOKEN).endpoint == fake_hub.url
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert hf_jobs.hub_api(None).endpoint == "http://127.0.0.1:9"
