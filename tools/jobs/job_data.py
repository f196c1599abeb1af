"""The step's datasets: the chat rows (or a pre-tokenized folder) and the hold-out set."""

from __future__ import annotations

if __package__:  # imported as tunestep.tools.jobs.<module>
    from . import sft_data
    from .job_common import EXIT_BAD_INPUT, JobError, RunLog
    from .job_config import Paths
else:  # a sibling of the job script, whose folder is on sys.path
    import sft_data
    from job_common import EXIT_BAD_INPUT, JobError, RunLog
    from job_config import Paths


def load_datasets(cfg: dict, paths: Paths, tokenizer, template: str, log: RunLog):
    """(train, eval, eval_rows, pretokenized). Raw chat rows unless tokenized_dir is given."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        eval_rows = sft_data.load_chat_rows([paths.eval_file])
        if paths.tokenized_dir is None:
            train_rows = sft_data.load_chat_rows(paths.train_files)
            log(f"train rows: {len(train_rows)}, eval rows: {len(eval_rows)}")
            return Dataset.from_list(train_rows), Dataset.from_list(eval_rows), eval_rows, False
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
    # Eval gets the very same tokenization, so train and eval losses measure the same thing.
    max_length = cfg["hyperparameters"]["max_length"]
    eval_ds = sft_data.tokenize_chat(eval_rows, tokenizer, max_length, chat_template=template)
    log(f"pretokenized train rows: {len(train)} from {paths.tokenized_dir}; "
        f"eval rows: {len(eval_ds)}")
    return train, eval_ds, eval_rows, True

