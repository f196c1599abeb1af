""".specs/ stays true: every error code in the code is documented, the plan defaults match."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tunestep.tools.core.plan import Plan, render_plan_document

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / ".specs"
CODE = re.compile(r"^[a-z][a-z0-9_]+$")


def codes_in_source() -> dict[str, str]:
    """Every code literal given to TunestepError, a Problem, or a code=/not_found= keyword."""
    found: dict[str, str] = {}
    for path in [*ROOT.joinpath("tools").rglob("*.py"), *ROOT.joinpath("server").rglob("*.py"),
                 *ROOT.joinpath("prompts").rglob("*.py")]:
        if "jobs" in path.parts:  # the standalone job script has exit codes, not these
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            values = []
            if name in ("TunestepError", "HubError") and node.args:
                values.append(node.args[0])
            values += [k.value for k in node.keywords if k.arg in ("code", "not_found")
                       and name in ("TunestepError", "HubError", "Problem", "_hub_errors",
                                    "hub_call", "_error")]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                        and CODE.match(value.value):
                    found.setdefault(value.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def documented_codes() -> set[str]:
    text = (SPECS / "error_codes.md").read_text()
    return set(re.findall(r"`([a-z][a-z0-9_]+)`", text))


def test_every_error_code_is_documented():
    missing = {c: where for c, where in codes_in_source().items()
               if c not in documented_codes()}
    assert not missing, f"add these to .specs/error_codes.md: {missing}"


def test_the_scan_finds_codes():  # the check above must not pass by finding nothing
    found = codes_in_source()
    assert {"path_escape", "draft_stale", "approval_replayed", "checkpoint_missing"} <= set(found)


def test_plan_format_shows_the_real_defaults():
    text = (SPECS / "plan_format.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    expected = render_plan_document(Plan()).split("---\n")[1]
    assert block == expected


def test_every_spec_file_linked_from_the_index_exists():
    index = (SPECS / "README.md").read_text()
    for name in re.findall(r"\]\(([a-z_]+\.md)\)", index):
        assert (SPECS / name).is_file(), name


def test_job_config_spec_is_the_scripts_own_contract():
    source = (ROOT / "tools/jobs/train_sft.py").read_text()
    doc = ast.get_docstring(ast.parse(source))
    assert doc in (SPECS / "job_config.md").read_text()
