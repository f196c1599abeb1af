"""The step's datasets: the chat rows (or a pre-tokenized folder) and the hold-out set, each
row fitted to ``max_length`` by the config's ``data.overlong`` rule.

TRL truncates a long sequence by keeping its start, so a row longer than ``max_length``
would train without the end of its answer (the grade) and its end token. The job measures
every row with the model's real tokenizer and training template first:

- ``truncate_prompt``: the middle of the last user turn before the answer is replaced by
  ``OMISSION`` until the whole row fits, so the answer and its end token are kept whole; a
  row that cannot fit that way (the answer alone is too long) is dropped;
- ``drop``: the row is left out;
- ``error``: the job refuses to train (exit 2), naming the row.

Every row shortened or dropped is logged; the counts go into the result. The hold-out
set's loss copy follows the same rule (``error`` shortens there: the hold-out is fixed),
while generation reads the hold-out prompts whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import sft_data
    from .job_common import EXIT_BAD_INPUT, JobError, RunLog
    from .job_config import Paths
else:  # a sibling of the job script, whose folder is on sys.path
    import sft_data
    from job_common import EXIT_BAD_INPUT, JobError, RunLog
    from job_config import Paths

OMISSION = "\n[…]\n"
_MAX_TRIES = 6  # shortening converges in one or two; bounded all the same


@dataclass
class Datasets:
    train: Any
    eval: Any
    eval_rows: list[dict]
    pretokenized: bool
    rows_shortened: int = 0
    rows_dropped: int = 0
    eval_rows_shortened: int = 0
    eval_rows_dropped: int = 0


def _lengths(rows: list[dict], tokenizer, template: str) -> list[int]:
    if not rows:
        return []
    ds = sft_data.tokenize_chat(rows, tokenizer, None, chat_template=template)
    return [len(ids) for ids in ds["input_ids"]]


def shorten_prompt(row: dict, tokenizer, template: str, max_length: int) -> dict | None:
    """The row with the middle of its last user turn cut so that it fits, or None."""
    messages = row["messages"]
    answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    users = [i for i in range(answer) if messages[i]["role"] == "user"]
    if not users:
        return None
    k = users[-1]
    content = messages[k]["content"]
    enc = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    length = len(sft_data.tokenize_row(messages, tokenizer, template, None)["input_ids"])
    cut = length - max_length + len(tokenizer(OMISSION, add_special_tokens=False)["input_ids"])
    for _ in range(_MAX_TRIES):
        if cut >= len(offsets):
            return None  # even an empty user turn would not leave the answer room
        keep = len(offsets) - cut
        head, tail = (keep + 1) // 2, keep // 2
        head_end = offsets[head - 1][1] if head else 0
        tail_start = offsets[len(offsets) - tail][0] if tail else len(content)
        shortened = content[:head_end] + OMISSION + content[tail_start:]
        new = {"messages": [*messages[:k], {**messages[k], "content": shortened},
                            *messages[k + 1:]]}
        got = len(sft_data.tokenize_row(new["messages"], tokenizer, template, None)["input_ids"])
        if got <= max_length:
            return new
        cut += got - max_length  # tokens merged differently across the cut: cut more
    return None


def fit_rows(rows: list[dict], names: list[str], tokenizer, template: str,
             max_length: int | None, policy: str, log: RunLog, what: str
             ) -> tuple[list[dict], int, int]:
    """(rows that fit, how many were shortened, how many dropped); ``names[i]`` says where
    row ``i`` comes from, for the log."""
    if max_length is None:
        return rows, 0, 0
    kept, shortened, dropped = [], 0, 0
    for row, name, n in zip(rows, names, _lengths(rows, tokenizer, template), strict=True):
        if n <= max_length:
            kept.append(row)
            continue
        if policy == "error":
            raise JobError(f"{what} {name}: {n} tokens, longer than max_length {max_length}; "
                           "data.overlong is 'error' (its answer would be cut)", EXIT_BAD_INPUT)
        fitted = (shorten_prompt(row, tokenizer, template, max_length)
                  if policy == "truncate_prompt" else None)
        if fitted is None:
            dropped += 1
            why = "data.overlong is 'drop'" if policy == "drop" else \
                "its answer alone does not fit"
            log(f"overlong: dropped {what} {name} ({n} tokens > max_length {max_length}; "
                f"{why})")
            continue
        shortened += 1
        kept.append(fitted)
        log(f"overlong: shortened the prompt of {what} {name} from {n} tokens to fit "
            f"max_length {max_length}; its answer is whole")
    if not kept:
        raise JobError(f"no {what} row fits max_length {max_length}", EXIT_BAD_INPUT)
    return kept, shortened, dropped


def _load(files, labels) -> tuple[list[dict], list[str]]:
    rows, names = [], []
    for path, label in zip(files, labels, strict=True):
        got = sft_data.load_chat_rows([path])
        rows += got
        names += [f"{label} row {i}" for i in range(1, len(got) + 1)]
    return rows, names


def _check_pretokenized(train, tokenizer, max_length: int | None, policy: str, log: RunLog):
    """Rows that preprocess cut at max_length with their answer unfinished (the last trained
    token is not the end of turn): dropped, or refused under 'error'. Their text is gone,
    so 'truncate_prompt' cannot shorten them here (preprocess's own rule applies first)."""
    if max_length is None or "labels" not in train.column_names:
        return train, 0
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = end if isinstance(end, int) and end != tokenizer.unk_token_id else tokenizer.eos_token_id

    def cut(labels: list[int]) -> bool:
        trained = [t for t in labels if t != -100]
        return len(labels) >= max_length and bool(trained) and trained[-1] != end

    bad = [i for i, labels in enumerate(train["labels"]) if cut(labels)]
    if not bad:
        return train, 0
    if policy == "error":
        raise JobError(f"tokenized_dir: {len(bad)} row(s) (first: row {bad[0] + 1}) were cut "
                       f"at max_length {max_length} inside their answer; data.overlong is "
                       "'error'", EXIT_BAD_INPUT)
    log(f"overlong: dropped {len(bad)} pre-tokenized row(s) cut inside their answer "
        f"(rows {', '.join(str(i + 1) for i in bad[:20])}{' …' if len(bad) > 20 else ''})")
    drop = set(bad)
    return train.select([i for i in range(len(train)) if i not in drop]), len(bad)


def load_datasets(cfg: dict, paths: Paths, tokenizer, template: str, log: RunLog) -> Datasets:
    """Raw chat rows unless tokenized_dir is given; both fitted to max_length."""
    from datasets import Dataset, DatasetDict, load_from_disk

    max_length = cfg["hyperparameters"]["max_length"]
    policy = cfg["data"]["overlong"]
    try:
        eval_rows = sft_data.load_chat_rows([paths.eval_file])
        eval_fit, eval_short, eval_drop = fit_rows(
            eval_rows, [f"row {i}" for i in range(1, len(eval_rows) + 1)], tokenizer,
            template, max_length, "drop" if policy == "drop" else "truncate_prompt", log,
            "hold-out")
        if paths.tokenized_dir is None:
            train_rows, names = _load(paths.train_files,
                                      [f["path"] for f in cfg["train_files"]])
            train_fit, short, drop = fit_rows(train_rows, names, tokenizer, template,
                                              max_length, policy, log, "train")
            log(f"train rows: {len(train_fit)} of {len(train_rows)} ({short} shortened, "
                f"{drop} dropped), eval rows: {len(eval_rows)}")
            return Datasets(Dataset.from_list(train_fit), Dataset.from_list(eval_fit),
                            eval_rows, False, short, drop, eval_short, eval_drop)
    except sft_data.DataError as exc:
        raise JobError(f"bad data: {exc}", EXIT_BAD_INPUT) from exc

    train = load_from_disk(str(paths.tokenized_dir))
    if isinstance(train, DatasetDict):
        if "train" not in train:
            raise JobError("tokenized_dir holds splits but no 'train'", EXIT_BAD_INPUT)
        train = train["train"]
    if "input_ids" not in train.column_names:
        raise JobError("tokenized_dir has no input_ids column", EXIT_BAD_INPUT)
    if "labels" not in train.column_names and "assistant_masks" not in train.column_names:
        raise JobError("tokenized_dir needs labels or assistant_masks (assistant-only loss)",
                       EXIT_BAD_INPUT)
    train, drop = _check_pretokenized(train, tokenizer, max_length, policy, log)
    # Eval gets the very same tokenization, so train and eval losses measure the same thing.
    eval_ds = sft_data.tokenize_chat(eval_fit, tokenizer, max_length, chat_template=template)
    log(f"pretokenized train rows: {len(train)} from {paths.tokenized_dir}; "
        f"eval rows: {len(eval_ds)}")
    return Datasets(train, eval_ds, eval_rows, True, 0, drop, eval_short, eval_drop)
