"""Statistics of an ablation: mean and spread over seeds, paired differences between modes trained on the same
seeds, and bootstrap confidence intervals over the test images of one run.

Everything is plain NumPy, so the numbers can be checked by hand (``tests/core/test_ablation_stats.py`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "bootstrap",
    "mean_std",
    "min_detectable_difference",
    "paired_differences",
    "paired_t_interval",
    "percentile_interval",
    "roc_auc",
]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite ``values``; ``(nan, nan)`` when there are none,
    std ``nan`` for a single value (a spread needs two seeds)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` (1 = positive) ranked by ``scores``: the probability that a
    random positive scores above a random negative, ties counting one half (Mann-Whitney U / (n+ n-)).

    Returns:
        The AUC, or ``nan`` when only one class is present.
    """
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size != s.size:
        raise ValueError(f"{y.size} labels for {s.size} scores.")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # average ranks of ties (1-based)
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for first, count in zip(start, counts, strict=True):
        ranks[order[first : first + count]] = first + (count + 1) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def percentile_interval(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of the finite ``samples`` (percentile bootstrap; NumPy's linear
    interpolation); ``(nan, nan)`` when none is finite."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(x, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    num_items: int,
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[object] | None = None,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap of several statistics on the same resamples (so differences stay paired).

    Each resample draws ``num_items`` indices with replacement (``numpy.random.default_rng(seed)``); with ``groups``
    (one label per item, e.g. the patient of each tile) whole groups are drawn instead and the indices of their items
    are concatenated. ``statistic(indices)`` returns named values; a difference of two models is simply one more
    named value, computed on the same indices.

    Args:
        statistic: maps an index array to ``{name: value}``.
        num_items: how many items (test images) the run has.
        num_resamples: ``B``.
        seed: seed of the resampling.
        level: coverage of the interval.
        groups: optional group label per item.

    Returns:
        ``{name: {"estimate": statistic on all items, "low", "high", "resamples": B}}``.
    """
    if num_items < 1 or num_resamples < 1:
        raise ValueError(f"need at least one item and one resample, got {num_items} and {num_resamples}.")
    rng = np.random.default_rng(seed)
    everything = np.arange(num_items)
    estimate = dict(statistic(everything))
    draws: dict[str, list[float]] = {name: [] for name in estimate}
    members: list[np.ndarray] = []
    if groups is not None:
        if len(groups) != num_items:
            raise ValueError(f"{len(groups)} group labels for {num_items} items.")
        labels = np.asarray([str(g) for g in groups])
        members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    for _ in range(num_resamples):
        if groups is None:
            indices = rng.integers(0, num_items, num_items)
        else:
            picked = rng.integers(0, len(members), len(members))
            indices = np.concatenate([members[i] for i in picked])
        for name, value in statistic(indices).items():
            draws.setdefault(name, []).append(float(value))
    out = {}
    for name, value in estimate.items():
        low, high = percentile_interval(draws[name], level)
        out[name] = {"estimate": float(value), "low": low, "high": high, "resamples": num_resamples}
    return out


def paired_differences(first: Mapping[object, float], second: Mapping[object, float]) -> dict[str, object]:
    """``first - second`` seed by seed, over the seeds both have (paired: same seed, same data and initial weights).

    Returns:
        ``{"seeds": [...], "differences": [...], "mean", "std" (ddof=1), "n", "positive" (how many > 0),
        "consistent" (every difference > 0, at least two seeds), "ratio" (mean / std: the mean difference in units of
        its spread over seeds; nan with one seed or no spread)}``.
    """
    seeds = [s for s in first if s in second and _finite(first[s]) and _finite(second[s])]
    diffs = [float(first[s]) - float(second[s]) for s in seeds]
    mean, std = mean_std(diffs)
    positive = sum(d > 0 for d in diffs)
    ratio = mean / std if diffs and math.isfinite(std) and std > 0 else math.nan
    return {
        "seeds": seeds,
        "differences": diffs,
        "mean": mean,
        "std": std,
        "n": len(diffs),
        "positive": positive,
        "consistent": len(diffs) >= 2 and positive == len(diffs),
        "ratio": ratio,
    }


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def paired_t_interval(differences: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Student-t interval of the mean of paired differences over seeds, and its two-sided p-value against 0.

    ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``sd`` with ``ddof=1``) over the finite differences.

    Returns:
        ``{"mean", "low", "high", "p", "n"}``; ``low``/``high``/``p`` are ``nan`` with fewer than two differences, and
        with no spread the interval is the mean itself (``p`` 0 unless the mean is 0).
    """
    from scipy import stats as sps

    d = [float(x) for x in differences if _finite(x)]
    n = len(d)
    mean, sd = mean_std(d)
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "p": math.nan, "n": n}
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf((1 + level) / 2, n - 1)) * se
    p = (1.0 if mean == 0 else 0.0) if se == 0 else float(2 * sps.t.sf(abs(mean / se), n - 1))
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": p, "n": n}


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t-test over ``n`` seeds detects with ``power``,
    given the spread ``sd`` of the differences over seeds: ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``
    (the usual normal-approximation formula with t quantiles). ``nan`` with ``n < 2`` or a non-finite ``sd``.
    """
    from scipy import stats as sps

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)) * sd / math.sqrt(n))
