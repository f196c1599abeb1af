"""The ground floor: what every capability stands on.

Owns the workspace and its path confinement, the plan as a typed model (its values and
its RE2 patterns), the SQLite ledger, atomic writes, hashing, bounded file reading and
which data files a folder holds, the typed error and the next step said as data, and the
per-call memo (the plan read once, each unchanged file hashed once).

May import: nothing else of ``tunestep.tools`` (standard library and third-party only).
"""
