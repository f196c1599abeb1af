"""The public keys the server trusts: read once at launch, pinned, kept out of the workspace.

The server is given public key paths only, through ``TUNESTEP_OPERATOR_KEYS``
(``os.pathsep``-separated) or a launch flag, or a key inline as PEM. Each is read once
and pinned by fingerprint (``pin_trusted_keys``); a key inside the workspace, where the
assistant can write, is refused (``ensure_keys_outside_workspace``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.signing.operator_keys import (
    key_fingerprint,
    key_id,
    load_public_key,
    public_key_from_pem,
)

KEY_ENV_VAR = "TUNESTEP_OPERATOR_KEYS"


def normalize_fingerprint(text: str) -> str:
    """``sha256:<64 hex>`` (the prefix optional, any case); else ``operator_key_invalid``."""
    value = text.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise TunestepError("operator_key_invalid", "a key fingerprint is sha256: and 64 hex "
                            "digits, as `tunestep operator init` prints it")
    return "sha256:" + value


def is_inline_pem(text: str) -> bool:
    return str(text).lstrip().startswith("-----BEGIN")


class TrustedKeys(dict):
    """Key id -> public key, read once when the server starts, pinned by fingerprint.

    ``files`` remembers each key file and the fingerprint it held then. The server never
    reads a key file again to trust it: ``check_unchanged`` only tells that one changed
    (``operator_key_changed``), so swapping the file under a running server gains nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[Path, str] = {}

    def check_unchanged(self) -> None:
        for path, pinned in self.files.items():
            try:
                now = key_fingerprint(load_public_key(path))
            except TunestepError:
                now = None
            if now != pinned:
                raise TunestepError(
                    "operator_key_changed", "a trusted operator key file changed (or went) "
                    "since the server started; the server still trusts only the key it read "
                    "then, and refuses to submit until the operator restarts it from a key "
                    "they checked", path=str(path))


def pin_trusted_keys(sources: list, fingerprints: list[str] | None = None) -> TrustedKeys:
    """Read the trusted keys once: each source a key file path or an inline PEM string.

    With ``fingerprints`` (from the MCP client config, out of the workspace's reach) every
    key must have one of them, else ``operator_key_fingerprint_mismatch``: a key file
    replaced before the server started is refused too.
    """
    wanted = {normalize_fingerprint(f) for f in fingerprints or []}
    pinned = TrustedKeys()
    for source in sources:
        if is_inline_pem(source):
            key, path = public_key_from_pem(str(source).encode(), "inline key"), None
        else:
            path = Path(source)
            key = load_public_key(path)
        found = key_fingerprint(key)
        if wanted and found not in wanted:
            raise TunestepError(
                "operator_key_fingerprint_mismatch", f"the trusted key has fingerprint "
                f"{found}, which is not among the fingerprints the server was given",
                path=str(path) if path else "inline key")
        pinned[key_id(key)] = key
        if path is not None:
            pinned.files[path] = found
    return pinned


def load_trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Load the public keys the server trusts, keyed by key id.

    Every path must be a readable Ed25519 public key; the first that is not raises
    ``operator_key_invalid`` naming it (a typo must not silently trust nobody).
    """
    trusted: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        key = load_public_key(Path(path))
        trusted[key_id(key)] = key
    return trusted


def trusted_key_paths_from_env(value: str) -> list[Path]:
    """Split ``TUNESTEP_OPERATOR_KEYS`` (``os.pathsep``-separated) into key paths.

    Empty entries are skipped and ``~`` is expanded. A relative path raises
    ``operator_key_invalid``: it would resolve against whatever folder the server starts
    in, which may be the workspace the assistant can write to.
    """
    paths = []
    for entry in (value or "").split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        if is_inline_pem(entry):  # a PEM holds no path separator: it may stand inline
            paths.append(entry)
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            raise TunestepError(
                "operator_key_invalid", "trusted key paths must be absolute", path=entry
            )
        paths.append(path)
    return paths


def ensure_keys_outside_workspace(paths: list[Path], workspace: Path) -> None:
    """Refuse trusted keys stored inside the workspace (``operator_key_in_workspace``).

    The assistant can write there, so a key found there could be its own.
    """
    root = Path(workspace).resolve()
    for path in paths:
        if is_inline_pem(path):
            continue  # carried in the launch config itself, not a file anyone can edit
        if Path(path).resolve().is_relative_to(root):
            raise TunestepError(
                "operator_key_in_workspace",
                "a trusted public key must not live inside the workspace",
                path=str(path),
            )
