"""Where the Hugging Face token would come from, without ever reading its value out.

The locations mirror huggingface_hub's own lookup (env first, then the token file),
so the report matches what ``get_token()`` will find at submit time. Only
``read_token`` returns the value, and only the calls that talk to the Hub use it
(submit_job, and status, logs and cancel of an HF job), never to store or print it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class TokenStatus(BaseModel):
    available: bool
    source: str | None  # "env:HF_TOKEN", "token file", or None


def _token_file() -> Path:
    if explicit := os.environ.get("HF_TOKEN_PATH"):
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    return Path(home).expanduser() / "token"


def token_status() -> TokenStatus:
    for name in TOKEN_ENV_VARS:
        if os.environ.get(name, "").strip():
            return TokenStatus(available=True, source=f"env:{name}")
    path = _token_file()
    try:
        if path.is_file() and path.read_text(encoding="utf-8").strip():
            return TokenStatus(available=True, source="token file")
    except OSError:
        pass
    return TokenStatus(available=False, source=None)


def read_token() -> str | None:
    """The token value, for the Hub calls that need it; never stored, logged or returned."""
    from huggingface_hub import get_token

    return get_token()
