"""LoRA is not a one-way door (issue 20): a full step after LoRA steps merges the adapter.

On the tiny local model, through real local jobs: step 1 full, step 2 LoRA on it, step 3
full. Step 3's draft signs the adapter's files and its base's (step 1's version, named by
the ledger: the adapter's own config names the job's private copy, gone since); its job
refuses an adapter swapped after submit (``input_changed``) and, run honestly, starts
from exactly base + adapter merged by PEFT: trained at a learning rate too small to move
a weight, its version equals that merge computed here and differs from the base.
"""

from __future__ import annotations

import json

import pytest
from chain_helpers import local_base_workspace
from test_lineage import map_batch
from test_manifest_tamper import _corrupt, _failed_with, _paused, _wait_reached

from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.lineage.model_store import checkpoint_kind, latest_checkpoint
from tunestep.tools.runs.job_control import job_logs, wait_for_job
from tunestep.tools.runs.submit import submit_job

pytestmark = pytest.mark.e2e
STORE_LINK = "models/qwen3_webdev"
LEAN = {"training": {"num_train_epochs": 1, "max_length": 256, "learning_rate": 3e-3,
                     "resume_learning_rate": 1e-3, "per_device_train_batch_size": 4},
        # a LoRA step that moves the weights well past the comparison's tolerance
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "learning_rate": 5e-2},
        "samples": {"n": 1, "max_new_tokens": 4}, "gate": None}


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_full_lora_full_chain_merges_the_adapter_in_the_job(
        tmp_path, tiny_model_dir, operator, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = local_base_workspace(tmp_path, tiny_model_dir, LEAN, base_rows=16, batch_rows=8,
                              holdout_rows=4)
    store = ws.resolve_model_store(STORE_LINK)

    def run(draft):
        handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                            operator.trusted)
        status = wait_for_job(ws, handle.job_id, timeout=300)
        assert status.status == "succeeded", job_logs(ws, handle.job_id, 40).lines
        return handle

    run(draft_job(ws, DraftRequest(batch="batch_8_01", mode="full")))
    map_batch(ws, "batch_8_02")
    run(draft_job(ws, DraftRequest(batch="batch_8_02", mode="lora")))
    base, adapter = store / "versions/0001_batch_8_01", store / "versions/0002_batch_8_02"
    assert [checkpoint_kind(base), checkpoint_kind(adapter)] == ["full", "lora"]
    named = json.loads((adapter / "adapter_config.json").read_text())
    assert not named["base_model_name_or_path"].startswith(str(store))  # the job's copy

    map_batch(ws, "batch_8_03")
    draft = draft_job(ws, DraftRequest(batch="batch_8_03", mode="full",
                                       overrides={"learning_rate": 1e-12}))
    cfg = draft.job_config
    assert cfg["resume_from"] == str(adapter.resolve())
    assert cfg["base_model"] == str(base.resolve())
    assert {f["path"] for f in cfg["checkpoint"]["files"]} >= {
        "adapter_config.json", "adapter_model.safetensors"}
    assert {f["path"] for f in cfg["merge_adapter"]["base_files"]} >= {
        "config.json", "model.safetensors"}
    assert draft.start.merge.adapter == "0002_batch_8_02"

    # The adapter swapped after submit's check, before the job reads it: refused.
    pause = _paused(monkeypatch, tmp_path, "before_inputs")
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    _wait_reached(ws, handle.job_id, pause, "before_inputs")
    original = _corrupt(adapter / "adapter_model.safetensors")
    (pause / "before_inputs.go").touch()
    _failed_with(ws, handle.job_id, "input_changed")
    (adapter / "adapter_model.safetensors").write_bytes(original)
    assert latest_checkpoint(store).name == "0002_batch_8_02"
    monkeypatch.delenv("TUNESTEP_JOB_PAUSE")

    handle = run(draft)
    assert any("merging the LoRA adapter" in line
               for line in job_logs(ws, handle.job_id, 200).lines)
    third = store / "versions/0003_batch_8_03"
    assert checkpoint_kind(third) == "full" and latest_checkpoint(store).name == third.name
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
        str(adapter)).merge_and_unload().state_dict()
    trained, before = _weights(third), _weights(base)
    shared = sorted(set(trained) & set(merged))
    assert any("q_proj" in k for k in shared)
    for key in shared:
        torch.testing.assert_close(trained[key].float(), merged[key].float(),
                                   rtol=0, atol=1e-6, msg=key)
    assert any(not torch.allclose(trained[k].float(), before[k].float(), atol=1e-4)
               for k in shared if "q_proj" in k), "the LoRA step's delta is in the start"
