"""Signatures: Ed25519 operator keys, ``tsa1`` approval tokens, signed documents' bytes.

Owns making and reading operator keys (``operator_keys``), signing and verifying approval
tokens (``approval``: act, audience, expiry, nonce), the trusted-key set (``trusted_keys``),
a stored manifest's bytes checked against their digest (``signed_manifest``), and a
ledger row's kept token checked before the row counts (``kept_tokens``). What is signed
(a draft, a promotion, a re-pin) is decided above; this package only knows bytes,
digests, tokens and keys.

May import: ``core``.
"""
