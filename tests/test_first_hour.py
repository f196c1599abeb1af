"""The new user's first hour: what the demo prints runs as printed in a new shell, a
workspace one folder off is named, and the CLI's submit finds the operator's key."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunestep.server.cli import main as cli

pytestmark = pytest.mark.e2e


def new_shell_env(home: Path) -> dict:
    """A new login's environment: no venv on PATH, no tunestep variables."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("TUNESTEP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**keep, "PATH": "/usr/bin:/bin", "HOME": str(home), "COLUMNS": "80",
            "OMP_NUM_THREADS": "1"}


def shell(line: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_demo_fresh_prints_next_commands_that_work_in_a_new_shell(tmp_path):
    env = new_shell_env(tmp_path / "home")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = shell(f"{sys.executable} -m tunestep.server.cli demo --fresh {tmp_path / 'demo'}",
                 env, elsewhere)
    assert made.returncode == 0, made.stdout + made.stderr
    out = made.stdout
    assert f"workspace {tmp_path / 'demo' / 'workspace'}" in " ".join(out.split())
    assert "shards" not in made.stderr and "\x1b" not in out  # no progress bars
    joined = re.sub(r" \\\n\s*", " ", out.split("what next", 1)[1])  # shell continuations
    commands = [line.strip() for line in joined.splitlines()
                if line.startswith("  ") and "bin/tunestep " in line]
    assert len(commands) == 7, out
    assert all(len(line) <= 80 or " " not in line.strip() for line in out.splitlines())
    # The program as a new shell reaches it: an absolute path, since PATH has no venv.
    program = str(Path(sys.executable).parent / "tunestep")
    assert all(program in c for c in commands)
    check, draft, approve, submit, status, mcp, fresh = commands

    ran = shell(check, env, elsewhere)
    assert ran.returncode == 0 and "batch_100_01" in ran.stdout, ran.stdout + ran.stderr
    ran = shell(draft, env, elsewhere)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    draft_id = re.search(r"draft-[0-9a-f]{12}", ran.stdout).group(0)
    # --yes: the only change, as a test has no terminal to answer the question on
    ran = shell(approve.replace("DRAFT_ID", draft_id) + " --yes", env, elsewhere)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    token = ran.stdout.strip().splitlines()[-1]
    ran = shell(submit.replace("DRAFT_ID", draft_id).replace("TOKEN", token), env, elsewhere)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    job_id = re.search(r"job-[0-9a-f]{12}", ran.stdout).group(0)
    ran = shell(status.replace("JOB_ID", job_id).replace("--wait 900", "--wait 1"), env,
                elsewhere)
    assert ran.returncode == 0 and job_id in ran.stdout, ran.stdout + ran.stderr
    ran = shell(status.replace("JOB_ID", job_id).split(" status ")[0] + f" cancel {job_id} "
                + status.split(" JOB_ID ")[1].replace(" --wait 900", ""), env, elsewhere)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    assert mcp.startswith("claude mcp add tunestep -- ")
    server = mcp.removeprefix("claude mcp add tunestep -- ")
    ran = shell(server + " </dev/null", env, elsewhere, timeout=120)  # EOF: the server ends
    assert ran.returncode == 0, ran.stdout + ran.stderr

    ran = shell(fresh.replace("DIR", str(tmp_path / "second")), env, elsewhere)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "second/workspace/datasets/incremental/batch_100_03").is_dir()


