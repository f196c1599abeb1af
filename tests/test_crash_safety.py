"""Crash safety: every writer is SIGKILLed at seeded points, and nothing is ever half-done.

Each trial restores a workspace, runs the real domain function in a child process
(``crash_harness``) and kills it with SIGKILL in one of three ways:

- ``parent``: the test kills the child after a seeded delay, the delays spread over the
  operation's measured duration (one stratum each);
- ``hook``: the child kills itself right before or right after the Nth ``os.replace``,
  ``os.fsync``, ``os.link``, temp-file creation or ledger ``execute`` (every rename point,
  the rest sampled), which hits "temp written, not renamed" and "INSERT done, no COMMIT"
  deterministically;
- ``timer``: a timer armed at the start of the write phase (the temp folder/file, or the
  BEGIN of the ledger transaction) fires a seeded delay later, so the kill lands inside a
  write or inside SQLite's commit.

After the kill: every final path is absent or byte-identical to the output of an
uninterrupted run (or, when an earlier output existed, to that one), temp names are
hidden, the ledger passes ``integrity_check`` and ``foreign_key_check`` with no job row
without its approval row or the reverse, and the originals and the hold-out set are
byte-identical. Then the operation runs again in this process, and its output must be
byte-identical to the uninterrupted run's.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import crash_harness as H
import orjson
import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace

SEED = 8  # issue 8; every trial's delay and kill point derive from it
MAPPED = "datasets/processed_webdev_coding_mapped"
PROCESSED = "datasets/processed_webdev_coding"
MERGED = f"{PROCESSED}/merged_train.jsonl"
MERGED_MANIFEST = f"{PROCESSED}/merged_train.manifest.json"
TOKENIZED = "datasets/tokenized"
PLAN = ".specs/training/plan.md"
TRUE = shutil.which("true") or "/bin/true"  # what a local job runs in these tests


def rng_for(name: str) -> random.Random:
    return random.Random(f"crash-safety:{name}:{SEED}")


def protected(root: Path, *outputs: str) -> dict[str, str]:
    """sha256 of every data file and the plan, except the operation's own outputs."""
    hashes = {f"datasets/{k}": v for k, v in H.tree(root / "datasets").items()}
    kept = {k: v for k, v in hashes.items()
            if not any(k == o or k.startswith(o.rstrip("/") + "/") for o in outputs)}
    kept[PLAN] = H.sha(root / PLAN)
    return kept


def assert_ledger_whole(root: Path, where: str) -> None:
    state = H.ledger_state(root)
    if state is not None:
        problems = state.problems(ledger.SCHEMA_VERSION)
        assert not problems, f"{where}: {problems}"


