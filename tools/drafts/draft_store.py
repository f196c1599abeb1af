"""A draft as the ledger keeps it: stored, read back and checked against its digest.

Every reader goes through ``load_draft`` (or ``stored_manifest`` / ``draft_from_row`` for
a row already in hand): the manifest bytes are parsed and checked against the stored
digest (``draft_tampered``), so nothing reads a draft the operator did not sign. Apart
from ``draft.py`` because readers (operator, submit, status, the cards) need no drafting.
"""

from __future__ import annotations

import time
from typing import Any

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.drafts.draft_model import (
    UNSIGNED,
    DraftManifest,
    DraftView,
    JobDraft,
    draft_id_for,
    job_config_of,
    manifest_bytes,
    manifest_digest,
    parse_manifest,
)


def store_draft(conn, draft: JobDraft) -> None:
    """The manifest's exact bytes (signed) and, apart, what is shown but never executed."""
    assert draft.manifest is not None, "a stored draft carries its manifest"
    conn.execute(
        "INSERT OR IGNORE INTO drafts(draft_id, digest, kind, batch, payload, manifest,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (draft.draft_id, draft.digest, draft.kind, draft.batch,
         draft.model_dump_json(include=set(UNSIGNED)), draft.manifest.encode(), time.time()))


def load_draft(ws: Workspace, draft_id: str) -> JobDraft:
    """The stored draft, its signed fields parsed from the stored manifest bytes after
    they hash to the stored digest (``draft_tampered`` otherwise)."""
    with ledger.open_ledger(ws) as conn:
        row = conn.execute("SELECT digest, payload, manifest FROM drafts WHERE draft_id = ?",
                           (draft_id,)).fetchone()
    if row is None:
        raise TunestepError("draft_unknown", f"no draft {draft_id!r} in the ledger of the "
                            f"workspace {ws.root} (a draft belongs to the workspace it was "
                            "made in: give that one with --workspace)")
    return draft_from_row(row, draft_id)


def stored_manifest(row, draft_id: str, digest: str | None = None
                    ) -> tuple[bytes, DraftManifest]:
    """The verified manifest of a ``drafts`` row: its bytes must hash to ``digest`` (the
    token's, when given) or else to the row's stored digest."""
    data = row["manifest"]
    if data is None:
        raise TunestepError("draft_unsigned", f"{draft_id} was drafted before drafts had a "
                            "signed manifest; draft again and ask for a new approval")
    data = data.encode() if isinstance(data, str) else bytes(data)
    return data, parse_manifest(data, digest or row["digest"], draft_id)


def draft_from_row(row, draft_id: str, *, digest: str | None = None) -> JobDraft:
    data, manifest = stored_manifest(row, draft_id, digest)
    try:
        view = DraftView.model_validate_json(row["payload"] or "{}")
    except ValueError:
        raise TunestepError("draft_tampered", f"the stored view of {draft_id} (estimate, "
                            "warnings) is unreadable; draft again") from None
    return draft_from_manifest(manifest, data, manifest_digest(data),
                               **{k: getattr(view, k) for k in UNSIGNED})


def signed_draft(ws: Workspace, manifest: DraftManifest, **unsigned: Any) -> JobDraft:
    """The draft whose signed fields are exactly ``manifest``'s canonical bytes, plus the
    unsigned things (estimate, warnings, run plan path) that never feed execution."""
    data = manifest_bytes(manifest)
    digest = manifest_digest(data)
    return draft_from_manifest(parse_manifest(data, digest, draft_id_for(digest)), data,
                               digest, approve_command=approve_command(draft_id_for(digest),
                                                                       ws), **unsigned)


def draft_from_manifest(manifest: DraftManifest, data: bytes, digest: str,
                        **unsigned: Any) -> JobDraft:
    """A JobDraft whose signed fields come from the verified manifest bytes only."""
    draft_id = draft_id_for(digest)
    return JobDraft(
        draft_id=draft_id, digest=digest, kind=manifest.kind, batch=manifest.batch,
        step=manifest.step, backend=manifest.backend, request=manifest.request,
        job_config=job_config_of(manifest, draft_id), files=manifest.files,
        submission=manifest.submission, regime=manifest.regime, sources=manifest.sources,
        start=manifest.start, gate=manifest.gate, parent_version=manifest.parent_version,
        flavor=manifest.flavor, processes=manifest.processes,
        timeout_seconds=manifest.timeout_seconds, workspace=manifest.workspace,
        manifest=data.decode(), **unsigned)


def what_changed(old: JobDraft, new: JobDraft) -> str:
    """Which of a stale draft's files changed, for the refusal (else what else did)."""
    before = {(f.role, f.path): f.sha256 for f in old.files}
    after = {(f.role, f.path): f.sha256 for f in new.files}
    files = sorted(path for key, path in {*before, *after}
                   if before.get((key, path)) != after.get((key, path)))
    if files:
        return "changed files: " + ", ".join(files)
    return "the plan, the checkpoint or the job settings changed"


def approve_command(draft_id: str, ws: Workspace) -> str:
    """The command the operator runs, quoted so that it works exactly as printed."""
    import shlex

    return f"tunestep approve {draft_id} --workspace {shlex.quote(str(ws.root))}"
