"""The ablation runner end to end on a tiny grid through the real MSI bundle: run, summarise, skip what is finished
(also when only the committed summary is there), resume an interrupted training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from monai_kdml.experiments.ablation import Ablation, cli_value, main

REPO = Path(__file__).resolve().parents[1]


def make(tmp_path: Path, runs: str = "runs") -> Ablation:
    return Ablation(
        "tiny-grid", ["msi"], "tiny", seeds=[0], modes=["independent", "kdml"], runs_dir=tmp_path / runs,
        results_dir=tmp_path / "results", repo=REPO, resamples=20, nice=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ablation")
    make(root).run()
    return root


def test_a_run_is_summarised(grid: Path) -> None:
    run = json.loads((grid / "results" / "tiny-grid" / "msi" / "demo" / "base" / "seed0.json").read_text())
    assert (run["task"], run["preset"], run["variant"], run["seed"], run["modes"]) == (
        "msi", "demo", "base", 0, ["independent", "kdml"],
    )  # fmt: skip
    for mode in ("independent", "kdml"):
        test = run["test"][mode]
        assert 0.0 <= test["ensemble"]["auc"] <= 1.0 and len(test["students"]) == 2
        assert test["best_student"]["auc"] == max(s["auc"] for s in test["students"])
        assert test["mean_student"]["auc"] == pytest.approx(sum(s["auc"] for s in test["students"]) / 2)
        assert run["validation"][mode]["validations"] == 2
    diff = run["bootstrap"]["kdml-independent/ensemble_auc"]
    assert diff["low"] <= diff["high"] and diff["resamples"] == 20
    assert diff["estimate"] == pytest.approx(
        run["test"]["kdml"]["ensemble"]["auc"] - run["test"]["independent"]["ensemble"]["auc"], abs=1e-5
    )
    assert run["overrides"]["train"]["cohorts"] == ["independent", "kdml"] and run["seconds"]["train"] > 0
    # never weights or images among what is meant to be committed
    assert sorted(p.suffix for p in (grid / "results").rglob("*") if p.is_file()) == sorted(
        [".json", ".json", ".csv", ".md", ".png"]
    )


def test_the_grid_summary(grid: Path) -> None:
    results = grid / "results" / "tiny-grid"
    report = (results / "msi.md").read_text()
    assert "| demo | base | kdml |" in report and "kdml vs" in report and "worth deploying" in report
    with (results / "msi.csv").open() as f:
        rows = list(csv.DictReader(f))
    roles = {(r["mode"], r["role"]) for r in rows}
    assert {("kdml", "ensemble"), ("kdml", "best_student"), ("independent", "mean_student"), ("-", "teacher")} <= roles
    assert (results / "msi.png").stat().st_size > 0
    assert list((grid / "runs" / "tiny-grid" / "hparams").rglob("events.out.tfevents.*"))


def test_recollect_rebuilds_a_summary_keeping_its_timing(grid: Path) -> None:
    ablation = make(grid)
    spec = ablation.specs()[0]
    before = json.loads(ablation.result_path(spec).read_text())
    after = ablation.recollect(spec)
    assert after is not None and after["seconds"] == before["seconds"] and after["test"] == before["test"]
    assert len(after["epoch_seconds"]) == 2 and all(s > 0 for s in after["epoch_seconds"])
    assert make(grid, runs="elsewhere").recollect(spec) is None  # no run folder there: nothing to rebuild


def test_finished_runs_are_skipped_also_from_committed_summaries(grid: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(Ablation, "_bundle", refuse)
    assert len(make(grid).run(report=False)) == 1
    # another machine: no run folder, only the committed summary
    assert len(make(grid, runs="elsewhere").run(report=False)) == 1


def test_an_interrupted_training_resumes(grid: Path, monkeypatch, tmp_path: Path) -> None:
    shutil.copytree(grid / "runs", tmp_path / "runs")
    shutil.copytree(grid / "results", tmp_path / "results")
    folder = tmp_path / "runs" / "tiny-grid" / "msi" / "demo" / "base" / "seed0"
    committed = tmp_path / "results" / "tiny-grid" / "msi" / "demo" / "base" / "seed0.json"
    for path in (folder / "summary.json", folder / "train.done", committed):
        path.unlink()
    calls: list[dict] = []
    original = Ablation._bundle

    def spy(self, spec, configs, overrides, log):
        calls.append({"configs": list(configs), **overrides})
        return original(self, spec, configs, overrides, log)

    monkeypatch.setattr(Ablation, "_bundle", spy)
    ablation = make(tmp_path)
    ablation.run(report=False)
    assert [c["configs"] for c in calls] == [["train.json"], ["train.json", "evaluate.json"]]
    assert calls[0]["resume"] is True and "resume" not in calls[1]
    assert "Resuming from" in (folder / "train.log").read_text()
    assert json.loads((folder / "timing.json").read_text())["train_s"].__len__() == 2
    assert ablation.done(ablation.specs()[0]) is not None


def test_cli_values_and_dry_run(capsys, tmp_path: Path) -> None:
    assert [cli_value(v) for v in (True, None, ["a", "b"], 3, 0.5)] == ["true", "None", "['a', 'b']", "3", "0.5"]
    main(["--grid", "g", "--scale", "tiny", "--seeds", "0", "1", "--variants", "base", "views", "--dry-run",
          "--runs-dir", str(tmp_path), "--results-dir", str(tmp_path)])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("msi/demo/base/seed0 to run")
    assert '"student_views": true' in lines[2]
    with pytest.raises(ValueError, match="no variant 'diverse'"):
        Ablation("g", ["msi"], "tiny", variants=["diverse"])
