"""The loopback Hub answers the real huggingface_hub client as the Hub does.

Every assertion goes through the real client (``HfApi``, ``hf_hub_download``,
``snapshot_download``), so a stand-in kinder than the Hub fails here first.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import hub_stub
import pytest
from hub_stub import FakeHub, JobRunner
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, Volume
from huggingface_hub import errors as hf_errors

fake_hub = hub_stub.fake_hub

TOKEN = "hf_" + "StubTestTokenValue0123456789"
REPO = f"{hub_stub.USER}/stub-data"


@pytest.fixture
def api(fake_hub: FakeHub) -> HfApi:
    return HfApi(endpoint=fake_hub.url, token=TOKEN)


def _commit(api: HfApi, files: dict[str, bytes], repo: str = REPO, **kw) -> str:
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=d) for p, d in files.items()]
    return api.create_commit(repo, ops, commit_message="c", repo_type="dataset", **kw).oid


def test_commits_and_revisions_are_kept(api, fake_hub, tmp_path):
    api.create_repo(REPO, repo_type="dataset", private=True)
    first = _commit(api, {"a.txt": b"one", "dir/b.txt": b"b"})
    second = _commit(api, {"a.txt": b"two"})
    third = api.create_commit(REPO, [CommitOperationDelete(path_in_repo="dir/")],
                              commit_message="rm", repo_type="dataset").oid
    repo = fake_hub.repo(REPO)
    assert repo.log[third].parent == second and repo.log[second].parent == first
    assert api.dataset_info(REPO).sha == third and api.dataset_info(REPO).private is True
    assert api.dataset_info(REPO, revision=first).sha == first
    assert api.dataset_info(REPO, revision=second[:10]).sha == second  # a short sha
    # Downloads by revision read that commit, not main.
    old = api.hf_hub_download(REPO, "a.txt", repo_type="dataset", revision=first,
                              cache_dir=tmp_path / "c")
    assert Path(old).read_bytes() == b"one"
    new = api.hf_hub_download(REPO, "a.txt", repo_type="dataset", cache_dir=tmp_path / "c")
    assert Path(new).read_bytes() == b"two"
    snap = Path(api.snapshot_download(REPO, repo_type="dataset", revision=first,
                                      cache_dir=tmp_path / "s"))
    assert (snap / "dir/b.txt").read_bytes() == b"b" and (snap / "a.txt").read_bytes() == b"one"
    assert [f.path for f in api.list_repo_tree(REPO, repo_type="dataset", revision=third,
                                               recursive=True)] == [".gitattributes", "a.txt"]
    infos = api.get_paths_info(REPO, ["a.txt", "dir", "nope"], repo_type="dataset",
                               revision=first)
    assert sorted(i.path for i in infos) == ["a.txt", "dir"]
    commits = api.list_repo_commits(REPO, repo_type="dataset")
    assert [c.commit_id for c in commits] == [third, second, first, repo.commits[0]]
    # An unchanged file is dropped by the client (the preupload answer carries its oid).
    assert _commit(api, {"a.txt": b"two"}) == third and len(repo.commits) == 4


def test_refusals_map_to_the_clients_named_errors(api, fake_hub, tmp_path):
    api.create_repo(REPO, repo_type="dataset", private=True)
    sha = _commit(api, {"a.txt": b"x"})
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.dataset_info(f"{hub_stub.USER}/missing")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.dataset_info(REPO, revision="f" * 40)
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        api.hf_hub_download(REPO, "nope.txt", repo_type="dataset", revision=sha,
                            cache_dir=tmp_path)
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="nope", repo_type="dataset"))
    with pytest.raises(hf_errors.HfHubHTTPError) as conflict:
        api.create_repo(REPO, repo_type="dataset")
    assert conflict.value.response.status_code == 409
    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True).repo_id == REPO
    # The client validates names itself; a request that skips it meets the Hub's 400.
    from huggingface_hub.utils import get_session, hf_raise_for_status

    raw = get_session().post(f"{fake_hub.url}/api/repos/create", json={
        "name": "caf\u00e9..x", "type": "dataset"}, headers={"authorization": f"Bearer {TOKEN}"})
    with pytest.raises(hf_errors.BadRequestError):
        hf_raise_for_status(raw)
    with pytest.raises(hf_errors.HfHubHTTPError) as other:
        api.create_repo("someone-else/x", repo_type="dataset")
    assert other.value.response.status_code == 403
    # Anonymous: private repos are not found, writes are refused.
    anonymous = HfApi(endpoint=fake_hub.url, token=False)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        anonymous.dataset_info(REPO)
    with pytest.raises(hf_errors.HfHubHTTPError) as unauth:
        anonymous.create_repo(f"{hub_stub.USER}/y", repo_type="dataset")
    assert unauth.value.response.status_code == 401
    # A token the Hub does not know.
    fake_hub.tokens = {TOKEN}
    wrong = HfApi(endpoint=fake_hub.url, token="hf_" + "NotTheRightTokenAtAll00")
    with pytest.raises(hf_errors.HfHubHTTPError) as invalid:
        wrong.dataset_info(REPO)
    assert invalid.value.response.status_code == 401
    assert not isinstance(invalid.value, hf_errors.RepositoryNotFoundError)
    # Public repos read without a token; visibility shows in repo_info.
    api.update_repo_settings(REPO, private=False, repo_type="dataset")
    assert anonymous.dataset_info(REPO).private is False
    # A commit built on a stale parent is refused (412).
    with pytest.raises(hf_errors.HfHubHTTPError) as stale:
        _commit(api, {"b.txt": b"y"}, parent_commit=fake_hub.repo(REPO).commits[0])
    assert stale.value.response.status_code == 412


JOB_SCRIPT = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from huggingface_hub import CommitOperationAdd, HfApi
    here = Path(sys.argv[0]).parent
    data = (here / "data.txt").read_text()
    print("read", data, "from", here.name == os.environ["EXPECT_MOUNT_NAME"], flush=True)
    if os.environ.get("MODE") == "sleep":
        time.sleep(120)
    if os.environ.get("MODE") == "fail":
        sys.exit(3)
    Path(sys.argv[2]).mkdir(parents=True)
    api = HfApi(token=os.environ["HF_TOKEN"])
    info = api.create_commit(os.environ["OUT_REPO"], [CommitOperationAdd(
        path_in_repo="outputs/result.txt", path_or_fileobj=data.upper().encode())],
        commit_message="job output", repo_type="dataset")
    print("pushed", info.oid, flush=True)
""")


