"""The CLI as a new user meets it: key discovery, workspace detection, --help, --json.

Screens are rendered at 80 columns (the width of a default terminal), and what a person
must act on (file:line, codes, signed paths, commands) must be there in full.
"""

from __future__ import annotations

import argparse
import json

import pytest

from tunestep.server.cli import build_parser
from tunestep.server.cli import main as cli

PASS = "correct horse battery"


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def flat(text: str) -> str:
    """The screen with line breaks removed: a folded path reads whole again."""
    return "".join(line.rstrip("\n") for line in text.splitlines())


def draft_id(capsys, ws) -> str:
    code, out, err = run(capsys, "draft", "batch_100_01", "-w", str(ws.root), "--json")
    assert code == 0, err
    return json.loads(out)["draft_id"]


# --- the operator's key ------------------------------------------------------------------

def test_approve_finds_the_only_key_and_prints_json(sample_ws, capsys, monkeypatch):
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    assert run(capsys, "operator", "init", "--name", "olly")[0] == 0
    draft = draft_id(capsys, sample_ws)
    # Exactly what the README and the draft's approve_command say, plus --yes --json.
    code, out, err = run(capsys, "approve", draft, "--workspace", str(sample_ws.root),
                         "--yes", "--json")
    assert code == 0, err
    grant = json.loads(out)
    assert grant["operator"] == "olly" and grant["token"].startswith("tsa1.")
    assert f"tunestep approve {draft}" not in err  # not told to run what it is running


def test_approve_uses_the_default_of_several_keys(sample_ws, capsys, monkeypatch):
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    code, out, _ = run(capsys, "operator", "init", "--name", "bob")
    assert code == 0 and "--name bob" in out  # bob is not the default: said how to use it
    code, out, err = run(capsys, "approve", draft_id(capsys, sample_ws), "-w",
                         str(sample_ws.root), "--yes", "--json")
    assert code == 0 and json.loads(out)["operator"] == "olly", err


def test_several_keys_without_default_are_listed_before_any_passphrase(
        sample_ws, capsys, monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    for name in ("olly", "bob"):
        run(capsys, "operator", "init", "--name", name, "--config-dir", str(keys))
    (keys / "default").unlink()
    draft = draft_id(capsys, sample_ws)
    monkeypatch.delenv("TUNESTEP_OPERATOR_PASSPHRASE")  # asked for, it would fail differently
    code, _, err = run(capsys, "approve", draft, "-w", str(sample_ws.root), "--config-dir",
                       str(keys), "--yes")
    assert code == 1 and "operator_key_ambiguous" in err
    assert "bob" in err and "olly" in err and "--name" in err
    code, _, err = run(capsys, "approve", draft, "-w", str(sample_ws.root), "--config-dir",
                       str(keys), "--name", "carol", "--yes")
    assert code == 1 and "operator_key_missing" in err and "bob, olly" in flat(err)


def test_no_key_says_how_to_make_one(sample_ws, capsys):
    code, _, err = run(capsys, "approve", "draft-000000000000", "-w", str(sample_ws.root))
    assert code == 1 and "operator_key_missing" in err
    assert "tunestep operator init --name NAME" in flat(err)


def test_a_short_passphrase_is_refused_and_nothing_written(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", "x")
    code, _, err = run(capsys, "operator", "init", "--config-dir", str(tmp_path / "k"))
    assert code == 1 and "operator_passphrase_short" in err and "12 characters" in err
    assert not (tmp_path / "k").exists()


# --- the workspace -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["check"], ["status"], ["inspect", "data.jsonl"],
                                  ["draft"]])
def test_a_folder_that_is_not_a_workspace_is_refused_untouched(capsys, monkeypatch,
                                                               tmp_path, argv):
    folder = tmp_path / "not-a-workspace"
    folder.mkdir()
    (folder / "data.jsonl").write_text("{}\n")
    monkeypatch.chdir(folder)
    code, _, err = run(capsys, *argv)
    assert code == 1 and "workspace_not_found" in err
    assert "--workspace" in err and "TUNESTEP_WORKSPACE" in flat(err)
    assert sorted(p.name for p in folder.iterdir()) == ["data.jsonl"]


