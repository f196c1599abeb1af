"""The signed manifest: what the operator reads, signs, and a job runs.

Owns draft_job (``draft``; what the job is given: ``job_spec``; the stored draft,
checked on every read: ``draft_store``; inspect drafts: ``inspect_draft``), the manifest
and draft models (``draft_model``), the estimate of time, cost and memory
(``estimate``, ``eval_estimate``), the run plan (``run_plan``), what the operator reads
field by field (``review``), the operator's side of signing (``operator``), and the
wheel of tunestep a remote inspection runs (``selfwheel``).

May import: ``core``, ``signing``, ``hub``, ``inspector``, ``jobs``, ``lineage``, ``data``.
"""
