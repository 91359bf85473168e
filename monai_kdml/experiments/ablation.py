"""Does KD + ML pay off? Run a grid of cohort runs through the real bundles and summarise it.

Each run is one ``python -m monai.bundle run`` of ``<bundles>/<task>/train.json`` with ``--cohorts`` (one teacher
and one cohort of students per mode, on the same batches), then one evaluation pass over every cohort
(``train.json`` + ``evaluate.json``), then a small JSON summary. The grid is task x teacher-student preset x
diversity variant x distillation protocol (:mod:`monai_kdml.experiments.protocols`) x seed; the scale (epochs, image
size, data) is one named set of overrides per task.

Resumable: a run whose summary exists (in its run folder or under ``--results-dir``) *with the same scale and
settings* is skipped; a summary made with other settings stops the grid before anything runs (give another
``--grid`` or ``--results-dir``). An interrupted training continues from its checkpoint (``--resume true``), a
finished training is not repeated. Every run of one grid cell must come from one commit: a run of a cell whose
finished runs were made at another commit is refused (``--allow-mixed-commits`` to override; the report marks it).

Paths are explicit, so the runner works from an installed package: ``--bundles`` (default: the ``bundles/`` folder of
the source checkout this package is imported from), ``--runs-dir`` (run folders: large), ``--results-dir`` (the small
run summaries and grid reports; default ``<runs-dir>/results``, so nothing is written into the repository unless
asked, e.g. ``--results-dir docs/results`` to add committed runs).

Example::

    python -m monai_kdml.experiments.ablation --grid msi-demo --tasks msi --scale cpu --seeds 0 1 2
    python -m monai_kdml.experiments.ablation --grid-definition teacher-protocols --estimate
    python -m monai_kdml.experiments.ablation --grid msi-demo --tasks msi --summary-only --results-dir docs/results

Outputs: ``<runs-dir>/<grid>/<task>/<preset>/<variant>[/<protocol>]/seed<s>/`` (the bundle root: checkpoints, logs,
TensorBoard, evaluation), ``<results-dir>/<grid>/<task>/<preset>/<variant>[/<protocol>]/seed<s>.json`` (the run
summary: small, committable), ``<results-dir>/<grid>/<task>.{csv,md,png}`` (the grid summary) and
``<runs-dir>/<grid>/hparams`` (TensorBoard HParams: one row per run).
"""

from __future__ import annotations

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

from monai_kdml.experiments.protocols import PROTOCOLS, protocol_cohorts, teacher_stage_overrides
from monai_kdml.experiments.provenance import code_commit, default_bundles, library_versions, package_root
from monai_kdml.experiments.tasks import TASKS, Task, collect_run, test_folder
from monai_kdml.keys import Mode, parse_cohorts
from monai_kdml.teacher_stage import STAGE_TWO_MESSAGE

__all__ = ["Ablation", "RunSpec", "StaleRunError", "cli_value", "default_bundles", "main"]

logger = logging.getLogger("monai_kdml.ablation")

