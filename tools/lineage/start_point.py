"""Where a step starts: the model a draft's job loads, and from where.

A type of its own, below everything that names it (``chain`` computes it, ``draft_model``
carries it, ``lineage`` maps it to a version), so none of them imports another for it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AdapterMerge(BaseModel):
    """A full step after LoRA steps: its job loads ``base``, applies the start adapter
    with PEFT and merges it (``merge_and_unload``), then trains the merged weights in full.
    The adapter's files are the start checkpoint's (files role ``checkpoint``) or a pinned
    Hub commit; a local base's every file is hashed too (files role ``merge_base``)."""

    adapter: str  # the adapter as people find it: a version folder's name, or hf://id@sha
    base: str  # the base it merges into, as the job config names it: a Hub id, a folder
    base_local: bool  # a local folder, every file of it signed (role "merge_base")


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
    merge: AdapterMerge | None = None  # a full step on a LoRA adapter: merged first
