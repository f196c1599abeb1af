"""Leakage into the hold-out set, judged on what the model sees: the prompt.

The prompt is the row's user turn(s) (the code to grade is in them); a row without a user
turn is judged on its system turn. System prompts and answers are left out on purpose: a
hold-out question trained with another system prompt or a reworded answer still teaches
the model the hold-out question. Prompts are compared after ``normalize_prompt``: Unicode
NFKC, case folding, the invisible characters dropped (zero-width and other
Default_Ignorable code points, control characters that are not whitespace) and runs of
whitespace folded, so a copy with a zero-width space after every space is a copy.

Exact: a training prompt equal to a hold-out prompt is an error (``holdout_duplicate``)
naming the hold-out file and line. Equal means the same normalized words with every
separator removed, so spaces taken out, doubled or replaced by a zero-width one match.

Near: the hold-out prompt's distinctive 8-word shingles (see below) that the training
prompt contains, as a share of all of them (Broder's *containment* of the hold-out prompt
in the training prompt; asymmetric on purpose: extra text around a copied prompt does not
hide it). At ``NEAR_MATCH`` (0.5) or more it is a warning ``holdout_near_match``: more
than half of what is distinctive about a hold-out question is in a training row. A
reworded instruction over the same code keeps most shingles (0.7-0.9 on the sample
rows); independent prompts on the same template share none (tested on several seeds).
Fewer shared shingles are the weaker warning ``holdout_overlap`` (one per row).

Distinctive shingles: real data shares boilerplate (the same task template, the same
code idioms), which is not leakage, so an 8-gram is ignored when it occurs in more than
max(2, 1%) of the hold-out rows or of the base train rows, and when fewer than 2 of its
words are uncommon (a word is common when more than max(2, 1%) of the hold-out or train
rows use it): a template line or a code idiom, not a copied prompt. ``holdout_overlap``
also ignores a shingle shared by more than max(2, 1%) of the inspected rows (applied at
the end of the run, see ``OverlapHits``); a near match does not, so spreading copies of
one hold-out prompt over several rows does not hide them.

Speed: each inspected row looks up only every 4th 5-word window of its prompt in a set
of the 5-word windows of the kept hold-out 8-grams (all built in C by ``zip`` and
``hash``). Any shared 8-gram contains one of those windows, so nothing is missed; only a
window hit is verified against the 8-grams themselves. ASCII prompts (most) skip the
Unicode normalization. Memory: per hold-out row one prompt hash and one shingle count,
per kept 8-gram one hash and its 5-word windows (bounded by ``MAX_GRAMS``).
"""

from __future__ import annotations

import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tunestep.tools.inspector.refs import canonical_rows

GRAM = 8
WINDOW = 5
STRIDE = 4  # WINDOW + STRIDE - 1 <= GRAM: every 8-gram holds a strided window
RARE_WORDS = 2  # distinct uncommon words a kept 8-gram must hold
MAX_GRAMS = 4_000_000  # beyond this many hold-out 8-grams the overlap check is skipped
NEAR_MATCH = 0.5  # containment of a hold-out prompt's kept 8-grams that is a near match
NEAR_LISTED = 100  # near matches a report lists (all are counted)
_CACHE_SIZE = 4

