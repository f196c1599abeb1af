"""The draft's own hold-out check over the very files the job trains on.

``draft_job`` has already required every source to be READY per the inspector, whose
``holdout_duplicate`` errors refuse a leaked batch. This check does not lean on that:
the inspector's verdicts are cached in the ledger and in ``.tunestep/ready_memo.json``,
both files in the workspace, and the files a job trains on include derived ones (the
merged file, a replay sample) that no inspection named. So each train file of the draft
is read here, with its sha256 checked as it is read, and every row's prompt is compared
with the hold-out index (``leakage.py``):

- a prompt equal to a hold-out prompt refuses the draft (``holdout_leak``), naming the
  training file:line and the hold-out file:line of each (the first 10);
- a near match becomes a warning that begins with ``holdout near match`` (the approval
  screen shows those), one per training row, the first ``WARNED`` of them listed.

Per process, the answer for a (train file sha256, hold-out sha256, base train sha256)
is remembered: approve and submit recompute the draft, and the bytes decide the answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.inspector import leakage
from tunestep.tools.inspector.refs import canonical_rows

WARNED = 20  # near-match warnings listed per draft (all are counted)
LISTED = 10  # exact matches named in the refusal
_CACHE_SIZE = 64


@dataclass
class _Found:
    exact: list[tuple[int, int]] = field(default_factory=list)  # (line, hold-out line)
    near: list[tuple[int, int, float]] = field(default_factory=list)  # + containment
    exact_count: int = 0
    near_count: int = 0

# (train sha, hold-out sha, base sha) -> the file's _Found (its first few of each kept)
_memo: OrderedDict[tuple, _Found] = OrderedDict()
_lock = threading.Lock()


def check_train_files(ws: Workspace, train_files: list[tuple[str, str]],
                      holdout: tuple[str, str], base: tuple[str, str] | None) -> list[str]:
    """Refuse a draft whose training data holds a hold-out prompt; the near matches as
    warnings. ``train_files``: (workspace path, sha256) of each file the job trains on;
    ``holdout`` and ``base``: (workspace path, sha256) of the hold-out and base train set.
    """
    held_path, held_sha = holdout
    if not held_sha:
        return []  # no hold-out set: preflight has refused the step already
    base_path, base_sha = base if base else (None, None)
    index = leakage.holdout_index(ws.resolve(held_path), held_path, held_sha,
                                  ws.resolve(base_path) if base_path else None, base_sha)
    exact: list[tuple[str, int, int]] = []
    near: list[tuple[str, int, int, float]] = []
    exact_count = near_count = 0
    for path, sha in train_files:
        found = _scan(ws.resolve(path), sha, index, held_sha, base_sha)
        exact += [(path, line, held) for line, held in found.exact]
        near += [(path, line, held, share) for line, held, share in found.near]
        exact_count += found.exact_count
        near_count += found.near_count
    if exact:
        shown = "; ".join(f"{path}:{line} has the prompt of hold-out row {held_path}:{held}"
                          for path, line, held in exact[:LISTED])
        more = f" (and {exact_count - LISTED} more)" if exact_count > LISTED else ""
        raise TunestepError(
            "holdout_leak",
            f"{exact_count} training row(s) carry a hold-out prompt (compared after Unicode "
            f"NFKC, case, whitespace, zero-width and control characters folded; system "
            f"prompt and answer left out): {shown}{more}. Remove them from the training "
            "data; the hold-out set stays as it is.", path=exact[0][0], line=exact[0][1])
    warnings = [f"holdout near match: {path}:{line} holds {share:.0%} of the distinctive "
                f"8-word sequences of hold-out row {held_path}:{held}; the gate would "
                "measure a question the model trained on"
                for path, line, held, share in near[:WARNED]]
    if near_count > WARNED:
        warnings.append(f"holdout near match: {near_count - WARNED} more training row(s) "
                        "resemble hold-out rows (run_inspector lists them)")
    return warnings


def _scan(path: Path, sha: str, index: leakage.HoldoutIndex, held_sha: str,
          base_sha: str | None) -> _Found:
    key = (sha, held_sha, base_sha)
    with _lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    found = _Found()
    # The sha is checked over the bytes read (data_changed otherwise): the answer is
    # remembered under exactly the bytes it was computed from.
    for line, roles, contents in canonical_rows(path, sha):
        words, joined = leakage.normalize_prompt(leakage.prompt_text(roles, contents))
        held = index.exact(joined)
        if held is not None:
            found.exact_count += 1
            if len(found.exact) < LISTED:
                found.exact.append((line, held))
            continue
        shared = index.overlaps(words)
        match = index.nearest(shared) if shared else None
        if match is not None:
            found.near_count += 1
            if len(found.near) < WARNED:
                found.near.append((line, match.line, match.containment))
    with _lock:
        _memo[key] = found
        while len(_memo) > _CACHE_SIZE:
            _memo.popitem(last=False)
    return found
