"""Findings kept small: every one counted, only the first few listed.

Errors are listed up to ``max_errors`` in file order (the earliest by file, then line,
even when a check that runs at the end, such as duplicates, finds them late); warnings and
notes up to a few per code, so one noisy rule cannot bury the others.
"""

from __future__ import annotations

import heapq

from tunestep.tools.inspector.report import Finding
from tunestep.tools.inspector.rules import ERROR, RULES

PER_CODE = 5  # warnings and notes listed per code


class Findings:
    def __init__(self, max_errors: int) -> None:
        self.max_errors = max(0, max_errors)
        self.counts: dict[str, int] = {}
        self.error_count = 0
        self.warning_count = 0
        self.errors_by_file: dict[int, int] = {}
        self._errors: list = []  # max-heap by position (negated), size <= max_errors
        self._others: dict[str, list] = {}
        self._seq = 0

    def add(self, file_index: int, line: int | None, code: str, message: str) -> None:
        severity = RULES[code][0]
        self.counts[code] = self.counts.get(code, 0) + 1
        self._seq += 1
        position = (file_index, line or 0, self._seq)
        entry = (tuple(-x for x in position), file_index, line, code, severity, message)
        if severity == ERROR:
            self.error_count += 1
            self.errors_by_file[file_index] = self.errors_by_file.get(file_index, 0) + 1
            self._keep(self._errors, entry, self.max_errors)
        else:
            if severity == "warning":
                self.warning_count += 1
            self._keep(self._others.setdefault(code, []), entry, PER_CODE)

    @staticmethod
    def _keep(heap: list, entry: tuple, limit: int) -> None:
        if len(heap) < limit:
            heapq.heappush(heap, entry)
        elif limit and entry[0] > heap[0][0]:  # earlier than the latest one kept
            heapq.heapreplace(heap, entry)

    def listed(self, files: list[str]) -> tuple[list[Finding], bool]:
        """The listed findings (errors first) and whether any were left out."""
        def build(entry) -> Finding:
            _, index, line, code, severity, message = entry
            return Finding(file=files[index] if index < len(files) else "",
                           line=line or None, code=code, severity=severity,
                           message=message)

        errors = sorted(self._errors, key=lambda e: tuple(-x for x in e[0]))
        others = sorted((e for heap in self._others.values() for e in heap),
                        key=lambda e: tuple(-x for x in e[0]))
        others = others[:max(self.max_errors, PER_CODE)]
        listed = [build(e) for e in errors] + [build(e) for e in others]
        total = sum(self.counts.values())
        return listed, len(listed) < total
