"""The grid summary of an ablation: every finished run summary (``<results>/<task>/**/seed<s>.json``) aggregated per
task into a CSV, a markdown report and a PNG plot written side by side, and a TensorBoard HParams view (one row per
run).

Per cell (preset x variant x mode): the student ensemble, the best and the mean single student and the teacher on
the test split, mean and std over seeds; the per-seed paired difference of ``kdml`` against each other mode (ensemble
and mean student), whether it is positive for every seed, and how many runs' bootstrap intervals exclude 0; the
ensemble against its best single student (test and validation); the teacher against the ensemble at their cost.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_kdml.data.csv_cells import escape_rows
from monai_kdml.experiments.protocol_report import protocol_section
from monai_kdml.experiments.stats import mean_std, min_detectable_difference, paired_differences
from monai_kdml.experiments.tasks import REFERENCE, TASKS, Task
from monai_kdml.keys import ENSEMBLE

__all__ = ["load_runs", "write_reports"]

ROLES = (ENSEMBLE, "best_student", "oracle_student", "mean_student")
ROLE_LABELS = {
    ENSEMBLE: "ensemble",
    "best_student": "best student (validation)",
    "oracle_student": "oracle student (best on test)",
    "mean_student": "mean student",
}


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every run summary below ``folder`` (``seed*.json``), sorted by preset, variant and seed."""
    runs = [json.loads(p.read_text()) for p in Path(folder).rglob("seed*.json")]
    return sorted(runs, key=lambda r: (r["preset"], r["variant"], r.get("protocol") or "", r["seed"]))


def _label(run: Mapping[str, Any]) -> str:
    """The run's variant, with its protocol when it has one (``base/ramp``): the second key of a cell."""
    return f"{run['variant']}/{run['protocol']}" if run.get("protocol") else str(run["variant"])


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _cells(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["preset"], _label(run)), []).append(run)
    return cells


def _value(run: dict[str, Any], mode: str, role: str, metric: str) -> float:
    if role == "teacher":
        return float(run["teacher"].get(metric, math.nan))
    test = run["test"].get(mode, {})
    if "best_student_index" not in test and role in ("best_student", "oracle_student"):
        # summaries made before the validation-selected student: their "best_student" is the oracle
        role = "best_student" if role == "oracle_student" else ""
        if not role:
            return math.nan
    value = test.get(role, {}).get(metric)
    return math.nan if value is None else float(value)


