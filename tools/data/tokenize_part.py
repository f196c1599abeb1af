"""One source file tokenized as the job tokenizes it: a part of preprocess's cache.

The job's own tokenization (``tunestep.tools.jobs.sft_data``) on one file, cut to
``max_length`` here so the part record knows each row's length, which rows were
truncated and which lost every assistant token. Apart from preprocess.py, which keys,
assembles and caches the parts: this is the only module of it that tokenizes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_file
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.data.step_data import SourceFile
from tunestep.tools.data.tokenized_cache import CACHE_VERSION
from tunestep.tools.data.tokenized_cache import read_json as _read_json


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars from save_to_disk (stdout/stderr belong to the MCP transport)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _row_lines(path: Path, rows: int) -> list[int]:
    """Line numbers of the rows, counted as the job's loader counts them."""
    if path.suffix.lower() != ".jsonl":
        return list(range(1, rows + 1))
    text = path.read_text(encoding="utf-8")
    return [n for n, line in enumerate(io.StringIO(text, newline=None), start=1)
            if line.strip()]


class Tokenizer:
    """The tokenizer and training template, loaded once and only on a cache miss."""

    def __init__(self, folder: Path) -> None:
        from tunestep.tools.inspector.tokens import LOAD_LOCK
        from tunestep.tools.jobs import sft_data

        # transformers' first import fails in two threads at once (a server runs tool
        # calls in threads): one load at a time, with the inspector's and draft's loads.
        with LOAD_LOCK:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        try:
            self.template = sft_data.training_chat_template(self.tokenizer)
        except ValueError as exc:
            raise TunestepError("chat_template", str(exc), path=str(folder)) from None
        if sft_data.has_generation_markers(self.tokenizer.chat_template):
            self.source = "model"
        elif self.template == sft_data.bundled_qwen3_training_template():
            self.source = "bundled"
        else:
            self.source = "trl"


def tokenize_file(ws: Workspace, source: SourceFile, tok: Tokenizer, max_length: int,
                   out: Path) -> dict:
    """Tokenize one file into ``out`` (save_to_disk); return its part record.

    Rows are tokenized in full, then cut to ``max_length`` here, so the record knows which
    rows were truncated and which lost every assistant token (refused, listing the lines).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    from tunestep.tools.jobs import sft_data

    path = ws.resolve(source.path)
    _same_content(path, source)
    try:
        rows = sft_data.load_chat_rows([path])
        full = sft_data.tokenize_chat(rows, tok.tokenizer, None, chat_template=tok.template)
    except sft_data.DataError as exc:
        raise TunestepError("data_format", str(exc).replace(str(path), source.path),
                            path=source.path) from None
    lines = _row_lines(path, len(rows))
    _same_content(path, source)  # read twice above: both reads saw the keyed content
    table = full.data.table
    full_lengths = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(table["labels"]).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(full_lengths)[:-1]])
    row_of = np.repeat(np.arange(len(full_lengths)), full_lengths)
    position = np.arange(len(flat)) - np.repeat(starts, full_lengths)
    trained = (flat != -100) & (position < max_length)
    assistant = np.bincount(row_of, weights=trained, minlength=len(full_lengths)).astype(int)
    cut = np.flatnonzero(assistant == 0)
    if len(cut):
        listed = ", ".join(f"{source.path}:{lines[i]} ({int(full_lengths[i])} tokens)"
                           for i in cut[:20])
        raise TunestepError(
            "assistant_truncated",
            f"{len(cut)} row(s) lose every assistant token at max_length {max_length}: "
            f"{listed}. Raise training.max_length or shorten those prompts.",
            path=source.path, line=lines[int(cut[0])])
    lengths = np.minimum(full_lengths, max_length)
    if (full_lengths > max_length).any():  # keep the start, as the job's tokenize_chat does
        cols = [pc.list_slice(table[name], 0, max_length) for name in table.column_names]
        table = pa.Table.from_arrays(cols, schema=table.schema)
    with quiet_datasets():
        Dataset(table).save_to_disk(str(out))
    truncated = [[int(i), lines[i], int(full_lengths[i])]
                 for i in np.flatnonzero(full_lengths > max_length)]
    return {
        "version": CACHE_VERSION, "input": {"path": source.path, "sha256": source.sha256,
                                            "rows": len(rows)},
        "max_length": max_length, "template": tok.source,
        "lengths": lengths.tolist(), "assistant_tokens": assistant.tolist(),
        "truncated": truncated, "files": _data_files(out),
    }


def _same_content(path: Path, source: SourceFile) -> None:
    """The part is keyed by the hash seen when rows were selected; refuse anything else."""
    if sha256_file(path) != source.sha256:
        raise TunestepError("data_changed", "the file changed while preprocessing; run it "
                            "again", path=source.path)


def _data_files(folder: Path) -> list[dict]:
    state = _read_json(folder / "state.json") or {}
    out = []
    for entry in state.get("_data_files", []):
        path = folder / entry["filename"]
        out.append({"name": entry["filename"], "sha256": sha256_file(path),
                    "size": path.stat().st_size})
    return out
