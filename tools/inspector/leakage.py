"""Leakage into the hold-out set: exact copies, and shared 8-word sequences in user turns.

Exact: the whole conversation, lower-cased with whitespace collapsed, equals a hold-out
conversation (error ``holdout_duplicate``).

Overlap: the user turn shares a sequence of 8 words (lower-cased, split on whitespace)
with a hold-out user turn (warning ``holdout_overlap`` naming the hold-out line). Real
data shares boilerplate (the same task template, the same code idioms), which is not
leakage, so an 8-gram is ignored when it occurs in more than max(2, 1%) of the hold-out
rows, of the base train rows, or of the inspected rows (the last is applied at the end
of the run, see ``OverlapHits``), and when fewer than 2 of its words are uncommon (a word
is common when more than max(2, 1%) of the hold-out or train rows use it): a template
line or a code idiom, not a copied prompt.

Speed: each inspected row looks up only every 4th 5-word window of its user turn in a set
of the 5-word windows of the kept hold-out 8-grams (all built in C by ``zip`` and
``hash``). Any shared 8-gram contains one of those windows, so nothing is missed; only a
window hit is verified against the 8-grams themselves.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tunestep.tools.inspector.refs import canonical_rows

GRAM = 8
WINDOW = 5
STRIDE = 4  # WINDOW + STRIDE - 1 <= GRAM: every 8-gram holds a strided window
RARE_WORDS = 2  # distinct uncommon words a kept 8-gram must hold
MAX_GRAMS = 4_000_000  # beyond this many hold-out 8-grams the overlap check is skipped
_CACHE_SIZE = 4


def boilerplate_limit(rows: int) -> int:
    """An 8-gram in more rows than this is boilerplate, not leakage."""
    return max(2, math.ceil(rows / 100))


def user_text(roles: tuple, contents: tuple) -> str:
    return "\n".join(c for r, c in zip(roles, contents, strict=True) if r == "user")


def conversation_key(roles: tuple, contents: tuple) -> int:
    text = "\n".join(f"{r}: {c}" for r, c in zip(roles, contents, strict=True))
    return hash(" ".join(text.lower().split()))


def _grams(words: list[str]):
    return zip(*(words[i:] for i in range(GRAM)), strict=False)  # shortest wins


def _windows(words: list[str]):
    # The windows starting at 0, 4, 8, ...: (w0..w4), (w4..w8), ...
    return zip(words[0::4], words[1::4], words[2::4], words[3::4], words[4::4], strict=False)


@dataclass
class HoldoutIndex:
    path: str
    rows: int
    conversations: dict[int, int] = field(default_factory=dict)  # key -> hold-out line
    users: set[int] = field(default_factory=set)  # normalized user text hashes
    grams: dict[int, int] = field(default_factory=dict)  # kept 8-gram hash -> line
    windows: set[int] = field(default_factory=set)
    rare_words: set[str] = field(default_factory=set)  # the uncommon words of kept grams
    ignored_grams: int = 0
    note: str | None = None

    def exact(self, words: list[str], roles: tuple, contents: tuple) -> int | None:
        """The hold-out line of an exact (normalized) copy, or None."""
        if hash(tuple(words)) not in self.users:  # the words' hashes are reused below
            return None
        return self.conversations.get(conversation_key(roles, contents))

    def overlaps(self, words: list[str]) -> list[tuple[int, int, int]]:
        """(gram hash, hold-out line, start word) of each kept 8-gram the words share."""
        # Every kept 8-gram holds rare words, so a row without any skips the windows.
        if len(words) < GRAM or self.rare_words.isdisjoint(words) \
                or self.windows.isdisjoint(map(hash, _windows(words))):
            return []
        found = []
        seen: set[int] = set()
        last_start = len(words) - GRAM
        for window_start in range(0, len(words) - WINDOW + 1, STRIDE):
            if hash(tuple(words[window_start:window_start + WINDOW])) not in self.windows:
                continue
            for start in range(max(0, window_start - (STRIDE - 1)),
                               min(window_start, last_start) + 1):
                gram = hash(tuple(words[start:start + GRAM]))
                line = self.grams.get(gram)
                if line is not None and gram not in seen:
                    seen.add(gram)
                    found.append((gram, line, start))
        return found


_cache: OrderedDict[tuple, HoldoutIndex] = OrderedDict()
_lock = threading.Lock()


def holdout_index(holdout: Path, shown: str, sha256: str,
                  train: Path | None, train_sha256: str | None) -> HoldoutIndex:
    """The index of a hold-out file (boilerplate filtered with the train set); cached."""
    key = (shown, sha256, train_sha256)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    index = _build(holdout, shown, train, sha256, train_sha256)
    with _lock:
        _cache[key] = index
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return index


def _build(holdout: Path, shown: str, train: Path | None, sha256: str | None = None,
           train_sha256: str | None = None) -> HoldoutIndex:
    """Every pass over a file checks it is still the bytes the index is cached under."""
    index = HoldoutIndex(path=shown, rows=0)
    gram_rows: dict[int, int] = {}  # 8-gram hash -> hold-out rows holding it
    word_rows: dict[str, int] = {}  # word -> hold-out rows holding it
    for line, roles, contents in canonical_rows(holdout, sha256):
        index.rows += 1
        words = user_text(roles, contents).lower().split()
        index.users.add(hash(tuple(words)))
        index.conversations.setdefault(conversation_key(roles, contents), line)
        if len(gram_rows) > MAX_GRAMS:
            continue
        for word in set(words):
            word_rows[word] = word_rows.get(word, 0) + 1
        for gram in set(map(hash, _grams(words))):
            gram_rows[gram] = gram_rows.get(gram, 0) + 1
    if len(gram_rows) > MAX_GRAMS:
        index.note = (f"the hold-out set holds over {MAX_GRAMS:,} distinct 8-grams; the "
                      "overlap check is skipped (exact copies are still checked)")
        return index
    limit = boilerplate_limit(index.rows)
    common_words = {w for w, n in word_rows.items() if n > limit}
    if train is not None:
        common_words |= _common_words(train, set(word_rows), train_sha256)
    # A kept 8-gram is rare itself and holds at least two distinct rare words. A sequence
    # of words that many rows use (a template line, a code idiom) is boilerplate, and so
    # is one that adds a single uncommon word to them: generated or templated data
    # recombines its parts, so such sequences recur by chance. A copied prompt carries
    # many rare words (names, numbers, topic words) and is still caught.
    for line, roles, contents in canonical_rows(holdout, sha256):
        words = user_text(roles, contents).lower().split()
        for start, gram in enumerate(map(hash, _grams(words))):
            if gram_rows[gram] > limit or gram in index.grams:
                continue
            rare = set(words[start:start + GRAM]) - common_words
            if len(rare) < RARE_WORDS:
                continue
            index.grams[gram] = line
            index.rare_words.update(rare)
    if train is not None and index.grams:
        for gram in _common_in(train, set(index.grams), train_sha256):
            del index.grams[gram]
    index.ignored_grams = len(gram_rows) - len(index.grams)
    _add_windows(holdout, index, sha256)
    return index


def _common_words(path: Path, vocabulary: set[str], sha256: str | None = None) -> set[str]:
    """Words of ``vocabulary`` used by more than max(2, 1%) of the rows of ``path``."""
    counts: dict[str, int] = {}
    rows = 0
    for _, roles, contents in canonical_rows(path, sha256):
        rows += 1
        for word in vocabulary.intersection(user_text(roles, contents).lower().split()):
            counts[word] = counts.get(word, 0) + 1
    limit = boilerplate_limit(rows)
    return {w for w, n in counts.items() if n > limit}


def _common_in(path: Path, grams: set[int], sha256: str | None = None) -> set[int]:
    """The grams among ``grams`` that are boilerplate in the rows of ``path``."""
    counts: dict[int, int] = {}
    rows = 0
    for _, roles, contents in canonical_rows(path, sha256):
        rows += 1
        words = user_text(roles, contents).lower().split()
        for gram in grams.intersection(map(hash, _grams(words))):
            counts[gram] = counts.get(gram, 0) + 1
    limit = boilerplate_limit(rows)
    return {g for g, n in counts.items() if n > limit}


def _add_windows(holdout: Path, index: HoldoutIndex, sha256: str | None = None) -> None:
    """The 5-word windows at offsets 0..3 of every kept 8-gram."""
    if not index.grams:
        return
    for _, roles, contents in canonical_rows(holdout, sha256):
        words = user_text(roles, contents).lower().split()
        for start, gram in enumerate(map(hash, _grams(words))):
            if gram in index.grams:
                for offset in range(STRIDE):
                    index.windows.add(hash(tuple(words[start + offset:
                                                       start + offset + WINDOW])))


@dataclass
class OverlapHits:
    """Overlap hits of the inspected rows, judged at the end against batch boilerplate."""

    by_gram: dict[int, list] = field(default_factory=dict)  # gram -> [rows, first hits]
    MAX_KEPT = 100

    def add(self, gram: int, where: tuple) -> None:
        entry = self.by_gram.get(gram)
        if entry is None:
            self.by_gram[gram] = [1, [where]]
        else:
            entry[0] += 1
            if len(entry[1]) < self.MAX_KEPT:
                entry[1].append(where)

    def leaks(self, rows: int) -> tuple[list[tuple], int]:
        """(hits that are not batch boilerplate, grams dropped as boilerplate)."""
        limit = boilerplate_limit(rows)
        kept: list[tuple] = []
        ignored = 0
        for count, hits in self.by_gram.values():
            if count > limit:
                ignored += 1
                continue
            kept.extend(hits)
        return kept, ignored
