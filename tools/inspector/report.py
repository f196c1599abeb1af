"""The inspector's typed results, and their cache in the ledger.

Results are sized for a chat: findings are capped (errors first), with the total counted
per code. A report is cached in the ledger's ``inspections`` table under a key built from
the content hashes of every file it depends on (see ``cache_key``), so inspecting an
unchanged batch again costs one hash per file.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Literal

from pydantic import BaseModel, Field

from tunestep.tools.core import ledger
from tunestep.tools.core.hashing import sha256_json
from tunestep.tools.core.next_step import NextAction
from tunestep.tools.inspector.spec import MappingSpec

INSPECTOR_VERSION = "5"  # bump when a rule changes what a report says
KEEP_PER_PATH = 8  # cached reports kept per inspected path

Status = Literal["READY", "NEEDS_MAPPING", "INVALID"]
Severity = Literal["error", "warning", "info"]


class Finding(BaseModel):
    file: str
    line: int | None  # 1-based; the row number for Parquet and Hub datasets
    code: str
    severity: Severity
    message: str


class FileReport(BaseModel):
    path: str
    container: str  # jsonl | json | parquet | hub
    format: str  # chat, chat_parts, sharegpt, alpaca, ..., mixed, empty, unreadable
    rows: int
    sha256: str | None
    status: Status
    first_lines: dict[str, int] = Field(default_factory=dict)  # format -> its first line
    line_numbers: Literal["line", "row"] = "line"


class Percentiles(BaseModel):
    min: int
    p50: int
    p95: int
    max: int


class OverlongRow(BaseModel):
    """A row longer than max_length: TRL would cut its end, the answer and its grade."""

    file: str
    line: int | None
    tokens: int


OVERLONG_LISTED = 10_000  # over-long rows listed in full (all are counted)


class TokenStats(BaseModel):
    tokenizer: str
    per_row: Percentiles | None
    per_assistant_part: Percentiles | None
    over_max_length: int
    max_length: int
    # Every over-long row (up to OVERLONG_LISTED): the draft's length check reads these
    # from the cached report instead of tokenizing again.
    overlong_rows: list[OverlongRow] = Field(default_factory=list)
    total_tokens: int
    # What training sees: each row cut at max_length (the estimate counts these). None in
    # a report made before this field existed.
    trained_tokens: int | None = None
    rendering: str  # how rows were rendered: "template" or "template (cached shapes)"


class Stats(BaseModel):
    """Over the rows that pass every structural check (what training would see)."""

    rows: int
    turns: Percentiles | None
    roles: dict[str, int]
    chars: dict[str, Percentiles]
    grades: dict[str, int] = Field(default_factory=dict)
    tokens: TokenStats | None = None


class Duplicates(BaseModel):
    in_input: int
    of_earlier: int
    compared_with: list[str]


class NearMatchRow(BaseModel):
    """An inspected row whose prompt holds most of a hold-out prompt (leakage.py)."""

    file: str
    line: int
    holdout_line: int
    containment: float  # share of the hold-out prompt's distinctive 8-grams it holds


class Leakage(BaseModel):
    holdout: str | None
    checked: bool
    exact: int = 0  # rows whose prompt is a hold-out prompt (errors)
    near_match_rows: int = 0  # rows at or above near_match_threshold (warnings)
    near_match_threshold: float = 0.5
    near_matches: list[NearMatchRow] = Field(default_factory=list)  # the first 100
    overlap_rows: int = 0
    ignored_boilerplate_grams: int = 0
    note: str | None = None


class MappingPreview(BaseModel):
    """What the suggested mapping would do (``rows_dropped`` is at most, for repairs)."""

    rows_in: int
    rows_out: int
    rows_dropped: int
    drop_reasons: dict[str, int] = Field(default_factory=dict)
    exact: bool = True


class InspectionReport(BaseModel):
    path: str
    status: Status
    summary: str
    files: list[FileReport]
    errors: list[Finding]  # errors first (up to max_errors), then warnings (a few per code)
    error_count: int
    warning_count: int
    counts: dict[str, int]  # every finding counted by rule code
    truncated: bool
    # "checked": tokens=True counted every row against training.max_length; "unchecked":
    # not counted (the status is the same either way; over-long rows are warnings).
    lengths: Literal["checked", "unchecked"] = "unchecked"
    stats: Stats
    duplicates: Duplicates
    leakage: Leakage
    suggested_mapping: MappingSpec | None = None
    mapping_preview: MappingPreview | None = None
    next_actions: list[str] = Field(default_factory=list)
    next_steps: list[NextAction] = Field(default_factory=list)  # next_actions, structured
    cached: bool = False
    cache_key: str | None = None
    inspector_version: str = INSPECTOR_VERSION


def cache_key(parts: dict) -> str:
    """sha256 over the canonical JSON of everything a report depends on."""
    return sha256_json({"inspector_version": INSPECTOR_VERSION, **parts})


def cached_report(conn: sqlite3.Connection, key: str) -> InspectionReport | None:
    row = conn.execute("SELECT report FROM inspections WHERE cache_key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        report = InspectionReport.model_validate_json(row["report"])
    except ValueError:  # written by another version: recompute rather than trust it
        return None
    return report.model_copy(update={"cached": True})


def store_report(conn: sqlite3.Connection, key: str, report: InspectionReport) -> None:
    """Store (or replace) a report; only the latest few per path are kept."""
    with ledger.transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO inspections(cache_key, path, report, created_at) "
            "VALUES (?, ?, ?, ?)", (key, report.path, report.model_dump_json(), time.time()))
        conn.execute(
            "DELETE FROM inspections WHERE path = ? AND cache_key NOT IN ("
            "SELECT cache_key FROM inspections WHERE path = ? "
            "ORDER BY created_at DESC LIMIT ?)", (report.path, report.path, KEEP_PER_PATH))
