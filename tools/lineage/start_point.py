"""Where a step starts: the model a draft's job loads, and from where.

A type of its own, below everything that names it (``chain`` computes it, ``draft_model``
carries it, ``lineage`` maps it to a version), so none of them imports another for it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class StartPoint(BaseModel):
    """What a draft's job loads, and from where, in the words of the job config."""

    base_model: str
    resume_from: str | None
    source: Literal["base", "local", "hub", "bundle"]
    described: str  # one line for the run plan
    checkpoint: str | None = None  # a local folder the bundle carries (source "bundle")
    hub_model_id: str | None = None
    hub_revision: str | None = None
    warnings: list[str] = Field(default_factory=list)
