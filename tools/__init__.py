"""The domain: capability packages, typed pydantic in and out, no MCP imports.

Bottom to top (a package imports only those below it; tests/test_architecture.py holds
this): ``jobs`` (the standalone job) and ``core`` (the ground floor); ``signing``,
``hub``, ``inspector``, ``demo``; ``lineage``; ``data``; ``drafts``; ``runs``. The
server and the CLI (``tunestep.server``) are views over them. .specs/layout.md has the
table.
"""
