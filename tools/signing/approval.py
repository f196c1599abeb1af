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

Keys live elsewhere in ``signing``: the operator's key pair on disk and key ids in
``operator_keys``, the keys the server trusts in ``trusted_keys``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any

import orjson
from cryptography.exceptions import InvalidSignature
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

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.signing.operator_keys import key_id

TOKEN_PREFIX = "tsa1"
TOKEN_VERSION = 1
AUDIENCE = "tunestep"
ACTION_SUBMIT_JOB = "submit_job"
ACTION_PROMOTE = "promote"  # move a model store's latest to one recorded version
ACTION_REPIN = "repin_holdout"  # pin the hold-out set as it is now (tools/data/holdout_repin.py)
ACTIONS = (ACTION_SUBMIT_JOB, ACTION_PROMOTE, ACTION_REPIN)
CLOCK_SKEW_SECONDS = 300
MAX_TOKEN_CHARS = 8192
MAX_TTL_SECONDS = 30 * 24 * 3600
SIGNATURE_BYTES = 64

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
