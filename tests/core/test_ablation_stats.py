"""The ablation's statistics against hand-computed values; the validation verdict; model selection by any metric."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from monai_kdml.experiments.stats import (
    bootstrap,
    mean_std,
    min_detectable_difference,
    paired_differences,
    paired_t_interval,
    percentile_interval,
    roc_auc,
)
from monai_kdml.experiments.tasks import validation_best_student
from monai_kdml.handlers import select_best
from monai_kdml.metrics.history_analysis import ensemble_vs_best_student


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std: sqrt((1 + 0 + 1) / 2)
    mean, std = mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, math.sqrt(2.0))  # NaN (a failed metric) is left out
    assert all(math.isnan(v) for v in mean_std([]))


def test_roc_auc_by_hand() -> None:
    # pairs (positive, negative): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    # 2 positives x 3 negatives = 6 pairs; positive 0.6 beats 0.2, ties 0.6, loses to 0.9 -> 1.5; 0.9 beats 0.2,
    # 0.6, ties 0.9 -> 2.5; (1.5 + 2.5) / 6
    assert roc_auc([1, 1, 0, 0, 0], [0.6, 0.9, 0.2, 0.6, 0.9]) == pytest.approx(4 / 6)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_paired_differences_by_hand() -> None:
    kdml = {0: 0.80, 1: 0.70, 2: 0.90}
    other = {0: 0.70, 1: 0.75, 2: 0.80, 3: 0.99}  # seed 3 has no kdml run: not paired, left out
    d = paired_differences(kdml, other)
    assert d["seeds"] == [0, 1, 2]
    assert d["differences"] == pytest.approx([0.10, -0.05, 0.10])
    assert d["mean"] == pytest.approx(0.05)
    assert d["std"] == pytest.approx(math.sqrt((0.05**2 + 0.1**2 + 0.05**2) / 2))  # 0.0866
    assert d["positive"] == 2 and d["n"] == 3 and d["consistent"] is False
    assert d["ratio"] == pytest.approx(0.05 / math.sqrt(0.0075))
    assert paired_differences({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7})["consistent"] is True
    assert paired_differences({0: 0.9}, {0: 0.8})["consistent"] is False  # one seed cannot be consistent


def test_percentile_interval() -> None:
    assert percentile_interval(np.arange(101), level=0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval([1.0, float("nan"), 3.0], level=0.0) == (2.0, 2.0)


def test_bootstrap_matches_a_direct_computation() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    out = bootstrap(lambda idx: {"mean": x[idx].mean(), "max": x[idx].max()}, len(x), num_resamples=200, seed=7)
    rng = np.random.default_rng(7)
    means = [x[rng.integers(0, 5, 5)].mean() for _ in range(200)]
    assert out["mean"]["estimate"] == 3.2
    assert (out["mean"]["low"], out["mean"]["high"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert out["max"]["high"] == 10.0 and out["mean"]["resamples"] == 200


def test_bootstrap_keeps_differences_paired() -> None:
    """A difference computed on the same resample has an interval far narrower than its two parts'."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    a, b = base + 0.1, base  # the same items, shifted: the difference is exactly 0.1 on every resample
    out = bootstrap(lambda i: {"a": a[i].mean(), "b": b[i].mean(), "a-b": a[i].mean() - b[i].mean()}, 200, 100)
    assert out["a-b"]["low"] == pytest.approx(0.1) and out["a-b"]["high"] == pytest.approx(0.1)
    assert out["a"]["high"] - out["a"]["low"] > 0.1


def test_grouped_bootstrap_draws_whole_groups() -> None:
    groups = ["p0", "p1", "p1", "p1"]
    seen = []

    def statistic(idx: np.ndarray) -> dict[str, float]:
        seen.append(sorted(idx.tolist()))
        return {"n": float(len(idx))}

    bootstrap(statistic, 4, num_resamples=30, seed=1, groups=groups)
    for idx in seen[1:]:
        assert idx.count(1) == idx.count(2) == idx.count(3)  # p1's tiles always come together
        assert len(idx) in (2, 4, 6)


