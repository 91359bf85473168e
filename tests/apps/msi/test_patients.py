"""Patient-level scores and AUC from the datalist's patient ids, which travel with the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, list_data_collate
from monai.engines import Evaluator, IterationEvents
from monai.handlers import StatsHandler

from monai_kdml.apps.msi import PatientAUC, PatientScoreOutput, patient_auc_metrics, patient_level_scores
from monai_kdml.engines import KDMLEvaluator
from monai_kdml.keys import ENSEMBLE, TEACHER, network_names, pred_key, student_name
from monai_kdml.metrics import classification_metrics

NUM_PATIENTS = 6


def pair_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def make_samples(num_samples: int, num_students: int = 2, seed: int = 0) -> list[dict]:
    """Fake outputs; tile ``i`` belongs to patient ``P<i % 6>`` (an id that no file name carries)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        patient = i % NUM_PATIENTS
        label = patient % 2
        sample = {"label": torch.tensor([label]), "patient": f"P{patient}"}
        for name in [TEACHER] + [student_name(k) for k in range(num_students)]:
            sample[pred_key(name)] = torch.randn(2, generator=gen) + 0.5 * torch.eye(2)[label]
        probs = torch.stack([torch.softmax(sample[pred_key(student_name(k))], 0) for k in range(num_students)])
        sample[pred_key(ENSEMBLE)] = probs.mean(0).log()
        sample["image"] = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": f"/tiles/tile_{i:04d}.png"})
        samples.append(sample)
    return samples


def fake_step(engine, batch: dict) -> dict:
    engine.state.output = batch
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


def test_patient_auc_uses_the_datalist_patient_ids_not_the_file_names():
    samples, names = make_samples(20), network_names(2)
    metrics = {**classification_metrics(names), **patient_auc_metrics(names)}
    evaluator = Evaluator(
        device="cpu",
        val_data_loader=DataLoader(Dataset(samples), batch_size=6, shuffle=False),
        iteration_update=fake_step,
        key_val_metric={"ensemble_auc": metrics.pop("ensemble_auc")},
        additional_metrics=metrics,
        val_handlers=[StatsHandler(iteration_log=False)],
    )
    evaluator.run()
    results = evaluator.state.metrics
    for name in names:
        probs = np.array([torch.softmax(s[pred_key(name)].double(), 0)[1].item() for s in samples])
        patients = np.arange(len(samples)) % NUM_PATIENTS
        patient_prob = np.array([probs[patients == p].mean() for p in range(NUM_PATIENTS)])
        want = pair_auc(np.arange(NUM_PATIENTS) % 2, patient_prob)
        assert results[f"{name}_patient_auc"] == pytest.approx(want, abs=1e-6)
        tile_auc = pair_auc(np.array([int(s["label"]) for s in samples]), probs)
        assert want != pytest.approx(tile_auc)  # a per-tile "patient" AUC would not pass


def test_score_output_reads_batched_and_decollated_outputs_and_names_a_missing_key():
    samples = make_samples(6)
    collated = list_data_collate(samples)
    tiles, patients, probs, labels = PatientScoreOutput("pred", 2)(collated)
    assert patients == [s["patient"] for s in samples]
    assert tiles == [s["image"].meta["filename_or_obj"] for s in samples]
    assert PatientScoreOutput("pred", 2)(samples)[1] == patients
    assert torch.equal(labels, torch.tensor([int(s["label"]) for s in samples]))
    assert probs.shape == (6,)
    without = [{k: v for k, v in s.items() if k != "patient"} for s in samples]
    with pytest.raises(ValueError, match="batch_keys=\\['patient'\\]"):
        PatientScoreOutput("pred", 2)(without)


def test_kdml_evaluator_copies_batch_keys_into_the_output(toy):
    data = [{**item, "patient": f"P{i % 3}"} for i, item in enumerate(toy.BlobDataset(12))]
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    metrics = patient_auc_metrics(network_names(2))
    key_metric = {"ensemble_patient_auc": metrics.pop("ensemble_patient_auc")}
    loader = DataLoader(data, batch_size=4)
    evaluator = KDMLEvaluator(
        "cpu", loader, teacher, students, batch_keys=["patient"], key_val_metric=key_metric, additional_metrics=metrics
    )
    seen: list[str] = []
    evaluator.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: seen.extend(o["patient"] for o in e.state.output)
    )
    evaluator.run()
    assert seen == [d["patient"] for d in data]
    assert 0.0 <= evaluator.state.metrics["ensemble_patient_auc"] <= 1.0
    with pytest.raises(ValueError, match="no 'site' entry"):
        KDMLEvaluator("cpu", DataLoader(data, batch_size=4), teacher, students, batch_keys=["site"]).run()


def test_patient_level_scores_average_per_patient_and_warn_on_mixed_labels(caplog):
    patients = ["TCGA-AA-0001", "TCGA-AA-0001", "TCGA-BB-0002", "TCGA-BB-0002"]
    rows = patient_level_scores(patients, [0.2, 0.6, 0.9, 0.7], [1, 1, 0, 1])
    assert [r["patient_id"] for r in rows] == ["TCGA-AA-0001", "TCGA-BB-0002"]
    assert [r["num_tiles"] for r in rows] == [2, 2]
    assert rows[0]["probability"] == pytest.approx(0.4) and rows[1]["probability"] == pytest.approx(0.8)
    assert [r["label"] for r in rows] == [1, 1]  # 1 of 2 tiles positive: a tie counts positive
    assert "TCGA-BB-0002" in caplog.text
    unlabelled = patient_level_scores(["a", "a", "b", "b"], torch.tensor([0.2, 0.6, 0.9, 0.7]))
    assert [(r["patient_id"], "label" in r) for r in unlabelled] == [("a", False), ("b", False)]
    with pytest.raises(ValueError, match="binary"):
        patient_level_scores(patients, [0.1] * 4, [0, 1, 2, 0])


def test_patient_auc_counts_a_tile_seen_twice_once():
    metric = PatientAUC()
    metric.update((["t1", "t2"], ["P1", "P2"], torch.tensor([0.9, 0.3]), torch.tensor([1, 0])))
    metric.update((["t3"], ["P3"], torch.tensor([0.5]), torch.tensor([0])))
    assert metric.compute() == pytest.approx(1.0)
    # a padded duplicate of tile t3 with another score must not move its patient mean above patient P1
    metric.update((["t3"], ["P3"], torch.tensor([1.0]), torch.tensor([0])))
    assert metric.compute() == pytest.approx(1.0)
    metric.reset()
    metric.update((None, ["P1", "P2"], torch.tensor([0.2, 0.3]), torch.tensor([1, 0])))
    assert metric.compute() == pytest.approx(0.0)
