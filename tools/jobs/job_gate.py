"""The promotion gate: does the new version replace ``latest``?

The config's ``gate`` is ``{metric, max_regression, require_significance}`` or null (every
step is promoted). ``improvement`` is the new version's metric minus the previous one's,
sign-flipped for grade_mae (lower is better), so it is positive when the step helped. The
threshold is ``-max_regression``: 0.0 tolerates no drop, 0.02 a drop of two points,
-0.05 demands a gain of five.

- ``require_significance: false``: promoted when the point estimate of the improvement is
  at least the threshold.
- ``require_significance: true``: promoted unless the paired 95 % interval of the
  improvement lies wholly below the threshold, i.e. a version is held back only on
  evidence, not on noise (with a hold-out of 20 rows a 10-point swing is noise). Where
  the interval is unknown, the point estimate decides.

A metric that cannot be computed for either version (no graded hold-out row, or a
correlation of constants) holds the version back: the operator can still promote it.
"""

from __future__ import annotations

if __package__:  # imported as tunestep.tools.jobs.<module>
    from .job_evaluate import LOWER_IS_BETTER
else:  # a sibling of the job script, whose folder is on sys.path
    from job_evaluate import LOWER_IS_BETTER


def decide_promotion(gate: dict | None, report: dict) -> dict:
    """``{promoted, reason, metric, before, after, delta, interval, p_value, ...}``."""
    if gate is None:
        return {"promoted": True, "reason": "no gate configured: every step moves latest",
                "metric": None, "before": None, "after": None, "delta": None,
                "interval": None, "p_value": None}
    metric = gate["metric"]
    before = report["before"][metric]["value"]
    after = report["after"][metric]["value"]
    d = report["delta"][metric]
    out = {"metric": metric, "before": before, "after": after, "delta": d["value"],
           "interval": [d["low"], d["high"]], "p_value": d["p_value"],
           "max_regression": gate["max_regression"],
           "require_significance": gate["require_significance"]}
    if before is None or after is None or d["value"] is None:
        return {**out, "promoted": False,
                "reason": f"{metric} cannot be computed on this hold-out (before={before}, "
                          f"after={after}); latest stays, promote by hand if it should move"}
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    improvement = sign * d["value"]
    bounds = sorted(sign * b for b in (d["low"], d["high"]) if b is not None)
    threshold = -float(gate["max_regression"])
    change = f"{metric} {before:.4g} -> {after:.4g} (change {d['value']:+.4g})"
    need = (f"a gain of at least {threshold:.4g}" if threshold > 0 else
            f"a drop of at most {-threshold:.4g}")
    if gate["require_significance"] and len(bounds) == 2:
        ci = f"95 % interval of the improvement [{bounds[0]:+.4g}, {bounds[1]:+.4g}]"
        if bounds[1] < threshold:
            return {**out, "promoted": False,
                    "reason": f"{change}: the {ci} lies wholly below the gate's threshold "
                              f"({need})"}
        return {**out, "promoted": True,
                "reason": f"{change}: the {ci} reaches the gate's threshold ({need})"}
    if improvement < threshold:
        return {**out, "promoted": False, "reason": f"{change}: the gate needs {need}"}
    return {**out, "promoted": True, "reason": f"{change}: within the gate ({need})"}
