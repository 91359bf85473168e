"""Does KD + ML pay off? Run a grid of cohort runs through the real bundles and summarise it.

Each run is one ``python -m monai.bundle run`` of ``bundles/<task>/train.json`` with ``--cohorts`` (one online teacher
and one cohort of students per mode, on the same batches), then one evaluation pass over every cohort
(``train.json`` + ``evaluate.json``), then a small JSON summary. The grid is task x teacher-student preset x
diversity variant x seed; the scale (epochs, image size, data) is one named set of overrides per task.

Resumable: a run whose summary exists (in its run folder or committed under ``--results-dir``) is skipped, an
interrupted training continues from its checkpoint (``--resume true``), a finished training is not repeated. So a
grid may span several sessions: commit ``docs/results/<grid>/`` as runs finish and start the same command again.

Example (from the repository root)::

    python -m monai_kdml.experiments.ablation --grid msi-demo --tasks msi --scale cpu --seeds 0 1 2
    python -m monai_kdml.experiments.ablation --grid msi-demo --tasks msi --summary-only

Outputs: ``<runs-dir>/<grid>/<task>/<preset>/<variant>/seed<s>/`` (the bundle root: checkpoints, logs, TensorBoard,
evaluation), ``<results-dir>/<grid>/<task>/<preset>/<variant>/seed<s>.json`` (the run summary: small, committable),
``<results-dir>/<grid>/<task>.{csv,md,png}`` (the grid summary) and ``<runs-dir>/<grid>/hparams`` (TensorBoard
HParams: one row per run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from monai_kdml.experiments.tasks import TASKS, Task, collect_run
from monai_kdml.keys import Mode, parse_cohorts

__all__ = ["Ablation", "RunSpec", "cli_value", "main"]

logger = logging.getLogger("monai_kdml.ablation")

MODES = tuple(str(m) for m in Mode)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid and seed."""

    task: str
    preset: str
    variant: str
    seed: int

    @property
    def key(self) -> str:
        """``<task>/<preset>/<variant>/seed<s>``: the run's folder below the grid's."""
        return f"{self.task}/{self.preset}/{self.variant}/seed{self.seed}"


