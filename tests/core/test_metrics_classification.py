"""Classification, disagreement and ROC metrics, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import Evaluator, IterationEvents
from monai.handlers import MetricsSaver, StatsHandler, TensorBoardStatsHandler
from PIL import Image

from monai_kdml.keys import ENSEMBLE, TEACHER, network_names, pred_key, student_name
from monai_kdml.metrics import (
    ProbabilityOutput,
    StudentDisagreement,
    classification_metrics,
    plot_roc_curves,
    roc_curve_points,
    roc_figure,
    student_disagreement,
)

NUM_PATIENTS = 6


# ---------------------------------------------------------------- direct computations (no sklearn)
def pair_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def direct_disagreement(student_logits: list[torch.Tensor]) -> torch.Tensor:
    probs = [torch.softmax(z.double(), dim=1) for z in student_logits]
    mean = sum(probs) / len(probs)
    return sum(0.5 * (p - mean).abs().sum(dim=1) for p in probs) / len(probs)


def make_samples(num_samples: int, num_students: int, num_classes: int, seed: int = 0) -> list[dict]:
    """Fake validation outputs: logits of every network, a class index and a tile image with its path.

    Tile ``i`` belongs to patient ``i % NUM_PATIENTS``, whose label is the patient's index modulo ``num_classes``.
    """
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        patient = i % NUM_PATIENTS
        label = patient % num_classes
        sample = {"label": torch.tensor([label])}
        for name in [TEACHER] + [student_name(k) for k in range(num_students)]:
            sample[pred_key(name)] = torch.randn(num_classes, generator=gen) + 0.5 * torch.eye(num_classes)[label]
        student_probs = torch.stack([torch.softmax(sample[pred_key(student_name(k))], 0) for k in range(num_students)])
        sample[pred_key(ENSEMBLE)] = student_probs.mean(0).log()
        path = f"/tiles/blk-TILE{i:08d}-TCGA-AA-{patient:04d}-01Z-00-DX1.png"
        sample["image"] = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": path})
        samples.append(sample)
    return samples


def network_arrays(samples: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.stack([torch.softmax(s[pred_key(name)].double(), 0) for s in samples]).numpy()
    return probs, np.array([int(s["label"]) for s in samples])


def fake_step(engine: Engine, batch: dict) -> dict:
    """What an evaluator iteration leaves behind: the batch plus predictions, decollated on MODEL_COMPLETED."""
    engine.state.output = batch
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


class RecordingWriter:
    """Stands in for a SummaryWriter: keeps what TensorBoardStatsHandler writes."""

    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = value

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------- full validation pass, binary (MSI vs MSS)
def test_binary_metrics_in_monai_evaluator_match_direct_computation(tmp_path, capsys):
    num_students, samples = 2, make_samples(20, 2, 2)
    names = network_names(num_students)
    metrics = classification_metrics(names, num_classes=2)
    assert "disagreement" in metrics and not any(k.endswith("patient_auc") for k in metrics)
    loader = DataLoader(Dataset(samples), batch_size=6, shuffle=False)  # 6 + 6 + 6 + 2: a ragged last batch
    writer = RecordingWriter()
    evaluator = Evaluator(
        device="cpu",
        val_data_loader=loader,
        iteration_update=fake_step,
        key_val_metric={"ensemble_auc": metrics.pop("ensemble_auc")},
        additional_metrics=metrics,
        val_handlers=[
            StatsHandler(iteration_log=False),
            MetricsSaver(save_dir=str(tmp_path)),
            TensorBoardStatsHandler(summary_writer=writer, iteration_log=False),
        ],
    )
    evaluator.run()
    results = evaluator.state.metrics

    for name in names:
        probs, labels = network_arrays(samples, name)
        predicted = probs.argmax(1)
        tp, fp = np.sum((predicted == 1) & (labels == 1)), np.sum((predicted == 1) & (labels == 0))
        fn, tn = np.sum((predicted == 0) & (labels == 1)), np.sum((predicted == 0) & (labels == 0))
        assert results[f"{name}_auc"] == pytest.approx(pair_auc(labels, probs[:, 1]), abs=1e-6)
        assert results[f"{name}_acc"] == pytest.approx((tp + tn) / len(labels), abs=1e-6)
        assert results[f"{name}_bacc"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2, abs=1e-6)
        assert results[f"{name}_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    students = [s for s in names if s.startswith("student_")]
    expected = direct_disagreement([torch.stack([s[pred_key(k)] for s in samples]) for k in students]).mean()
    assert results["disagreement"] == pytest.approx(float(expected), abs=1e-6)

    assert evaluator.state.best_metric == results["ensemble_auc"]  # the key metric is a plain scalar
    saved = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines())
    assert set(saved) == set(results) and float(saved["teacher_f1"]) == pytest.approx(results["teacher_f1"])
    assert set(writer.scalars) == set(results)
    logged = capsys.readouterr().out + capsys.readouterr().err
    assert "ensemble_auc" in logged and "disagreement" in logged


# ---------------------------------------------------------------- generic C classes
def test_multiclass_metrics_are_the_standard_definitions():
    num_classes, samples = 3, make_samples(24, 2, 3, seed=1)
    names = [TEACHER, ENSEMBLE]
    metrics = classification_metrics(names, num_classes=num_classes)
    assert "disagreement" not in metrics
    engine = Engine(lambda e, batch: batch)  # batches are already decollated lists of dicts
    for key, metric in metrics.items():
        metric.attach(engine, key)
    results = engine.run([samples[i : i + 8] for i in range(0, 24, 8)]).metrics
    for name in names:
        probs, labels = network_arrays(samples, name)
        predicted = probs.argmax(1)
        recall = [np.mean(predicted[labels == c] == c) for c in range(num_classes)]
        precision = [np.mean(labels[predicted == c] == c) if np.any(predicted == c) else 0.0 for c in range(3)]
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
        aucs = [pair_auc((labels == c).astype(int), probs[:, c]) for c in range(num_classes)]
        assert results[f"{name}_acc"] == pytest.approx(np.mean(predicted == labels), abs=1e-6)
        assert results[f"{name}_bacc"] == pytest.approx(np.mean(recall), abs=1e-6)
        assert results[f"{name}_f1"] == pytest.approx(np.mean(f1), abs=1e-6)
        assert results[f"{name}_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)


def test_binary_f1_is_of_the_named_positive_class():
    samples, names = make_samples(20, 2, 2, seed=2), [TEACHER, ENSEMBLE]
    engine = Engine(lambda e, batch: batch)
    for key, metric in classification_metrics(names, num_classes=2, positive_class=0).items():
        metric.attach(engine, key)
    results = engine.run([samples[i : i + 7] for i in range(0, 20, 7)]).metrics
    for name in names:
        probs, labels = network_arrays(samples, name)
        predicted = probs.argmax(1)
        tp, fp = np.sum((predicted == 0) & (labels == 0)), np.sum((predicted == 0) & (labels == 1))
        fn = np.sum((predicted == 1) & (labels == 0))
        f1_of_0 = 2 * tp / (2 * tp + fp + fn)
        assert results[f"{name}_f1"] == pytest.approx(f1_of_0, abs=1e-6)
        tp1 = np.sum((predicted == 1) & (labels == 1))  # class 1's false positives and negatives are class 0's swapped
        assert f1_of_0 != pytest.approx(2 * tp1 / (2 * tp1 + fn + fp))  # the samples tell the two apart
        assert results[f"{name}_acc"] == pytest.approx(np.mean(predicted == labels), abs=1e-6)
    with pytest.raises(ValueError, match=r"`positive_class` must be a class index in \[0, 2\), got 2"):
        classification_metrics(names, num_classes=2, positive_class=2)


# ---------------------------------------------------------------- output transforms
def test_transforms_read_batched_and_decollated_outputs_alike():
    samples = make_samples(6, 2, 2)
    batched = {k: torch.stack([s[k] for s in samples]) for k in ("pred", "label")}
    for got, want in zip(ProbabilityOutput("pred", 2)(samples), ProbabilityOutput("pred", 2)(batched), strict=True):
        assert torch.equal(got, want)
    probs, onehot = ProbabilityOutput("pred", 2)(samples)
    assert probs.shape == onehot.shape == (6, 2) and torch.allclose(probs.sum(1), torch.ones(6))


def test_transforms_raise_clear_errors():
    samples = make_samples(3, 2, 2)
    with pytest.raises(ValueError, match=r"pred_teacher.*3 logits"):
        ProbabilityOutput("pred_teacher", 3)(samples)
    with pytest.raises(ValueError, match="no key 'pred_student_7'"):
        ProbabilityOutput("pred_student_7", 2)(samples)
    bad_label = [dict(s, label=torch.tensor([5])) for s in samples]
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        ProbabilityOutput("pred", 2)(bad_label)
    with pytest.raises(ValueError, match="unique"):
        classification_metrics(["teacher", "teacher"])


# ---------------------------------------------------------------- disagreement
def test_student_disagreement_bounds_and_dense_inputs():
    same = torch.randn(4, 3)
    assert torch.allclose(student_disagreement([same, same, same]), torch.zeros(4), atol=1e-7)
    certain = [torch.eye(3)[k][None] * 50.0 for k in range(3)]  # three students, each sure of another class
    assert student_disagreement(certain).item() == pytest.approx(1 - 1 / 3, abs=1e-6)
    dense = [torch.randn(2, 3, 5, 4) for _ in range(2)]
    per_pixel = student_disagreement(dense)
    flat = [z.permute(0, 2, 3, 1).reshape(-1, 3) for z in dense]
    assert per_pixel.shape == (2, 5, 4)
    assert torch.allclose(per_pixel.reshape(-1), direct_disagreement(flat).float(), atol=1e-6)
    assert float(per_pixel.max()) <= 0.5  # 1 - 1/K for K = 2
    with pytest.raises(ValueError, match="student_logits\\[1\\]"):
        student_disagreement([torch.randn(2, 3), torch.randn(2, 4)])


def test_student_disagreement_metric_averages_over_samples():
    metric = StudentDisagreement()
    batches = [[torch.randn(3, 2), torch.randn(3, 2)], [torch.randn(5, 2), torch.randn(5, 2)]]
    for batch in batches:
        metric.update(batch)
    everything = [torch.cat([b[k] for b in batches]) for k in range(2)]
    assert metric.compute() == pytest.approx(float(direct_disagreement(everything).mean()), abs=1e-6)


# ---------------------------------------------------------------- ROC
def test_roc_curve_points_area_equals_pair_auc_with_ties():
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.3, 0.9, 0.3, 0.2])
    fpr, tpr, thresholds = roc_curve_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thresholds[0])
    assert len(thresholds) == len(np.unique(scores)) + 1
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(pair_auc(labels, scores))
    with pytest.raises(ValueError, match="both classes"):
        roc_curve_points([1, 1], [0.2, 0.3])


def test_plot_roc_curves_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    curves = {name: (labels, labels * shift + rng.random(50)) for name, shift in (("ensemble", 0.6), ("teacher", 0.3))}
    out = plot_roc_curves(curves, tmp_path / "eval" / "roc.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (600, 648)
    with pytest.raises(ValueError, match="empty"):
        plot_roc_curves({}, tmp_path / "none.png")


def test_roc_figure_states_n_and_keeps_overlapping_curves_visible():
    """12 patients, four networks at AUC 1.000: the plot says how few and shows that (and which) curves coincide."""
    labels = np.array([1] * 5 + [0] * 7)
    perfect = labels + np.linspace(0, 0.5, 12)
    curves = {"teacher": (labels, perfect), "student_0": (labels, perfect), "ensemble": (labels, perfect)}
    curves["student_1"] = (labels, np.linspace(0, 1, 12))
    figure = roc_figure(curves, "Patient level", "patients", ("MSS", "MSI"))
    axes = figure.axes[0]
    assert axes.get_title().endswith("n = 12 patients (5 MSI, 7 MSS)")
    lines = [line for line in axes.get_lines() if line.get_label() in {f"{n} (AUC 1.000)" for n in curves}]
    assert len(lines) == 3
    styles = {(line.get_linestyle(), line.get_marker(), line.get_linewidth()) for line in lines}
    assert len(styles) == 3  # no two curves share a look, so none hides another
    notes = [t.get_text() for t in figure.texts]
    assert notes == ["curves overlap exactly: teacher = student_0 = ensemble"]
    assert roc_figure({"teacher": curves["student_1"]}).texts == []
