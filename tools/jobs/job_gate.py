"""The promotion gate: does the new version replace ``latest``?

The config's ``gate`` is ``{metric, margin}`` or null (every step is promoted). The
*gain* is the new version's metric minus the compared version's, sign-flipped for
grade_mae (lower is better), so it is positive when the step helped. Its paired 95 %
interval comes from the evaluation report (Tango's score interval for proportions, a paired
bootstrap otherwise).

One rule, non-inferiority: the version is promoted only when the lower end of the gain's
interval is above ``-margin``, i.e. the hold-out shows it is not worse than ``latest`` by
more than ``margin`` (in the metric's own units; a negative margin demands a proven
gain). A drop the hold-out is too small to rule out holds the version back: noise is not
a licence. Where the report carries a comparison with the best version on the current
line (``versus_best``), the same rule must hold against it too, so losses that each stay
within the margin cannot stack step after step.

A metric that is undefined for either version (too few parsed answers, a constant
predictor) holds the version back and says why. A held-back version is still kept; the
operator can promote it with a signed token.

Job configs written before this rule carried ``{max_regression, require_significance}``;
``decide_promotion`` reads them as ``margin = max_regression`` under the same rule, so a
recomputation of an old result never fails open.
"""

from __future__ import annotations

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_evaluate import LOWER_IS_BETTER
else:  # a sibling of the job script, whose folder is on sys.path
    from job_evaluate import LOWER_IS_BETTER

RULE = "non_inferiority"
DEFAULT_MARGIN = 0.02


def gate_margin(gate: dict) -> float:
    """The tolerated drop; old configs' ``max_regression`` means the same number."""
    if "margin" in gate:
        return float(gate["margin"])
    return float(gate.get("max_regression", DEFAULT_MARGIN))


def _gain(metric: str, delta: dict) -> tuple[float | None, float | None, float | None]:
    """(gain, low, high): the change and its interval, flipped so that up is better."""
    if delta.get("value") is None or delta.get("low") is None or delta.get("high") is None:
        return delta.get("value"), None, None
    if metric in LOWER_IS_BETTER:
        return -delta["value"], -delta["high"], -delta["low"]
    return delta["value"], delta["low"], delta["high"]


def _f(x: float) -> str:
    return f"{x:+.3f}".rstrip("0").rstrip(".") if x else "0"


def _undefined(side: str, metric_entry: dict | None) -> str:
    why = (metric_entry or {}).get("undefined") or "no value"
    return f"{side}: {why}"


def _compare(metric: str, margin: float, before: dict, after: dict, delta: dict) -> dict:
    """One comparison of the new version with one earlier version."""
    out = {"before": before.get("value"), "after": after.get("value"),
           "delta": delta.get("value"), "interval": [delta.get("low"), delta.get("high")],
           "p_value": delta.get("p_value"), "gain_low": None, "detectable": None,
           "passed": False, "undefined": None}
    if before.get("value") is None or after.get("value") is None:
        out["undefined"] = (_undefined("the earlier version", before)
                            if before.get("value") is None
                            else _undefined("the new version", after))
        return out
    _, low, high = _gain(metric, delta)
    if low is None or high is None:
        out["undefined"] = "the change has no interval (too few rows to resample)"
        return out
    out["gain_low"] = round(low, 6)
    out["detectable"] = round((high - low) / 2, 6)  # half the interval's width
    out["passed"] = low > -margin
    return out


def decide_promotion(gate: dict | None, report: dict) -> dict:
    """``{promoted, reason, metric, before, after, delta, interval, p_value, margin, rule,
    gain_low, detectable, versus_best}``; ``report`` is the job's evaluation report."""
    if gate is None:
        return {"promoted": True, "reason": "no gate configured: every step moves latest",
                "metric": None, "before": None, "after": None, "delta": None,
                "interval": None, "p_value": None, "margin": None, "rule": None,
                "gain_low": None, "detectable": None, "versus_best": None}
    metric = gate["metric"]
    margin = gate_margin(gate)
    latest = _compare(metric, margin, report["before"][metric], report["after"][metric],
                      report["delta"][metric])
    vb = report.get("versus_best")
    best = None
    if vb:
        best = {"version": vb.get("version"),
                **_compare(metric, margin, vb["metrics"][metric], report["after"][metric],
                           vb["delta"][metric])}
    out = {"metric": metric, "margin": margin, "rule": RULE,
           **{k: latest[k] for k in ("before", "after", "delta", "interval", "p_value",
                                     "gain_low", "detectable")},
           "versus_best": best}
    rows = report.get("graded_rows")
    keep = ("latest stays; the operator can still promote it with a signed token")
    if latest["undefined"] or (best and best["undefined"]):
        where = latest["undefined"] or f"against the line's best {best['version']}: " \
            f"{best['undefined']}"
        return {**out, "promoted": False,
                "reason": f"{metric} is undefined ({where}), so the gate cannot show the new "
                          f"version is no worse; {keep}"}
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    lo, hi = latest["interval"]
    head = (f"{metric} ({better} is better) {latest['before']:.4g} -> {latest['after']:.4g}, "
            f"change {_f(latest['delta'])} [95 % interval {_f(lo)}, {_f(hi)}]")
    noise = (f"with {rows} graded rows a change smaller than about "
             f"{latest['detectable']:.3g} cannot be told from noise")
    bound = f"-{margin:g}" if margin >= 0 else f"+{-margin:g}"
    best_note = ""
    if best is not None:
        best_note = (f", and against the line's best ({best['version']}, {best['before']:.4g}) "
                     f"the gain's lower end is {_f(best['gain_low'])}")
    if latest["passed"] and (best is None or best["passed"]):
        return {**out, "promoted": True,
                "reason": f"{head}: the gain's lower end {_f(latest['gain_low'])} is above "
                          f"{bound}{best_note}, so the new version is shown not to be worse "
                          f"by more than the margin {margin:g}; {noise}"}
    failed = ("latest" if not latest["passed"] else f"the line's best ({best['version']})")
    return {**out, "promoted": False,
            "reason": f"{head}: the gain's lower end {_f(latest['gain_low'])} "
                      f"{'is not' if not latest['passed'] else 'is'} above {bound}"
                      f"{best_note}, so a drop of more than the margin {margin:g} against "
                      f"{failed} is not ruled out; {keep}; {noise}"}
