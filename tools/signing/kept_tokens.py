"""A ledger row that says the operator signed something, checked against the token it keeps.

Signed promotions (``lineage/promotion_records``) and signed hold-out re-pins
(``data/holdout_records``) are rows of a file the assistant can write, so a row alone
proves nothing: each keeps the ``tsa1`` token it was made with, and every read checks it
here before the row counts. The steps both share, each with what it stops:

1. a token is there (``no_token``: a row forged without one, or older than tokens);
2. this call trusts some key (``unverified``: nothing is trusted silently);
3. the signature, for this act, as of the moment the token was issued (``bad_token``: a
   forged or altered token, another act's token; a record outlives its token's expiry);
4. the token names this row, its request and this ledger (``wrong_record``: a genuine
   token copied into another row, or from another ledger);
5. (the caller) the request the token names is in the ledger as signed;
6. the row was written while the token was valid (``within_validity``, with the approval
   protocol's clock allowance: a genuine old row renumbered to replay later is not
   believed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.signing.approval import (
    CLOCK_SKEW_SECONDS,
    ApprovalClaims,
    parse_token,
    verify_approval,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def verify_kept_token(row: Any, trusted: dict[str, Ed25519PublicKey] | None, act: str,
                      ledger_id: str) -> ApprovalClaims | tuple[str, str]:
    """Steps 1 to 4 for a row with ``token``, ``nonce`` and ``request_id``: the verified
    claims, or (reason, detail) saying why the row is ignored."""
    token = row["token"]
    if not token:
        return "no_token", "the record keeps no signed token"
    if not trusted:
        return ("unverified", "no trusted operator key is known to this process, so the "
                              "record cannot be checked")
    try:
        _, unverified, _ = parse_token(token)
        claims = verify_approval(token, trusted, act=act, now=unverified.iat)
    except TunestepError as exc:
        return "bad_token", f"{exc.code}: {exc.message}"
    if (claims.nonce != row["nonce"] or claims.draft_id != row["request_id"]
            or claims.ledger != ledger_id):
        return "wrong_record", "the token was made for another record or ledger"
    return claims


def within_validity(at: Any, claims: ApprovalClaims) -> bool:
    """Step 6: the row's time lies within its token's validity (clock allowance included)."""
    return isinstance(at, int | float) and (
        claims.iat - CLOCK_SKEW_SECONDS <= at <= claims.exp + CLOCK_SKEW_SECONDS)
