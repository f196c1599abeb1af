"""The Hugging Face Hub: every call tunestep makes to it, and its failures as named errors.

Owns the Hub client's timeouts and errors (``errors``), repository ids and their defaults
from whoami (``ids``), whether a token is available without ever showing it (``token``),
the Jobs API and the step bundle (``jobs_api``: upload, submit, status, logs, cancel,
outputs, prices) and the polling interval (``poll``).

May import: ``core``.
"""
