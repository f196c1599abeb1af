"""Row statistics kept in flat typed arrays (4 bytes a message), summarized with numpy.

Per row the inspector appends the id of its role sequence and the length of each message;
turn counts and per-role lengths are recovered at the end, vectorized, so a 500k-row file
costs a few MB and no Python object per message.
"""

from __future__ import annotations

from array import array

from tunestep.tools.inspector.report import Percentiles, Stats, TokenStats

ROLES = ("system", "user", "assistant", "tool")
ROLE_CODE = {role: code for code, role in enumerate(ROLES)}


def percentiles(values) -> Percentiles | None:
    """min, nearest-rank p50 and p95, max."""
    import numpy as np

    data = np.asarray(values)
    if data.size == 0:
        return None
    ordered = np.sort(data, kind="stable")
    count = ordered.size

    def rank(p: float) -> int:
        return int(ordered[max(0, -(-count * p // 100) - 1)])

    return Percentiles(min=int(ordered[0]), p50=rank(50), p95=rank(95), max=int(ordered[-1]))


class StatsCollector:
    """Role sequences, message lengths, grades and token counts of the accepted rows."""

    def __init__(self) -> None:
        self.sequences: dict[tuple, int] = {}
        self.sequence_roles: list[tuple] = []
        self.sids = array("I")
        self.lengths = array("I")
        self.grades: dict[str, int] = {}
        self.row_tokens = array("I")
        self.assistant_tokens = array("I")

    def sequence_id(self, roles: tuple) -> int:
        sid = self.sequences.get(roles)
        if sid is None:
            sid = self.sequences[roles] = len(self.sequence_roles)
            self.sequence_roles.append(roles)
        return sid

    def add(self, sid: int, contents: tuple) -> None:
        self.sids.append(sid)
        self.lengths.extend(map(len, contents))

    def summary(self, tokens: TokenStats | None = None) -> Stats:
        import numpy as np

        sids = np.frombuffer(self.sids, dtype=np.uint32) if self.sids else np.zeros(
            0, dtype=np.uint32)
        rows = int(sids.size)
        if rows == 0:
            return Stats(rows=0, turns=None, roles={}, chars={}, grades=self.grades,
                         tokens=tokens)
        lengths = np.frombuffer(self.lengths, dtype=np.uint32)
        seq_turns = np.array([len(r) for r in self.sequence_roles], dtype=np.int64)
        turns = seq_turns[sids]
        codes = self._role_codes(sids, turns)
        role_counts = np.bincount(codes, minlength=len(ROLES))
        chars = {}
        for code, role in enumerate(ROLES):
            if role_counts[code]:
                chars[role] = percentiles(lengths[codes == code])
        return Stats(
            rows=rows,
            turns=percentiles(turns),
            roles={role: int(role_counts[c]) for c, role in enumerate(ROLES) if role_counts[c]},
            chars=chars,
            grades=dict(sorted(self.grades.items(), key=lambda kv: -kv[1])[:20]),
            tokens=tokens,
        )

    def _role_codes(self, sids, turns):
        """The role code of every message, from the row's sequence id and its position."""
        import numpy as np

        flat_codes = np.array([ROLE_CODE[r] for roles in self.sequence_roles for r in roles],
                              dtype=np.uint8)
        seq_turns = np.array([len(r) for r in self.sequence_roles], dtype=np.int64)
        seq_start = np.concatenate(([0], np.cumsum(seq_turns)[:-1]))
        per_message_sid = np.repeat(sids, turns)
        row_start = np.repeat(np.cumsum(turns) - turns, turns)
        position = np.arange(per_message_sid.size) - row_start
        return flat_codes[seq_start[per_message_sid] + position]
