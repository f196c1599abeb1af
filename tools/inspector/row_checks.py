"""What is checked about an accepted row, and what is resolved after the last one.

Per row: hold-out leakage of the prompt, the plan's grade, unfilled placeholders, token
counts against max_length. After the last row: duplicates (inside the input and of the
reference files, with numpy over the per-row keys) and hold-out 8-gram overlaps.
``RowChecks`` is a base class of ``Engine``: both its fast and its slow path call these.
"""

from __future__ import annotations

import re
from typing import Any

from tunestep.tools.inspector.leakage import GRAM, NEAR_LISTED, normalize_prompt, prompt_text
from tunestep.tools.inspector.scan_state import FileState

PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")


# What a step does with a row over max_length, as the draft says it (data.overlong): the
# inspector and the draft must not disagree about the same row.
OVERLONG_SAYS = {
    "truncate_prompt": "the job shortens the middle of its user turn and keeps the whole "
                       "answer, or leaves the row out when the answer alone is too long; "
                       "data.overlong truncate_prompt",
    "drop": "the job leaves the row out; data.overlong drop",
    "error": "a draft of it is refused; data.overlong error",
}


class RowChecks:
    def _leak(self, state: FileState, line: int, sid: int, roles: tuple,
              contents: tuple) -> bool:
        """Hold-out checks on the prompt; True when it is a hold-out prompt (rejected)."""
        holdout = self.holdout
        words, joined = normalize_prompt(prompt_text(roles, contents, self._users[sid]))
        copy = holdout.exact(joined)
        if copy is not None:
            self.holdout_exact += 1
            self._reject(state, line, [("holdout_duplicate", f"the same prompt as hold-out "
                                        f"row {holdout.path}:{copy} (compared after Unicode "
                                        "NFKC, case, whitespace, zero-width and control "
                                        "characters folded; system prompt and answer "
                                        "left out)")])
            return True
        if len(words) >= GRAM:
            found = holdout.overlaps(words)
            near = holdout.nearest(found) if found else None
            if near is not None:  # no batch-boilerplate rule: reported at once
                self.near_match_rows += 1
                if len(self.near_matches) < NEAR_LISTED:
                    self.near_matches.append((state.index, line, near.line,
                                              near.containment))
                self.findings.add(state.index, line, "holdout_near_match",
                                  f"the prompt holds {near.containment:.0%} of the "
                                  "distinctive 8-word sequences of hold-out row "
                                  f"{holdout.path}:{near.line} (a near match from 50 %): "
                                  "the gate would measure a question the model trained on")
            else:
                for gram, held_line, start in found:
                    self.overlaps.add(gram, (state.index, line, held_line,
                                             " ".join(words[start:start + GRAM])))
        return False

    def _no_grade(self, state: FileState, line: int) -> None:
        self.findings.add(state.index, line, "grade_unparseable",
                          "the plan's grade_pattern finds no grade in the last answer")

    def _placeholders(self, state: FileState, line: int, answers: tuple,
                      contents: tuple) -> None:
        for index in answers:
            if "{{" in contents[index]:
                found = PLACEHOLDER.search(contents[index])
                if found:
                    self.findings.add(state.index, line, "template_placeholder",
                                      f"message {index + 1} (assistant) holds the unfilled "
                                      f"placeholder {found.group()}")

    def _count_tokens(self, state: FileState, line: int, messages: list, roles: tuple,
                      contents: tuple, tools: Any) -> None:
        done = self.tokens.add((state.index, line), messages, roles, contents, tools)
        if done:
            self._token_results(done)

    # --- tokens -------------------------------------------------------------------------

    def _flush_tokens(self) -> None:
        if self.tokens is not None:
            self._token_results(self.tokens.flush())

    def _token_results(self, results: list) -> None:
        limit = self.tokens.max_length
        for (index, line), count, parts, error in results:
            if error is not None:
                self.findings.add(index, line, "template_error",
                                  f"the chat template cannot render the row: {error}")
                continue
            self.stats.row_tokens.append(count)
            self.stats.assistant_tokens.extend(parts)
            if count > limit:
                self.over_length.append((index, line, count))
                self.findings.add(index, line, "over_max_length",
                                  f"{count:,} tokens, over training.max_length {limit:,} "
                                  f"({OVERLONG_SAYS.get(self.tokens.overlong, '')})")

    # --- after the last row -------------------------------------------------------------

    def resolve_duplicates(self) -> tuple[int, int]:
        """Duplicate findings (inside the input, and of the reference files)."""
        import numpy as np

        if not self.keys:
            return 0, 0
        keys = np.frombuffer(self.keys, dtype=np.int64)
        lines = np.frombuffer(self.lines, dtype=np.uint32)
        starts = np.array(self.file_starts, dtype=np.int64)
        file_of = np.searchsorted(starts, np.arange(keys.size), side="right") - 1
        of_earlier = np.zeros(keys.size, dtype=bool)
        for ref in self.references:
            if not ref.rows:
                continue
            at = np.minimum(np.searchsorted(ref.keys, keys), ref.keys.size - 1)
            hit = ref.keys[at] == keys
            for row in np.nonzero(hit & ~of_earlier)[0]:
                self._duplicate(int(file_of[row]), int(lines[row]), "duplicate_of_earlier",
                                f"the same conversation as {ref.path} line "
                                f"{int(ref.lines[at[row]])}")
            of_earlier |= hit
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_of = first[inverse.reshape(-1)]
        repeated = (first_of != np.arange(keys.size)) & ~of_earlier
        for row in np.nonzero(repeated)[0]:
            original = int(first_of[row])
            where = f"line {int(lines[original])}"
            if file_of[original] != file_of[row]:
                where += f" of {self.files[int(file_of[original])].source.shown}"
            self._duplicate(int(file_of[row]), int(lines[row]), "duplicate_in_batch",
                            f"the same conversation as {where}")
        return int(repeated.sum()), int(of_earlier.sum())

    def _duplicate(self, index: int, line: int, code: str, message: str) -> None:
        state = self.files[index]
        self.findings.add(index, line, code, message)
        state.rows_with_errors += 1
        state.error_reasons[code] = state.error_reasons.get(code, 0) + 1
        if self.mode == "map":
            self.drops.setdefault((index, line), f"{code}: {message}")

    def resolve_overlaps(self) -> tuple[int, int]:
        """holdout_overlap warnings, one per row; (rows, boilerplate grams ignored)."""
        path = self.holdout.path
        rows = sum(state.accepted for state in self.files)
        hits, ignored = self.overlaps.leaks(rows)
        first: dict[tuple[int, int], tuple] = {}
        for index, line, held_line, words in hits:
            first.setdefault((index, line), (held_line, words))
        for (index, line), (held_line, words) in sorted(first.items()):
            self.findings.add(index, line, "holdout_overlap",
                              f"the prompt shares the 8-word sequence \"{words}\" with "
                              f"hold-out row {path}:{held_line}")
        return len(first), ignored
