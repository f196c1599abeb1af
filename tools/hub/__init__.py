"""The Hugging Face Hub: every call tunestep makes to it, and its failures as named errors.

Owns the Hub client's timeouts and errors (``errors``), repository ids and their defaults
from whoami (``ids``), whether a token is available without ever showing it (``token``),
the checks of names and private repos (``repos``), the step bundle and its upload
(``bundle``), the Jobs API (``jobs_api``: submit, status, find, logs, cancel; a job's
answer read by ``job_info``), a job's outputs (``job_outputs``), hardware prices
(``prices``) and the polling interval (``poll``).

May import: ``core``.
"""