def _run(api: HfApi, sha: str, mode: str = "ok", **kw):
    volume = Volume(type="dataset", source=REPO, revision=sha, path="steps/s1",
                    mount_path="/tunestep/step", read_only=True)
    return api.run_job(
        image="ghcr.io/astral-sh/uv:python3.12-bookworm",
        command=["uv", "run", "--locked", "/tunestep/step/job.py", "--out", "/tmp/job-out"],
        env={"MODE": mode, "OUT_REPO": REPO, "EXPECT_MOUNT_NAME": "mount0"},
        secrets={"HF_TOKEN": TOKEN}, flavor="cpu-basic", timeout=600, volumes=[volume],
        labels={"tunestep-draft": "d1", "tunestep-nonce": f"n-{mode}"},
        namespace=hub_stub.USER, **kw)


def test_the_runner_runs_the_committed_bundle_at_its_revision(api, fake_hub):
    fake_hub.runner = JobRunner()
    api.create_repo(REPO, repo_type="dataset", private=True)
    sha = _commit(api, {"steps/s1/job.py": JOB_SCRIPT.encode(),
                        "steps/s1/data.txt": b"approved"})
    _commit(api, {"steps/s1/data.txt": b"changed later"})  # the job must not see this

    job = _run(api, sha)
    done = fake_hub.wait_job(job.id)
    logs = list(api.fetch_job_logs(job_id=job.id, namespace=hub_stub.USER))
    assert done["status"]["stage"] == "COMPLETED", logs
    assert logs[0] == "read approved from True"
    assert done["stub"]["launcher"] == ["uv", "run", "--locked"]
    assert list(api.fetch_job_logs(job_id=job.id, namespace=hub_stub.USER, tail=1)) == logs[-1:]
    # The job's push is a real commit on top of main.
    repo = fake_hub.repo(REPO)
    assert repo.files["outputs/result.txt"] == b"APPROVED"
    assert logs[-1] == f"pushed {repo.head}"
    info = api.inspect_job(job_id=job.id, namespace=hub_stub.USER)
    assert info.status.stage == "COMPLETED" and info.finished_at is not None

    failed = _run(api, sha, mode="fail")
    assert fake_hub.wait_job(failed.id)["status"] == {
        "stage": "ERROR", "message": "Job failed with exit code: 3"}

    sleeping = _run(api, sha, mode="sleep")
    deadline = time.monotonic() + 60
    while not fake_hub.job_logs[sleeping.id] and time.monotonic() < deadline:
        time.sleep(0.05)  # until it runs and has printed its first line
    assert fake_hub.jobs[sleeping.id]["status"]["stage"] == "RUNNING"
    api.cancel_job(job_id=sleeping.id, namespace=hub_stub.USER)
    assert fake_hub.wait_job(sleeping.id, timeout=30)["status"]["stage"] == "CANCELED"
    proc = fake_hub.runner.procs.get(sleeping.id)
    if proc is not None:
        assert proc.wait(timeout=30) != 0  # killed, not left running

    labelled = api.list_jobs(labels={"tunestep-nonce": "n-ok"}, namespace=hub_stub.USER)
    assert [j.id for j in labelled] == [job.id]
    errored = api.list_jobs(status="ERROR", namespace=hub_stub.USER)
    assert [j.id for j in errored] == [failed.id]