def test_ensemble_vs_best_student_by_hand() -> None:
    rows = [
        {"epoch": 1, "kd/ensemble_auc": 0.70, "kd/student_0_auc": 0.72, "kd/student_1_auc": 0.60},
        {"epoch": 2, "kd/ensemble_auc": 0.80, "kd/student_0_auc": 0.75, "kd/student_1_auc": 0.78},
        {"epoch": 3, "kd/ensemble_auc": 0.79, "kd/student_0_auc": 0.70, "kd/student_1_auc": 0.81},
    ]
    (result,) = ensemble_vs_best_student(rows, "auc", ["kd"])
    assert result["epoch"] == 2 and result["student"] == "kd/student_1"
    assert result["margin"] == pytest.approx(0.02) and result["ahead"] == 1 and result["validations"] == 3
    single = [{"epoch": 1, "ensemble_map": 0.3, "student_0_map": 0.35, "student_1_map": 0.1}]
    (result,) = ensemble_vs_best_student(single, "map")
    assert result["cohort"] is None and result["margin"] == pytest.approx(-0.05) and result["ahead"] == 0
    assert ensemble_vs_best_student(rows, "map", ["kd"]) == []


def test_select_best_keeps_its_own_best_per_metric() -> None:
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, metrics={}), metric_cmp_fn=lambda a, b: a > b)
    decisions = []
    for epoch, value in enumerate([float("nan"), 0.5, 0.4, 0.6, float("nan")], 1):
        engine.state.epoch, engine.state.metrics = epoch, {"kd/ensemble_auc": value}
        decisions.append(select_best(engine, "kd/ensemble_auc"))  # type: ignore[arg-type]
        assert select_best(engine, "kd/ensemble_auc") == decisions[-1]  # asked twice in one epoch: one decision
    assert decisions == [True, True, False, True, False]  # NaN first, then any number beats it; NaN never wins
    assert engine.state.best_metrics == {"kd/ensemble_auc": {"value": 0.6, "epoch": 4}}
    with pytest.raises(KeyError, match="no such metric"):
        select_best(engine, "kdml/ensemble_auc")  # type: ignore[arg-type]


def test_paired_t_interval_by_hand() -> None:
    d = [0.01, 0.03, -0.01, 0.02, 0.05]
    mean, sd = 0.02, math.sqrt(sum((x - 0.02) ** 2 for x in d) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
    t = paired_t_interval(d)
    assert t["mean"] == pytest.approx(mean) and t["n"] == 5
    assert (t["low"], t["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert t["p"] == pytest.approx(0.1161, abs=1e-3)  # t = 2.0 on 4 degrees of freedom
    assert math.isnan(paired_t_interval([0.1])["low"])


def test_min_detectable_difference_by_hand() -> None:
    # (t_{0.975,4} + t_{0.8,4}) * sd / sqrt(n) = (2.7764 + 0.9410) * 0.02 / sqrt(5)
    assert min_detectable_difference(0.02, 5) == pytest.approx((2.7764451 + 0.9409646) * 0.02 / math.sqrt(5), rel=1e-5)
    assert min_detectable_difference(0.02, 10) < min_detectable_difference(0.02, 5)
    assert math.isnan(min_detectable_difference(0.02, 1))


def test_best_student_is_chosen_on_validation_at_the_selected_epoch() -> None:
    rows = [
        {"epoch": 1, "kd/ensemble_auc": 0.70, "kd/student_0_auc": 0.72, "kd/student_1_auc": 0.60},
        {"epoch": 2, "kd/ensemble_auc": 0.80, "kd/student_0_auc": 0.75, "kd/student_1_auc": 0.78},
        {"epoch": 3, "kd/ensemble_auc": 0.79, "kd/student_0_auc": 0.70, "kd/student_1_auc": 0.81},
    ]
    assert validation_best_student(rows, "auc", "kd", 2) == 1  # epoch 2 is kept; student 1 leads there
    rows[1]["kd/student_0_auc"] = 0.78  # a tie goes to the first student
    assert validation_best_student(rows, "auc", "kd", 2) == 0
    assert validation_best_student([], "auc", "kd", 2) is None