def cli_value(value: Any) -> str:
    """A Python value as a ``python -m monai.bundle run`` argument (python-fire reads literals)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple, dict)):
        return repr(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _args(overrides: Mapping[str, Any]) -> list[str]:
    return [item for key, value in overrides.items() for item in (f"--{key}", cli_value(value))]


def _fill(value: Any, data_root: str) -> Any:
    return value.replace("{data}", data_root) if isinstance(value, str) else value


class Ablation:
    """A grid of cohort runs of one or more tasks at one scale.

    Args:
        name: the grid's name (its folder under ``runs_dir`` and ``results_dir``).
        tasks: task names (``"msi"``, ``"polyp"``).
        scale: a scale every task defines (``tiny``, ``cpu``, ``full``).
        seeds: the seeds (each changes initial weights, split and batches; every mode sees the same ones).
        presets: teacher-student presets; default: the scale's.
        variants: ways of keeping students diverse (``base``, ``views``, ``mixed``); default ``["base"]``.
        modes: the cohorts of each run; default all four modes.
        runs_dir: where run folders go (large: checkpoints; keep it outside the repository).
        results_dir: where the small run summaries and the grid summary go (commit these).
        repo: the repository root (holds ``bundles/``).
        data_root: replaces ``{data}`` in a scale's overrides (e.g. the Kvasir folder's parent).
        sets: extra training overrides for every run (``{"max_epochs": 3}``), recorded in each summary.
        resamples: bootstrap resamples per run (0: none).
        nice: niceness of the bundle processes (0: as this process).
        python: the interpreter running the bundles.

    Raises:
        ValueError: an unknown task, scale, variant or mode.
    """

    def __init__(
        self,
        name: str,
        tasks: Sequence[str],
        scale: str,
        seeds: Sequence[int] = (0, 1, 2),
        presets: Sequence[str] | None = None,
        variants: Sequence[str] = ("base",),
        modes: Sequence[str] = MODES,
        runs_dir: str | Path = "runs/ablation",
        results_dir: str | Path = "docs/results",
        repo: str | Path = ".",
        data_root: str | Path = "../shared/data",
        sets: Mapping[str, Any] | None = None,
        resamples: int = 1000,
        nice: int = 10,
        python: str = sys.executable,
    ) -> None:
        self.tasks: list[Task] = []
        for t in tasks:
            if t not in TASKS:
                raise ValueError(f"unknown task {t!r}; expected one of {sorted(TASKS)}.")
            task = TASKS[t]
            if scale not in task.scales:
                raise ValueError(f"task {t!r} has no scale {scale!r}; it has {sorted(task.scales)}.")
            for v in variants:
                if v not in task.variants:
                    raise ValueError(f"task {t!r} has no variant {v!r}; it has {sorted(task.variants)}.")
            self.tasks.append(task)
        self.modes = [str(m) for m in parse_cohorts(list(modes), "modes") or []]
        self.name, self.scale, self.seeds = name, scale, [int(s) for s in seeds]
        self.presets = None if presets is None else list(presets)
        self.variants = list(variants)
        self.runs_dir, self.results_dir = Path(runs_dir) / name, Path(results_dir) / name
        self.repo, self.data_root = Path(repo).resolve(), str(data_root)
        self.sets, self.resamples, self.nice, self.python = dict(sets or {}), resamples, nice, python

    # ------------------------------------------------------------ the grid
    def specs(self) -> list[RunSpec]:
        """Every run of the grid, seeds innermost (so a partial grid has complete cells first)."""
        return [
            RunSpec(task.name, preset, variant, seed)
            for task in self.tasks
            for preset in (self.presets or list(task.scales[self.scale].presets))
            for variant in self.variants
            for seed in self.seeds
        ]

    def run_dir(self, spec: RunSpec) -> Path:
        return self.runs_dir / spec.key

    def result_path(self, spec: RunSpec) -> Path:
        return self.results_dir / f"{spec.key}.json"

    def overrides(self, spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(training, evaluation)`` overrides of a run (evaluation reads networks and cohorts from the record)."""
        task = TASKS[spec.task]
        scale = task.scales[self.scale]
        common = {k: _fill(v, self.data_root) for k, v in scale.common.items()}
        common |= {"seed": spec.seed, "cache_dir": str(self.runs_dir / spec.task / ".cache")}
        train = {**common, **scale.train, "preset": spec.preset, "cohorts": self.modes, "mode": self._mode()}
        train |= dict(task.variants[spec.variant]) | self.sets
        return train, common

    def _mode(self) -> str:
        return "kdml" if "kdml" in self.modes else self.modes[-1]

    def done(self, spec: RunSpec) -> Path | None:
        """The summary of a finished run (committed or in its run folder), or ``None``."""
        for path in (self.result_path(spec), self.run_dir(spec) / "summary.json"):
            if path.is_file():
                return path
        return None

    # ------------------------------------------------------------ running
    def _bundle(self, spec: RunSpec, configs: Sequence[str], overrides: Mapping[str, Any], log: Path) -> float:
        bundle = self.repo / "bundles" / spec.task
        files = [str(bundle / c) for c in configs]
        config = files[0] if len(files) == 1 else repr(files)
        cmd = [self.python, "-m", "monai.bundle", "run", "--config_file", config]
        cmd += ["--bundle_root", str(self.run_dir(spec).resolve()), *_args(overrides)]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.repo), os.environ.get("PYTHONPATH", "")) if p)
        start = time.monotonic()
        with log.open("a") as f:
            f.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n")
            f.flush()
            result = subprocess.run(cmd, cwd=self.repo, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"{spec.key}: `{' '.join(cmd[-6:])}` failed ({result.returncode}); log {log}:\n{tail}")
        return time.monotonic() - start

    def execute(self, spec: RunSpec) -> dict[str, Any]:
        """Train (resuming an interrupted training), evaluate and summarise one run; returns its summary."""
        folder = self.run_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        commit = _git_commit(self.repo)  # the code this run starts with
        timing_path = folder / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"train_s": [], "evaluate_s": []}
        train, evaluate = self.overrides(spec)
        models = folder / "models"
        if not (folder / "train.done").is_file():
            started = any(models.glob("checkpoint*.pt")) or (models / "network.json").is_file()
            if started:
                logger.info("%s: resuming the interrupted training.", spec.key)
            timing["train_s"].append(
                self._bundle(spec, ["train.json"], {**train, "resume": started}, folder / "train.log")
            )
            timing_path.write_text(json.dumps(timing))
            (folder / "train.done").write_text("ok\n")
        timing["evaluate_s"].append(
            self._bundle(spec, ["train.json", "evaluate.json"], evaluate, folder / "evaluate.log")
        )
        timing_path.write_text(json.dumps(timing))
        start = time.monotonic()
        summary = collect_run(TASKS[spec.task], folder, self.modes, self.resamples, spec.seed)
        summary = {
            **asdict(spec),
            "grid": self.name,
            "scale": self.scale,
            "scale_description": TASKS[spec.task].scales[self.scale].description,
            "modes": self.modes,
            "overrides": {"train": train, "evaluate": evaluate},
            "seconds": {
                "train": sum(timing["train_s"]),
                "evaluate": timing["evaluate_s"][-1],
                "summary": time.monotonic() - start,
                "train_attempts": len(timing["train_s"]),
            },
            "epoch_seconds": _epoch_seconds(folder / "train.log"),
            "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "commit": commit,
            **summary,
        }
        text = json.dumps(summary, indent=1, sort_keys=True, default=float)
        (folder / "summary.json").write_text(text + "\n")
        self.result_path(spec).parent.mkdir(parents=True, exist_ok=True)
        self.result_path(spec).write_text(text + "\n")
        return summary

    def recollect(self, spec: RunSpec) -> dict[str, Any] | None:
        """Rebuild a finished run's summary from its run folder (e.g. after a fix in the summary code), keeping its
        timing and overrides; ``None`` when the run folder has no summary to update."""
        folder = self.run_dir(spec)
        if not (folder / "summary.json").is_file() or not (folder / "eval" / "test" / "metrics.csv").is_file():
            return None
        old = json.loads((folder / "summary.json").read_text())
        summary = collect_run(TASKS[spec.task], folder, old["modes"], self.resamples, spec.seed)
        summary = {**old, **summary, "epoch_seconds": _epoch_seconds(folder / "train.log")}
        text = json.dumps(summary, indent=1, sort_keys=True, default=float)
        (folder / "summary.json").write_text(text + "\n")
        self.result_path(spec).parent.mkdir(parents=True, exist_ok=True)
        self.result_path(spec).write_text(text + "\n")
        return summary

    def run(self, report: bool = True) -> list[dict[str, Any]]:
        """Run every unfinished run of the grid in order (progress with "run i of N" and an ETA), then summarise."""
        specs = self.specs()
        todo = [s for s in specs if self.done(s) is None]
        logger.info(
            "Grid %s: %d runs (%d finished, %d to run) at scale %s.", self.name, len(specs), len(specs) - len(todo),
            len(todo), self.scale,
        )  # fmt: skip
        walls: list[float] = []
        for i, spec in enumerate(specs, 1):
            if self.done(spec) is not None:
                logger.info("run %d of %d: %s finished earlier (skipped).", i, len(specs), spec.key)
                continue
            remaining = sum(1 for s in todo[todo.index(spec) :])
            eta = f"{_duration(sum(walls) / len(walls) * remaining)} for {remaining} runs" if walls else "unknown"
            logger.info("run %d of %d: %s (ETA %s) ...", i, len(specs), spec.key, eta)
            start = time.monotonic()
            self.execute(spec)
            walls.append(time.monotonic() - start)
            logger.info("run %d of %d: %s done in %s.", i, len(specs), spec.key, _duration(walls[-1]))
            if report:
                self.report()
        if report:
            self.report()
        return [json.loads(p.read_text()) for s in specs if (p := self.done(s)) is not None]

    def report(self) -> list[Path]:
        """Write the grid summary of every finished run found (this session's and committed ones)."""
        from monai_kdml.experiments.report import write_reports

        return write_reports(self.results_dir, [t.name for t in self.tasks], hparams_dir=self.runs_dir / "hparams")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _epoch_seconds(log: Path) -> list[float]:
    """The trainer's ``Epoch[N] Complete. Time taken: HH:MM:SS.fff`` lines of a training log, in seconds."""
    import re

    pattern = re.compile(r"KDMLTrainer - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in pattern.findall(text)]


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    import ast

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value.")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command line (``python -m monai_kdml.experiments.ablation --help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--grid", required=True, help="name of the grid (its folder under --runs-dir/--results-dir)")
    parser.add_argument("--tasks", nargs="+", default=["msi"], choices=sorted(TASKS))
    parser.add_argument("--scale", default="cpu", help="tiny | cpu | full (see monai_kdml/experiments/tasks.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--presets", nargs="+", default=None, help="teacher-student presets (default: the scale's)")
    parser.add_argument("--variants", nargs="+", default=["base"], help="base | views | mixed")
    parser.add_argument("--modes", nargs="+", default=list(MODES), help="the cohorts of every run")
    parser.add_argument("--runs-dir", default="runs/ablation", help="run folders (checkpoints: keep outside git)")
    parser.add_argument("--results-dir", default="docs/results", help="run and grid summaries (commit these)")
    parser.add_argument("--data-root", default=os.environ.get("MONAI_KDML_SHARED_DATA", "../shared/data"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra training overrides")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per run (0: none)")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the grid summary")
    parser.add_argument("--recollect", action="store_true", help="rebuild finished runs' summaries from their folders")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands' overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ablation = Ablation(
        args.grid, args.tasks, args.scale, args.seeds, args.presets, args.variants, args.modes, args.runs_dir,
        args.results_dir, ".", args.data_root, _parse_set(args.set), args.bootstrap, args.nice,
    )  # fmt: skip
    if args.dry_run:
        for spec in ablation.specs():
            state = "finished" if ablation.done(spec) else "to run"
            print(spec.key, state, json.dumps(ablation.overrides(spec)[0]))
        return []
    if args.recollect:
        for spec in ablation.specs():
            print(spec.key, "recollected" if ablation.recollect(spec) is not None else "no run folder")
    if args.summary_only or args.recollect:
        for path in ablation.report():
            print(path)
        return []
    return ablation.run()


if __name__ == "__main__":
    main()
