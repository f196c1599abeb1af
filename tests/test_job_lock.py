"""The HF job runs exactly the approved dependency versions: a committed lock, in the digest."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from chain_helpers import local_base_workspace
from conftest import REPO_ROOT

from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts import draft as drafts
from tunestep.tools.drafts.draft import DraftRequest, build_draft
from tunestep.tools.drafts.estimate import LOCKED_INSTALL_SECONDS

JOBS = REPO_ROOT / "tools" / "jobs"
REMOTE = DraftRequest(batch="batch_100_01", backend="hf-jobs", flavor="a10g-large")


def header(script: Path) -> dict:
    block = re.search(r"^# /// script\n(.*?)^# ///$", script.read_text(), re.M | re.S)
    return tomllib.loads("\n".join(line[2:] for line in block.group(1).splitlines()))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_matches_the_job_header_and_pins_a_cuda12_torch():
    lock = tomllib.loads((JOBS / "train_sft.py.lock").read_text())
    wanted = set()
    for dep in header(JOBS / "train_sft.py")["dependencies"]:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", dep).groups()
        wanted.add((_norm(name), spec.replace(" ", "")))
    locked = {(_norm(r["name"]), r.get("specifier", "")) for r in lock["manifest"]["requirements"]}
    assert locked == wanted, "the header changed: run `make lock` and commit the lock"
    versions = {p["name"]: p["version"] for p in lock["package"]}
    assert versions["torch"] == "2.10.0"
    assert "nvidia-cuda-runtime-cu12" in versions
    assert not any(name.endswith("-cu13") or name == "nvidia-cuda-runtime" for name in versions)
    assert all(p["source"].get("registry") == "https://pypi.org/simple" for p in lock["package"])


def test_the_huggingface_hub_floor_is_the_first_release_with_every_api_used():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    ours = next(d for d in project["dependencies"] if d.startswith("huggingface_hub"))
    job = next(d for d in header(JOBS / "train_sft.py")["dependencies"]
               if d.startswith("huggingface_hub"))
    assert ours.startswith("huggingface_hub>=1.16,") and job.startswith("huggingface_hub>=1.16,")


@pytest.fixture
def ws(tmp_path, tiny_model_dir):
    return local_base_workspace(tmp_path, tiny_model_dir, base_rows=40, holdout_rows=10)


def test_a_remote_draft_runs_uv_locked_and_its_digest_covers_the_lock(ws, tmp_path,
                                                                      monkeypatch):
    draft = build_draft(ws, REMOTE, check_batch(ws, "batch_100_01"))
    assert draft.submission.command[:3] == ["uv", "run", "--locked"]
    assert draft.submission.bundle["train_sft.py.lock"] == "job:train_sft.py.lock"
    (ref,) = [f for f in draft.files if f.path == "train_sft.py.lock"]
    assert ref.role == "script" and ref.sha256 == sha256_file(JOBS / "train_sft.py.lock")
    assert f"+{LOCKED_INSTALL_SECONDS:g} s dependency install" in draft.estimate.method

    # Another lock (a re-resolved environment) is another draft: it must be approved again.
    copy = tmp_path / "jobs"
    shutil.copytree(JOBS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "train_sft.py.lock", "a") as lock:
        lock.write("\n")
    monkeypatch.setattr(drafts, "JOBS_DIR", copy)
    assert build_draft(ws, REMOTE, check_batch(ws, "batch_100_01")).digest != draft.digest


def test_an_image_with_the_environment_inside_installs_nothing(tmp_path, tiny_model_dir):
    ws = local_base_workspace(tmp_path, tiny_model_dir, base_rows=40, holdout_rows=10,
                              plan={"job": {"install": "image",
                                            "image": "example/tunestep-job@sha256:" + "0" * 64}})
    locked_ws = local_base_workspace(tmp_path / "b", tiny_model_dir, base_rows=40,
                                     holdout_rows=10)
    image = build_draft(ws, REMOTE, check_batch(ws, "batch_100_01"))
    locked = build_draft(locked_ws, REMOTE, check_batch(locked_ws, "batch_100_01"))
    assert image.submission.command[0] == "python3"
    assert image.submission.image.startswith("example/tunestep-job@sha256:")
    assert locked.estimate.minutes - image.estimate.minutes == pytest.approx(
        LOCKED_INSTALL_SECONDS / 60, abs=0.11)
