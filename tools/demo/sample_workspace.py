"""A small, deterministic sample workspace: the demo's and the tests' common ground.

Realistic web-dev grading rows (a code snippet in the user turn, a review ending in
"Grade: N" in the assistant turn), generated from a seed so every build is byte-for-byte
the same. Base train ~200 rows, three batches of 100 (the second in ShareGPT format, so
it needs mapping), a hold-out set of 40, and optionally a tiny Qwen3 as the first
checkpoint behind a model-store link outside the workspace.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
from pydantic import BaseModel

from tunestep.tools.core.atomic import atomic_write_bytes, atomic_write_text
from tunestep.tools.core.plan import Plan, render_plan_document

SYSTEM_PROMPT = (
    "You review web-development code. List the problems you find, then give a grade "
    "from 0 to 10 on the last line as 'Grade: N'."
)

# Each flaw: (language, code template, review sentence, grade penalty).
FLAWS = [
    ("html", '<img src="{name}.png">', "The image has no alt text, which fails accessibility.", 2),
    ("html", '<div onclick="open{Name}()">{label}</div>',
     "A clickable div is not keyboard accessible; use a button.", 2),
    ("html", '<a href="#" target="_blank">{label}</a>',
     "target=_blank without rel=noopener exposes window.opener.", 1),
    ("html", '<input type="text" id="{name}">', "The input has no associated label.", 1),
    ("css", ".{name} {{ color: #777; background: #888; }}",
     "The text colour has too little contrast with its background.", 1),
    ("css", "#{name} {{ width: 960px !important; }}",
     "A fixed width with !important breaks responsive layouts.", 1),
    ("js", "var {name} = document.getElementById('{name}');",
     "var leaks function scope; prefer const.", 1),
    ("js", "el.innerHTML = '<b>' + {name}Input.value + '</b>';",
     "Writing user input into innerHTML allows XSS; use textContent.", 3),
    ("js", "fetch('/api/{name}').then(r => r.json()).then(render{Name});",
     "The fetch has no error handling for failed requests.", 2),
    ("js", "if ({name}Count == '0') {{ reset{Name}(); }}",
     "Loose equality with a string hides type bugs; use ===.", 1),
    ("js", "setInterval(() => poll{Name}(), 10);",
     "Polling every 10 ms wastes CPU; use events or a longer interval.", 2),
    ("js", "localStorage.setItem('{name}Token', token);",
     "Storing a session token in localStorage exposes it to any script.", 3),
]
GOOD = [
    ("html", '<button type="button" id="{name}-toggle">{label}</button>'),
    ("css", ".{name} {{ display: grid; gap: 1rem; }}"),
    ("js", "const {name} = document.querySelector('#{name}');"),
    ("js", "export function format{Name}(value) {{ return String(value).trim(); }}"),
]
NOUNS = ["cart", "profile", "menu", "invoice", "search", "gallery", "modal", "banner",
         "footer", "avatar", "ticket", "review", "order", "comment", "chart", "slider",
         "filter", "badge", "upload", "wizard", "calendar", "tooltip", "sidebar", "toast"]
LABELS = ["Open", "Save", "Buy now", "Details", "Next", "Close", "Submit", "More"]
TASKS = ["a checkout page", "a user settings panel", "a product listing", "a blog layout",
         "a login form", "a dashboard widget", "a photo gallery", "a landing page"]


class SampleWorkspace(BaseModel):
    root: Path
    store: Path | None
    batches: list[str]
    base_model: str | None


def make_row(rng: random.Random, index: int) -> dict:
    """One grading example: snippet lines with flaws, a review, a grade."""
    name = f"{rng.choice(NOUNS)}{index}"
    fill = {"name": name, "Name": name[:1].upper() + name[1:], "label": rng.choice(LABELS)}
    flaws = rng.sample(FLAWS, rng.randint(0, 3))
    goods = rng.sample(GOOD, rng.randint(1, 3))
    lines = [(lang, tpl.format(**fill)) for lang, tpl, _, _ in flaws]
    lines += [(lang, tpl.format(**fill)) for lang, tpl in goods]
    rng.shuffle(lines)
    code = "\n".join(f"/* {lang} */ {text}" if lang != "html" else text for lang, text in lines)
    grade = max(0, 10 - sum(penalty for *_, penalty in flaws))
    if flaws:
        review = "\n".join(f"- {sentence}" for _, _, sentence, _ in flaws)
    else:
        review = "- No problems found; the code is clean and accessible."
    user = f"Task: {rng.choice(TASKS)} (submission {index}).\n```\n{code}\n```"
    return {"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"{review}\nGrade: {grade}"},
    ]}


def to_sharegpt(row: dict) -> dict:
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": roles[m["role"]], "value": m["content"]}
                              for m in row["messages"]]}


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def build_sample_workspace(
    root: Path,
    *,
    store: Path | None = None,
    with_model: bool = False,
    seed: int = 0,
    base_rows: int = 200,
    batch_rows: int = 100,
    batches: int = 3,
    holdout_rows: int = 40,
    plan_overrides: dict | None = None,
) -> SampleWorkspace:
    """Write a sample workspace at ``root`` (created; existing sample files are rewritten).

    With ``with_model`` a tiny Qwen3 is built as the first checkpoint in ``store``
    (default: a folder beside the workspace) and ``models/<name>`` links to it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    total = base_rows + holdout_rows + batches * batch_rows
    rows = [make_row(rng, i) for i in range(total)]
    base, holdout = rows[:base_rows], rows[base_rows:base_rows + holdout_rows]
    rest = rows[base_rows + holdout_rows:]

    processed = root / "datasets/processed_webdev_coding"
    atomic_write_bytes(processed / "train.jsonl", _jsonl(base))
    atomic_write_bytes(processed / "validation.jsonl", _jsonl(holdout))
    names = []
    for number in range(1, batches + 1):
        name = f"batch_{batch_rows}_{number:02d}"
        names.append(name)
        chunk = rest[(number - 1) * batch_rows:number * batch_rows]
        folder = root / "datasets/incremental" / name
        if number == 2:  # the batch that arrives in a foreign format
            atomic_write_bytes(folder / "conversations.json",
                               orjson.dumps([to_sharegpt(r) for r in chunk],
                                            option=orjson.OPT_INDENT_2))
        else:
            atomic_write_bytes(folder / "examples.jsonl", _jsonl(chunk))

    base_model = None
    store_path = None
    settings = dict(plan_overrides or {})
    if with_model:
        store_path = Path(store) if store else root.parent / f"{root.name}-model-store"
        base_model = str(_build_first_checkpoint(store_path / "qwen3_webdev", seed))
        settings.setdefault("model", base_model)
        # A tiny random model learns only with a large step size (the real plan keeps
        # 2e-5), but not too large: 3e-3 collapsed it to a constant "Grade: 0" (issue 18).
        # Measured on this sample: 1e-3 on the base set, then 5e-4 resuming, took
        # grade_within_1 from 0 to 0.325 [+0.20, +0.48 over the base] by the second step.
        training = settings.setdefault("training", {})
        training.setdefault("max_length", 512)
        training.setdefault("learning_rate", 1e-3)
        training.setdefault("resume_learning_rate", 5e-4)
        settings.setdefault("samples", {"n": 20, "max_new_tokens": 64})
        link = root / "models/qwen3_webdev"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(store_path / "qwen3_webdev", link, target_is_directory=True)
    plan = Plan.model_validate(settings)
    body = ("\n# Training plan\n\nFine-tune the grader in steps of about 100 examples. "
            "The front matter above holds the defaults every draft starts from.\n")
    atomic_write_text(root / ".specs/training/plan.md", render_plan_document(plan, body))
    return SampleWorkspace(root=root.resolve(), store=store_path, batches=names,
                           base_model=base_model)


def _build_first_checkpoint(store: Path, seed: int) -> Path:
    """The tiny base model in ``versions/0000_base`` with ``latest`` pointing at it."""
    from tunestep.tools.demo.tiny_model import build_tiny_model

    version = store / "versions" / "0000_base"
    if not (version / "config.json").is_file():
        build_tiny_model(version, seed=seed)
    latest = store / "latest"
    if not latest.is_symlink():
        os.symlink("versions/0000_base", latest, target_is_directory=True)
    return version