def test_job_specs_the_hub_refuses(api, fake_hub):
    api.create_repo(REPO, repo_type="dataset", private=True)
    sha = _commit(api, {"steps/s1/job.py": b"print(1)\n"})
    with pytest.raises(hf_errors.BadRequestError):
        api.run_job(image="python:3.12", command=["python", "-c", "1"], flavor="a10g-huge",
                    namespace=hub_stub.USER)
    with pytest.raises(hf_errors.BadRequestError):  # a volume at a revision that is not there
        api.run_job(image="python:3.12", command=["python", "x.py"], namespace=hub_stub.USER,
                    volumes=[Volume(type="dataset", source=REPO, revision="e" * 40,
                                    mount_path="/data")])
    with pytest.raises(hf_errors.HfHubHTTPError) as unauth:
        HfApi(endpoint=fake_hub.url, token=False).run_job(
            image="python:3.12", command=["python"], namespace=hub_stub.USER)
    assert unauth.value.response.status_code == 401
    assert fake_hub.jobs == {}
    assert _run(api, sha).status.stage == "SCHEDULING"  # no runner: it waits for hardware


def test_accelerate_launch_is_swapped_for_the_interpreter():
    job: dict = {}
    argv = JobRunner._swap_launcher(
        ["uv", "run", "--with", "accelerate", "accelerate", "launch", "--num_processes", "4",
         "--multi_gpu", "/m/train.py", "--config", "/m/job.json"], job)
    assert argv == [sys.executable, "/m/train.py", "--config", "/m/job.json"]
    assert job["stub"]["num_processes"] == 4


def test_listings_come_in_pages_and_the_client_follows_them(api, fake_hub):
    api.create_repo(REPO, repo_type="dataset", private=True)
    _commit(api, {f"outputs/f{i}.txt": b"%d" % i for i in range(7)})
    for i in range(5):
        fake_hub.jobs[f"j{i}"] = {"id": f"j{i}", "createdAt": f"2026-01-0{i + 1}T00:00:00Z",
                                  "status": {"stage": "COMPLETED", "message": None},
                                  "labels": {"k": "v"}, "dockerImage": "x", "command": ["x"],
                                  "owner": {"id": "u1", "name": hub_stub.USER, "type": "user"}}
    fake_hub.page_size = 2
    files = [f.path for f in api.list_repo_tree(REPO, path_in_repo="outputs",
                                                repo_type="dataset")]
    assert files == [f"outputs/f{i}.txt" for i in range(7)]
    jobs = [j.id for j in api.list_jobs(labels={"k": "v"}, namespace=hub_stub.USER)]
    assert jobs == ["j4", "j3", "j2", "j1", "j0"]
    pages = [r for r in fake_hub.requests if r.path == f"/api/jobs/{hub_stub.USER}"]
    assert len(pages) == 3 and pages[-1].query["cursor"] == ["4"]
    assert pages[-1].query["label"] == ["k=v"]  # the filter travels with every page


def test_the_rate_limit_answers_429_with_retry_after(api, fake_hub):
    fake_hub.rate_limit = (3, 300)
    for _ in range(3):
        api.list_jobs_hardware()
    with pytest.raises(hf_errors.HfHubHTTPError) as limited:
        api.list_jobs_hardware()
    response = limited.value.response
    assert response.status_code == 429 and 295 <= int(response.headers["Retry-After"]) <= 300
    assert "rate limit" in str(limited.value)


def test_a_job_past_its_timeout_is_stopped_as_an_error(api, fake_hub):
    fake_hub.runner = JobRunner()
    api.create_repo(REPO, repo_type="dataset", private=True)
    sha = _commit(api, {"steps/s1/job.py": JOB_SCRIPT.encode(), "steps/s1/data.txt": b"x"})
    job = api.run_job(
        image="ghcr.io/astral-sh/uv:python3.12-bookworm",
        command=["uv", "run", "/tunestep/step/job.py", "--out", "/tmp/o"],
        env={"MODE": "sleep", "OUT_REPO": REPO, "EXPECT_MOUNT_NAME": "mount0"},
        flavor="cpu-basic", timeout=1, namespace=hub_stub.USER,
        volumes=[Volume(type="dataset", source=REPO, revision=sha, path="steps/s1",
                        mount_path="/tunestep/step")])
    done = fake_hub.wait_job(job.id, timeout=60)
    assert done["status"] == {"stage": "ERROR", "message": "Job timeout"}
