"""The sample workspace and the tiny local model the demo and the tests train.

May import: ``core``.
"""