# Characters the model's tokenizer sees but a reader does not: Unicode's
# Default_Ignorable_Code_Point set (zero-width space/joiners, bidi and other format
# controls, variation selectors, Hangul fillers, tag characters), and the C0/C1 control
# characters that str.split() does not already treat as whitespace.
_IGNORABLE = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
              (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
              (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
              (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
              (0xE0000, 0xE0FFF)]
_CONTROLS = [c for c in [*range(0x20), *range(0x7F, 0xA0)] if not chr(c).isspace()]
_DROP: dict[int, str | None] = dict.fromkeys(
    [*_CONTROLS, *(c for lo, hi in _IGNORABLE for c in range(lo, hi + 1))])
_DROP[0x200B] = " "  # a zero-width *space* separates words (the others join or vanish)
_ASCII_DROP = {c: None for c in _CONTROLS if c < 0x80}


def normalize_prompt(text: str) -> tuple[list[str], str]:
    """(words, the words joined with no separator) of a prompt, as compared with the
    hold-out set (see the module doc): the words for shingles, the join for exact."""
    if text.isascii():  # NFKC and case folding change nothing in ASCII but the case
        words = text.lower().split()
        joined = "".join(words)
        # split() took the whitespace controls; any other control character is left in a
        # word, where isprintable() (one C pass over the join, needed anyway) finds it.
        if joined.isprintable():
            return words, joined
        words = text.translate(_ASCII_DROP).lower().split()
    else:
        words = unicodedata.normalize("NFKC", text).translate(_DROP).casefold().split()
    return words, "".join(words)


def prompt_words(text: str) -> list[str]:
    """The normalized words of a prompt."""
    return normalize_prompt(text)[0]


def prompt_text(roles: tuple, contents: tuple, users: tuple | None = None) -> str:
    """The prompt of a row: its user turns, or its system turn when it has none."""
    if users is None:
        users = tuple(i for i, r in enumerate(roles) if r == "user")
    if len(users) == 1:
        return contents[users[0]]
    if users:
        return "\n".join(contents[i] for i in users)
    return "\n".join(c for r, c in zip(roles, contents, strict=True) if r == "system")


def prompt_key(joined: str) -> int:
    """The exact-match key: the normalized words with no separator at all, so a space
    removed, added or replaced by an invisible character changes nothing."""
    return hash(joined)


def boilerplate_limit(rows: int) -> int:
    """An 8-gram in more rows than this is boilerplate, not leakage."""
    return max(2, math.ceil(rows / 100))


def _grams(words: list[str]):
    return zip(*(words[i:] for i in range(GRAM)), strict=False)  # shortest wins


def _windows(words: list[str]):
    # The windows starting at 0, 4, 8, ...: (w0..w4), (w4..w8), ...
    return zip(words[0::4], words[1::4], words[2::4], words[3::4], words[4::4], strict=False)


def _words_of(path: Path, sha256: str | None):
    """(line, prompt words) of every valid row of a file."""
    for line, roles, contents in canonical_rows(path, sha256):
        yield line, normalize_prompt(prompt_text(roles, contents))[0]


@dataclass
class NearMatch:
    line: int  # the hold-out line
    containment: float  # share of its kept 8-grams the inspected prompt holds


@dataclass
class HoldoutIndex:
    path: str
    rows: int
    prompts: dict[int, int] = field(default_factory=dict)  # prompt hash -> hold-out line
    grams: dict[int, int] = field(default_factory=dict)  # kept 8-gram hash -> line
    owned: dict[int, int] = field(default_factory=dict)  # line -> kept 8-grams it owns
    windows: set[int] = field(default_factory=set)
    rare_words: set[str] = field(default_factory=set)  # the uncommon words of kept grams
    ignored_grams: int = 0
    note: str | None = None

    def exact(self, joined: str) -> int | None:
        """The hold-out line whose normalized prompt is ``joined``, or None."""
        return self.prompts.get(prompt_key(joined)) if joined else None

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

    def nearest(self, found: list[tuple[int, int, int]]) -> NearMatch | None:
        """The hold-out prompt most contained in a row, from its ``overlaps``, when its
        containment reaches NEAR_MATCH."""
        shared: dict[int, int] = {}
        for _, line, _ in found:
            shared[line] = shared.get(line, 0) + 1
        best = None
        for line, count in shared.items():
            share = count / self.owned[line]
            if share >= NEAR_MATCH and (best is None or share > best.containment):
                best = NearMatch(line=line, containment=share)
        return best


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
    for line, words in _words_of(holdout, sha256):
        index.rows += 1
        if words:
            index.prompts.setdefault(prompt_key("".join(words)), line)
        if len(gram_rows) > MAX_GRAMS:
            continue
        for word in set(words):
            word_rows[word] = word_rows.get(word, 0) + 1
        for gram in set(map(hash, _grams(words))):
            gram_rows[gram] = gram_rows.get(gram, 0) + 1
    if len(gram_rows) > MAX_GRAMS:
        index.note = (f"the hold-out set holds over {MAX_GRAMS:,} distinct 8-grams; the "
                      "near-match and overlap checks are skipped (exact prompts are still "
                      "checked)")
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
    for line, words in _words_of(holdout, sha256):
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
    for line in index.grams.values():
        index.owned[line] = index.owned.get(line, 0) + 1
    index.ignored_grams = len(gram_rows) - len(index.grams)
    _add_windows(holdout, index, sha256)
    return index


def _common_words(path: Path, vocabulary: set[str], sha256: str | None = None) -> set[str]:
    """Words of ``vocabulary`` used by more than max(2, 1%) of the rows of ``path``."""
    counts: dict[str, int] = {}
    rows = 0
    for _, words in _words_of(path, sha256):
        rows += 1
        for word in vocabulary.intersection(words):
            counts[word] = counts.get(word, 0) + 1
    limit = boilerplate_limit(rows)
    return {w for w, n in counts.items() if n > limit}


def _common_in(path: Path, grams: set[int], sha256: str | None = None) -> set[int]:
    """The grams among ``grams`` that are boilerplate in the rows of ``path``."""
    counts: dict[int, int] = {}
    rows = 0
    for _, words in _words_of(path, sha256):
        rows += 1
        for gram in grams.intersection(map(hash, _grams(words))):
            counts[gram] = counts.get(gram, 0) + 1
    limit = boilerplate_limit(rows)
    return {g for g, n in counts.items() if n > limit}


def _add_windows(holdout: Path, index: HoldoutIndex, sha256: str | None = None) -> None:
    """The 5-word windows at offsets 0..3 of every kept 8-gram."""
    if not index.grams:
        return
    for _, words in _words_of(holdout, sha256):
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