class Tally:
    """Trials per kill kind, how many were really killed mid-way, and what was left."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.trials: Counter = Counter()
        self.killed: Counter = Counter()
        self.left: Counter = Counter()

    def add(self, kind: str, outcome: H.Outcome, left: str) -> None:
        self.trials[kind] += 1
        self.killed[kind] += outcome.killed
        self.left[left] += 1

    def check(self, minimum: int = 20) -> None:
        total = sum(self.trials.values())
        print(f"\n{self.name}: {total} trials {dict(self.trials)}, killed "
              f"{dict(self.killed)}, states left {dict(self.left)}")
        assert total >= minimum
        assert self.killed["hook"] == self.trials["hook"]  # every planned point was reached
        # Delays spread over the measured duration: a good share lands before the end (on
        # a busy machine a run may be faster than the measured one and end first, which
        # is checked all the same).
        assert self.killed["timer"] * 2 >= self.trials["timer"], dict(self.killed)
        assert self.killed["parent"] * 3 >= self.trials["parent"], dict(self.killed)


def plans(name: str, reference: H.Outcome, *, parent: int, hooks: int, timers: int,
          timer_from: tuple[str, int], timer_to: float, sql_window=None,
          hook_kinds=None) -> list[tuple[str, dict]]:
    """The seeded trials of one scenario: parent delays, hook points, timer delays."""
    rng = rng_for(name)
    out: list[tuple[str, dict]] = []
    for index, delay in enumerate(H.stratified(rng, 0.0, reference.seconds, parent)):
        out.append(("parent", {"delay": delay, "fresh": index == parent // 2}))
    kinds = {"kinds": hook_kinds} if hook_kinds else {}
    for plan in H.hook_plans(reference.events, rng, hooks, sql_window=sql_window, **kinds):
        out.append(("hook", {"kill": plan}))
    start = H.event_time(reference.events, *timer_from)
    for delay in H.stratified(rng, 0.0, max(timer_to - start, 1e-4), timers):
        out.append(("timer", {"kill": {"hook": timer_from[0], "n": timer_from[1],
                                       "timer": delay}}))
    return out


def run_trials(harness: H.Harness, op: str, root: Path, start: Path, args: dict,
               trials: list[tuple[str, dict]], outputs: tuple[str, ...], after_kill,
               rerun, tally: Tally) -> None:
    for kind, plan in trials:
        H.restore(start, root)
        before = protected(root, *outputs)
        outcome = harness.run(op, root, args, **plan)
        where = f"{tally.name} {kind} {plan}: exit {outcome.exit_code}"
        assert outcome.error is None, f"{where}: {outcome.error}\n{outcome.code}"
        assert outcome.exit_code in (0, -9), where
        left = after_kill(outcome, where)
        assert_ledger_whole(root, where)
        assert protected(root, *outputs) == before, where
        rerun(outcome, left, where)
        assert_ledger_whole(root, where)
        assert protected(root, *outputs) == before, where
        tally.add(kind, outcome, left)


def must_run(harness: H.Harness, op: str, root: Path, args: dict) -> H.Outcome:
    outcome = harness.run(op, root, args)
    assert outcome.exit_code == 0 and outcome.error is None, (outcome.error, outcome.code)
    return outcome


# ---------------------------------------------------------------------------------------
# apply_mapping


def mapped_state(folder: Path) -> dict | None:
    """The mapped folder as data files plus manifest (its creation time left out)."""
    if not folder.exists():
        return None
    files = H.tree(folder)
    manifest = orjson.loads((folder / "manifest.json").read_bytes()) \
        if "manifest.json" in files else None
    if manifest is not None:
        manifest.pop("created_at", None)
        files.pop("manifest.json")
    return {"files": files, "manifest": manifest}


@pytest.mark.e2e
def test_apply_mapping_killed_anywhere_leaves_old_or_new_output(tmp_path):
    from tunestep.tools.data.mapping import MappingSpec, apply_mapping, suggest_mapping

    root = tmp_path / "ws"
    build_sample_workspace(root, batch_rows=600, batches=2)
    ws = open_workspace(root)
    source = "datasets/incremental/batch_600_02"
    spec_a = suggest_mapping(ws, source).mapping
    spec_b = spec_a.model_copy(update={"system_prompt": "Grade strictly.",
                                       "replace_system": True})
    shutil.rmtree(root / ".tunestep")  # the first trials also create the ledger
    empty = H.snapshot(root, tmp_path / "empty")
    out = root / MAPPED / "batch_600_02"
    tally = Tally("apply_mapping")

    with H.Harness(("tunestep.tools.data.mapping",)) as harness:
        args_a = {"source": source, "spec": spec_a.model_dump(mode="json")}
        args_b = {"source": source, "spec": spec_b.model_dump(mode="json")}
        run_a = must_run(harness, "apply_mapping", root, args_a)
        ref_a = mapped_state(out)
        with_a = H.snapshot(root, tmp_path / "with_a")
        run_b = must_run(harness, "apply_mapping", root, args_b)
        ref_b = mapped_state(out)
        assert ref_a["manifest"] and ref_b["manifest"] and ref_a != ref_b
        assert run_b.counts["exchange"] == 1  # the old and the new folder swapped

        def after_kill(allowed: dict):
            def check(outcome: H.Outcome, where: str) -> str:
                state = mapped_state(out)
                named = next((n for n, ref in allowed.items() if ref == state), None)
                assert named is not None, f"{where}: partial mapped folder {state}"
                visible = [p.name for p in (root / MAPPED).iterdir()
                           if not p.name.startswith(".")] if (root / MAPPED).exists() else []
                assert visible in ([], ["batch_600_02"]), where
                for name in H.hidden_entries(root / MAPPED):
                    assert name.startswith(".batch_600_02.") and (
                        name.endswith(".tmp") or ".old-" in name), (where, name)
                return named
            return check

        def rerun(spec: MappingSpec, expected: dict, final: str):
            def again(outcome: H.Outcome, left: str, where: str) -> None:
                result = apply_mapping(open_workspace(root), source, spec)
                assert mapped_state(out) == expected, where
                assert result.rows_out == 600, where
                # a complete output of this very spec is recognised, not written again
                assert result.unchanged == (left == final), where
            return again

        fresh = plans("mapping-fresh", run_a, parent=6, hooks=8, timers=3,
                      timer_from=("mkdtemp", 1),
                      timer_to=H.published(run_a.events))
        run_trials(harness, "apply_mapping", root, empty, args_a, fresh, (MAPPED,),
                   after_kill({"absent": None, "new": ref_a}),
                   rerun(spec_a, ref_a, "new"), tally)
        replace = plans("mapping-replace", run_b, parent=6, hooks=8, timers=3,
                        timer_from=("mkdtemp", 1),
                        timer_to=H.published(run_b.events))
        run_trials(harness, "apply_mapping", root, with_a, args_b, replace, (MAPPED,),
                   after_kill({"old": ref_a, "new": ref_b}),
                   rerun(spec_b, ref_b, "new"), tally)
    tally.check()


# ---------------------------------------------------------------------------------------
# merge_datasets, strategy file


def merged_state(root: Path) -> tuple[str | None, str | None]:
    files = (root / MERGED, root / MERGED_MANIFEST)
    return tuple(H.sha(f) if f.exists() else None for f in files)


@pytest.mark.e2e
def test_merge_killed_anywhere_leaves_old_or_new_file(tmp_path):
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
    from tunestep.tools.data.merge import merge_datasets

    root = tmp_path / "ws"
    build_sample_workspace(root, batch_rows=600, batches=3,
                           plan_overrides={"data": {"merge_strategy": "file"}})
    ws = open_workspace(root)
    source = "datasets/incremental/batch_600_02"
    apply_mapping(ws, source, suggest_mapping(ws, source).mapping)
    mapped = H.snapshot(root, tmp_path / "mapped")  # no merge yet, no READY memo
    tally = Tally("merge_datasets(file)")

    with H.Harness(("tunestep.tools.data.merge", "tunestep.tools.inspector")) as harness:
        must_run(harness, "merge", root, {"batch": "batch_600_02"})
        ref_2 = merged_state(root)
        with_2 = H.snapshot(root, tmp_path / "with_2")
        run_3 = must_run(harness, "merge", root, {"batch": "batch_600_03"})
        ref_3 = merged_state(root)
        H.restore(mapped, root)
        cold_3 = must_run(harness, "merge", root, {"batch": "batch_600_03"})
        assert merged_state(root) == ref_3 and None not in ref_3 and ref_2 != ref_3

        def after_kill(allowed_data: dict, allowed_manifest: dict):
            def check(outcome: H.Outcome, where: str) -> str:
                data, manifest = merged_state(root)
                assert data in allowed_data.values(), f"{where}: partial merged file"
                assert manifest in allowed_manifest.values(), f"{where}: partial manifest"
                names = ({k for k, v in allowed_data.items() if v == data},
                         {k for k, v in allowed_manifest.items() if v == manifest})
                # the manifest is written after the file: a new manifest means a new file
                assert "new" not in names[1] or "new" in names[0], where
                for name in H.hidden_entries(root / PROCESSED):
                    assert name.startswith((".merged_train.jsonl.",
                                            ".merged_train.manifest.json.")), (where, name)
                    assert name.endswith(".tmp"), (where, name)
                return f"file {min(names[0])}, manifest {min(names[1])}"
            return check

        def rerun(outcome: H.Outcome, left: str, where: str) -> None:
            result = merge_datasets(open_workspace(root), "batch_600_03")
            assert merged_state(root) == ref_3, where
            assert result.cached == (left == "file new, manifest new"), where
            assert H.hidden_entries(root / PROCESSED) == [], where  # swept under the lock

        write_end = H.published(cold_3.events)
        fresh = plans("merge-fresh", cold_3, parent=6, hooks=6, timers=3,
                      timer_from=("mkstemp", 1), timer_to=write_end)
        run_trials(harness, "merge", root, mapped, {"batch": "batch_600_03"}, fresh,
                   (MERGED, MERGED_MANIFEST),
                   after_kill({"absent": None, "new": ref_3[0]},
                              {"absent": None, "new": ref_3[1]}), rerun, tally)
        replace = plans("merge-replace", run_3, parent=6, hooks=6, timers=3,
                        timer_from=("mkstemp", 1),
                        timer_to=H.published(run_3.events))
        run_trials(harness, "merge", root, with_2, {"batch": "batch_600_03"}, replace,
                   (MERGED, MERGED_MANIFEST),
                   after_kill({"old": ref_2[0], "new": ref_3[0]},
                              {"old": ref_2[1], "new": ref_3[1]}), rerun, tally)
    tally.check()


# ---------------------------------------------------------------------------------------
# preprocess


def tokenized_state(root: Path) -> dict:
    """Every visible file under paths.tokenized, the parts store included.

    The step record says per part whether this run found it ``cached`` (history, not
    content: a re-run after a kill reuses the parts the killed run finished); that flag
    is left out of its hash, every other byte counts.
    """
    folder = root / TOKENIZED
    if not folder.exists():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") and p != ".parts" for p in rel.parts):
            out[rel.as_posix()] = H.sha(path)
            if path.name == "tunestep_cache.json":
                record = orjson.loads(path.read_bytes())
                for part in record["parts"]:
                    part.pop("cached")
                out[rel.as_posix()] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return out


def split_state(state: dict, batch: str) -> tuple[dict, dict[str, dict]]:
    """(the step folder's files, {part key: its files})."""
    step = {k: v for k, v in state.items() if k.startswith(f"{batch}/")}
    parts: dict[str, dict] = {}
    for key, digest in state.items():
        if key.startswith(".parts/"):
            _, name, rest = key.split("/", 2)
            parts.setdefault(name, {})[rest] = digest
    assert set(state) == set(step) | {k for k in state if k.startswith(".parts/")}, state
    return step, parts


@pytest.mark.e2e
def test_preprocess_killed_anywhere_leaves_whole_folders(tmp_path, tiny_model_dir):
    from tunestep.tools.core.plan import load_plan
    from tunestep.tools.data import preprocess, selection, tokenized_cache
    from tunestep.tools.data.mapping import apply_mapping, suggest_mapping

    root = tmp_path / "ws"
    build_sample_workspace(root, base_rows=30, batch_rows=10, batches=3, holdout_rows=8,
                           plan_overrides={"model": str(tiny_model_dir),
                                           "training": {"max_length": 512}})
    ws = open_workspace(root)
    source = "datasets/incremental/batch_10_02"
    apply_mapping(ws, source, suggest_mapping(ws, source).mapping)
    batch = "batch_10_03"
    start = H.snapshot(root, tmp_path / "start")
    tally = Tally("preprocess")
    preload = ("tunestep.tools.data.preprocess", "tunestep.tools.inspector", "datasets",
               "transformers.models.auto.tokenization_auto", "tunestep.tools.jobs.sft_data")

    with H.Harness(preload) as harness:
        run_512 = must_run(harness, "preprocess", root, {"batch": batch})
        ref_512 = split_state(tokenized_state(root), batch)
        done_512 = H.snapshot(root, tmp_path / "done_512")
        run_1024 = must_run(harness, "preprocess", root, {"batch": batch, "max_length": 1024})
        ref_1024 = split_state(tokenized_state(root), batch)
        assert run_512.counts["replace"] >= 6 and len(ref_512[1]) == 4
        assert ref_1024[0] != ref_512[0] and set(ref_1024[1]) > set(ref_512[1])
        known_parts = {**ref_512[1], **ref_1024[1]}

        def after_kill(allowed_steps: dict, max_length: int | None):
            def check(outcome: H.Outcome, where: str) -> str:
                step, parts = split_state(tokenized_state(root), batch)
                named = next((n for n, ref in allowed_steps.items() if ref == step), None)
                assert named is not None, f"{where}: partial step folder {sorted(step)}"
                for key, files in parts.items():  # a part is whole or absent
                    assert files == known_parts.get(key), f"{where}: partial part {key}"
                leftovers = [*H.hidden_entries(root / TOKENIZED),
                             *H.hidden_entries(root / TOKENIZED / ".parts")]
                for name in leftovers:  # temp and set-aside names only
                    assert name == ".parts" or name.endswith(".tmp") or ".old-" in name, (
                        where, name)
                # what a draft would pick up: nothing, or exactly the finished folder
                step_data = selection.select_rows(ws, batch)
                found = tokenized_cache.find_tokenized(ws, load_plan(ws).plan, step_data,
                                                      max_length)
                assert found is None or named == "new", where
                return named
            return check

        def rerun(max_length: int | None, expected: tuple):
            def again(outcome: H.Outcome, left: str, where: str) -> None:
                result = preprocess.preprocess(open_workspace(root), batch,
                                               max_length=max_length)
                step, parts = split_state(tokenized_state(root), batch)
                assert step == expected[0], where
                assert {k: parts[k] for k in expected[1]} == expected[1], where
                assert result.cached == (left == "new"), where
                assert H.hidden_entries(root / TOKENIZED) == [".parts"], where
                assert H.hidden_entries(root / TOKENIZED / ".parts") == [], where
            return again

        fresh = plans("preprocess-fresh", run_512, parent=4, hooks=10, timers=3,
                      timer_from=("mkdtemp", 1),
                      timer_to=H.published(run_512.events))
        run_trials(harness, "preprocess", root, start, {"batch": batch}, fresh,
                   (TOKENIZED,), after_kill({"absent": {}, "new": ref_512[0]}, None),
                   rerun(None, ref_512), tally)
        replace = plans("preprocess-replace", run_1024, parent=2, hooks=4, timers=2,
                        timer_from=("mkdtemp", 1),
                        timer_to=H.published(run_1024.events))
        run_trials(harness, "preprocess", root, done_512, {"batch": batch, "max_length": 1024},
                   replace, (TOKENIZED,),
                   after_kill({"old": ref_512[0], "new": ref_1024[0]}, 1024),
                   rerun(1024, ref_1024), tally)
    tally.check()


# ---------------------------------------------------------------------------------------
# The ledger: submit_job's nonce + job transaction, and the job's recorded outcome


@pytest.fixture
def approved(tmp_path, tiny_model_dir):
    """A small workspace with a stored draft, an operator key and a signed token."""
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.signing import approval, operator_keys, trusted_keys

    root = tmp_path / "ws"
    build_sample_workspace(root, base_rows=30, batch_rows=10, batches=2, holdout_rows=8,
                           plan_overrides={"model": str(tiny_model_dir)})
    ws = open_workspace(root)
    draft = draft_job(ws, DraftRequest(batch="batch_10_01"))
    info = operator_keys.create_operator_key("alice", b"crash test", tmp_path / "operator")
    key = operator_keys.load_private_key(info.private_key_path, b"crash test")
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
    token = approval.sign_approval(key, draft_id=draft.draft_id, digest=draft.digest,
                                   workspace=str(ws.root), op="alice", ttl_seconds=3600,
                                   ledger_id=identity)
    return {"root": root, "draft": draft, "token": token, "info": info,
            "trusted": trusted_keys.load_trusted_keys([info.public_key_path])}


def job_rows(root: Path) -> list[tuple]:
    """Jobs with their approval, as comparable facts (no ids, pids or clocks)."""
    return H.rows(root, "SELECT j.draft_id, j.backend, j.status, a.nonce, a.kid, a.operator,"
                        " j.exit_code, j.result FROM jobs j JOIN approvals a USING (job_id)"
                        " ORDER BY j.created_at")


def audit_actions(root: Path, *actions: str) -> list[tuple]:
    marks = ",".join("?" * len(actions))
    return H.rows(root, f"SELECT action, outcome FROM audit WHERE action IN ({marks})"
                        " ORDER BY id", actions)


def job_files(root: Path) -> list[dict | None]:
    folders = sorted((root / ".tunestep/jobs").iterdir()) \
        if (root / ".tunestep/jobs").exists() else []
    return [H.tree(f) for f in folders]


SUBMIT_PRELOAD = ("tunestep.tools.runs.submit", "tunestep.tools.drafts.draft",
                  "tunestep.tools.signing.approval", "tunestep.tools.signing.trusted_keys",
                  "tunestep.tools.runs.local_backend",
                  "tunestep.tools.inspector",
                  "transformers.models.auto.tokenization_auto")


@pytest.mark.e2e
def test_submit_killed_anywhere_records_the_job_and_its_nonce_together(approved, tmp_path,
                                                                        monkeypatch):
    from tunestep.tools.runs import job_control
    from tunestep.tools.runs.submit import submit_job

    root, draft, token = approved["root"], approved["draft"], approved["token"]
    start = H.snapshot(root, tmp_path / "start")
    args = {"draft_id": draft.draft_id, "token": token,
            "public_key": str(approved["info"].public_key_path)}
    tally = Tally("submit_job (nonce + job)")

    with H.Harness(SUBMIT_PRELOAD) as harness:
        reference = must_run(harness, "submit", root, args)
        ref_jobs = job_rows(root)
        ref_files = job_files(root)
        assert [r[2] for r in ref_jobs] == ["running"] and len(ref_files) == 1
        assert audit_actions(root, "job.submit") == [("job.submit", "ok")]
        begin, commit = H.transaction_span(reference.events, "INSERT INTO approvals")
        last = H.last_event(reference.events, "execute")[0]  # the backend's UPDATE too

        def after_kill(outcome: H.Outcome, where: str) -> str:
            jobs = job_rows(root)
            assert len(jobs) <= 1, where
            if not jobs:
                assert audit_actions(root, "job.submit") == [], where
                return "nothing"
            assert jobs[0][2] in ("starting", "running"), where
            assert jobs[0][:2] + jobs[0][3:] == ref_jobs[0][:2] + ref_jobs[0][3:], where
            assert audit_actions(root, "job.submit") == [("job.submit", "ok")], where
            for files in job_files(root):  # the job folder: each file whole or absent
                for name, digest in files.items():
                    assert digest == ref_files[0][name], (where, name)
            return jobs[0][2]

        def rerun(outcome: H.Outcome, left: str, where: str) -> None:
            ws = open_workspace(root)
            with monkeypatch.context() as patched:
                patched.setattr(sys, "executable", TRUE)
                if left == "nothing":
                    submit_job(ws, draft.draft_id, token, approved["trusted"])
                    assert job_rows(root) == ref_jobs, where
                    assert job_files(root) == ref_files, where
                else:
                    with pytest.raises(TunestepError) as refused:
                        submit_job(ws, draft.draft_id, token, approved["trusted"])
                    assert refused.value.code == "approval_replayed", where
                    assert len(job_rows(root)) == 1, where
            # the job never hangs half-started: its status settles to an end state
            with monkeypatch.context() as patched:
                patched.setattr(job_control, "STARTING_GRACE_S", {"local": 0.0})
                for (job_id,) in H.rows(root, "SELECT job_id FROM jobs"):
                    status = job_control.job_status(ws, job_id)
                    assert status.terminal, f"{where}: job left '{status.status}'"

        trials = plans("submit", reference, parent=6, hooks=16, timers=6,
                       timer_from=("execute", begin),
                       timer_to=H.event_time(reference.events, "execute", commit) + 0.002,
                       sql_window=(begin, last),
                       hook_kinds=("execute", "replace", "fsync", "mkstemp"))
        run_trials(harness, "submit", root, start, args, trials, (), after_kill, rerun, tally)
    tally.check()


@pytest.mark.e2e
def test_record_outcome_killed_anywhere_is_all_or_nothing(approved, tmp_path, monkeypatch):
    from tunestep.tools.runs import local_backend as local
    from tunestep.tools.runs.submit import submit_job

    root, draft = approved["root"], approved["draft"]
    ws = open_workspace(root)
    with monkeypatch.context() as patched:
        patched.setattr(sys, "executable", TRUE)
        job = submit_job(ws, draft.draft_id, approved["token"], approved["trusted"])
    running = H.snapshot(root, tmp_path / "running")
    outcome_args = {"job_id": job.job_id, "status": "succeeded", "exit_code": 0,
                    "result": {"model_path": "models/qwen3_webdev/versions/0001_batch_10_01",
                               "train_loss": 0.25, "eval_loss": 0.5}}
    tally = Tally("record_outcome")

    def steps(root: Path) -> list[tuple]:
        return H.rows(root, "SELECT step, batch, draft_id, job_id, digest, mode, datasets,"
                            " model_path, metrics FROM steps")

    with H.Harness(("tunestep.tools.runs.local_backend",)) as harness:
        before = (job_rows(root), steps(root), audit_actions(root, "job.end", "step.record"))
        reference = must_run(harness, "record_outcome", root, outcome_args)
        after = (job_rows(root), steps(root), audit_actions(root, "job.end", "step.record"))
        assert after[0][0][2] == "succeeded" and len(after[1]) == 1 and len(after[2]) == 2
        begin, commit = H.transaction_span(reference.events, "INSERT OR REPLACE INTO steps")

        def after_kill(outcome: H.Outcome, where: str) -> str:
            now = (job_rows(root), steps(root), audit_actions(root, "job.end", "step.record"))
            assert now in (before, after), f"{where}: half-recorded outcome {now}"
            return "before" if now == before else "after"

        def rerun(outcome: H.Outcome, left: str, where: str) -> None:
            local.record_outcome(open_workspace(root), job.job_id, "succeeded", 0,
                                 outcome_args["result"])
            assert (job_rows(root), steps(root)) == after[:2], where
            if left == "before":
                assert audit_actions(root, "job.end", "step.record") == after[2], where

        # The transaction takes milliseconds: too short to aim at from outside, so the
        # seeded delays are the timer's, armed at its BEGIN.
        trials = plans("record_outcome", reference, parent=0, hooks=16, timers=8,
                       timer_from=("execute", begin),
                       timer_to=H.event_time(reference.events, "execute", commit) + 0.002,
                       sql_window=(begin, commit), hook_kinds=("execute",))
        run_trials(harness, "record_outcome", root, running, outcome_args, trials, (),
                   after_kill, rerun, tally)
    tally.check()


# ---------------------------------------------------------------------------------------
# The harness itself


def test_the_harness_kills_exactly_at_the_planned_call(tmp_path):
    """A kill plan stops the child at its point: before the rename, the file is not there."""
    root = tmp_path / "ws"
    build_sample_workspace(root, base_rows=20, batch_rows=5, batches=1, holdout_rows=5,
                           plan_overrides={"data": {"merge_strategy": "file"}})
    start = H.snapshot(root, tmp_path / "start")
    with H.Harness(("tunestep.tools.data.merge", "tunestep.tools.inspector")) as harness:
        done = must_run(harness, "merge", root, {"batch": "batch_5_01"})
        assert done.result == {"rows": 25, "cached": False}
        number = H.call_number(done.events, "replace", "merged_train.jsonl")
        for when, present in (("before", False), ("after", True)):
            H.restore(start, root)
            killed = harness.run("merge", root, {"batch": "batch_5_01"},
                                 kill={"hook": "replace", "n": number, "when": when})
            assert killed.killed and killed.killed_by == "hook"
            assert (root / MERGED).exists() is present
            assert not (root / MERGED_MANIFEST).exists()
            assert len(H.hidden_entries(root / PROCESSED, "merged_train.jsonl")) == (
                0 if present else 1)


@pytest.mark.parametrize("backend", ["local", "hf-jobs"])
def test_a_job_recorded_but_never_started_settles_as_lost(sample_ws, monkeypatch, backend):
    """What a submit killed between its ledger commit and the backend call leaves behind."""
    import time

    from tunestep.tools.runs import job_control

    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, created_at)"
                     " VALUES ('draft-x', ?, 'train', 'batch_100_01', '{}', ?)",
                     ("0" * 64, time.time()))
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES ('job-x', 'draft-x', ?, 'starting', ?)", (backend, time.time()))
    # within the grace period it may still be starting: no backend is asked (there is no
    # pid and no remote id to ask about)
    assert job_control.job_status(sample_ws, "job-x").status == "starting"
    monkeypatch.setattr(job_control, "STARTING_GRACE_S", {backend: 0.0})
    settled = job_control.job_status(sample_ws, "job-x")
    assert settled.status == "lost" and settled.terminal
    assert "before the job was started" in settled.result["error"]
