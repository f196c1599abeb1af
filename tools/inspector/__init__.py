"""run_inspector: every row checked, streamed."""
