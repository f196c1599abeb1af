"""The model store behind ``models/<name>``: which checkpoint is the latest.

A store holds versioned folders ``versions/NNNN_<batch>/`` and a ``latest`` link that a
job moves atomically after a successful step. A store that an operator synced by hand
may instead hold the model files directly; then the store itself is the checkpoint.

What is here describes the store as it looks (check_batch's checkpoint line). Where a
step starts, and whether it resumes at all, is the ledger's answer
(``tools/latest_check``): the link is never followed for that.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

MODEL_MARKERS = ("config.json", "adapter_config.json")


class CheckpointStatus(BaseModel):
    link: str  # workspace-relative models/<name>
    exists: bool
    is_link: bool
    target: str | None  # where the link points, as written in the link
    target_exists: bool
    latest: str | None  # resolved path of the latest checkpoint
    kind: str | None  # "full" | "lora"
    versions: list[str]
    # Where the latest version came from, from the ledger (check_batch fills these in): its
    # own local job or a download of a pushed commit, and that commit when known.
    source: str | None = None
    hub_model_id: str | None = None
    hub_revision: str | None = None


def checkpoint_kind(folder: Path) -> str | None:
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / "config.json").is_file():
        return "full"
    return None


def latest_checkpoint(store: Path) -> Path | None:
    """The checkpoint a resume starts from, or None when the store has none."""
    latest = store / "latest"
    if latest.exists() and checkpoint_kind(latest.resolve()):
        return latest.resolve()
    if checkpoint_kind(store):
        return store
    versions = list_versions(store)
    return versions[-1] if versions else None


def list_versions(store: Path) -> list[Path]:
    folder = store / "versions"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and checkpoint_kind(p))


def inspect_store(link: Path, shown: str) -> CheckpointStatus:
    is_link = link.is_symlink()
    target = os.readlink(link) if is_link else None
    exists = link.exists()
    latest = latest_checkpoint(link) if exists and link.is_dir() else None
    return CheckpointStatus(
        link=shown,
        exists=exists or is_link,
        is_link=is_link,
        target=target,
        target_exists=exists,
        latest=str(latest) if latest else None,
        kind=checkpoint_kind(latest) if latest else None,
        versions=[p.name for p in list_versions(link)] if exists else [],
    )