def test_serve_refuses_a_missing_workspace_at_start(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "--workspace", str(tmp_path / "nonexistent"))
    assert code == 1 and "workspace_missing" in err


# --- --help ------------------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser, name: str = "tunestep"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_help_documents_every_argument():
    undocumented = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                undocumented.append(f"{name}: {action.dest}")
    assert not undocumented


def test_options_that_mean_nothing_are_not_offered():
    parsers = dict(_parsers(build_parser()))
    options = {name: {o for a in p._actions for o in a.option_strings}
               for name, p in parsers.items()}
    assert "--workspace" not in options["tunestep operator init"]
    assert "--json" not in options["tunestep serve"]
    assert "--workspace" in options["tunestep serve"]
    for name in ("check", "inspect", "map", "merge", "preprocess", "draft", "approve",
                 "submit", "status", "logs", "cancel"):
        assert {"--workspace", "--json"} <= options[f"tunestep {name}"]


# --- the screens at 80 columns -----------------------------------------------------------

LONG = "datasets/incremental/batch_100_04/webdev_grading_examples_from_the_review_queue.jsonl"


def whole(text: str) -> str:
    """The screen's words joined by single spaces: a path cut or folded mid-word is gone.

    A long command continues after a shell backslash (it runs as printed when pasted): the
    continuation is joined as the shell joins it.
    """
    return " ".join(text.replace(" \\\n", " ").split())


def trained(ws, *batches: str) -> None:
    """The ledger records these batches as trained; the store holds a checkpoint."""
    import os

    from tunestep.tools.core import ledger
    from tunestep.tools.lineage.version_files import record_files, scan_version

    name = f"{len(batches):04d}_{batches[-1]}"
    version = ws.root.parent / "store" / "versions" / name
    version.mkdir(parents=True)
    (version / "config.json").write_text("{}")
    os.symlink(f"versions/{name}", ws.root.parent / "store" / "latest")
    (ws.root / "models").mkdir(exist_ok=True)
    os.symlink(ws.root.parent / "store", ws.root / "models" / "qwen3_webdev")
    with ledger.open_ledger(ws) as conn, ledger.transaction(conn):
        for step, batch in enumerate(batches, 1):
            conn.execute("INSERT INTO steps(step, batch, version, recorded_at) VALUES"
                         " (?, ?, ?, 0)", (step, batch, f"{step:04d}_{batch}"))
        # The last version as its job recorded it (the resume point is checked against it).
        record_files(conn, "models/qwen3_webdev", name, scan_version(version, name), "job")


def broken_batch(ws) -> None:
    good = {"messages": [{"role": "user", "content": "Grade this page."},
                         {"role": "assistant", "content": "Grade: 7"}]}
    twice = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": "Grade: 3"}]}
    cut = json.dumps({"messages": [{"role": "user", "content": "Grade the form"}]})[:48]
    rows = [json.dumps({"messages": [dict(m, content=f"{m['content']} {i}")
                                     for m in good["messages"]]}) for i in range(5)]
    rows[1] = json.dumps(twice)
    rows[3] = cut
    path = ws.root / LONG
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n")


def test_inspect_at_80_columns_shows_each_finding_whole(sample_ws, capsys):
    broken_batch(sample_ws)
    code, out, _ = run(capsys, "inspect", "datasets/incremental/batch_100_04", "-w",
                       str(sample_ws.root), "--json")
    report = json.loads(out)
    assert code == 1 and report["status"] == "INVALID" and report["errors"]
    code, out, _ = run(capsys, "inspect", "datasets/incremental/batch_100_04", "-w",
                       str(sample_ws.root))
    screen = whole(out)
    assert LONG in screen and "…" not in out
    for finding in report["errors"]:
        assert f"line {finding['line']} {finding['severity']} {finding['code']}" in screen
    # The cut row: the column is where the data stops, from the parser, not "column 1".
    cut = next(f for f in report["errors"] if f["code"] == "invalid_json")
    assert cut["line"] == 4 and "ends after column 48" in cut["message"]


