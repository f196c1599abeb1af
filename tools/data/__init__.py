"""The step's data: from a batch folder to the rows a job trains on.

Owns check_batch (``preflight``, ``batch_folders``), the hold-out set's pin and the
operator's signed re-pins of it (``holdout_pin``, ``holdout_repin``, ``holdout_records``,
``holdout_rows``), apply_mapping
(``mapping``, ``mapping_guards``), the step's datasets, the merge and the replay regime
(``merge``, ``selection``, ``step_sources``, ``replay_sample``, ``step_data``,
``data_rows``, ``data_writer``), every row's length (``lengths``), and tokenized datasets
with their content-keyed cache (``preprocess``, ``tokenize_part``, ``tokenized_cache``).

May import: ``core``, ``signing``, ``hub``, ``inspector``, ``jobs``, ``lineage``.
"""
