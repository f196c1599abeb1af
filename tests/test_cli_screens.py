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
