"""The operator's and the assistant's commands from a terminal, end to end, and the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tunestep.server.cli import main as cli

pytestmark = pytest.mark.e2e


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_operator_init_approve_submit_status_logs(model_ws, tmp_path, capsys, monkeypatch):
    ws = str(model_ws.root)
    keys = tmp_path / "keys"
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse")
    code, out, _ = run(capsys, "operator", "init", "--name", "olly", "--config-dir", str(keys),
                       "--json")
    assert code == 0 and json.loads(out)["name"] == "olly"
    assert oct((keys / "olly.key.pem").stat().st_mode & 0o777) == "0o600"
    code, _, err = run(capsys, "operator", "init", "--name", "olly", "--config-dir", str(keys))
    assert code == 1 and "operator_key_exists" in err

    code, out, _ = run(capsys, "draft", "batch_100_01", "-w", ws, "--json")
    draft = json.loads(out)
    assert code == 0 and draft["draft_id"].startswith("draft-")

    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "wrong")
    code, _, err = run(capsys, "approve", draft["draft_id"], "-w", ws, "--yes", "--name", "olly",
                       "--key", str(keys / "olly.key.pem"))
    assert code == 1 and "operator_key_locked" in err
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse")
    code, out, err = run(capsys, "approve", draft["draft_id"], "-w", ws, "--yes", "--name",
                         "olly", "--key", str(keys / "olly.key.pem"), "--ttl", "10m")
    token = out.strip().splitlines()[-1]
    assert code == 0 and token.startswith("tsa1.") and draft["draft_id"] in err

    pub = str(keys / "olly.pub.pem")
    code, _, err = run(capsys, "submit", draft["draft_id"], token, "-w", ws)
    assert code == 1 and "approval_untrusted_key" in err
    code, out, _ = run(capsys, "submit", draft["draft_id"], token, "-w", ws,
                       "--operator-key", pub, "--json")
    job = json.loads(out)
    assert code == 0 and job["status"] == "running"
    code, out, _ = run(capsys, "status", job["job_id"], "-w", ws, "--wait", "600", "--json")
    assert code == 0 and json.loads(out)["status"] == "succeeded"
    code, out, _ = run(capsys, "logs", job["job_id"], "-w", ws, "--tail", "5")
    assert code == 0 and len(out.strip().splitlines()) == 5
    code, out, _ = run(capsys, "status", "-w", ws, "--json")
    assert [j["job_id"] for j in json.loads(out)["jobs"]] == [job["job_id"]]
    code, _, err = run(capsys, "submit", draft["draft_id"], token, "-w", ws,
                       "--operator-key", pub)
    assert code == 1 and "approval_replayed" in err


def test_demo_runs_two_steps_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "tunestep.server.cli", "demo", "--path",
                           str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws = tmp_path / "demo" / "workspace"
    assert "NEEDS_MAPPING" in proc.stdout and proc.stdout.count("succeeded") >= 2
    for batch in ("batch_100_01", "batch_100_02"):
        assert (ws / f"logs/metrics_step_{batch}.csv").is_file()
        assert (ws / f"logs/samples_step_{batch}.md").is_file()
        assert (ws / f".specs/plots/loss_step_{batch}.png").is_file()
    assert (ws / ".specs/plots/val_progression.png").is_file()
    latest = (tmp_path / "demo/model-store/qwen3_webdev/latest").resolve()
    # latest is the last version the default gate promoted (a step that shows no gain is
    # kept but held back), and the grader learned: latest's within-1 is above the base's
    # by more than both 95 % intervals (issue 18). Measured: 0 -> 0.40 [0.26, 0.55].
    history = json.loads((ws / "logs/steps_history.json").read_text())
    promoted = [h for h in history if h["promoted"]]
    assert promoted and latest.name == promoted[-1]["version"].removeprefix("versions/")
    assert promoted[-1]["grade_within1_low"] > history[0]["grade_within1_high_before"]
    # The first hour: no empty staging folder left, one mode for every output file, no
    # raw floats or progress bars, and what to do next (tests/test_first_hour.py runs it).
    assert not (tmp_path / "demo/model-store/qwen3_webdev/.staging").exists()
    outputs = [*(ws / "logs").iterdir(), *(ws / ".specs/plots").iterdir()]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in outputs if p.is_file()}
    assert set(modes.values()) == {modes["train.log"]}, modes
    assert not re.search(r"\d\.\d{6,}", proc.stdout), proc.stdout
    assert "shards" not in proc.stderr and "setuptools" not in proc.stdout + proc.stderr
    assert f"workspace {ws}" in " ".join(proc.stdout.split())
    assert "demo --fresh DIR" in proc.stdout
    # Running the demo again replaces its own folder; a foreign folder is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "tunestep.server.cli", "demo", "--path",
                           str(foreign)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "demo_folder_in_use" in proc.stderr
    assert (foreign / "keep.txt").read_text() == "mine"
