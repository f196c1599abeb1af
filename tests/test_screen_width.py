"""Every screen fits 80 columns, and nothing a person acts on is cut to get there.

Each command of the README's CLI table runs on a sample workspace (with a tiny model in
its store) at ``COLUMNS=80``, its screen captured as a pipe gets it. Every line must be
at most 80 columns, unless it is one word that alone is wider (it then stands on its
own line, whole); no line ends in spaces. The paths, shas and codes the same command
returns in ``--json`` must each sit whole on one line wherever the screen shows them.
Hostile file names (long, with spaces, with control characters) appear as one escaped,
quoted, unbroken token.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tunestep.server.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PASS = "correct horse battery"
WIDTH = 80
HEX = re.compile(r"^[0-9a-f]{16,64}$")


def readme_cli_commands() -> set[str]:
    """The command names of the README's CLI table (`tunestep X ...` in its first column)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## CLI", 1)[1].split("\n\n", 1)[0]
    names = set()
    for cell in re.findall(r"^\| (.+?) \|", table, re.M):
        for command in re.findall(r"`tunestep ([a-z]+(?: init)?)", cell):
            names.add(command)
        for command in re.findall(r"`(logs|cancel) JOB`", cell):  # "..., logs JOB, cancel JOB"
            names.add(command)
    return names


def bad_lines(text: str) -> list[str]:
    """Lines wider than the screen (other than one lone word, perhaps with the shell's
    continuation backslash after it), or ending in spaces."""
    bad = []
    for line in text.splitlines():
        if line != line.rstrip():
            bad.append(f"trailing spaces: {line!r}")
        elif len(line) > WIDTH and not one_word(line):
            bad.append(f"{len(line)} columns: {line!r}")
    return bad


def one_word(line: str) -> bool:
    """One word, as the shell reads it (a quoted name with spaces is one)."""
    try:
        return len(shlex.split(line.strip().removesuffix(" \\"))) == 1
    except ValueError:
        return False


def tokens_in(value) -> set[str]:
    """Paths, shas, ids and codes a --json result holds (the words nobody may cut)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "code" and isinstance(item, str):
                found.add(item)
            found |= tokens_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= tokens_in(item)
    elif isinstance(value, str) and " " not in value and len(value) >= 8 and (
            "/" in value or HEX.match(value) or re.match(r"^(draft|job|promote|repin)-", value)):
        found.add(value)
    return found


def split_tokens(text: str, tokens: set[str]) -> list[str]:
    """Tokens the screen shows only across a line break (joined, they are there)."""
    lines = text.splitlines()
    joined = "".join(line.strip() for line in lines)
    split = []
    for tok in tokens:
        shown = [tok, tok[:16]] if HEX.match(tok) else [tok]
        for part in shown:
            if part in joined and not any(part in line for line in lines):
                split.append(part)
    return split


class Screens:
    def __init__(self, capsys, ws: Path) -> None:
        self.capsys, self.ws, self.ran = capsys, ws, []

    def run(self, *argv: str, workspace: bool = True) -> tuple[int, str]:
        args = [*argv, *(["-w", str(self.ws)] if workspace else [])]
        try:
            code = cli(args)
        except SystemExit as exc:  # --help
            code = exc.code
        out = self.capsys.readouterr()
        screen = out.out + out.err
        assert "Traceback" not in screen and "internal error" not in screen, (argv, screen)
        assert not bad_lines(screen), (argv, bad_lines(screen))
        self.ran.append(argv[0] if argv[0] != "operator" else "operator init")
        return code, screen

    def run_both(self, *argv: str) -> tuple[int, str, object]:
        """The screen, and the same command's --json: every token of it whole on screen."""
        code, screen = self.run(*argv)
        json_code = cli([*argv, "-w", str(self.ws), "--json"])
        out = self.capsys.readouterr().out
        assert json_code == code, (argv, out)
        data = json.loads(out)
        assert not split_tokens(screen, tokens_in(data)), (argv, split_tokens(screen,
                                                                            tokens_in(data)))
        return code, screen, data


@pytest.fixture
def eighty(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)


