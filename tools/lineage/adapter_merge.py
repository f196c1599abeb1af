"""A LoRA adapter's base, and the start of a full step after LoRA steps.

LoRA is not a one-way door. A full step whose start is a LoRA adapter (a local version,
or a Hub commit an earlier step pushed) merges the adapter into the base it was trained
on, inside its job: the job loads that base, applies the adapter with PEFT, calls
``merge_and_unload()`` and trains the merged weights in full. The draft signs both
halves: the adapter as any start is signed (its files by sha256, or ``hf://id@sha``) and
the base as a base is identified (a Hub id; a local folder with every file by sha256,
role ``merge_base``), so the job verifies the bytes it merges (``job_config.snapshot_inputs``).

Which base: the adapter's own ``adapter_config.json`` names it (``base_model_name_or_path``)
when that is a Hub id or a model folder here; else the ledger's signed drafts do, walked
back through the LoRA steps to the one that attached new adapters. (An adapter trained on
a local full version records the job's private copy of it, gone when that job ended; the
ledger still names the version.) A base that neither names is refused, with the commands
that get the user on.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import orjson

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import Workspace
from tunestep.tools.lineage.model_store import checkpoint_kind
from tunestep.tools.lineage.start_point import AdapterMerge, StartPoint

SNAPSHOT_PREFIX = "tunestep-inputs-"  # a job's private input copy (job_config.make_snapshot_dir)
MAX_CHAIN = 1000  # LoRA steps walked back at most (a ledger loop must not hang a draft)


def is_local_path(ws: Workspace, value: str) -> bool:
    """True when ``value`` names a folder on this machine rather than a Hub model id."""
    path = Path(value).expanduser()
    if path.is_absolute() or value.startswith((".", "~")):
        return True
    return (ws.root / value).exists()


def local_path(ws: Workspace, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else ws.root / value


def adapter_config_base(folder: Path) -> str | None:
    """``base_model_name_or_path`` of the adapter in ``folder`` (None when it names none)."""
    path = folder / "adapter_config.json"
    try:
        config = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TunestepError("adapter_config_invalid", f"the adapter config cannot be read as "
                            f"JSON: {exc}", path=str(path)) from None
    if not isinstance(config, dict):
        raise TunestepError("adapter_config_invalid", "the adapter config must be a JSON "
                            f"object, not {type(config).__name__}", path=str(path))
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise TunestepError("adapter_config_invalid", "base_model_name_or_path must be a "
                            "string", path=str(path))
    return base


def _usable(ws: Workspace, base: str | None) -> bool:
    """A Hub id, or a model folder that is here (never a finished job's private copy)."""
    if not base or SNAPSHOT_PREFIX in base:
        return False
    if not is_local_path(ws, base):
        return True
    return checkpoint_kind(local_path(ws, base)) == "full"


def ledger_base(conn: sqlite3.Connection, version: str) -> str | None:
    """The base the ledger's signed drafts name for the adapter ``version``: the base of
    the LoRA step that attached new adapters, walked back through LoRA steps that resumed."""
    from tunestep.tools.signing.signed_manifest import signed_fields

    fallback, seen = None, set()
    while version and version not in seen and len(seen) < MAX_CHAIN:
        seen.add(version)
        row = conn.execute(
            "SELECT s.parent, d.draft_id, d.digest, d.manifest FROM steps s"
            " JOIN drafts d ON d.draft_id = s.draft_id WHERE s.version = ?"
            " ORDER BY s.recorded_at DESC LIMIT 1", (version,)).fetchone()
        signed = signed_fields(row, row["draft_id"]) if row is not None else None
        if signed is None:
            break
        config = signed["job_config"]
        if config.get("mode") != "lora":
            break
        if not config.get("resume_from"):
            return config.get("base_model")
        fallback = fallback or config.get("base_model")
        version = row["parent"]
    return fallback


def adapter_base_of(ws: Workspace, conn: sqlite3.Connection, adapter: Path,
                    version: str) -> str | None:
    """The adapter's base: its own config's when usable here, else the ledger's; else
    what either names (unusable: a merge refuses it), or None when neither names one."""
    said = adapter_config_base(adapter)
    if _usable(ws, said):
        return said
    found = ledger_base(conn, version)
    if _usable(ws, found):
        return found
    return said or found


def local_merge(ws: Workspace, link: str, adapter: Path, base: str | None) -> StartPoint:
    """A local full step on the local adapter ``adapter`` (whose base is ``base``,
    ``adapter_base_of``): merged into its base first."""
    if not _usable(ws, base):
        raise base_missing(adapter, link, base)
    name = adapter.resolve().name
    local = is_local_path(ws, base or "")
    base_value = str(local_path(ws, base).resolve()) if local and base else str(base)
    shown = Path(base_value).name if local else base_value
    return StartPoint(
        base_model=base_value, resume_from=str(adapter), source="local",
        described=f"the local adapter {name} merged into its base {shown} (the job merges "
                  "it, then trains in full)",
        merge=AdapterMerge(adapter=name, base=base_value, base_local=local))


def remote_merge(ws: Workspace, start: StartPoint, base: str | None, link: str,
                 adapter: str) -> StartPoint:
    """A remote full step on an adapter (a Hub commit, or the bundle's ``start/``): its
    base must be a Hub id, which the job downloads."""
    from tunestep.tools.core.next_step import NextAction

    if not base or not _usable(ws, base) or is_local_path(ws, base):
        raise TunestepError(
            "remote_base_not_on_hub",
            f"a full step after LoRA merges the adapter {adapter} into its base, but that "
            f"base is {base!r}, not a Hub model id an HF job can download: draft the full "
            "step locally (`tunestep draft --mode full`, after `tunestep sync` when the "
            "adapter was trained remotely), or go on in LoRA (`tunestep draft --mode lora "
            "--backend hf-jobs`)", path=link,
            hint=NextAction(tool="draft_job", args={"mode": "full", "backend": "local"},
                            note="(the full step, merged and trained locally)"))
    start.base_model = base
    start.described = (f"{start.described}, merged into its base {base} (the job merges it, "
                       "then trains in full)")
    start.merge = AdapterMerge(adapter=adapter, base=base, base_local=False)
    return start


def base_missing(latest: Path, link: str, base: str | None) -> TunestepError:
    """The refusal of a full step on an adapter whose base cannot be found here, with the
    commands that get on: go on in LoRA, or move latest back to the newest full version
    (a signed promote) and draft the full step from there (the LoRA batches are then
    trained again, in full)."""
    from tunestep.tools.core.next_step import NextAction

    versions = latest.resolve().parent
    full = None
    with contextlib.suppress(OSError):
        full = next((v.name for v in sorted(versions.iterdir(), reverse=True)
                     if v.is_dir() and v.resolve() != latest.resolve()
                     and checkpoint_kind(v) == "full"), None)
    back = (f", or move latest back to the newest full version, {full} (`tunestep promote "
            f"{full}`), and draft the full step from it: the LoRA steps' batches are then "
            "trained again, in full" if full else "")
    why = (f"its base {base!r} is not a Hub id nor a model folder here" if base
           else "neither its adapter_config.json nor the ledger names its base")
    return TunestepError(
        "adapter_base_missing",
        f"the latest checkpoint ({latest.resolve().name}) is a LoRA adapter; a full step "
        f"merges it into its base first, but {why}: put that base model back at its path, "
        "or go on in LoRA (`tunestep draft --mode lora`)" + back,
        path=link, hint=NextAction(tool="draft_job", args={"mode": "lora"},
                                   note="(go on in LoRA)"))


def merge_base_files(start: StartPoint) -> Path | None:
    """The local base folder whose every file the draft signs (role ``merge_base``)."""
    if start.merge is None or not start.merge.base_local:
        return None
    return Path(start.merge.base)
