"""What a step trains on: the models merge.py computes and its readers consume.

They live below ``merge.py`` so that the tokenized-dataset lookup
(``tokenized_cache.py``), which both merge and preprocess use, can name them without
importing merge: no import circle (``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Strategy = Literal["list", "file"]
Regime = Literal["replay", "cumulative", "from_base"]


class RowRef(BaseModel):
    path: str  # workspace-relative
    line: int  # 1-based: the line in a JSONL file, the element of a JSON array, the Parquet row


class DuplicateRow(RowRef):
    duplicate_of: RowRef


class SourceFile(BaseModel):
    """One file of the step's data, in training order."""

    path: str
    sha256: str
    rows: int
    part: str  # "base" or the batch name
    step: int  # 0 for the base set
    origin: Literal["base", "original", "mapped"]
    selected: list[int] | None = None  # 0-based rows kept (strategy file); None: all rows


class TrainFile(BaseModel):
    """A file the job reads, as the job config lists it."""

    path: str
    sha256: str
    rows: int


class TokenizedFile(BaseModel):
    path: str
    sha256: str
    size: int


class ReplayInfo(BaseModel):
    # off: regime cumulative/from_base; nothing_earlier: the first batch; fresh_start:
    # nothing trained to resume from; sampled: the earlier rows were sampled.
    mode: Literal["off", "nothing_earlier", "fresh_start", "sampled"]
    fraction: float
    seed: int
    regime: Regime = "replay"
    earlier_rows: int = 0  # earlier rows after dedup, the population sampled from
    sampled_rows: int = 0
    strata: int = 0  # (source, grade) groups sampled from
    rotation_step: int = 0  # the step the rotation's order is seeded with
    repeated_rows: int = 0  # sampled rows an earlier step replayed already
    # replay: earlier batches whose step was not promoted, trained in full again
    held_back: list[str] = Field(default_factory=list)
    reason: str = ""  # why the step trains the rows it trains, in one sentence


class HoldoutInfo(BaseModel):
    path: str
    sha256: str
    rows: int


class StepDatasets(BaseModel):
    """What a step trains on, and how it reaches the job (draft_job's input)."""

    batch: str
    step: int
    strategy: Strategy
    sources: list[SourceFile]
    train_files: list[TrainFile]  # list: the sources; file: the merged file
    rows: int  # rows the job trains on
    dedup: bool
    duplicate_count: int
    duplicates_dropped: bool  # only the merged file can drop rows
    duplicates: list[DuplicateRow]
    replay: ReplayInfo
    holdout: HoldoutInfo
    digest: str  # over sources, their hashes and selections, hold-out, options
    merged: str | None = None  # strategy file: the merged file, fresh for this digest
    replay_file: str | None = None  # strategy list + sampled replay: the sample's own file
    tokenized_dir: str | None = None  # a tokenized dataset matching these rows, if any
    tokenized_key: str | None = None
    tokenized_files: list[TokenizedFile] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
