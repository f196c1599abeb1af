"""Every Hub call: a client-side timeout, and one mapping of its failures to named errors.

huggingface_hub 2.x sends its requests through one shared ``httpx2.Client`` made by a
factory whose timeout is ``None``: a Hub that accepts the connection and never answers
hangs the caller for ever. ``configure_client`` installs (once per process and timeout)
the SDK's own default factory with a timeout, and sets the download timeouts the SDK
reads from ``constants`` (``HF_HUB_DOWNLOAD_TIMEOUT``; the etag timeout is a parameter).
The timeout is ``TUNESTEP_HUB_TIMEOUT`` seconds (default 30) per connect, read and write.

The SDK retries some calls itself (``http_backoff``: preupload, commit uploads and
paginated listings, 5 retries on 429/5xx/timeouts with 1-8 s pauses), so a persistently
failing Hub costs up to about 6 timeouts plus 23 s before the error reaches us; job
creation, inspection, cancel and repo creation are single requests.

``hub_call`` turns what escapes the SDK into a ``HubError`` (a ``TunestepError``) whose
code says what happened and whose message says what to do; the token is scrubbed from
every message and the original exception is dropped (it holds the request headers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator

from tunestep.tools.core.errors import TunestepError

DEFAULT_TIMEOUT_S = 30.0
# Hub access tokens: scrubbed from any text we pass on, even when it is not "our" token.
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_RATELIMIT_T = re.compile(r";\s*t\s*=\s*(\d+)")
# Failures after which the request may still have taken effect on the Hub (a job created,
# a commit made): the caller must look before it tries again.
EFFECT_UNKNOWN = frozenset({"hub_unavailable", "hub_timeout", "hub_connection_lost",
                            "hub_bad_response"})
# Failures worth retrying later, unchanged.
TRANSIENT = EFFECT_UNKNOWN | {"hub_rate_limited", "hub_unreachable"}

_installed: float | None = None


class HubError(TunestepError):
    """A Hub call that failed; ``retry_after`` (seconds) when the Hub said when to retry."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
        self.status = status


def hub_timeout() -> float:
    """Seconds each Hub request may take to connect, or between bytes of its answer."""
    raw = os.environ.get("TUNESTEP_HUB_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _client_factory(timeout: float):
    """The SDK's default client (its request hook, redirects), with timeouts it cannot drop.

    Several SDK calls pass ``timeout=None`` explicitly (``repo_info``, ``list_jobs``,
    paginated listings such as ``list_repo_tree``), which in httpx means *no* timeout,
    whatever the client's default. A request hook (it runs on every request, through any
    transport or proxy, just before it is sent) puts ours back where one is missing, and
    caps a caller's own (the SDK's 5 s / 120 s log-stream read timeouts) at ours.
    """
    import httpx2
    from huggingface_hub.utils import _http

    ours = {"connect": min(timeout, 10.0), "pool": min(timeout, 10.0),
            "read": timeout, "write": timeout}

    def fill_timeout(request: httpx2.Request) -> None:
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            key: min(given[key], limit) if given.get(key) is not None else limit
            for key, limit in ours.items()}

    def factory() -> httpx2.Client:
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(timeout, connect=min(timeout, 10.0))
        client.event_hooks = {**client.event_hooks,
                              "request": [*client.event_hooks.get("request", []), fill_timeout]}
        return client

    return factory


def configure_client() -> float:
    """Give huggingface_hub's shared HTTP client a timeout; returns the timeout in seconds.

    Idempotent: reinstalls only when the configured timeout changed.
    """
    global _installed
    timeout = hub_timeout()
    if _installed == timeout:
        return timeout
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    _http.set_client_factory(_client_factory(timeout))
    constants.HF_HUB_DOWNLOAD_TIMEOUT = timeout  # type: ignore[assignment]
    constants.HF_HUB_ETAG_TIMEOUT = timeout  # type: ignore[assignment]
    _installed = timeout
    return timeout


def scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("hf_***", text)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _retry_after(response) -> float | None:
    if response is None:
        return None
    headers = response.headers
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    match = _RATELIMIT_T.search(headers.get("RateLimit") or "")
    return float(match.group(1)) if match else None


