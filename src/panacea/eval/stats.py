"""Small statistics for reporting: binomial intervals, seed means, AUROC (no scipy).

docs/protocol.md#judge-variance-and-intervals asks for a 95 % interval on every harmful score
(binomial over the prompts: about ±3.1 points at HS = 50 with 1000 prompts) and
docs/protocol.md#one-seed for ≥ 3 seeds, aggregated here as a mean with a t-based interval.
Percentages are on the 0–100 scale used for HS, HS+ and FA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30; beyond 30 we use 1.96
#: (this understates the interval by < 4 %: t_{0.975, 31} = 2.040, t_{0.975, 120} = 1.980)
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _check_counts(k: int, n: int) -> None:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n, in percent (stays inside 0–100)."""
    _check_counts(k, n)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def binomial_ci_halfwidth(k: int, n: int, z: float = 1.96) -> float:
    """Normal-approximation half-width ``z·sqrt(p(1−p)/n)`` in percentage points.

    The "±3.1 at HS = 50 over 1000 prompts" of docs/protocol.md#judge-variance-and-intervals; it is
    0 at p = 0 or 1, where ``wilson_interval`` is the one to report.
    """
    _check_counts(k, n)
    p = k / n
    return 100 * z * math.sqrt(p * (1 - p) / n)


def t_quantile(df: int) -> float:
    """t_{0.975, df} from the table, 1.96 for df > 30."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width ``t_{0.975,n−1}·s/√n`` (e.g. over seeds).

    With one value there is no variance estimate and the half-width is ``nan``.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * sd / math.sqrt(n)


def auroc(scores: Sequence[float], labels: Sequence[bool | int]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count ½.

    Computed with the Mann–Whitney rank formula (average ranks for ties). ``nan`` when one of
    the classes is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average rank (1-based) over each block of tied scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# --------------------------------------------------------------------------- over seeds

#: per-variant keys that are not metrics (bookkeeping of one run)
_SKIP = {"name"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clean(x):
    """JSON-safe: nan → None, rounded."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(x, 4)


def summarize(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Mean and 95 % interval of every numeric metric, per variant.

    Args:
        per_seed: seed → that run's ``results`` (one dict per variant, as in ``metrics.json``).

    Returns:
        One entry per variant (in the first seed's order): ``{"name", "seeds", "metrics": {key:
        {"mean", "ci95", "lo", "hi", "n", "values"}}}``. A metric missing (or nan) in some seeds is
        summarised over the others; ``n`` says how many.
    """
    order: list[str] = []
    rows: dict[str, dict[int, dict]] = {}
    for seed, results in per_seed.items():
        for r in results:
            if r["name"] not in rows:
                order.append(r["name"])
                rows[r["name"]] = {}
            rows[r["name"]][seed] = r
    out = []
    for name in order:
        by_seed = rows[name]
        keys: list[str] = []
        for r in by_seed.values():
            keys += [k for k, v in r.items() if k not in _SKIP and _number(v) and k not in keys]
        metrics = {}
        for k in keys:
            values = [r[k] for r in by_seed.values() if _number(r.get(k)) and not math.isnan(r[k])]
            if not values:
                continue
            mean, half = mean_ci(values)
            metrics[k] = {
                "mean": _clean(mean),
                "ci95": _clean(half),
                "lo": _clean(mean - half),
                "hi": _clean(mean + half),
                "n": len(values),
                "values": values,
            }
        out.append({"name": name, "seeds": list(by_seed), "metrics": metrics})
    return out
