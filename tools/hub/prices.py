"""What HF Jobs hardware costs per hour, as the Hub lists it, for cost estimates.

Advisory only: any failure gives None and the estimate falls back to its own table, so
this is apart from the job calls, whose failures are refusals.
"""

from __future__ import annotations

import logging

from huggingface_hub import HfApi

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.hub.errors import hub_call
from tunestep.tools.hub.repos import api_token

logger = logging.getLogger(__name__)

_UNIT_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


def hardware_prices(api: HfApi) -> dict[str, float] | None:
    """USD per hour for each Jobs hardware flavor, from the Hub; None when unreachable.

    Prices are advisory (for cost estimates), so any failure gives None and the caller
    falls back to its own table.
    """
    try:
        with hub_call("list jobs hardware", api_token(api)):
            hardware = api.list_jobs_hardware()
    except TunestepError as exc:
        logger.info("hardware prices unavailable: %s", exc.message)
        return None
    prices: dict[str, float] = {}
    for item in hardware:
        factor = _UNIT_PER_HOUR.get(str(item.unit_label).lower())
        if factor is None:
            continue  # an unknown billing unit: better no price than a wrong one
        # The Hub bills per minute in whole micro-dollars: 4 decimals undo that rounding.
        prices[item.name] = round(item.unit_cost_micro_usd * factor / 1_000_000, 4)
    return prices
