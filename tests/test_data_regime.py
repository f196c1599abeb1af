"""data.regime in the draft: which rows of each source a resumed step trains, and why."""

from __future__ import annotations

import os
import shutil
import time

import orjson
import pytest

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import load_plan, render_plan_document
from tunestep.tools.data.mapping import apply_mapping, suggest_mapping
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job, load_draft, recompute
from tunestep.tools.lineage.version_files import record_files, scan_version

TRAIN = "datasets/processed_webdev_coding/train.jsonl"
REPLAY = "datasets/processed_webdev_coding/replay/batch_100_02.jsonl"


def set_data(ws, **data) -> None:
    plan = load_plan(ws).plan
    updated = plan.model_copy(update={"data": plan.data.model_copy(update=data)})
    (ws.root / ".specs/training/plan.md").write_text(render_plan_document(updated))


@pytest.fixture
def resumed_ws(model_ws):
    """Step 1 trained: a version beside the base, latest on it, the step in the ledger."""
    store = model_ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions/0001_batch_100_01")
    (store / "latest").unlink()
    os.symlink("versions/0001_batch_100_01", store / "latest")
    with ledger.open_ledger(model_ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO steps(step, batch, version, recorded_at) VALUES"
                     " (1, 'batch_100_01', '0001_batch_100_01', ?)", (time.time(),))
        # The version's files as its job reported them: the resume point is checked
        # against this record, never taken from the link alone (issue 17).
        record_files(conn, "models/qwen3_webdev", "0001_batch_100_01",
                     scan_version(store / "versions/0001_batch_100_01", "0001"), "job")
    source = "datasets/incremental/batch_100_02"
    apply_mapping(model_ws, source, suggest_mapping(model_ws, source).mapping)
    return model_ws


def test_replay_is_the_default_when_resuming(resumed_ws):
    ws = resumed_ws
    draft = draft_job(ws, DraftRequest())
    assert draft.batch == "batch_100_02" and draft.regime == "replay"
    assert draft.job_config["resume_from"].endswith("0001_batch_100_01")
    # Earlier rows: base 200 + batch 1 100; 0.2 of them, shared by source size.
    uses = {u.part: (u.rows, u.trained) for u in draft.sources}
    assert uses == {"base": (200, 40), "batch_100_01": (100, 20), "batch_100_02": (100, 100)}
    train = [(f.path, f.rows) for f in draft.files if f.role == "train"]
    assert train[0] == (REPLAY, 60) and train[1][1] == 100 and len(train) == 2
    assert draft.job_config["train_files"][0]["path"] == REPLAY
    plan_md = (ws.root / draft.run_plan).read_text()
    assert "Regime **replay**" in plan_md and "160 rows trained in all" in plan_md
    assert "replay sample (0.2, by source and grade)" in plan_md
    # The approval's recompute reads the sample file it wrote and finds it unchanged.
    assert recompute(ws, load_draft(ws, draft.draft_id)).digest == draft.digest
    (ws.root / REPLAY).write_bytes(b"{}\n")
    with pytest.raises(TunestepError) as err:
        recompute(ws, load_draft(ws, draft.draft_id))
    assert err.value.code == "replay_stale"
    manifest = orjson.loads((ws.root / REPLAY.replace(".jsonl", ".manifest.json")).read_bytes())
    assert [s["rows_out"] for s in manifest["sources"]] == [40, 20]


def test_cumulative_and_from_base_train_every_row(resumed_ws):
    ws = resumed_ws
    set_data(ws, regime="cumulative")
    cumulative = draft_job(ws, DraftRequest())
    assert sum(u.trained for u in cumulative.sources) == 400
    assert cumulative.job_config["resume_from"].endswith("0001_batch_100_01")
    assert cumulative.job_config["hyperparameters"]["learning_rate"] == 5e-4  # resume lr
    set_data(ws, regime="from_base")
    fresh = draft_job(ws, DraftRequest())
    assert sum(u.trained for u in fresh.sources) == 400
    assert fresh.job_config["resume_from"] is None
    assert fresh.job_config["base_model"] == load_plan(ws).plan.model
    assert fresh.job_config["hyperparameters"]["learning_rate"] == 1e-3  # the fresh lr
    assert any("from_base" in w for w in fresh.warnings)
    assert check_batch(ws).batch == "batch_100_02"


def test_a_held_back_batch_is_trained_in_full_again(resumed_ws, operator):
    """Step 2's version failed its gate and was never promoted (latest stayed at step 1's):
    the weights step 3 starts from never learned batch 2, so replay does not count it as
    seen; the base set and batch 1 are sampled as usual."""
    ws = resumed_ws
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO steps(step, batch, version, promoted, recorded_at) "
                     "VALUES (2, 'batch_100_02', '0002_batch_100_02', 0, ?)", (time.time(),))
    draft = draft_job(ws, DraftRequest())
    assert draft.batch == "batch_100_03" and draft.job_config["resume_from"].endswith(
        "0001_batch_100_01")
    uses = {u.part: (u.trained, u.why) for u in draft.sources}
    # 0.2 of the 300 rows learned before (base 200 + batch 1 100), shared by size.
    assert uses["base"][0] == 40 and uses["batch_100_01"][0] == 20
    assert uses["batch_100_02"][0] == 100 and "not promoted" in uses["batch_100_02"][1]
    assert uses["batch_100_03"][0] == 100
    assert draft.job_config["train_files"][0]["path"].endswith("replay/batch_100_03.jsonl")
    # Once the operator promotes that version (the signed move is the record, see
    # tools/lineage) its rows count as learned.
    # A signed promotion: a row written into `promotions` by hand would be ignored.
    from tunestep.tools.drafts.operator import sign_promotion
    from tunestep.tools.lineage.promotion import promote, promote_version, review_request

    store = ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions/0002_batch_100_02")
    request = promote(ws, "0002_batch_100_02", None, operator.trusted).request
    token = sign_promotion(ws, review_request(ws, request.request_id), name=operator.name,
                           key_path=operator.info.private_key_path,
                           passphrase=operator.passphrase, ttl="10m").token
    promote_version(ws, "0002_batch_100_02", token, operator.trusted)
    again = draft_job(ws, DraftRequest())
    assert {u.part: u.trained for u in again.sources}["batch_100_02"] == 20