def _http_error(action: str, exc, not_found: str) -> HubError:
    response = exc.response
    status = response.status_code if response is not None else None
    detail = (exc.server_message or _first_line(exc)).strip().splitlines()[0][:300]
    if status == 401:
        return HubError("hub_auth_failed", f"{action}: the Hub refused the token (HTTP 401): "
                        "log in again with `hf auth login` or give the server a valid HF_TOKEN",
                        status=status)
    if status == 402:
        return HubError("hub_payment_required", f"{action}: the Hub asks for payment (HTTP "
                        f"402: {detail}): add credits or a payment method to the account",
                        status=status)
    if status == 403:
        return HubError("hub_forbidden", f"{action}: the token may not do this (HTTP 403: "
                        f"{detail}); it needs write access to the namespace", status=status)
    if status == 404:
        return HubError(not_found, f"{action}: not found on the Hub (HTTP 404: {detail})",
                        status=status)
    if status in (409, 412):
        return HubError("hub_conflict", f"{action}: the Hub refused a conflicting change "
                        f"(HTTP {status}: {detail}); look at the repo, then try again",
                        status=status)
    if status == 429:
        after = _retry_after(response)
        when = f"after {after:g} s" if after is not None else "in a few minutes"
        return HubError("hub_rate_limited", f"{action}: the Hub is rate limiting this account "
                        f"(HTTP 429); try again {when}", retry_after=after, status=status)
    if status is not None and status >= 500:
        return HubError("hub_unavailable", f"{action}: the Hub is failing (HTTP {status}: "
                        f"{detail}); try again in a few minutes (status.huggingface.co)",
                        retry_after=_retry_after(response), status=status)
    if status in (400, 422):
        return HubError("hub_bad_request", f"{action}: the Hub refused the request (HTTP "
                        f"{status}: {detail})", status=status)
    return HubError("hf_hub_error", f"{action}: the Hub answered HTTP {status}: {detail}",
                    status=status)


def map_exception(action: str, exc: BaseException, *, not_found: str = "hf_not_found"
                  ) -> HubError | None:
    """The HubError for an exception a Hub call raised, or None when it is not a Hub one."""
    import httpx2
    from huggingface_hub import errors

    if isinstance(exc, errors.LocalTokenNotFoundError):
        return HubError("hf_token_missing", f"{action}: no Hugging Face token; run `hf auth "
                        "login` or set HF_TOKEN in the server's environment")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError("hf_repo_not_found", f"{action}: the repo does not exist or the token "
                        "cannot see it (a private repo of another account looks the same)",
                        status=404)
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError("hf_revision_not_found", f"{action}: {_first_line(exc)}", status=404)
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError("hf_file_not_found", f"{action}: {_first_line(exc)}", status=404)
    if isinstance(exc, getattr(errors, "JobNotFoundError", ())):
        return HubError("hf_job_not_found", f"{action}: the Hub has no such job", status=404)
    if isinstance(exc, errors.HfHubHTTPError):
        return _http_error(action, exc, not_found)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError("hub_offline", f"{action}: HF_HUB_OFFLINE is set; unset it to reach "
                        "the Hub")
    if isinstance(exc, httpx2.TimeoutException):
        return HubError("hub_timeout", f"{action}: the Hub did not answer within "
                        f"{hub_timeout():g} s; check the network and status.huggingface.co, "
                        "then try again")
    if isinstance(exc, (httpx2.ConnectError, errors.LocalEntryNotFoundError)):
        return HubError("hub_unreachable", f"{action}: cannot connect to the Hub "
                        f"({type(exc).__name__}); check the network or HF_ENDPOINT")
    if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.NetworkError,
                        httpx2.TransportError)):
        return HubError("hub_connection_lost", f"{action}: the connection to the Hub dropped "
                        f"before it answered ({type(exc).__name__}); try again")
    if isinstance(exc, errors.HFValidationError):
        return HubError("hf_bad_argument", f"{action}: {_first_line(exc)}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        # hf_hub_download: the bytes received do not match the size the Hub announced.
        return HubError("hub_bad_response", f"{action}: the download was cut or garbled "
                        "(its size differs from the Hub's); try again")
    if isinstance(exc, (json.JSONDecodeError, httpx2.DecodingError, KeyError, TypeError,
                        ValueError, AttributeError)):
        # Raised while the SDK read the Hub's answer: malformed JSON, or fields missing.
        return HubError("hub_bad_response", f"{action}: the Hub's answer could not be read "
                        f"({type(exc).__name__}); try again in a few minutes")
    return None


@contextlib.contextmanager
def hub_call(action: str, *secrets: str | None, not_found: str = "hf_not_found"
             ) -> Iterator[None]:
    """Run one Hub call; what escapes is a TunestepError (HubError), the token scrubbed.

    Wrap only the SDK call (and the reading of its answer): any exception from inside is
    taken for the Hub's doing. ``from None`` drops the original chain: it holds the
    request, and we would rather lose a debugging detail than ever print a header.
    """
    configure_client()
    try:
        yield
    except TunestepError:
        raise
    except Exception as exc:
        mapped = map_exception(action, exc, not_found=not_found)
        if mapped is None:
            raise
        mapped.message = scrub(mapped.message, *secrets)
        mapped.args = (str(mapped),)
        raise mapped from None