def test_check_says_what_the_inspector_last_said(sample_ws, capsys):
    trained(sample_ws, "batch_100_01", "batch_100_02", "batch_100_03")
    broken_batch(sample_ws)
    ws = str(sample_ws.root)
    code, out, _ = run(capsys, "check", "-w", ws)
    assert "not inspected yet" in out and "batch_100_04" in out
    run(capsys, "inspect", "datasets/incremental/batch_100_04", "-w", ws)
    code, out, _ = run(capsys, "check", "-w", ws)
    screen = whole(out)
    assert code == 1 and "NOT READY" in out and "INVALID" in out
    assert "batch_invalid" in screen and "datasets/incremental/batch_100_04" in screen
    code, out, _ = run(capsys, "check", "-w", ws, "--json")
    assert json.loads(out)["inspection"]["status"] == "INVALID"


def test_check_says_when_nothing_is_left_to_train(sample_ws, capsys):
    trained(sample_ws, "batch_100_01", "batch_100_02", "batch_100_03")
    code, out, _ = run(capsys, "check", "-w", str(sample_ws.root))
    assert code == 1 and "NOTHING LEFT TO TRAIN" in out
    assert "nothing left to train: all 3 batch folder(s) are trained" in whole(out)
    assert "batch - (step -)" not in out


def test_an_unknown_batch_lists_the_known_ones(sample_ws, capsys):
    code, _, err = run(capsys, "draft", "batch_100_99", "-w", str(sample_ws.root))
    assert code == 1 and "batch_100_01, batch_100_02, batch_100_03" in whole(err)


def test_a_batch_name_for_a_path_gets_did_you_mean(sample_ws, capsys):
    code, _, err = run(capsys, "inspect", "batch_100_03", "-w", str(sample_ws.root))
    assert code == 1 and "did you mean datasets/incremental/batch_100_03?" in whole(err)


