"""Signed moves of ``latest``, verified whenever they are read.

A row of ``promotions`` says "the operator made this version latest". The ledger is a
file the assistant can write, so a row alone proves nothing: each row keeps the ``tsa1``
token it was made with, and every read of the ledger's line (``tools/lineage``) checks it
here before the row counts (steps 1-4 and 6 are the ones every kept token goes through,
``signing/kept_tokens``):

1. a token is there (``no_token``: a row from before schema 6, or forged without one);
2. trusted keys are known to this process (``unverified``: say so, never trust silently);
3. the signature, audience and act ``promote`` (``verify_approval`` as of the moment the
   token was issued: a record outlives its token's expiry);
4. the token names this row: its nonce, its request id, this ledger (``wrong_record``);
5. the request the token names exists and its digest, recomputed from the request's own
   store, version and content identity and the token's workspace, is the signed digest
   (``wrong_request``), and the row moves that store to that version;
6. the row was written while the token was valid (``outside_validity``): an old genuine
   row renumbered to replay after newer events is not believed.

A row that fails is ignored and named (``IgnoredPromotion``); check_batch reports it as
``promotion_unverified``, job_status lists it.

Trusted keys come from the call's context (``core/call_context.py``), built by the view:
the MCP server's keys pinned at launch, the CLI's those of ``tunestep promote``
(``--operator-key``, ``$TUNESTEP_OPERATOR_KEYS``, else the public halves in the operator's
key folder). A reader gets them from the workspace or the ledger connection it was
handed (``ws.trusted_keys``, ``conn.trusted_keys``), never from ambient state.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey



class IgnoredPromotion(BaseModel):
    """A ``promotions`` row that does not verify: it moved nothing."""

    nonce: str
    version: str
    reason: str  # no_token | unverified | bad_token | wrong_record | wrong_request | ...
    detail: str


def request_digest(store: str, version: str, identity: str, workspace: str) -> str:
    """What the operator signs for a promotion: this store's latest becomes this version
    with this content, in this workspace."""
    return sha256_json({"act": "promote", "store": store, "version": version,
                        "identity": identity, "workspace": workspace})


def verify_record(conn: sqlite3.Connection, row: sqlite3.Row,
                  trusted: dict[str, Ed25519PublicKey] | None,
                  ledger_id: str) -> IgnoredPromotion | int:
    """The token's expiry (unix s) when the row is the operator's signed move; else why
    it is ignored."""
    from tunestep.tools.signing.approval import ACTION_PROMOTE
    from tunestep.tools.signing.kept_tokens import verify_kept_token, within_validity

    def ignored(reason: str, detail: str) -> IgnoredPromotion:
        return IgnoredPromotion(nonce=str(row["nonce"]), version=str(row["version"]),
                                reason=reason, detail=detail)

    claims = verify_kept_token(row, trusted, ACTION_PROMOTE, ledger_id)
    if isinstance(claims, tuple):
        return ignored(*claims)
    request = conn.execute("SELECT store, version, payload FROM promotion_requests"
                           " WHERE request_id = ?", (row["request_id"],)).fetchone()
    payload: Any = _payload(request["payload"]) if request is not None else None
    if not isinstance(payload, dict) or not isinstance(payload.get("identity"), str):
        return ignored("wrong_request", "the request the token names is not in the ledger")
    digest = request_digest(str(request["store"]), str(request["version"]),
                            payload["identity"], claims.workspace)
    if (digest != claims.digest or request["version"] != row["version"]
            or request["store"] != row["store"]):
        return ignored("wrong_request", "the token approves another version or content")
    if not within_validity(row["at"], claims):
        return ignored("outside_validity", "the record is dated outside its token's "
                                           "validity")
    return claims.exp


def _payload(text: str | None) -> Any:
    import orjson

    try:
        return orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None


def reader_keys(sources: list, folder, workspace) -> dict:
    """The keys a CLI command verifies promotion records with, found the way `tunestep
    promote` finds them: the given key files or inline PEMs (``--operator-key``,
    ``$TUNESTEP_OPERATOR_KEYS``), else every public half in the operator's key folder (a
    file there that is no key is passed over). A given key inside ``workspace`` is refused
    (``operator_key_in_workspace``), one in the folder passed over: the assistant can
    write there."""
    from pathlib import Path

    from tunestep.tools.signing.operator_keys import default_operator_dir, key_id, load_public_key
    from tunestep.tools.signing.trusted_keys import ensure_keys_outside_workspace, pin_trusted_keys

    if sources:
        ensure_keys_outside_workspace(sources, workspace)
        return dict(pin_trusted_keys(sources))
    found: dict = {}
    root = Path(workspace).resolve()
    try:
        files = sorted(Path(folder or default_operator_dir()).glob("*.pub.pem"))
    except OSError:
        return found
    for path in files:
        if path.resolve().is_relative_to(root):
            continue
        try:
            key = load_public_key(path)
        except TunestepError:
            continue
        found[key_id(key)] = key
    return found