def test_a_workspace_one_folder_off_is_named(sample_ws, tmp_path, capsys, monkeypatch):
    holder = sample_ws.root.parent  # holds exactly one workspace, as .demo/ does
    code = cli(["check", "--workspace", str(holder)])
    err = capsys.readouterr().err
    assert code == 1 and "workspace_not_found" in err
    assert f"did you mean {sample_ws.root}" in " ".join(err.split())
    monkeypatch.chdir(sample_ws.root / "datasets" / "incremental")  # inside a workspace
    code = cli(["check"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and f"did you mean {sample_ws.root}?" in err
    # Two workspaces below: no guess.
    other = tmp_path / "two"
    (other / "a/.tunestep").mkdir(parents=True)
    (other / "b/.tunestep").mkdir(parents=True)
    code = cli(["check", "--workspace", str(other)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "did you mean" not in err


def test_cli_submit_trusts_the_default_operator_key_as_approve_signs_with_it(
        sample_ws, capsys, monkeypatch):
    ws = str(sample_ws.root)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse battery")
    code = cli(["submit", "draft-000000000000", "tsa1.x.y", "-w", ws])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "approval_untrusted_key" in err
    assert "--operator-key" in err and "TUNESTEP_OPERATOR_KEYS" in err
    assert cli(["operator", "init", "--name", "olly"]) == 0  # the default key folder
    capsys.readouterr()
    assert cli(["draft", "batch_100_01", "-w", ws, "--json"]) == 0
    draft_id = json.loads(capsys.readouterr().out)["draft_id"]
    assert cli(["approve", draft_id, "-w", ws, "--yes"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    code = cli(["submit", draft_id, token, "-w", ws, "--json"])  # no --operator-key
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = json.loads(out)["job_id"]
    assert cli(["cancel", job_id, "-w", ws]) == 0


def test_version_and_a_closed_pipe(sample_ws, tmp_path):
    env = {**os.environ, "COLUMNS": "80"}
    ran = subprocess.run([sys.executable, "-m", "tunestep.server.cli", "--version"],
                         capture_output=True, text=True, env=env)
    assert ran.returncode == 0 and re.fullmatch(r"tunestep \d+\.\d+\S*\n", ran.stdout)
    # A report far larger than a pipe's buffer, read one line of: `... | head -1`.
    bad = sample_ws.root / "datasets/incremental/batch_100_09"
    bad.mkdir()
    (bad / "data.jsonl").write_text('{"messages": "not a list"}\n' * 3000)
    for extra in ([], ["--json"]):
        ran = subprocess.run(
            f"{sys.executable} -m tunestep.server.cli inspect {bad} -w {sample_ws.root} "
            f"--max-errors 3000 {' '.join(extra)} | head -1", shell=True, env=env,
            capture_output=True, text=True, timeout=300)
        assert ran.stdout.count("\n") == 1
        assert "BrokenPipe" not in ran.stderr and "internal error" not in ran.stderr, \
            ran.stderr


def test_a_mistyped_passphrase_is_asked_again(sample_ws, capsys, monkeypatch):
    import getpass

    ws = str(sample_ws.root)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "correct horse battery")
    assert cli(["operator", "init", "--name", "olly"]) == 0
    capsys.readouterr()
    assert cli(["draft", "batch_100_01", "-w", ws, "--json"]) == 0
    draft_id = json.loads(capsys.readouterr().out)["draft_id"]
    monkeypatch.delenv("TUNESTEP_OPERATOR_PASSPHRASE")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    typed = iter(["correct horse batterz", "correct horse battery"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(typed))
    assert cli(["approve", draft_id, "-w", ws, "--yes"]) == 0
    out = capsys.readouterr()
    assert "wrong passphrase for olly.key.pem; try again (2 left)" in out.err
    assert out.out.strip().splitlines()[-1].startswith("tsa1.")
    typed = iter(["nope nope nope"] * 3)
    assert cli(["approve", draft_id, "-w", ws, "--yes"]) == 1
    err = capsys.readouterr().err
    assert err.count("try again") == 2 and "operator_key_locked" in err


NOISY_LOG = (
    "2026-12-06T04:12:04Z [step 0001_batch_100_01] start: draft=draft-x step=1\n"
    "Loading weights:   0%|          | 0/24 [00:00<?, ?it/s]\rLoading weights: 100%|####| "
    "24/24 [00:00<00:00, 14515.26it/s]\n"
    "Tokenizing train dataset:  12%|#         | 35/300 [00:00<00:00, 341.40 examples/s]\n"
    "/venv/torch/utils/data/dataloader.py:759: UserWarning: 'pin_memory' argument is set\n"
    "  super().__init__(loader)\n"
    "* Trackio project initialized: tunestep\n"
    "\x1b[1m\x1b[38;5;208mtrackio show --project \"tunestep\"\x1b[0m\n"
    "2026-12-06T04:12:20Z [step 0001_batch_100_01] log {\"loss\": 2.756592, \"epoch\": 1.0}\n"
    "{'loss': '2.757', 'epoch': '1'}\n"
    "2026-12-06T04:12:21Z [step 0001_batch_100_01] \x1b[32msaving\x1b[0m the model\n"
    "Traceback (most recent call last):\n"
    "  File \"train_sft.py\", line 10, in <module>\n"
    "    main()\n"
    "OSError: [Errno 28] No space left on device\n"
    "TUNESTEP_RESULT {\"ok\": false, \"error\": \"" + "x" * 4000 + "\"}\n"
    "tunestep: stopped by SIGINT (Ctrl-C, or kill -INT PID)\n"
)


def _noisy_job(sample_ws) -> None:
    """A failed local job job-000000000001 whose output.log is NOISY_LOG."""
    from tunestep.tools.core import ledger
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    draft = draft_job(sample_ws, DraftRequest(batch="batch_100_01"))
    log = sample_ws.state_dir / "jobs/job-000000000001/output.log"
    log.parent.mkdir(parents=True)
    log.write_text(NOISY_LOG)
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at, "
                     "log_path) VALUES ('job-000000000001', ?, 'local', 'failed', 0, ?)",
                     (draft.draft_id, sample_ws.relative(log)))


def test_logs_show_the_jobs_own_lines_and_its_last_error(sample_ws, capsys):
    _noisy_job(sample_ws)
    ws = str(sample_ws.root)
    from tunestep.tools.runs.job_control import job_logs

    assert job_logs(sample_ws, "job-000000000001", 50).lines == [
        "2026-12-06T04:12:04Z [step 0001_batch_100_01] start: draft=draft-x step=1",
        "2026-12-06T04:12:20Z [step 0001_batch_100_01] log {\"loss\": 2.756592, \"epoch\": 1.0}",
        "2026-12-06T04:12:21Z [step 0001_batch_100_01] saving the model",
        "Traceback (most recent call last):",
        "  File \"train_sft.py\", line 10, in <module>",
        "    main()",
        "OSError: [Errno 28] No space left on device",
        "tunestep: stopped by SIGINT (Ctrl-C, or kill -INT PID)",
    ]
    assert cli(["logs", "job-000000000001", "-w", ws]) == 0
    out = capsys.readouterr()
    assert "OSError: [Errno 28] No space left on device" in out.out
    assert "\x1b" not in out.out and "TUNESTEP_RESULT" not in out.out
    assert "9 line(s)" in out.err and "--raw" in out.err
    assert cli(["logs", "job-000000000001", "-w", ws, "--tail", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("tunestep: stopped")
    assert cli(["logs", "job-000000000001", "-w", ws, "--raw"]) == 0
    raw = capsys.readouterr().out
    assert "{'loss': '2.757'" in raw and "TUNESTEP_RESULT" in raw and "Trackio" in raw


def test_mcp_job_logs_raw_keeps_every_line_as_the_cli_does(sample_ws):
    """The MCP tool filters as the CLI does, and raw=true keeps what the filter drops."""
    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server

    _noisy_job(sample_ws)

    async def call(**args):
        async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
            return (await client.call_tool("job_logs", {"job_id": "job-000000000001",
                                                        **args})).structured_content

    kept = anyio.run(lambda: call(tail=50))
    assert kept["raw"] is False and kept["left_out"] > 0
    assert not any("\x1b" in line or "TUNESTEP_RESULT" in line for line in kept["lines"])
    raw = anyio.run(lambda: call(tail=50, raw=True))
    assert raw["raw"] is True and raw["total_lines"] == len(NOISY_LOG.splitlines())
    assert raw["lines"] == NOISY_LOG.splitlines()[-50:]
    assert any("TUNESTEP_RESULT" in line for line in raw["lines"])
    assert any("\x1b[38;5;208m" in line for line in raw["lines"])


@pytest.mark.parametrize(("overlong", "both_say"), [
    ("truncate_prompt", "keeps the whole answer"), ("drop", "leaves")])
def test_the_inspector_and_the_draft_agree_on_an_overlong_row(tmp_path, tiny_model_dir,
                                                              overlong, both_say):
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.inspector import run_inspector

    build_sample_workspace(tmp_path / "ws", plan_overrides={
        "model": str(tiny_model_dir), "training": {"max_length": 400},
        "data": {"overlong": overlong}})
    ws = open_workspace(tmp_path / "ws")
    report = run_inspector(ws, "datasets/incremental/batch_100_01", tokens=True)
    said = [f.message for f in report.errors if f.code == "over_max_length"]
    assert said and all(both_say in m and f"data.overlong {overlong}" in m for m in said)
    assert not any("cut the answer" in m for m in said)
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert any(both_say in w and "max_length 400" in w for w in draft.warnings)


def test_refusals_name_what_they_checked(tmp_path, operator, capsys):
    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.demo.sample_workspace import build_sample_workspace
    from tunestep.tools.drafts.draft import DraftRequest, draft_job
    from tunestep.tools.runs.submit import submit_job

    build_sample_workspace(tmp_path / "a")
    build_sample_workspace(tmp_path / "b")
    a, b = open_workspace(tmp_path / "a"), open_workspace(tmp_path / "b")
    draft = draft_job(a, DraftRequest(batch="batch_100_01"))
    token = operator.approve(a, draft.draft_id)
    # Another workspace: said as such (not "the ledger was deleted or replaced"), both named.
    with pytest.raises(TunestepError) as err:
        submit_job(b, draft.draft_id, token, operator.trusted)
    assert err.value.code == "approval_wrong_draft"
    assert str(a.root) in err.value.message and str(b.root) in err.value.message
    assert "replaced" not in err.value.message
    # draft_unknown says which workspace's ledger it looked in.
    code = cli(["approve", draft.draft_id, "-w", str(b.root), "--yes",
                "--key", str(operator.info.private_key_path)])
    err_text = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "draft_unknown" in err_text and str(b.root) in err_text
    # approve's draft_stale names the file that changed, as submit's does.
    base = a.root / "datasets/processed_webdev_coding/train.jsonl"
    base.write_bytes(b"".join(base.read_bytes().splitlines(True)[:-1]))  # one row less
    code = cli(["approve", draft.draft_id, "-w", str(a.root), "--yes",
                "--key", str(operator.info.private_key_path)])
    err_text = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "draft_stale" in err_text
    assert "changed files: datasets/processed_webdev_coding/train.jsonl" in err_text


def test_screens_to_a_pipe_carry_no_trailing_spaces_and_files_get_the_usual_mode(
        sample_ws, capsys, tmp_path):
    from tunestep.tools.core.atomic import atomic_write_text

    assert cli(["check", "-w", str(sample_ws.root)]) in (0, 1)
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert len(lines) > 5 and not [line for line in lines if line != line.rstrip()]
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "plain.txt", "x")
        with open(tmp_path / "opened.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert mode == (tmp_path / "opened.txt").stat().st_mode & 0o777 == 0o644


def test_a_full_step_after_lora_merges_the_adapter_and_a_lost_base_names_the_way_on(
        tmp_path, tiny_model_dir, capsys):
    """Step 1 full, step 2 LoRA (recorded as the local jobs leave them, without
    training): a full step 3 merges the adapter into step 1's version, both signed and
    shown; with that base gone it is refused with the commands that get the user on."""
    import io
    import shutil

    from chain_helpers import fake_local_version, local_base_workspace, record_job_end
    from rich.console import Console
    from test_lineage import local_result, map_batch

    from tunestep.server.render import View, render_draft
    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    ws = local_base_workspace(tmp_path, tiny_model_dir, base_rows=40, holdout_rows=10)
    store = ws.resolve_model_store("models/qwen3_webdev")
    first = draft_job(ws, DraftRequest(batch="batch_100_01"))
    fake_local_version(ws, store / "versions/0000_base", "0001_batch_100_01")
    record_job_end(ws, first.draft_id, "local", local_result(ws, first))
    map_batch(ws, "batch_100_02")
    second = draft_job(ws, DraftRequest(batch="batch_100_02", mode="lora"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    # as a job leaves it: the base named is the job's private copy, long gone
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/tmp/tunestep-inputs-gone/checkpoint",
         "peft_type": "LORA"}))
    fake_local_version(ws, adapter, "0002_batch_100_02")
    record_job_end(ws, second.draft_id, "local", local_result(ws, second))
    map_batch(ws, "batch_100_03")

    third = draft_job(ws, DraftRequest(batch="batch_100_03", mode="full"))
    base = (store / "versions/0001_batch_100_01").resolve()
    cfg = third.job_config
    assert cfg["mode"] == "full" and cfg["base_model"] == str(base)  # from the ledger
    assert cfg["resume_from"].endswith("0002_batch_100_02")
    assert cfg["checkpoint"] == {"of": "resume_from", "files": [
        {"path": "adapter_config.json",
         "sha256": hashlib.sha256((adapter / "adapter_config.json").read_bytes()).hexdigest()}]}
    signed = {f["path"] for f in cfg["merge_adapter"]["base_files"]}
    assert "config.json" in signed and signed == {
        p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
    assert {f.path for f in third.files if f.role == "merge_base"} == {
        f"models/qwen3_webdev/versions/0001_batch_100_01/{p}" for p in signed}
    assert third.start.merge.adapter == "0002_batch_100_02"
    assert third.parent_version == "0002_batch_100_02"  # the LoRA batches stay learned
    out = io.StringIO()
    render_draft(Console(file=out, width=80), third, View(approving=True))
    screen = " ".join(out.getvalue().split())
    assert ("merge LoRA adapter 0002_batch_100_02 merged into its base "
            "models/qwen3_webdev/versions/0001_batch_100_01") in screen
    assert f"({len(signed)} files, content sha256" in screen
    assert f"merge base {len(signed)} files in" in screen
    # 80 columns, but for a path too long for any line (it is never broken)
    assert all(len(line) <= 80 or len(line.split()) == 1
               for line in out.getvalue().splitlines()), out.getvalue()
    assert "merged into its base 0001_batch_100_01" in (ws.root / third.run_plan).read_text()

    # LoRA on LoRA attaches to the same base (the adapter's own config names a copy gone).
    assert draft_job(ws, DraftRequest(batch="batch_100_03", mode="lora")).job_config[
        "base_model"] == str(base)
    # On HF Jobs the merge needs a Hub base: refused, naming the local way on.
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_03", mode="full", backend="hf-jobs",
                                   flavor="t4-medium"))
    assert err.value.code == "remote_base_not_on_hub"
    assert "`tunestep draft --mode full`" in err.value.message
    assert "next: draft_job(mode='full', backend='local')" in str(err.value)

    # The base is gone: neither the adapter nor the ledger names one that is here.
    shutil.rmtree(store / "versions/0001_batch_100_01")
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_03", mode="full"))
    assert err.value.code == "adapter_base_missing", err.value.message
    said = err.value.message
    assert "0002_batch_100_02" in said and "tunestep draft --mode lora" in said
    assert "tunestep promote 0000_base" in said
    assert err.value.hint.mcp().startswith("draft_job(mode='lora')")
    assert cli(["draft", "batch_100_03", "--mode", "full", "-w", str(ws.root)]) == 1
    err_text = " ".join(capsys.readouterr().err.split())
    assert "adapter_base_missing" in err_text and "tunestep draft --mode lora" in err_text