def test_absolute_paths_inside_the_workspace_are_accepted(sample_ws, capsys, tmp_path):
    inside = sample_ws.root / "datasets/incremental/batch_100_01"
    code, out, err = run(capsys, "inspect", str(inside), "-w", str(sample_ws.root), "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == "datasets/incremental/batch_100_01"
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    code, _, err = run(capsys, "inspect", str(outside), "-w", str(sample_ws.root))
    assert code == 1 and "path_absolute" in err


def test_the_approval_screen_shows_every_signed_path_whole(sample_ws, capsys, monkeypatch):
    ws = str(sample_ws.root)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    assert run(capsys, "map", "datasets/incremental/batch_100_02", "--suggested", "-w",
               ws)[0] == 0
    trained(sample_ws, "batch_100_01")
    code, out, err = run(capsys, "draft", "batch_100_01", "-w", ws, "--json")
    draft = json.loads(out)
    assert code == 0 and any("already trained" in w for w in draft["warnings"]), err
    code, out, err = run(capsys, "draft", "batch_100_02", "-w", ws, "--json")
    draft = json.loads(out)
    assert code == 0, err
    code, _, err = run(capsys, "approve", draft["draft_id"], "-w", ws, "--yes")
    screen = whole(err)
    assert code == 0 and "…" not in err
    for f in draft["files"]:  # a checkpoint's files: its folder once, then each name
        folder, _, name = f["path"].rpartition("/")
        shown = f"{folder}/ {name}" if f["role"] == "checkpoint" else f["path"]
        assert f["sha256"][:16] in screen
        assert (shown in screen or (f["role"] == "checkpoint" and folder in screen
                                    and f"{f['sha256'][:16]} {name}" in screen)), shown
    assert "precision auto (bf16 where the GPU has it" in screen  # what it will be
    assert "tunestep approve" not in screen
    resume = draft["job_config"]["resume_from"]
    # The resume point by version name, its path whole, and whether its content is signed.
    assert resume and "resume from version 0001_batch_100_01" in screen
    if any(f["role"] == "checkpoint" for f in draft["files"]):  # pinned by its files
        assert "content sha256" in screen
    else:  # named where it lies, and said to be unsigned
        assert resume in screen and "its files are not in the signature" in screen


def test_an_already_trained_batch_warns_on_the_approval_screen(sample_ws, capsys,
                                                               monkeypatch):
    ws = str(sample_ws.root)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    trained(sample_ws, "batch_100_01")
    code, out, _ = run(capsys, "draft", "batch_100_01", "-w", ws)
    assert code == 0 and "batch_100_01 was already trained" in whole(out)
    draft = out.split()[0]
    code, _, err = run(capsys, "approve", draft, "-w", ws, "--yes")
    assert code == 0 and "batch_100_01 was already trained" in whole(err)


def test_views_show_content_and_cli_hints(sample_ws, capsys, monkeypatch):
    """map and merge list what they did; hints are tunestep commands, MCP keeps its own."""
    ws = str(sample_ws.root)
    monkeypatch.chdir(sample_ws.root)
    folder = sample_ws.root / "datasets/incremental/batch_100_02"
    data = json.loads((folder / "conversations.json").read_text())
    data[4]["conversations"][1]["value"] = "   "  # an empty answer: the row is dropped
    (folder / "conversations.json").write_text(json.dumps(data, indent=1))
    code, out, _ = run(capsys, "inspect", "datasets/incremental/batch_100_02", "--json")
    assert any("apply_mapping(source='datasets/incremental/batch_100_02', mapping=suggested_"
               "mapping)" in a for a in json.loads(out)["next_actions"])
    code, out, _ = run(capsys, "inspect", "datasets/incremental/batch_100_02")
    assert "  tunestep map datasets/incremental/batch_100_02 --suggested\n" in out
    assert "apply_mapping(" not in out and "run_inspector(" not in out
    code, out, _ = run(capsys, "map", "datasets/incremental/batch_100_02", "--suggested",
                       "--json")
    dropped = json.loads(out)["dropped"]
    assert code == 0 and len(dropped) == 1
    code, out, _ = run(capsys, "map", "datasets/incremental/batch_100_02", "--suggested")
    screen = whole(out)
    assert code == 0 and "item(s)" not in out
    assert "datasets/incremental/batch_100_02/conversations.json" in screen
    assert f"line {dropped[0]['line']}: {dropped[0]['reason']}" in screen  # which row, why
    assert "next: tunestep inspect datasets/processed_webdev_coding_mapped/batch_100_02" in out
    code, out, _ = run(capsys, "merge", "batch_100_02", "--strategy", "file")
    assert code == 0 and "item(s)" not in out and "seconds" not in out
    assert " s" in out and "0000000" not in out  # a rounded duration, not 0.8599511380000422
    # Run elsewhere, a hint carries the workspace it needs.
    monkeypatch.chdir(sample_ws.root.parent)
    code, out, _ = run(capsys, "check", "-w", ws)
    assert f"--workspace {ws}" in whole(out)


@pytest.mark.parametrize("argv", [
    ["check"], ["check", "batch_100_01"], ["inspect", "datasets/incremental/batch_100_01"],
    ["map", "datasets/incremental/batch_100_02", "--suggested"], ["merge", "batch_100_01"],
    ["draft", "batch_100_01"], ["status"]])
def test_json_is_json_for_every_command(sample_ws, capsys, argv):
    code, out, err = run(capsys, *argv, "-w", str(sample_ws.root), "--json")
    assert code in (0, 1), err
    assert isinstance(json.loads(out), dict)


def test_an_error_hint_is_a_command_on_the_cli_and_a_call_over_mcp(sample_ws, capsys):
    from tunestep.tools.core.errors import TunestepError
    from tunestep.tools.drafts.draft import DraftRequest, draft_job

    code, _, err = run(capsys, "draft", "--kind", "inspect", "-w", str(sample_ws.root))
    assert code == 1 and "draft_kind_backend" in err
    assert "next: tunestep inspect datasets/incremental/batch_100_01" in err
    assert "run_inspector(" not in err
    with pytest.raises(TunestepError) as exc:  # what the MCP tool error carries
        draft_job(sample_ws, DraftRequest(kind="inspect"))
    assert "next: run_inspector(path='datasets/incremental/batch_100_01')" in str(exc.value)


def test_json_refusals_are_json_too(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check", "--json")
    assert code == 1 and "workspace_not_found" in err
    assert json.loads(out)["error"]["code"] == "workspace_not_found"


def test_logs_show_control_characters_from_job_output_visibly(sample_ws, capsys,
                                                              monkeypatch):
    # A training row's text reaches the job's output; its ESC must not reach the terminal.
    from tunestep.tools.runs import job_control

    lines = ["epoch 1\tloss 0.5", "row: \x1b]0;owned\x07 \x1b[2Jcleared"]
    monkeypatch.setattr(job_control, "job_logs",
                        lambda ws, job_id, tail, raw=False: job_control.JobLogs(
                            job_id=job_id, lines=lines))
    code, out, _ = run(capsys, "logs", "job-1", "-w", str(sample_ws.root))
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07" in out and "epoch 1\tloss 0.5" in out


# --- follow-up: a named batch that is missing, promotion hints, model sync in status -----

def test_check_of_a_missing_batch_names_it_and_the_known_ones(sample_ws, capsys):
    code, out, _ = run(capsys, "check", "batch_100_99", "-w", str(sample_ws.root))
    assert code == 1 and "no batch chosen" not in out  # one was chosen: it is not there
    head = whole(out.split("hold-out")[0])
    assert head == ("NOT READY no batch batch_100_99; the batches: batch_100_01, "
                    "batch_100_02, batch_100_03")


def test_a_promotion_request_hints_in_each_views_syntax(model_ws, capsys):
    import shutil

    from rich.console import Console

    from tunestep.server.render import render
    from tunestep.tools.lineage.promotion import promote

    store = model_ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions/0001_batch_100_01")
    request = promote(model_ws, "0001_batch_100_01", None, {}).request
    # MCP keeps the call; the CLI says the command to type, and it parses.
    assert any("promote_version(version='0001_batch_100_01', approval_token=<the token "
               "they paste>)" in a for a in request.next_actions)
    console = Console(width=80, record=True, force_terminal=False)
    render(console, request, False, workspace=str(model_ws.root))
    screen = console.export_text()
    assert "promote_version(" not in screen and "approval_token" not in screen
    command = (f"tunestep promote 0001_batch_100_01 --token - --workspace {model_ws.root}")
    assert command in whole(screen)
    assert f"tunestep approve {request.request_id} --workspace {model_ws.root}" in whole(screen)
    build_parser().parse_args(command.split()[1:])


@pytest.fixture
def remote_ws(tmp_path, tiny_model_dir, fake_hub, monkeypatch):
    from chain_helpers import host_base_model, hub_base_workspace
    from conftest import FAKE_TOKEN

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    host_base_model(fake_hub, tiny_model_dir, FAKE_TOKEN)
    return hub_base_workspace(tmp_path, base_rows=40, holdout_rows=10)


def test_status_of_a_finished_remote_step_says_what_came_home(remote_ws, fake_hub,
                                                              tiny_model_dir, capsys):
    from test_model_sync import push_step_model, remote_step

    sha, _ = push_step_model(fake_hub, tiny_model_dir, b"one")
    _, job_id = remote_step(remote_ws, sha)
    code, out, err = run(capsys, "status", job_id, "-w", str(remote_ws.root))
    assert code == 0, err
    text = whole(out)
    assert "model sync brought home: 0001_batch_100_01 (latest moved to it)" in text
    assert f"@{sha}" in text and "versions/0001_batch_100_01" in text


def test_status_of_a_failed_model_sync_says_why_and_how_to_rerun(remote_ws, fake_hub,
                                                                 tiny_model_dir, capsys):
    from test_model_sync import push_step_model, remote_step

    sha, _ = push_step_model(fake_hub, tiny_model_dir, b"two")
    _, job_id = remote_step(remote_ws, sha)
    fake_hub.inject("GET", "/*/resolve/*/model.safetensors", "500", times=None)
    code, out, err = run(capsys, "status", job_id, "-w", str(remote_ws.root))
    assert code == 0, err
    text = whole(out)
    assert "model sync failed" in text and "sync_model(" not in text
    rerun = f"tunestep sync --version 0001_batch_100_01 --workspace {remote_ws.root}"
    assert rerun in text
    build_parser().parse_args(rerun.split()[1:])


# --- the approval screen renders the signed manifest -------------------------------------

def _sections(screen: str) -> tuple[str, str, str]:
    """(signed part, not-signed part, the "You are signing" block) of an approval screen."""
    head, rest = screen.split("\nsigned (the token starts exactly this)\n", 1)
    signed, rest = rest.split("\nnot signed (", 1)
    unsigned, summary = rest.split("\nYou are signing\n", 1)
    return head + "\n" + signed, unsigned, summary


def _approve_screen(capsys, ws, draft_id: str) -> str:
    code, _, err = run(capsys, "approve", draft_id, "-w", str(ws.root), "--yes")
    assert code == 0, err
    return err.split("approved draft-", 1)[0]


def test_the_local_approval_screen_shows_each_signed_field(sample_ws, capsys, monkeypatch):
    from tunestep.server.screen import duration

    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    out = run(capsys, "draft", "batch_100_01", "-w", str(sample_ws.root), "--json")[1]
    draft = json.loads(out)
    screen = _approve_screen(capsys, sample_ws, draft["draft_id"])
    signed, unsigned, summary = (whole(part) for part in _sections(screen))
    cfg, hp = draft["job_config"], draft["job_config"]["hyperparameters"]
    assert f"digest {draft['digest']}" in signed
    assert f"workspace {sample_ws.root} (the token is bound to it)" in signed
    assert "backend local: this machine, 1 process" in signed
    limit = draft.get("timeout_seconds")  # the signed manifest's local time limit, if any
    timeout = "none" if limit is None else duration(limit)
    assert (f"timeout {timeout}: the job is stopped there" if limit is not None else
            "timeout none: a local job runs until it ends") in signed
    assert "worst case $0: it runs on this machine" in signed and "secrets none" in signed
    assert f"model {cfg['base_model']}" in signed
    assert "resume from nothing: a fresh start" in signed
    assert "pushes nothing" in signed
    assert (f"trackio project {cfg['trackio']['project']}, to the local store "
            f"{cfg['trackio']['dir']}") in signed
    gate = cfg["gate"]
    assert f"latest moves only if the whole hold-out set shows {gate['metric']} not worse " \
           f"than latest's (and the line's best) by more than {gate['margin']}" in signed
    assert f"lr {hp['learning_rate']:g}, {hp['num_train_epochs']:g} epochs, batch " \
           f"{hp['per_device_train_batch_size']}x{hp['gradient_accumulation_steps']}, " \
           f"max_length {hp['max_length']}, seed {hp['seed']}" in signed
    assert f"regime {draft['regime']}, overlong {cfg['data']['overlong']}" in signed
    for f in draft["files"]:
        rows = f" {f['rows']:,} rows" if f["rows"] is not None else ""
        assert f"{f['role']} {f['sha256'][:16]}{rows} {f['path']}" in signed
    # What is not signed stands under its own heading, never among the signed lines.
    est = draft["estimate"]
    assert f"about ${est['usd']:.2f} on local" in unsigned and "estimate" not in signed
    assert "trains on (why these rows" in unsigned
    for warning in draft["warnings"]:
        assert whole(warning) in unsigned
    assert "suggested timeout" not in signed
    # The summary: id, digest, where and how long, the start, the data, the push, workspace.
    assert summary.startswith(f"draft {draft['draft_id']}, step 1 (batch_100_01) digest "
                              f"{draft['digest']} runs on this machine, timeout {timeout}, "
                              "worst case $0.00 starts from the base model")
    assert "trains on 300 rows in 2 file(s), gates on 40 hold-out rows" in summary
    assert f"pushes to nothing workspace {sample_ws.root}" in summary


def test_a_remote_approval_screen_shows_the_job_it_starts(remote_ws, fake_hub, tiny_model_dir,
                                                          capsys, monkeypatch):
    """hf-jobs, resuming from the commit a pushed step left on the loopback Hub."""
    from chain_helpers import MODEL_REPO
    from test_model_sync import push_step_model, remote_step

    from tunestep.tools.drafts.estimate import FLAVORS

    sha, _ = push_step_model(fake_hub, tiny_model_dir, b"one")
    remote_step(remote_ws, sha)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    assert run(capsys, "map", "datasets/incremental/batch_100_02", "--suggested", "-w",
               str(remote_ws.root))[0] == 0
    code, out, err = run(capsys, "draft", "batch_100_02", "--backend", "hf-jobs", "--flavor",
                         "h200x8", "--timeout", "7d", "-w", str(remote_ws.root), "--json")
    assert code == 0, err
    draft = json.loads(out)
    sub, cfg = draft["submission"], draft["job_config"]
    screen = _approve_screen(capsys, remote_ws, draft["draft_id"])
    assert all(len(line) <= 80 for line in screen.splitlines())
    signed, unsigned, summary = (whole(part) for part in _sections(screen))
    assert "backend hf-jobs, flavor h200x8, 8 processes, one per GPU" in signed
    assert "timeout 7 days 0 h 00 min" in signed or "timeout 168 h 00 min" in signed
    worst = FLAVORS["h200x8"].usd_per_hour * sub["timeout_seconds"] / 3600
    assert f"worst case ${worst:,.2f}" in signed and "not signed)" in signed
    assert f"image {sub['image']}" in signed
    assert "command " + " ".join(sub["command"]) in signed
    assert "secrets HF_TOKEN (by name" in signed
    assert f"bundle to {sub['dataset_repo']}" in signed
    assert f"pushes to {cfg['hub']['model_id']} (private)" in signed
    assert f"resume from hf://{MODEL_REPO}@{sha}" in signed
    assert f"starts from hf://{MODEL_REPO}@{sha}" in summary
    assert "runs on hf-jobs h200x8 x8, timeout" in summary and f"${worst:,.2f}" in summary
    assert f"pushes to {cfg['hub']['model_id']} (private)" in summary
    assert "h200x8" in unsigned  # the estimate, labelled
    assert "/tunestep/step/start" not in screen


def test_a_bundled_start_is_named_with_its_content_hash(tmp_path, tiny_model_dir, capsys,
                                                       monkeypatch):
    """A first remote step from a local model: the version name and its content identity
    (the one `tunestep promote` shows for it), never the container path alone."""
    from chain_helpers import local_base_workspace

    from tunestep.tools.lineage.promotion import version_identity

    ws = local_base_workspace(tmp_path, tiny_model_dir)
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    code, out, err = run(capsys, "draft", "batch_100_01", "--backend", "hf-jobs", "-w",
                         str(ws.root), "--json")
    assert code == 0, err
    draft = json.loads(out)
    identity, count = version_identity(ws.resolve_model_store("models/qwen3_webdev")
                                       / "versions" / "0000_base")
    signed, _, summary = (whole(p) for p in _sections(_approve_screen(capsys, ws,
                                                                      draft["draft_id"])))
    assert (f"resume from version 0000_base (uploaded in the step's bundle), {count} files, "
            f"content sha256 {identity}") in signed
    assert "model version 0000_base from the bundle (the job reads it at" in signed
    assert f"starts from 0000_base sha256 {identity[:16]}" in summary


def test_an_edited_estimate_changes_nothing_signed_on_screen(sample_ws, capsys, monkeypatch):
    """Storage underneath: the stored draft's estimate (not signed) rewritten to look cheap,
    and a hold-out near match added to its warnings. The signed lines do not move; the
    near match gets its own section and a line in the summary."""
    from tunestep.tools.core import ledger

    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    out = run(capsys, "draft", "batch_100_01", "-w", str(sample_ws.root), "--json")[1]
    draft = json.loads(out)
    before = _sections(_approve_screen(capsys, sample_ws, draft["draft_id"]))[0]
    edited = dict(draft, estimate=dict(draft["estimate"], usd=0.01, flavor="cpu-basic",
                                       usd_per_hour=0.0),
                  warnings=["holdout near match: datasets/incremental/batch_100_01/"
                            "examples.jsonl:7 is 0.97 similar to datasets/"
                            "processed_webdev_coding/validation.jsonl:3"])
    with ledger.open_ledger(sample_ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE drafts SET payload = ? WHERE draft_id = ?",
                     (json.dumps(edited), draft["draft_id"]))
    screen = _approve_screen(capsys, sample_ws, draft["draft_id"])
    signed, unsigned, summary = _sections(screen)
    assert signed == before and "cpu-basic" not in signed
    assert "about $0.01 on cpu-basic" in whole(unsigned)
    assert "HOLD-OUT NEAR MATCHES: 1" in unsigned
    assert "examples.jsonl:7" in unsigned and "validation.jsonl:3" in unsigned
    assert "1 hold-out near match(es): see above" in whole(summary)


def test_the_summary_is_the_last_block_before_the_question(sample_ws, capsys, monkeypatch):
    import builtins
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked = []
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    code, out, _ = run(capsys, "draft", "batch_100_01", "-w", str(sample_ws.root), "--json")
    draft = json.loads(out)
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(builtins, "input", lambda prompt: asked.append(prompt) or "n")
    code, out, err = run(capsys, "approve", draft["draft_id"], "-w", str(sample_ws.root))
    assert code == 1 and "tsa1." not in out
    screen = err.split("not approved")[0].rstrip("\n")
    block = screen.split("\nYou are signing\n")[-1].splitlines()
    assert block and all(line.startswith("  ") for line in block)  # nothing after it
    labels = [line.split()[0] for line in block if not line.startswith("    ")]
    assert labels == ["draft", "digest", "runs", "starts", "trains", "pushes", "workspace"]
    assert asked == [f"Sign {draft['draft_id']} with key olly? [y/N] "]
    assert len(asked[0]) <= 80


def test_a_real_hold_out_near_match_is_unmissable_on_the_approval_screen(sample_ws, capsys,
                                                                         monkeypatch):
    """A training row that is most of a hold-out prompt, reworded at the end: the draft's
    own leak check warns, and the approval screen gives it a section and a summary line."""
    holdout = sample_ws.root / "datasets/processed_webdev_coding/validation.jsonl"
    row = json.loads(holdout.read_text().splitlines()[0])
    user = next(m for m in row["messages"] if m["role"] == "user")
    user["content"] += " Also say which line you would fix first and why it matters."
    batch = sample_ws.root / "datasets/incremental/batch_100_01/examples.jsonl"
    with batch.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    code, out, err = run(capsys, "draft", "batch_100_01", "-w", str(sample_ws.root), "--json")
    assert code == 0, err
    draft = json.loads(out)
    near = [w for w in draft["warnings"] if w.startswith("holdout near match")]
    assert near, draft["warnings"]
    signed, unsigned, summary = _sections(_approve_screen(capsys, sample_ws,
                                                          draft["draft_id"]))
    assert f"HOLD-OUT NEAR MATCHES: {len(near)}" in unsigned
    assert whole(near[0]) in whole(unsigned) and "holdout near match" not in signed
    assert f"{len(near)} hold-out near match(es): see above" in whole(summary)


def test_the_promote_screen_shows_the_version_its_content_and_latest(model_ws, capsys,
                                                                     monkeypatch):
    import shutil

    from tunestep.tools.lineage.promotion import current_latest, version_identity

    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    run(capsys, "operator", "init", "--name", "olly")
    store = model_ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions/0001_batch_100_01")
    (store / "versions/0001_batch_100_01/extra.txt").write_text("a changed version\n")
    identity, count = version_identity(store / "versions/0001_batch_100_01")
    now = current_latest(store)
    code, _, err = run(capsys, "promote", "0001_batch_100_01", "-w", str(model_ws.root),
                       "--yes")
    assert code == 0, err
    assert all(len(line) <= 80 for line in err.splitlines())
    screen = whole(err)
    assert f"version 0001_batch_100_01: {count} files, content sha256 {identity}" in screen
    assert f"latest becomes 0001_batch_100_01 (now {now}; not signed)" in screen
    assert f"workspace {model_ws.root} (the token is bound to it)" in screen
    summary = whole(err.split("\nYou are signing\n")[1])
    assert summary.startswith("request promote-")
    assert f"latest {now} -> 0001_batch_100_01 in models/qwen3_webdev" in summary
    assert f"content sha256 {identity[:16]}, {count} files workspace {model_ws.root}" in summary
