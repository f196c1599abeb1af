"""Models and lineage: the versions a step makes and which one is latest.

Owns the model store behind ``models/<name>`` (``model_store``), the line of versions
derived from the ledger (``line``), where the next step starts (``chain``,
``start_point``; ``adapter_merge``: a full step after LoRA merges the adapter first),
signed promotions and rollbacks and their verification on every read (``promotion``,
``promotion_records``), a version's recorded files (``version_files``),
the store's latest link checked against the ledger (``latest_check``), a remote step's
result (``remote_result``), and bringing a pushed version home (``model_sync``,
``outputs_merge``).

May import: ``core``, ``signing``, ``hub``, ``jobs``.
"""
