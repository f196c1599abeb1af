"""Every command a person is told to run works exactly as printed.

Collected from the README (code blocks, inline code, MCP client configs), the draft's
approve_command and the run plan, the CLI's next-step hints and error messages, and what
`operator init` prints; each is parsed by the real argparse parser, and the ones that are
cheap and safe here are run for real.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tunestep.server.cli import build_parser
from tunestep.server.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PASS = "correct horse battery"
# "tunestep approve promote-…" and bare "tunestep approve" are mentions of a command, not
# commands to run; anything with a syntax placeholder ([X], A | B) is a synopsis.
MENTION = re.compile(r"^tunestep [a-z]+$|…|\.\.\.|[\[\]|{}<>]")


def parses(command: str) -> None:
    words = shlex.split(command)
    assert words[0].endswith("tunestep"), command
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exc:  # argparse refused it (or answered it: --version, exit 0)
        if exc.code != 0:
            pytest.fail(f"{command!r} does not parse (exit {exc.code})")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # shell line continuations
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            if "bin/tunestep " in line:  # claude mcp add ... -- /path/.venv/bin/tunestep serve
                line = "tunestep " + line.split("bin/tunestep ", 1)[1]
            if line.startswith("tunestep ") and not MENTION.search(line):
                found.append(line)
        for args in re.findall(r'"args": (\[.*?\])', block, re.S):  # MCP client configs
            found.append(shlex.join(["tunestep", *json.loads(args)]))
    for span in re.findall(r"`(tunestep [^`]+)`", text):
        if not MENTION.search(span):
            found.append(span)
    return found


def test_the_readme_has_commands_to_check():
    commands = readme_commands()
    assert len(commands) >= 8
    assert any(c.startswith("tunestep serve --workspace") for c in commands)
    assert any(c.startswith("tunestep approve draft-") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    parses(command.replace("${workspaceFolder}", "/ws"))


def _next_commands(out: str) -> list[str]:
    out = re.sub(r" \\\n\s+", " ", out)  # a long command continues after a shell backslash
    return [m.strip() for m in re.findall(r"^(?:next: |  )(tunestep [^\n]+)$", out, re.M)]


def test_printed_commands_run_as_printed(sample_ws, capsys, monkeypatch, tmp_path):
    """From a folder that is not the workspace: the hints carry --workspace themselves."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TUNESTEP_OPERATOR_PASSPHRASE", PASS)
    monkeypatch.chdir(tmp_path)
    ws = str(sample_ws.root)

    def run(command: str) -> tuple[int, str, str]:
        parses(command)
        code = cli(shlex.split(command)[1:])
        out = capsys.readouterr()
        return code, out.out, out.err

    # operator init prints how to trust the key and how to approve with it.
    code, out, _ = run("tunestep operator init --name olly")
    assert code == 0
    out = re.sub(r" \\\n\s+", " ", out)  # a long command continues after a backslash
    printed = [line.strip().strip("`").split("`")[0] for line in out.splitlines()
               if "tunestep " in line]
    assert any("--operator-key-fingerprint sha256:" in line for line in printed)
    for line in printed:
        command = line[line.index("tunestep "):]
        if not MENTION.search(command.replace("DRAFT_ID", "draft-x")):
            parses(command.replace("DRAFT_ID", "draft-x"))

    # check -> inspect -> map -> inspect: each next step run exactly as printed.
    code, out, err = run(f"tunestep check --workspace {shlex.quote(ws)}")
    assert code == 0, err
    seen = set()
    queue = _next_commands(out)
    assert queue and all("--workspace" in c for c in queue)
    code, out, err = run(f"tunestep inspect datasets/incremental/batch_100_02 -w {ws}")
    queue += _next_commands(out)
    ran = 0
    while queue and ran < 8:
        command = queue.pop(0)
        if command in seen or command.startswith("tunestep draft"):
            continue
        seen.add(command)
        code, out, err = run(command)
        assert code in (0, 1) and "usage:" not in err and "path_" not in err, (command, err)
        queue += _next_commands(out)
        ran += 1
    assert any(c.startswith("tunestep map ") for c in seen)
    assert any("processed_webdev_coding_mapped" in c for c in seen)

    # The draft's approve_command, and the one in the run plan, approve as printed.
    code, out, err = run(f"tunestep draft batch_100_01 -w {ws} --json")
    draft = json.loads(out)
    plan = (sample_ws.root / draft["run_plan"]).read_text()
    assert draft["approve_command"] in plan
    code, out, err = run(draft["approve_command"] + " --yes --json")
    assert code == 0, err
    assert json.loads(out)["token"].startswith("tsa1.")


def test_error_hints_parse(sample_ws, capsys, monkeypatch):
    """Commands inside error messages (in backticks) are real commands too."""
    errors = []
    for argv in (["approve", "draft-000000000000", "-w", str(sample_ws.root)],):
        cli(argv)
        errors.append(capsys.readouterr().err)
    hints = [h for e in errors for h in re.findall(r"`(tunestep [^`]+)`", " ".join(e.split()))]
    assert hints
    for hint in hints:
        parses(hint.replace("NAME", "olly"))