def test_every_cli_command_fits_80_columns(model_ws, capsys, eighty, monkeypatch, tmp_path):
    from chain_helpers import record_job_end

    from tunestep.tools.core import ledger

    # A long key folder, so operator init's paths and fingerprint are longer than a line.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ("config-" + "k" * 60)))
    s = Screens(capsys, model_ws.root)
    assert s.run("operator", "init", "--name", "olly", workspace=False)[0] == 0
    s.run_both("check")
    s.run_both("check", "batch_100_02")
    s.run_both("inspect", "datasets/incremental/batch_100_02")
    s.run_both("inspect", "datasets/incremental/batch_100_01", "--tokens")
    s.run_both("map", "datasets/incremental/batch_100_02", "--suggested")
    s.run_both("merge", "batch_100_01")
    s.run_both("preprocess", "batch_100_01")
    code, screen, draft = s.run_both("draft", "batch_100_01")
    assert code == 0 and draft["digest"] in screen
    s.run_both("draft", "batch_100_01", "--kind", "inspect", "--backend", "hf-jobs")
    code, screen = s.run("approve", draft["draft_id"], "--yes")
    assert code == 0 and "You are signing" in screen
    (token,) = [line for line in screen.splitlines() if line.startswith("tsa1.")]
    assert len(token) > WIDTH  # the one word wider than the screen, whole on its line
    # submit refuses a cut token here (a valid one would start a training job)
    code, screen = s.run("submit", draft["draft_id"], token[:60])
    assert code == 1 and "approval_" in screen
    store = model_ws.resolve_model_store("models/qwen3_webdev")
    shutil.copytree(store / "versions/0000_base", store / "versions/0001_batch_100_01")
    code, screen = s.run("promote", "0001_batch_100_01", "--yes")
    assert code == 0 and "You are signing" in screen
    holdout = model_ws.root / "datasets/processed_webdev_coding/validation.jsonl"
    holdout.write_text("".join(holdout.read_text().splitlines(keepends=True)[1:]))
    code, screen, _ = s.run_both("check")  # validation_changed, naming `tunestep repin`
    assert "tunestep repin" in screen
    code, screen = s.run("repin", "--yes")  # the review (both shas whole), signed, applied
    assert code == 0, screen
    s.run_both("check")  # the pin, re-pinned by repin-...
    job = record_job_end(model_ws, draft["draft_id"], "local",
                         {"error": "the trainer stopped: " + "x" * 120}, status="failed")
    log = model_ws.root / ".tunestep" / "jobs" / job / "output.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = "2026-01-01T00:00:00Z [step 0001_batch_100_01] "  # the job's own lines
    log.write_text(stamp + "epoch 1 loss 0.5\n" + stamp + "a long job line " * 10 + "\n")
    with ledger.open_ledger(model_ws) as conn, ledger.transaction(conn):
        conn.execute("UPDATE jobs SET log_path = ? WHERE job_id = ?",
                     (model_ws.relative(log), job))
    s.run_both("status")
    s.run_both("status", job)
    # logs prints the job's own lines as the job wrote them (`--tail N` is N of them):
    # data, not a screen, so only its refusals are held to the width here.
    assert cli(["logs", job, "-w", str(model_ws.root), "--tail", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (stamp + "a long job line " * 10).rstrip()
    s.run("logs", "job-000000000000")
    s.run_both("cancel", job)
    s.run_both("sync")
    s.run("serve", "--workspace", str(tmp_path / "no" / ("deep" * 20)), workspace=False)
    for name in sorted(readme_cli_commands()):
        s.run(*name.split(), "--help", workspace=False)
    assert readme_cli_commands() <= set(s.ran), readme_cli_commands() - set(s.ran)


def test_an_error_keeps_its_code_and_file_line_whole(sample_ws, capsys, eighty):
    batch = sample_ws.root / "datasets/incremental/batch_100_01"
    name = "a_file_whose_name_is_long_enough_to_fill_most_of_a_line_on_its_own.jsonl"
    (batch / name).write_text('{"messages": [}\n')
    s = Screens(capsys, sample_ws.root)
    code, screen = s.run("draft", "batch_100_01")
    assert code == 1
    lines = screen.splitlines()
    assert lines[0].startswith("error batch_not_ready: ")
    where = f"datasets/incremental/batch_100_01/{name}:1"
    assert any(line.strip() in (where, f"({where})") for line in lines), screen


def test_hostile_file_names_are_one_escaped_unbroken_token(sample_ws, capsys, eighty):
    batch = sample_ws.root / "datasets/incremental/batch_100_01"
    original = next(batch.glob("*.jsonl"))
    hostile = ("my review queue \x1b[31mred\x1b[0m export from the grading team with a very "
               "long name.jsonl")
    original.rename(batch / hostile)
    shown = shlex.quote("datasets/incremental/batch_100_01/" + hostile
                        .replace("\x1b", "\\x1b"))
    s = Screens(capsys, sample_ws.root)
    assert s.run("operator", "init", "--name", "olly", workspace=False)[0] == 0
    for argv in (("check",), ("inspect", "datasets/incremental/batch_100_01")):
        code, screen = s.run(*argv)
        assert "\x1b" not in screen
        assert any(shown in line for line in screen.splitlines()), (argv, shown, screen)
    code, screen = s.run("draft", "batch_100_01")  # refused, naming the file whole
    assert code == 1 and "path_control_char" in screen and "\x1b" not in screen
    assert any("queue \\x1b[31mred\\x1b[0m export" in line for line in screen.splitlines())
    # Spaces alone are allowed: drafted, and shown whole on the approval screen.
    spaced = hostile.replace("\x1b[31m", "").replace("\x1b[0m", "")
    (batch / hostile).rename(batch / spaced)
    shown = shlex.quote("datasets/incremental/batch_100_01/" + spaced)
    code, screen, draft = s.run_both("draft", "batch_100_01")
    assert code == 0 and any(shown in line for line in screen.splitlines()), screen
    code, screen = s.run("approve", draft["draft_id"], "--yes")
    assert code == 0
    assert any(line.strip() == shown for line in screen.splitlines()), screen  # alone, whole


def test_the_wrapper_breaks_between_words_only():
    from rich.console import Console

    from tunestep.server.render import screen, token

    console = Console(width=30, record=True, force_terminal=False, highlight=False)
    out = screen(console)
    out.print("label       " + " ".join(["word"] * 12) + " " + token("a/b c/" + "d" * 40))
    out.command("tunestep approve draft-0123456789ab --workspace '/tmp/a b/ws' --yes")
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 30 or one_word(line) for line in lines), text
    assert f"'a/b c/{'d' * 40}'" in lines  # wider than the screen: alone, whole, unindented
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].startswith(" " * 12 + "word")  # continued under the label's value
    command = " ".join(text.split("'a/b c/")[1].split("\n", 1)[1].replace(" \\\n", " ")
                       .split())
    assert command == "tunestep approve draft-0123456789ab --workspace '/tmp/a b/ws' --yes"
