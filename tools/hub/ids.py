"""The Hub repos a step uses, named as a user expects when the plan does not name them.

``hub.model_id`` defaults to ``<user>/<model_name>`` (the reference plan's
``username/qwen3_webdev``) and ``hub.dataset_repo`` to ``<user>/<model_name>-steps``,
where ``<user>`` is whom the token belongs to (``whoami``). They are resolved when a
draft is computed, so the draft, its digest and the run plan show the real names; a plan
that names both needs no network. Without a token, or offline, drafting an hf-jobs step
that needs a default is refused with a named error that says how to go on.

The answer is kept per process and token (only a digest of the token is held, in
memory), so recomputing a draft at approval and submit asks once.
"""

from __future__ import annotations

import hashlib
import threading

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.plan import Plan

STEPS_SUFFIX = "-steps"
_cache: dict[str, str] = {}
_lock = threading.Lock()


def token_user(token: str) -> str:
    """The token's user name, from the Hub's whoami (once per process and token)."""
    from tunestep.tools.hub.jobs_api import hub_api, hub_whoami

    key = hashlib.sha256(token.encode()).hexdigest()
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        name = hub_whoami(hub_api(token))
    except TunestepError as exc:
        raise TunestepError(exc.code, f"{exc.message}. The plan names no hub.model_id or "
                            "hub.dataset_repo, so tunestep asked the Hub whom the token "
                            "belongs to; set both in the plan to draft without the Hub",
                            path=".specs/training/plan.md") from None
    with _lock:
        _cache[key] = name
    return name


def needs_hub(plan: Plan, backend: str) -> bool:
    return backend == "hf-jobs" or plan.hub.push


def resolve_hub_ids(plan: Plan, backend: str) -> Plan:
    """The plan with ``hub.model_id`` and ``hub.dataset_repo`` filled in where a step on
    ``backend`` needs them; unchanged when both are set or none is needed."""
    hub = plan.hub
    if not needs_hub(plan, backend) or (hub.model_id and hub.dataset_repo):
        return plan
    from tunestep.tools.hub.token import read_token

    token = read_token()
    if not token:
        raise TunestepError(
            "hub_namespace_unknown",
            "hf-jobs needs a model repo and a bundle repo: set hub.model_id and "
            "hub.dataset_repo in the plan, or log in (`hf auth login` or HF_TOKEN) so they "
            f"default to <your user>/{plan.model_name} and <your user>/{plan.model_name}"
            f"{STEPS_SUFFIX}", path=".specs/training/plan.md")
    user = token_user(token)
    resolved = hub.model_copy(update={
        "model_id": hub.model_id or f"{user}/{plan.model_name}",
        "dataset_repo": hub.dataset_repo or f"{user}/{plan.model_name}{STEPS_SUFFIX}"})
    return plan.model_copy(update={"hub": resolved})
