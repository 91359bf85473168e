"""The ablation runner end to end on a tiny grid through the real MSI bundle: run, summarise, skip what is finished
(also when only the committed summary is there), resume an interrupted training."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from monai_kdml.data.evaluation import external_report_name
from monai_kdml.experiments import provenance
from monai_kdml.experiments.ablation import Ablation, StaleRunError, cli_value, main

REPO = Path(__file__).resolve().parents[1]


def make(tmp_path: Path, runs: str = "runs", **kwargs) -> Ablation:
    options = {"seeds": [0], "modes": ["independent", "kdml"], "runs_dir": tmp_path / runs, "nice": 0,
               "results_dir": tmp_path / "results", "bundles": REPO / "bundles", "resamples": 20}  # fmt: skip
    return Ablation("tiny-grid", ["msi"], kwargs.pop("scale", "tiny"), **(options | kwargs))


@pytest.fixture(scope="module")
def grid(module_tmp: Callable[[str], Path]) -> Path:
    root = module_tmp("ablation")
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
        assert test["oracle_student"]["auc"] == max(s["auc"] for s in test["students"])
        assert test["best_student"] == test["students"][test["best_student_index"]]
        assert test["mean_student"]["auc"] == pytest.approx(sum(s["auc"] for s in test["students"]) / 2)
        assert run["validation"][mode]["validations"] == 2
    diff = run["bootstrap"]["kdml-independent/ensemble_auc"]
    assert diff["low"] <= diff["high"] and diff["resamples"] == 20
    assert diff["estimate"] == pytest.approx(
        run["test"]["kdml"]["ensemble"]["auc"] - run["test"]["independent"]["ensemble"]["auc"], abs=1e-5
    )
    assert run["overrides"]["train"]["cohorts"] == ["independent", "kdml"] and run["seconds"]["train"] > 0
    # the external test cohort of fresh patients was scored, the tile AUC bootstrapped by patient
    assert run["overrides"]["evaluate"]["test_dir"].endswith("external-test/msi/msi_demo/CRC_DX_TEST")
    seed0 = grid / "runs" / "tiny-grid" / "msi" / "demo" / "base" / "seed0"
    assert (seed0 / "eval" / external_report_name(run["overrides"]["evaluate"]["test_dir"])).is_dir()
    assert run["settings"]["scale"] == "tiny" and run["commit"] and run["versions"]["monai"]
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

    def spy(self, spec, configs, overrides, log, root=None):
        calls.append({"configs": list(configs), **overrides})
        return original(self, spec, configs, overrides, log, root)

    monkeypatch.setattr(Ablation, "_bundle", spy)
    ablation = make(tmp_path)
    ablation.run(report=False)
    assert [c["configs"] for c in calls] == [["train.json"], ["train.json", "evaluate.json"]]
    assert calls[0]["resume"] is True and calls[0]["overwrite"] is False and "resume" not in calls[1]
    assert "Resuming from" in (folder / "train.log").read_text()
    assert json.loads((folder / "timing.json").read_text())["train_s"].__len__() == 2
    assert ablation.done(ablation.specs()[0]) is not None


def test_a_start_killed_before_its_first_checkpoint_trains_again(grid: Path, monkeypatch, tmp_path: Path) -> None:
    """A kill in the first epoch leaves ``network.json`` and no checkpoint: the bundle refuses to resume it and to
    train over it, so the runner replaces it (``--overwrite true``) instead of failing the grid."""
    shutil.copytree(grid / "runs", tmp_path / "runs")
    shutil.copytree(grid / "results", tmp_path / "results")
    folder = tmp_path / "runs" / "tiny-grid" / "msi" / "demo" / "base" / "seed0"
    committed = tmp_path / "results" / "tiny-grid" / "msi" / "demo" / "base" / "seed0.json"
    leftovers = [p for p in (folder / "models").iterdir() if p.name != "network.json"]
    for path in (folder / "summary.json", folder / "train.done", committed, *leftovers):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    calls: list[dict] = []
    original = Ablation._bundle

    def spy(self, spec, configs, overrides, log, root=None):
        calls.append(dict(overrides))
        return original(self, spec, configs, overrides, log, root)

    monkeypatch.setattr(Ablation, "_bundle", spy)
    ablation = make(tmp_path)
    ablation.run(report=False)
    assert calls[0]["resume"] is False and calls[0]["overwrite"] is True
    assert any((folder / "models").glob("checkpoint*.pt")) and ablation.done(ablation.specs()[0]) is not None


def test_cli_values_and_dry_run(capsys, tmp_path: Path) -> None:
    assert [cli_value(v) for v in (True, None, ["a", "b"], 3, 0.5)] == ["true", "None", "['a', 'b']", "3", "0.5"]
    main(["--grid", "g", "--scale", "tiny", "--seeds", "0", "1", "--variants", "base", "views", "--dry-run",
          "--runs-dir", str(tmp_path), "--results-dir", str(tmp_path)])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("msi/demo/base/seed0 to run")
    assert '"student_views": true' in lines[2]
    with pytest.raises(ValueError, match="no variant 'diverse'"):
        Ablation("g", ["msi"], "tiny", variants=["diverse"])


def test_a_summary_of_another_scale_is_not_finished_but_refused(grid: Path, tmp_path: Path) -> None:
    """Issue 15 case 27: a committed cpu-scale summary counted as "finished" for --scale tiny."""
    shutil.copytree(grid / "results", tmp_path / "results")
    path = tmp_path / "results" / "tiny-grid" / "msi" / "demo" / "base" / "seed0.json"
    run = json.loads(path.read_text())
    assert make(tmp_path).done(make(tmp_path).specs()[0]) == path  # same scale and settings: finished
    old = {k: v for k, v in run.items() if k != "settings"}  # as summaries made before settings were recorded
    for changed in ({**old, "scale": "cpu"}, {**run, "settings": {**run["settings"], "scale": "cpu"}}):
        path.write_text(json.dumps(changed))
        with pytest.raises(StaleRunError, match="other settings"):
            make(tmp_path).run(report=False)
    path.write_text(
        json.dumps({**run, "settings": {**run["settings"], "train": {**run["settings"]["train"], "max_epochs": 9}}})
    )
    with pytest.raises(StaleRunError):
        make(tmp_path).done(make(tmp_path).specs()[0])


def test_results_go_outside_the_repository_unless_asked(tmp_path: Path, monkeypatch) -> None:
    ablation = Ablation("g", ["msi"], "tiny", runs_dir=tmp_path / "runs", bundles=REPO / "bundles")
    assert ablation.results_dir == (tmp_path / "runs" / "results" / "g").resolve()
    assert Ablation("g", ["msi"], "tiny", results_dir="docs/results").results_dir == Path("docs/results/g")
    assert Ablation("g", ["msi"], "tiny").bundles == REPO / "bundles"  # the source checkout's, by default
    monkeypatch.setattr(provenance, "package_root", lambda: tmp_path)  # an installed package: no bundles beside it
    with pytest.raises(FileNotFoundError, match="give --bundles"):
        Ablation("g", ["msi"], "tiny")


def test_a_cell_refuses_runs_of_another_commit(grid: Path, tmp_path: Path) -> None:
    shutil.copytree(grid / "results", tmp_path / "results")
    ablation = make(tmp_path, seeds=[0, 1])
    ablation.commit = "0" * 40  # this checkout is another commit than seed 0's
    with pytest.raises(StaleRunError, match="one commit"):
        ablation.check_commits(ablation.specs()[1])
    make(tmp_path, seeds=[0, 1], allow_mixed_commits=True).check_commits(ablation.specs()[1])


def test_protocol_runs_train_only_the_distilling_cohorts(tmp_path: Path) -> None:
    ablation = make(tmp_path, modes=["independent", "kd", "ml", "kdml"], protocols=["today", "ramp", "gate", "frozen"])
    specs = {s.protocol: s for s in ablation.specs()}
    assert [s.key for s in ablation.specs()] == [
        f"msi/demo/base/{p}/seed0" for p in ("today", "ramp", "gate", "frozen")
    ]
    today, _ = ablation.overrides(specs["today"])
    ramp, _ = ablation.overrides(specs["ramp"])
    gate, _ = ablation.overrides(specs["gate"])
    frozen, _ = ablation.overrides(specs["frozen"])
    assert today["cohorts"] == ["independent", "kd", "ml", "kdml"] and "kd_ramp_epochs" not in today
    # the one-stage protocols keep the online teacher whatever the bundle's default; frozen gives its teacher
    assert today["teacher_stage"] is ramp["teacher_stage"] is gate["teacher_stage"] is False
    assert "teacher_stage" not in frozen
    assert ramp["cohorts"] == ["kd", "kdml"] and ramp["kd_ramp_epochs"] == 10 and ramp["ramp_shape"] == "cosine"
    assert gate["teacher_gate"] is True and gate["kd_gate"] == "correct"
    assert frozen["teacher_mode"] == "frozen"
    assert frozen["teacher_weights"] == str(ablation.teacher_dir(specs["frozen"]) / "models" / "best_networks.pt")
    stage1 = ablation.teacher_overrides(specs["frozen"])
    assert (stage1["mode"], stage1["num_students"], stage1["key_metric"], stage1["cohorts"]) == (
        "independent", 1, "teacher_auc", None)  # fmt: skip
    with pytest.raises(ValueError, match="changes only"):
        make(tmp_path, modes=["independent", "ml"], protocols=["ramp"])


def test_the_grid_definition_prints_its_estimate(capsys) -> None:
    main(["--grid-definition", "teacher-protocols", "--estimate"])
    out = capsys.readouterr().out
    assert "frozen: teacher alone" in out and "all tasks:" in out and "(budget 8 h)" in out
