"""The operator's key pair on disk: made passphrase-encrypted, loaded, named by key id.

``tunestep operator init`` writes ``<name>.key.pem`` (PKCS#8 PEM, encrypted with the
passphrase via the best encryption the cryptography library offers, mode 0600) and
``<name>.pub.pem`` (SubjectPublicKeyInfo PEM, mode 0644) under
``$XDG_CONFIG_HOME/tunestep/operator/`` (``~/.config/tunestep/operator/`` when unset).
The server is given public key paths only (``trusted_keys``). A key's id (``kid`` in a
token, ``approval``) and its fingerprint are computed here from the raw public key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict

from tunestep.tools.core.atomic import fsync_dir
from tunestep.tools.core.errors import TunestepError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class OperatorKeyInfo(BaseModel):
    """Where a new operator key pair was written, and its key id."""

    model_config = ConfigDict(frozen=True)

    name: str
    kid: str
    fingerprint: str  # sha256:<64 hex>; pin it in the MCP client config
    private_key_path: Path
    public_key_path: Path


def key_id(public_key: Ed25519PublicKey) -> str:
    """Key id: the first 16 hex characters of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def default_operator_dir() -> Path:
    """``$XDG_CONFIG_HOME/tunestep/operator``, or ``~/.config/tunestep/operator``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "tunestep" / "operator"


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, with ``mode`` from the start, never replacing.

    The temp file is created with O_EXCL and the final mode, so it is never readable by
    others even for an instant; ``os.link`` then publishes it and fails if ``path`` exists,
    which closes the race that an exists-check followed by a rename would leave open.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we want (0644)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise TunestepError(
                "operator_key_exists", "refusing to overwrite an existing key", path=str(path)
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def _key_paths(config_dir: Path, name: str) -> tuple[Path, Path]:
    return config_dir / f"{name}.key.pem", config_dir / f"{name}.pub.pem"


def create_operator_key(
    name: str, passphrase: bytes, config_dir: Path | None = None
) -> OperatorKeyInfo:
    """Create the operator's Ed25519 key pair; the private half encrypted with ``passphrase``.

    Writes ``<name>.key.pem`` (mode 0600) and ``<name>.pub.pem`` (mode 0644) into
    ``config_dir`` (default: ``default_operator_dir()``, created 0700). Never overwrites:
    an existing file of either name raises ``operator_key_exists``. Give the server the
    ``.pub.pem`` path only.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TunestepError(
            "operator_name_invalid",
            "operator name must be 1-64 characters [A-Za-z0-9._-], starting alphanumeric",
        )
    if not isinstance(passphrase, bytes) or not passphrase:
        raise TunestepError("operator_passphrase_empty", "a non-empty passphrase is required")
    folder = Path(config_dir) if config_dir is not None else default_operator_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = _key_paths(folder, name)
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise TunestepError(
                "operator_key_exists", "refusing to overwrite an existing key", path=str(path)
            )

    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(private_path, private_pem, 0o600)
    try:
        _write_new_file(public_path, public_pem, 0o644)
    except BaseException:
        # Half a key pair is worse than none: the private half we just made goes again.
        private_path.unlink(missing_ok=True)
        raise
    return OperatorKeyInfo(
        name=name,
        kid=key_id(private_key.public_key()),
        fingerprint=key_fingerprint(private_key.public_key()),
        private_key_path=private_path,
        public_key_path=public_path,
    )


def _read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TunestepError(
            "operator_key_invalid", f"cannot read key file: {exc.strerror or exc}", path=str(path)
        ) from None


def load_private_key(path: Path, passphrase: bytes) -> Ed25519PrivateKey:
    """Load and decrypt the operator's private key.

    Raises ``operator_key_locked`` for a wrong passphrase, ``operator_key_permissions`` when
    the file is readable by group or others (as ssh does), and ``operator_key_invalid``
    for an unreadable file or a key that is not Ed25519.
    """
    path = Path(path)
    data = _read_key_file(path)
    with contextlib.suppress(OSError):
        if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise TunestepError(
                "operator_key_permissions",
                "private key is readable by other users; run chmod 600 on it",
                path=str(path),
            )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        # cryptography raises TypeError when the file is unencrypted or a password is missing.
        raise TunestepError(
            "operator_key_locked",
            "the key file is not passphrase-encrypted as expected, or no passphrase was given",
            path=str(path),
        ) from None
    except ValueError:
        # Wrong passphrase and a damaged file look the same to OpenSSL.
        raise TunestepError(
            "operator_key_locked",
            "cannot decrypt the key: wrong passphrase or damaged key file",
            path=str(path),
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TunestepError("operator_key_invalid", "not an Ed25519 private key", path=str(path))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load one operator public key (PEM SubjectPublicKeyInfo, Ed25519)."""
    return public_key_from_pem(_read_key_file(path), str(path))


def public_key_from_pem(data: bytes, shown: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise TunestepError("operator_key_invalid", "not a PEM public key", path=shown) from None
    if not isinstance(key, Ed25519PublicKey):
        raise TunestepError("operator_key_invalid", "not an Ed25519 public key", path=shown)
    return key


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """``sha256:`` and the 64 hex of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()