def _rows(task: Task, runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The long CSV: one row per preset, variant, mode, role and metric, with mean, std, n and per-seed values."""
    rows = []
    for (preset, variant), cell in _cells(runs).items():
        pairs = [(mode, role) for mode in cell[0]["modes"] for role in ROLES] + [("-", "teacher")]
        for mode, role in pairs:
            if True:
                for metric in task.metrics:
                    values = {r["seed"]: _value(r, mode, role, metric) for r in cell}
                    mean, std = mean_std(list(values.values()))
                    rows.append({
                        "task": task.name, "preset": preset, "variant": variant, "mode": mode, "role": role,
                        "metric": metric, "mean": mean, "std": std, "n": sum(math.isfinite(v) for v in values.values()),
                        "values": ";".join(f"{s}:{v:.4f}" for s, v in values.items()),
                    })  # fmt: skip
    return rows


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _metric_table(task: Task, cells: Mapping[tuple[str, str], list[dict]], role: str) -> list[str]:
    header = ["preset", "variant", "mode", *(task.labels[m] for m in task.metrics)]
    rows = []
    for (preset, variant), cell in cells.items():
        modes = ["-"] if role == "teacher" else cell[0]["modes"]
        for mode in modes:
            values = [mean_std([_value(r, mode, role, m) for r in cell]) for m in task.metrics]
            rows.append([preset, variant, mode, *(_fmt(*v) for v in values)])
    return _table(header, rows)


def _paired_table(task: Task, cells: Mapping[tuple[str, str], list[dict]], metrics: Sequence[str]) -> list[str]:
    header = ["preset", "variant", "kdml vs", "network"]
    header += [f"{task.labels[m]}: mean ± std (>0 / n)" for m in metrics]
    header += [f"{task.labels[m]}: bootstrap CI > 0 / < 0" for m in metrics if m in _bootstrapped(task)]
    rows = []
    for (preset, variant), cell in cells.items():
        for other in [m for m in cell[0]["modes"] if m != REFERENCE]:
            for role in (ENSEMBLE, "mean_student"):
                row = [preset, variant, other, ROLE_LABELS[role]]
                for m in metrics:
                    d = paired_differences(
                        {r["seed"]: _value(r, REFERENCE, role, m) for r in cell},
                        {r["seed"]: _value(r, other, role, m) for r in cell},
                    )
                    mark = " **consistent**" if d["consistent"] else ""
                    row.append(f"{_fmt(float(d['mean']), float(d['std']), 4)} ({d['positive']}/{d['n']}){mark}")  # type: ignore[arg-type]
                for m in [m for m in metrics if m in _bootstrapped(task)]:
                    above = below = 0
                    for r in cell:
                        ci = r.get("bootstrap", {}).get(f"{REFERENCE}-{other}/{role}_{m}")
                        if ci:
                            above += ci["low"] > 0
                            below += ci["high"] < 0
                    row.append(f"{above} / {below} of {len(cell)}")
                rows.append(row)
    return _table(header, rows)


def _bootstrapped(task: Task) -> tuple[str, ...]:
    return ("auc", "patient_auc") if task.name == "msi" else ("map", "ap50", "sens_1fp")


def _ensemble_table(task: Task, cells: Mapping[tuple[str, str], list[dict]]) -> list[str]:
    m = task.selection_metric
    label = task.labels[m]
    header = [
        "preset", "variant", "mode", f"test: ensemble - best student ({label})", "ensemble ahead (test)",
        f"validation: ensemble - best student ({label})", "ensemble ahead (validation)", "students' disagreement",
    ]  # fmt: skip
    rows = []
    for (preset, variant), cell in cells.items():
        for mode in cell[0]["modes"]:
            test = [_value(r, mode, ENSEMBLE, m) - _value(r, mode, "best_student", m) for r in cell]
            val = [float(r["validation"].get(mode, {}).get("margin", math.nan)) for r in cell]
            dis = [r["test"][mode].get("disagreement") for r in cell]
            rows.append([
                preset, variant, mode, _fmt(*mean_std(test), 4), f"{sum(t > 0 for t in test)}/{len(test)}",
                _fmt(*mean_std(val), 4), f"{sum(v > 0 for v in val)}/{len(val)}",
                _fmt(*mean_std([d for d in dis if d is not None]), 4),
            ])  # fmt: skip
    return _table(header, rows)


def _cost_table(task: Task, cells: Mapping[tuple[str, str], list[dict]], costs: Mapping[str, dict]) -> list[str]:
    m = task.selection_metric
    header = [
        "preset", "variant", f"teacher {task.labels[m]}", f"kdml ensemble {task.labels[m]}", "params teacher / ens.",
        "MACs teacher / ens.", "CPU latency teacher / ens. (ms, batch 1, 1 thread)",
    ]  # fmt: skip
    rows = []
    for (preset, variant), cell in cells.items():
        c = costs.get(f"{preset}/{cell[0]['variant']}", {})
        teacher = mean_std([_value(r, "-", "teacher", m) for r in cell])
        ens = mean_std([_value(r, REFERENCE, ENSEMBLE, m) for r in cell])
        if c:
            params = f"{c['teacher_params'] / 1e6:.2f} M / {c['ensemble_params'] / 1e6:.2f} M ({c['param_ratio']:.1f}x)"
            macs = f"{c['teacher_macs'] / 1e9:.3f} G / {c['ensemble_macs'] / 1e9:.3f} G ({c['mac_ratio']:.1f}x)"
            ms = f"{c['teacher_ms']:.1f} / {c['ensemble_ms']:.1f} ({c['latency_ratio']:.1f}x)"
        else:
            params = macs = ms = "-"
        rows.append([preset, variant, _fmt(*teacher), _fmt(*ens), params, macs, ms])
    return _table(header, rows)


def _costs(task: Task, folder: Path, cells: Mapping[tuple[str, str], list[dict]]) -> dict[str, dict]:
    """Costs per preset/variant, measured once and kept in ``<folder>/costs.json``."""
    from monai_kdml.experiments.costs import network_costs

    path = folder / "costs.json"
    costs = json.loads(path.read_text()) if path.is_file() else {}
    changed = False
    for (preset, _), cell in cells.items():
        key = f"{preset}/{cell[0]['variant']}"
        if key not in costs:
            costs[key] = network_costs(task.name, cell[0]["record"])
            changed = True
    if changed:
        path.write_text(json.dumps(costs, indent=1, sort_keys=True) + "\n")
    return costs


def _plot(task: Task, cells: Mapping[tuple[str, str], list[dict]], path: Path) -> None:
    """One panel per main metric: per mode, the ensemble (filled) and the mean student (hollow), mean ± std over
    seeds, one colour per preset/variant; the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (*task.metrics[:2], task.metrics[3])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.3 * len(metrics), 3.8), squeeze=False)
    groups = list(cells)
    step = 0.7 / max(1, len(groups))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for g, (preset, variant) in enumerate(groups):
            cell = cells[(preset, variant)]
            modes = cell[0]["modes"]
            x = [i - 0.35 + step * (g + 0.5) for i in range(len(modes))]
            for role, offset, style in ((ENSEMBLE, -0.06, {}), ("mean_student", 0.06, {"mfc": "none"})):
                stats = [mean_std([_value(r, mode, role, metric) for r in cell]) for mode in modes]
                ax.errorbar([v + offset * step for v in x], [m for m, _ in stats],
                            yerr=[s if math.isfinite(s) else 0.0 for _, s in stats], fmt="o", color=f"C{g}", ms=6,
                            capsize=3, label=f"{preset}/{variant}: {ROLE_LABELS[role]}", **style)  # fmt: skip
            teacher, _ = mean_std([_value(r, "-", "teacher", metric) for r in cell])
            if math.isfinite(teacher):
                ax.axhline(teacher, ls="--", lw=1, color=f"C{g}", label=f"{preset}/{variant}: teacher")
        ax.set_xticks(range(len(cells[groups[0]][0]["modes"])), cells[groups[0]][0]["modes"])
        ax.set_title(task.labels[metric])
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
    seeds = sorted({r["seed"] for c in cells.values() for r in c})
    fig.suptitle(f"{task.name}: test split, mean ± std over seeds {seeds} (filled: ensemble, hollow: mean student, "
                 "dashed: teacher)", fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 6), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hparams(runs: Sequence[dict[str, Any]], task: Task, folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for run in runs:
        hparams: dict[str, Any] = {"task": task.name, "preset": run["preset"], "variant": run["variant"],
                                   "seed": run["seed"], "scale": run["scale"]}  # fmt: skip
        for key, value in run["overrides"]["train"].items():
            if key not in hparams and key not in ("cache_dir", "cohorts"):
                hparams[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        metrics = {f"hparam/teacher_{m}": _value(run, "-", "teacher", m) for m in task.metrics}
        for mode in run["modes"]:
            for role in (ENSEMBLE, "mean_student"):
                for m in task.metrics:
                    metrics[f"hparam/{mode}/{role}_{m}"] = _value(run, mode, role, m)
        name = f"{task.name}/{run['preset']}/{run['variant']}/seed{run['seed']}"
        with SummaryWriter(log_dir=str(folder / name)) as writer:
            writer.add_hparams(hparams, {k: v for k, v in metrics.items() if math.isfinite(v)}, run_name=".")


def _task_report(task: Task, runs: list[dict[str, Any]], folder: Path, costs: Mapping[str, dict]) -> list[str]:
    cells = _cells(runs)
    seeds = sorted({r["seed"] for r in runs})
    first = runs[0]
    walls = [r["seconds"]["train"] + r["seconds"]["evaluate"] for r in runs]
    main = [task.selection_metric, *[m for m in _bootstrapped(task) if m != task.selection_metric]]
    lines = [
        f"# {task.name}: does KD + ML pay off? (grid `{first['grid']}`, scale `{first['scale']}`)",
        "",
        f"Scale: {first['scale_description']}. {len(runs)} runs (cohort runs: every mode's students trained with one "
        f"online teacher on the same batches), seeds {seeds}; wall time per run {_fmt(*mean_std(walls), 0)} s "
        f"(training + evaluation) on {first['machine']['cpus']} CPUs. Test split; mean ± std over seeds.",
        "",
        *_provenance(runs),
        *protocol_section(task, runs),
        "## Student ensemble",
        "",
        *_metric_table(task, cells, ENSEMBLE),
        "",
        _mdd_line(task, cells),
        "",
        "## Mean single student",
        "",
        *_metric_table(task, cells, "mean_student"),
        "",
        "## Best single student: the one with the best validation metric at the selected epoch (what one would deploy)",
        "",
        *_metric_table(task, cells, "best_student"),
        "",
        "## Oracle student: the best of the K on the test split itself (an optimistic bound, not a result)",
        "",
        *_metric_table(task, cells, "oracle_student"),
        "",
        "## Teacher (the same online teacher serves every cohort of a run)",
        "",
        *_metric_table(task, cells, "teacher"),
        "",
        "## kdml against each other mode: per-seed paired differences (kdml - other)",
        "",
        "Mean ± std over seeds of the difference, how many seeds had it > 0, **consistent** when all did; and how many "
        "runs' 95 % bootstrap interval over test images (same resamples for both modes) lies above / below 0.",
        "",
        *_paired_table(task, cells, main),
        "",
        "## Is the ensemble worth deploying over its best single student?",
        "",
        "Test: ensemble minus the student with the best validation metric (the one a user would deploy alone). "
        "Validation: at the epoch of the ensemble's best validation metric (what model selection keeps), against the "
        "best student at that epoch (`eval/metrics_history.csv`).",
        "",
        *_ensemble_table(task, cells),
        "",
        "## Teacher against ensemble, at their cost",
        "",
        *_cost_table(task, cells, costs),
        "",
        f"Files: `{task.name}.csv` (every cell, role and metric with per-seed values), `{task.name}.png`, one "
        f"`seed<s>.json` per run under `{task.name}/`.",
        "",
    ]
    return lines


def _provenance(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Commits per cell (a cell mixing commits is marked) and the library versions of the runs."""
    lines = []
    for key, cell in _cells(runs).items():
        commits = sorted({str(r.get("commit")) for r in cell})
        if len(commits) > 1 or any(c.endswith("+dirty") for c in commits):
            lines.append(f"- **cell {'/'.join(key)} mixes commits or an uncommitted tree**: {', '.join(commits)}")
    versions = sorted({json.dumps(r.get("versions", {}), sort_keys=True) for r in runs})
    one_commit = sorted({str(r.get("commit"))[:12] for r in runs})
    libraries = "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(v).items()) or "not recorded" for v in versions)
    out = [f"Code: commit(s) {', '.join(one_commit)}; libraries: {libraries}.", ""]
    return out + ([*lines, ""] if lines else [])


def _mdd_line(task: Task, cells: Mapping[tuple[str, str], list[dict]]) -> str:
    """The smallest difference of the ensemble's selection metric between two modes that the seeds can detect."""
    m = task.selection_metric
    parts = []
    for (preset, variant), cell in cells.items():
        sds = []
        for other in [x for x in cell[0]["modes"] if x != REFERENCE]:
            d = paired_differences({r["seed"]: _value(r, REFERENCE, ENSEMBLE, m) for r in cell},
                                   {r["seed"]: _value(r, other, ENSEMBLE, m) for r in cell})  # fmt: skip
            if math.isfinite(float(d["std"])):  # type: ignore[arg-type]
                sds.append(float(d["std"]))  # type: ignore[arg-type]
        if sds:
            mdd = min_detectable_difference(sorted(sds)[len(sds) // 2], len(cell))
            parts.append(f"{preset}/{variant}: {mdd:.3f} ({len(cell)} seeds)")
    if not parts:
        return "Smallest detectable difference: needs at least two seeds with kdml and another mode."
    head = f"Smallest detectable difference in ensemble {task.labels[m]} between two modes (paired t over seeds, "
    return (
        head + "alpha 0.05 two-sided, 80 % power, median spread of the paired differences): " + "; ".join(parts) + "."
    )


def write_reports(results_dir: str | Path, tasks: Sequence[str], hparams_dir: str | Path | None = None) -> list[Path]:
    """Write ``<results_dir>/<task>.{csv,md,png}`` for every task with finished runs (and the HParams view).

    Returns:
        The files written.
    """
    results_dir = Path(results_dir)
    written: list[Path] = []
    if hparams_dir is not None:
        shutil.rmtree(hparams_dir, ignore_errors=True)
    for name in tasks:
        task = TASKS[name]
        runs = load_runs(results_dir / name)
        if not runs:
            continue
        cells = _cells(runs)
        costs = _costs(task, results_dir / name, cells)
        csv_path, md_path, png_path = (results_dir / f"{name}.{ext}" for ext in ("csv", "md", "png"))
        rows = _rows(task, runs)
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(escape_rows(rows))
        md_path.write_text("\n".join(_task_report(task, runs, results_dir, costs)))
        _plot(task, cells, png_path)
        if hparams_dir is not None:
            _hparams(runs, task, Path(hparams_dir))
        written += [csv_path, md_path, png_path]
    return written