MODES = tuple(str(m) for m in Mode)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid and seed."""

    task: str
    preset: str
    variant: str
    seed: int
    protocol: str | None = None

    @property
    def cell(self) -> str:
        """``<task>/<preset>/<variant>[/<protocol>]``: the grid cell (every seed of it must be one commit)."""
        tail = f"/{self.protocol}" if self.protocol is not None else ""
        return f"{self.task}/{self.preset}/{self.variant}{tail}"

    @property
    def key(self) -> str:
        """``<cell>/seed<s>``: the run's folder below the grid's."""
        return f"{self.cell}/seed{self.seed}"


class StaleRunError(RuntimeError):
    """A summary or run folder of this grid's path was made with other settings (scale, overrides, protocol) or at
    another commit than the rest of its cell."""


PATH_KEYS = ("cache_dir", "test_dir", "teacher_weights", "dataset_dir")
"""Overrides that are paths on one machine: not part of a run's settings."""


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
        results_dir: where the small run summaries and the grid summary go; default ``<runs_dir>/results``.
        bundles: the folder holding ``msi/`` and ``polyp/`` bundles; default :func:`default_bundles`.
        protocols: distillation protocols (:data:`~monai_kdml.experiments.protocols.PROTOCOLS`); ``None``: the
            bundles' defaults, with run keys without a protocol level (grids made before protocols existed).
        allow_mixed_commits: run a cell whose finished runs were made at another commit.
        task_modes: per-task cohorts where they differ from ``modes``.
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
        results_dir: str | Path | None = None,
        bundles: str | Path | None = None,
        data_root: str | Path = "../shared/data",
        sets: Mapping[str, Any] | None = None,
        resamples: int = 1000,
        nice: int = 10,
        python: str = sys.executable,
        protocols: Sequence[str] | None = None,
        allow_mixed_commits: bool = False,
        task_modes: Mapping[str, Sequence[str]] | None = None,
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
        for p in protocols or []:
            if p not in PROTOCOLS:
                raise ValueError(f"unknown protocol {p!r}; expected one of {sorted(PROTOCOLS)}.")
        self.modes = [str(m) for m in parse_cohorts(list(modes), "modes") or []]
        self.task_modes = {
            t: [str(m) for m in parse_cohorts(list(v), "modes") or []] for t, v in (task_modes or {}).items()
        }
        self.protocols: list[str | None] | None = None if protocols is None else list(protocols)
        for name_ in protocols or []:
            for task_ in self.tasks:
                protocol_cohorts(
                    name_, self.task_modes.get(task_.name, self.modes)
                )  # a protocol needs a cohort that distils
        self.name, self.scale, self.seeds = name, scale, [int(s) for s in seeds]
        self.presets = None if presets is None else list(presets)
        self.variants = list(variants)
        runs_root = Path(runs_dir).resolve()
        self.runs_dir = runs_root / name
        self.results_dir = (Path(results_dir) if results_dir is not None else runs_root / "results") / name
        self.bundles = Path(bundles).resolve() if bundles is not None else default_bundles()
        self.data_root = str(data_root)
        self.sets, self.resamples, self.nice, self.python = dict(sets or {}), resamples, nice, python
        self.allow_mixed_commits = allow_mixed_commits
        self.commit = code_commit()

    # ------------------------------------------------------------ the grid
    def specs(self) -> list[RunSpec]:
        """Every run of the grid, seeds innermost (so a partial grid has complete cells first)."""
        return [
            RunSpec(task.name, preset, variant, seed, protocol)
            for task in self.tasks
            for preset in (self.presets or list(task.scales[self.scale].presets))
            for variant in self.variants
            for protocol in (list(self.protocols) if self.protocols else [None])
            for seed in self.seeds
        ]

    def run_dir(self, spec: RunSpec) -> Path:
        return self.runs_dir / spec.key

    def result_path(self, spec: RunSpec) -> Path:
        return self.results_dir / f"{spec.key}.json"

    def cohorts(self, spec: RunSpec) -> list[str]:
        """The cohorts a run trains (every mode, or only those that distil under a protocol other than today's)."""
        return protocol_cohorts(spec.protocol, self.task_modes.get(spec.task, self.modes))

    def teacher_dir(self, spec: RunSpec) -> Path:
        """Stage 1 of a two-stage protocol: the teacher trained alone, per task, preset and seed."""
        return self.runs_dir / spec.task / spec.preset / "teacher-alone" / f"seed{spec.seed}"

    def _common(self, spec: RunSpec) -> dict[str, Any]:
        scale = TASKS[spec.task].scales[self.scale]
        common = {k: _fill(v, self.data_root) for k, v in scale.common.items()}
        return common | {"seed": spec.seed, "cache_dir": str(self.runs_dir / spec.task / ".cache")}

    def overrides(self, spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(training, evaluation)`` overrides of a run (evaluation reads networks and cohorts from the record)."""
        task = TASKS[spec.task]
        scale = task.scales[self.scale]
        common = self._common(spec)
        cohorts = self.cohorts(spec)
        mode = "kdml" if "kdml" in cohorts else cohorts[-1]
        train = {**common, **scale.train, "preset": spec.preset, "cohorts": cohorts, "mode": mode}
        train |= dict(task.variants[spec.variant])
        if spec.protocol is not None:
            protocol = PROTOCOLS[spec.protocol]
            train |= dict(protocol.train.get(spec.task, {}))
            if protocol.two_stage:
                weights = self.teacher_dir(spec) / "models" / "best_networks.pt"
                train |= {"teacher_mode": "frozen", "teacher_weights": str(weights)}
        train |= self.sets
        evaluate = dict(common)
        if scale.external_test is not None:
            evaluate["test_dir"] = str(self.external_test_dir(spec.task))
        return train, evaluate

    def teacher_overrides(self, spec: RunSpec) -> dict[str, Any]:
        """Training overrides of stage 1 of a two-stage protocol (the teacher alone)."""
        task = TASKS[spec.task]
        scale = task.scales[self.scale]
        train = {**self._common(spec), **scale.train, "preset": spec.preset}
        return train | teacher_stage_overrides(task.selection_metric) | self.sets

    def external_test_dir(self, task: str) -> Path:
        """Where the scale's external test cohort is (generated by :meth:`ensure_external_test`)."""
        return self.runs_dir / "external-test" / task / "msi_demo" / "CRC_DX_TEST"

    def ensure_external_test(self, task: str) -> Path | None:
        """Generate the scale's external cohort of fresh synthetic patients once per grid (MSI); its folder."""
        spec = TASKS[task].scales[self.scale].external_test
        if spec is None:
            return None
        from monai_kdml.apps.msi.demo import ensure_msi_demo

        ensure_msi_demo(self.runs_dir / "external-test" / task, **dict(spec))
        return self.external_test_dir(task)

    def settings(self, spec: RunSpec) -> dict[str, Any]:
        """What a run's result depends on besides its code: scale, protocol, cohorts and every non-path override."""
        train, evaluate = self.overrides(spec)
        strip = lambda d: {k: v for k, v in d.items() if k not in PATH_KEYS}  # noqa: E731
        return json.loads(json.dumps({
            "scale": self.scale, "protocol": spec.protocol, "modes": self.cohorts(spec),
            "train": strip(train), "evaluate": strip(evaluate),
        }, default=str))  # fmt: skip

    def _matches(self, summary: Mapping[str, Any], spec: RunSpec) -> bool:
        if "settings" in summary:
            return summary["settings"] == self.settings(spec)
        # summaries made before settings were recorded: the scale and the non-path training overrides
        old = {k: v for k, v in summary.get("overrides", {}).get("train", {}).items() if k not in PATH_KEYS}
        new = self.settings(spec)["train"]
        return summary.get("scale") == self.scale and spec.protocol is None and json.loads(json.dumps(old)) == new

    def done(self, spec: RunSpec) -> Path | None:
        """The summary of a finished run with this grid's settings (under the results or in its run folder), or
        ``None``.

        Raises:
            StaleRunError: a summary at the run's path was made at another scale or with other settings.
        """
        for path in (self.result_path(spec), self.run_dir(spec) / "summary.json"):
            if path.is_file():
                summary = json.loads(path.read_text())
                if not self._matches(summary, spec):
                    raise StaleRunError(
                        f"{path} was made with other settings (scale {summary.get('scale')!r}, this grid "
                        f"{self.scale!r}; or other overrides or protocol): give another --grid, --runs-dir or "
                        "--results-dir."
                    )
                return path
        return None

    def check_commits(self, spec: RunSpec) -> None:
        """Refuse to add a run to a cell whose finished runs come from another commit (or an uncommitted tree).

        Raises:
            StaleRunError: the cell mixes commits and ``allow_mixed_commits`` is false.
        """
        if self.allow_mixed_commits:
            return
        others = {
            str(json.loads(p.read_text()).get("commit"))
            for s in self.specs()
            if s.cell == spec.cell and s != spec and (p := self.done(s)) is not None
        }
        mine = str(self.commit)
        if others - {mine} or (others and mine.endswith("+dirty")):
            raise StaleRunError(
                f"cell {spec.cell}: finished runs were made at commit(s) {sorted(others)}, this checkout is {mine}: "
                "every run of a cell must come from one commit. Check out that commit, or run the cell again under "
                "another --grid; --allow-mixed-commits to go on anyway (the report marks the cell)."
            )

    # ------------------------------------------------------------ running
    def _bundle(
        self, spec: RunSpec, configs: Sequence[str], overrides: Mapping[str, Any], log: Path, root: Path | None = None
    ) -> float:
        bundle = self.bundles / spec.task
        files = [str(bundle / c) for c in configs]
        config = files[0] if len(files) == 1 else repr(files)
        cmd = [self.python, "-m", "monai.bundle", "run", "--config_file", config]
        cmd += ["--bundle_root", str((root or self.run_dir(spec)).resolve()), *_args(overrides)]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)
        start = time.monotonic()
        with log.open("a") as f:
            f.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n")
            f.flush()
            result = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"{spec.key}: `{' '.join(cmd[-6:])}` failed ({result.returncode}); log {log}:\n{tail}")
        return time.monotonic() - start

    def execute(self, spec: RunSpec) -> dict[str, Any]:
        """Train (resuming an interrupted training), evaluate and summarise one run; returns its summary."""
        folder = self.run_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        commit = self.commit  # the code this run starts with
        timing_path = folder / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"train_s": [], "evaluate_s": []}
        train, evaluate = self.overrides(spec)
        self.ensure_external_test(spec.task)
        if spec.protocol is not None and PROTOCOLS[spec.protocol].two_stage:
            timing["teacher_s"] = self._train_teacher(spec)
        if not (folder / "train.done").is_file():
            restart = _restart(folder / "models")
            if restart["resume"]:
                logger.info("%s: resuming the interrupted training.", spec.key)
            timing["train_s"].append(self._bundle(spec, ["train.json"], {**train, **restart}, folder / "train.log"))
            timing_path.write_text(json.dumps(timing))
            (folder / "train.done").write_text("ok\n")
        timing["evaluate_s"].append(
            self._bundle(spec, ["train.json", "evaluate.json"], evaluate, folder / "evaluate.log")
        )
        timing_path.write_text(json.dumps(timing))
        start = time.monotonic()
        cohorts = self.cohorts(spec)
        summary = collect_run(TASKS[spec.task], folder, cohorts, self.resamples, spec.seed)
        summary = {
            **asdict(spec),
            "grid": self.name,
            "scale": self.scale,
            "scale_description": TASKS[spec.task].scales[self.scale].description,
            "protocol_description": PROTOCOLS[spec.protocol].description if spec.protocol else None,
            "modes": cohorts,
            "settings": self.settings(spec),
            "overrides": {"train": train, "evaluate": evaluate},
            "seconds": {
                "train": sum(timing["train_s"]),
                "teacher_stage": timing.get("teacher_s", 0.0),
                "evaluate": timing["evaluate_s"][-1],
                "summary": time.monotonic() - start,
                "train_attempts": len(timing["train_s"]),
            },
            "epoch_seconds": _epoch_seconds(folder / "train.log"),
            "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "commit": commit,
            "versions": library_versions(),
            **summary,
        }
        text = json.dumps(summary, indent=1, sort_keys=True, default=float)
        (folder / "summary.json").write_text(text + "\n")
        self.result_path(spec).parent.mkdir(parents=True, exist_ok=True)
        self.result_path(spec).write_text(text + "\n")
        return summary

    def _train_teacher(self, spec: RunSpec) -> float:
        """Stage 1 of a two-stage protocol: train the teacher alone once per task, preset and seed; its seconds."""
        folder = self.teacher_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        timing = folder / "timing.json"
        if (folder / "train.done").is_file():
            return float(json.loads(timing.read_text())["train_s"]) if timing.is_file() else 0.0
        overrides = {**self.teacher_overrides(spec), **_restart(folder / "models")}
        seconds = self._bundle(spec, ["train.json"], overrides, folder / "train.log", root=folder)
        timing.write_text(json.dumps({"train_s": seconds, "commit": self.commit}))
        (folder / "train.done").write_text("ok\n")
        return seconds

    def recollect(self, spec: RunSpec) -> dict[str, Any] | None:
        """Rebuild a finished run's summary from its run folder (e.g. after a fix in the summary code), keeping its
        timing and overrides; ``None`` when the run folder has no summary to update."""
        folder = self.run_dir(spec)
        if not (folder / "summary.json").is_file() or not (test_folder(folder) / "metrics.csv").is_file():
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
        todo = [s for s in specs if self.done(s) is None]  # raises StaleRunError before anything runs
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
            self.check_commits(spec)
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


def _restart(models: Path) -> dict[str, bool]:
    """How the runner (re)starts a training in its own run folder: ``resume`` from a checkpoint; ``overwrite`` when a
    killed start left files (``network.json``) but no checkpoint, which the bundle would refuse both to resume and to
    train over."""
    resume = any(models.glob("checkpoint*.pt"))
    return {"resume": resume, "overwrite": not resume and any(models.glob("*"))}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _epoch_seconds(log: Path) -> list[float]:
    """The trainer's ``Epoch[N] Complete. Time taken: HH:MM:SS.fff`` lines of a training log, in seconds (of the
    cohort run only: a bundle's teacher stage logs its own epochs into the same output first)."""
    import re

    pattern = re.compile(r"KDMLTrainer - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
    text = log.read_text(errors="replace") if log.is_file() else ""
    text = text.rsplit(STAGE_TWO_MESSAGE, 1)[-1]
    return [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in pattern.findall(text)]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command line (``python -m monai_kdml.experiments.ablation --help``; :mod:`monai_kdml.experiments.cli`)."""
    from monai_kdml.experiments.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    main()
