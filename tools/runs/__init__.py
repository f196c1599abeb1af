"""Runs: an approved draft becomes a job, and a job becomes a step's outcome.

Owns submit_job (``submit``, and ``hf_submit`` for the paid Hugging Face job), the local
backend's detached supervisor and its launch (``local_backend``, ``job_launch``), status,
logs and cancel for both backends (``job_control``; the Hub's side in ``hf_status``,
a log's readable view in ``log_filter``, the rows they read in ``job_rows``), a
running job's progress (``job_progress``) and a finished step's outcome
(``step_outcome``).

May import: every other package of ``tunestep.tools``.
"""
