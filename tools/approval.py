"""The approval protocol: the operator's Ed25519 key signs one draft; nothing else starts a job.

Threat model (DESIGN §5): the assistant writes every tool argument, may claim "the operator
approved", and may have a shell as the same user. So the only proof of approval is a token
signed by a private key that is stored passphrase-encrypted outside the workspace, verified
against public keys the server was given at launch.

Token format, version 1
=======================

One pasteable ASCII string of three parts joined by ``.``::

    tsa1.<claims>.<signature>

``tsa1``
    Literal prefix: "tunestep approval", format version 1. Any other prefix is malformed.
``<claims>``
    base64url (RFC 4648 §5, alphabet ``A-Z a-z 0-9 - _``) **without** ``=`` padding, of the
    claims JSON bytes. The encoding must be canonical: decoding and re-encoding gives the
    same text (so unused trailing bits are zero); anything else is malformed.
``<signature>``
    base64url without padding of the 64-byte Ed25519 signature (RFC 8032) over the exact
    claims bytes carried in the token (not a re-serialisation of them). Canonical as above.

The claims bytes are canonical JSON: one object, keys sorted by code point, no whitespace
between tokens, UTF-8, integers in plain decimal, strings with only the escapes JSON
requires (what ``orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)`` writes). A token whose
claims are valid JSON but not in this exact form, or that repeats a key, is malformed.
The object has exactly these keys, no others:

=========  ======  ==============================================================
key        type    meaning
=========  ======  ==============================================================
v          int     format version, ``1``
aud        str     audience, ``"tunestep"``
act        str     action, ``"submit_job"``, ``"promote"`` (a promotion request) or
                   ``"repin_holdout"`` (a hold-out re-pin request)
draft_id   str     the draft this approval is for (1-128 chars ``[A-Za-z0-9._-]``)
digest     str     sha256 of the draft as stored, 64 lowercase hex
workspace  str     absolute path of the workspace root the draft lives in
op         str     operator name (1-64 chars ``[A-Za-z0-9._-]``, starting alphanumeric)
kid        str     key id: first 16 lowercase hex of sha256 of the raw 32-byte public key
ledger     str     the workspace ledger's random identity (32 lowercase hex, made with
                   the ledger): a recreated ledger refuses tokens signed for the old one
iat        int     issued at, unix seconds
exp        int     expires at, unix seconds
nonce      str     128 random bits, 32 lowercase hex; single use
=========  ======  ==============================================================

Verification order (``verify_approval``); the first failure is the refusal code:

1. empty or missing token → ``approval_missing``
2. wrong prefix, part count, base64url, JSON, canonical form, key set or field types, a
   version other than 1, or an oversized token → ``approval_malformed``
3. ``kid`` not among the trusted public keys (also when none are trusted)
   → ``approval_untrusted_key``
4. the signature does not verify under that key → ``approval_bad_signature``
5. ``aud != "tunestep"`` → ``approval_wrong_audience``
6. ``act`` is not the action being asked for (``submit_job`` for submit_job, ``promote``
   for promote_version) → ``approval_wrong_action``
7. ``exp <= now``, or ``iat > now + 300`` (clock skew allowance) → ``approval_expired``

Only ``kid`` is read before the signature is checked; no claim's meaning is trusted until
then. Whether the draft exists, its digest matches the draft recomputed now, the workspace
matches, and the nonce was never used, are checked by ``submit_job`` against the ledger.

Key files
=========

``tunestep operator init`` writes ``<name>.key.pem`` (PKCS#8 PEM, encrypted with the
passphrase via the best encryption the cryptography library offers, mode 0600) and
``<name>.pub.pem`` (SubjectPublicKeyInfo PEM, mode 0644) under
``$XDG_CONFIG_HOME/tunestep/operator/`` (``~/.config/tunestep/operator/`` when unset).
The server is given public key paths only, through ``TUNESTEP_OPERATOR_KEYS``
(``os.pathsep``-separated) or a launch flag.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
import stat
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from tunestep.tools.atomic import fsync_dir
from tunestep.tools.errors import TunestepError

TOKEN_PREFIX = "tsa1"
TOKEN_VERSION = 1
AUDIENCE = "tunestep"
ACTION_SUBMIT_JOB = "submit_job"
ACTION_PROMOTE = "promote"  # move a model store's latest to one recorded version
ACTION_REPIN = "repin_holdout"  # pin the hold-out set as it is now (tools/holdout_pin.py)
ACTIONS = (ACTION_SUBMIT_JOB, ACTION_PROMOTE, ACTION_REPIN)
CLOCK_SKEW_SECONDS = 300
MAX_TOKEN_CHARS = 8192
MAX_TTL_SECONDS = 30 * 24 * 3600
SIGNATURE_BYTES = 64
KEY_ENV_VAR = "TUNESTEP_OPERATOR_KEYS"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_TTL_RE = re.compile(r"\s*(\d{1,9})\s*([smhd])\s*")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
_Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
_Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# --------------------------------------------------------------------------- models


class ApprovalClaims(BaseModel):
    """What the operator signed: one action on one draft, for a limited time, once."""

    # strict: "1" is not 1 and true is not 1; forbid: an unknown key is a different format.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: int
    aud: str = Field(max_length=64)
    act: str = Field(max_length=64)
    draft_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    digest: _Hex64
    workspace: str = Field(min_length=1, max_length=4096)
    op: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kid: _Hex16
    ledger: _Hex32
    iat: int = Field(ge=0, lt=2**53)
    exp: int = Field(ge=0, lt=2**53)
    nonce: _Hex32

    @field_validator("v")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != TOKEN_VERSION:
            raise ValueError(f"unsupported version {value}; this tunestep reads version 1")
        return value

    @field_validator("workspace")
    @classmethod
    def _absolute_workspace(cls, value: str) -> str:
        # A relative path would mean "wherever the server happens to run": not one workspace.
        if "\x00" in value or not (
            PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
        ):
            raise ValueError("workspace must be an absolute path")
        return value


class OperatorKeyInfo(BaseModel):
    """Where a new operator key pair was written, and its key id."""

    model_config = ConfigDict(frozen=True)

    name: str
    kid: str
    fingerprint: str  # sha256:<64 hex>; pin it in the MCP client config
    private_key_path: Path
    public_key_path: Path


# --------------------------------------------------------------------------- helpers


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: one text for one byte string, or ValueError."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not unpadded base64url") from exc
    # Non-zero unused bits in the last character decode to the same bytes; refusing them
    # makes every change to the token text a change to what is verified.
    if _b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def canonical_claims_bytes(claims: ApprovalClaims) -> bytes:
    """The exact bytes that are signed: canonical JSON of the claims (see module docstring)."""
    return orjson.dumps(claims.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


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


def parse_ttl(text: str) -> int:
    """Parse a lifetime such as ``45s``, ``30m``, ``1h`` or ``2d`` into seconds.

    Raises TunestepError ``bad_ttl`` unless it is a positive whole number with one of the
    units s, m, h, d, at most 30 days.
    """
    match = _TTL_RE.fullmatch(text or "")
    if not match:
        raise TunestepError(
            "bad_ttl", f"lifetime {text!r} is not a number with a unit s, m, h or d (e.g. 1h)"
        )
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    _check_ttl(seconds)
    return seconds


def _check_ttl(seconds: int) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TunestepError("bad_ttl", "lifetime must be a whole number of seconds")
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise TunestepError(
            "bad_ttl", f"lifetime must be between 1 second and 30 days, got {seconds} s"
        )


# --------------------------------------------------------------------------- key files


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
    return _public_key_from_pem(_read_key_file(path), str(path))


def _public_key_from_pem(data: bytes, shown: str) -> Ed25519PublicKey:
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
            key, path = _public_key_from_pem(str(source).encode(), "inline key"), None
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


# --------------------------------------------------------------------------- tokens


def sign_approval(
    private_key: Ed25519PrivateKey,
    *,
    draft_id: str,
    digest: str,
    workspace: str,
    op: str,
    ttl_seconds: int,
    ledger_id: str,
    now: float | None = None,
    act: str = ACTION_SUBMIT_JOB,
) -> str:
    """Sign an approval for ``act`` of one draft and return the ``tsa1.…`` token.

    ``act`` is ``submit_job`` (a draft's job) or ``promote`` (a promotion request: then
    ``draft_id`` is its request id and ``digest`` the request's).

    ``digest`` is the sha256 hex of the stored draft, ``workspace`` the absolute workspace
    root, ``op`` the operator's name, ``ledger_id`` the identity of the ledger the draft
    is stored in (``ledger.ledger_id``); the token expires ``ttl_seconds`` after ``now``
    and carries a fresh random nonce, so each token can be used once.
    """
    _check_ttl(ttl_seconds)
    if act not in ACTIONS:
        raise TunestepError("approval_claims_invalid", f"unknown action {act!r}")
    iat = int(time.time() if now is None else now)
    try:
        claims = ApprovalClaims(
            v=TOKEN_VERSION,
            aud=AUDIENCE,
            act=act,
            draft_id=draft_id,
            digest=digest,
            workspace=workspace,
            op=op,
            kid=key_id(private_key.public_key()),
            ledger=ledger_id,
            iat=iat,
            exp=iat + ttl_seconds,
            nonce=secrets.token_hex(16),
        )
    except ValidationError as exc:
        raise TunestepError("approval_claims_invalid", _describe(exc)) from None
    claims_bytes = canonical_claims_bytes(claims)
    signature = private_key.sign(claims_bytes)
    return f"{TOKEN_PREFIX}.{_b64url_encode(claims_bytes)}.{_b64url_encode(signature)}"


def _describe(exc: ValidationError) -> str:
    # Field names and rule only: the input values are not echoed back.
    parts = [f"{'.'.join(map(str, e['loc'])) or 'claims'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)


def _malformed(reason: str) -> TunestepError:
    return TunestepError("approval_malformed", f"approval token is malformed: {reason}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _parse_claims_json(claims_bytes: bytes) -> dict[str, Any]:
    import json  # stdlib: orjson cannot report duplicate keys

    try:
        value = json.loads(claims_bytes.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed("claims are not UTF-8 JSON without duplicate keys") from None
    if not isinstance(value, dict):
        raise _malformed("claims are not a JSON object")
    return value


def parse_token(token: str) -> tuple[bytes, ApprovalClaims, bytes]:
    """Split a token into (claims bytes, claims, signature), checking shape only.

    Nothing here says the token is genuine: use ``verify_approval``. Raises
    ``approval_missing`` or ``approval_malformed``.
    """
    if token is None or (isinstance(token, str) and not token.strip()):
        raise TunestepError("approval_missing", "no approval token was given")
    if not isinstance(token, str):
        raise _malformed("not a string")
    # Pasting often adds a newline or spaces around the token; nothing inside may change.
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise _malformed("too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("expected three parts separated by '.'")
    prefix, claims_text, signature_text = parts
    if prefix != TOKEN_PREFIX:
        raise _malformed(f"unknown format (expected prefix {TOKEN_PREFIX!r})")
    try:
        claims_bytes = _b64url_decode(claims_text)
        signature = _b64url_decode(signature_text)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    if len(signature) != SIGNATURE_BYTES:
        raise _malformed("signature is not 64 bytes")
    raw = _parse_claims_json(claims_bytes)
    try:
        claims = ApprovalClaims.model_validate(raw)
    except ValidationError as exc:
        raise _malformed(_describe(exc)) from None
    # One claims value has one byte form: no room for two parsers to disagree.
    if canonical_claims_bytes(claims) != claims_bytes:
        raise _malformed("claims are not canonical JSON")
    return claims_bytes, claims, signature


def verify_approval(
    token: str, trusted: dict[str, Ed25519PublicKey], *, now: float | None = None,
    act: str = ACTION_SUBMIT_JOB,
) -> ApprovalClaims:
    """Check an approval token's signature, audience, action and lifetime; return its claims.

    Raises TunestepError with exactly one of: ``approval_missing``, ``approval_malformed``,
    ``approval_untrusted_key``, ``approval_bad_signature``, ``approval_wrong_audience``,
    ``approval_wrong_action``, ``approval_expired``. The caller must still check the
    draft, its digest, the workspace and the nonce (``submit_job`` does, in the ledger).
    """
    claims_bytes, claims, signature = parse_token(token)
    public_key = (trusted or {}).get(claims.kid)
    if public_key is None:
        raise TunestepError(
            "approval_untrusted_key",
            f"token was signed by key {claims.kid}, which this server does not trust"
            if trusted
            else "this server trusts no operator key; set TUNESTEP_OPERATOR_KEYS",
        )
    try:
        public_key.verify(signature, claims_bytes)
    except InvalidSignature:
        raise TunestepError(
            "approval_bad_signature", "the token's signature does not verify"
        ) from None
    # From here on the claims are the operator's own words.
    if claims.aud != AUDIENCE:
        raise TunestepError("approval_wrong_audience", f"token is not for {AUDIENCE}")
    if claims.act != act:
        raise TunestepError(
            "approval_wrong_action", f"token approves {claims.act!r}, not {act!r}"
        )
    current = int(time.time() if now is None else now)
    if claims.exp <= current:
        raise TunestepError("approval_expired", "token has expired; approve the draft again")
    if claims.iat > current + CLOCK_SKEW_SECONDS:
        raise TunestepError("approval_expired", "token is issued in the future; check the clocks")
    return claims
