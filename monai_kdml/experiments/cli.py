"""The ablation's command line: ``python -m monai_kdml.experiments.ablation --help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_kdml.experiments.ablation import MODES, Ablation, StaleRunError
from monai_kdml.experiments.ablation import __doc__ as ABLATION_DOC
from monai_kdml.experiments.protocols import PROTOCOLS
from monai_kdml.experiments.provenance import package_root
from monai_kdml.experiments.tasks import TASKS

__all__ = ["main"]


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
    """Parse ``argv``, then estimate, list, summarise or run the grid."""
    from monai_kdml.experiments.protocols import GRIDS

    parser = argparse.ArgumentParser(
        description=(ABLATION_DOC or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--grid", help="name of the grid (its folder under --runs-dir/--results-dir)")
    parser.add_argument("--grid-definition", choices=sorted(GRIDS), help="a named grid: tasks, scale, protocols, "
                        "seeds and modes (the options below still override seeds)")  # fmt: skip
    parser.add_argument("--estimate", action="store_true", help="print the grid definition's time estimate and stop")
    parser.add_argument("--tasks", nargs="+", default=None, choices=sorted(TASKS))
    parser.add_argument("--scale", default=None, help="tiny | cpu | teacher | full (monai_kdml/experiments/tasks.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--presets", nargs="+", default=None, help="teacher-student presets (default: the scale's)")
    parser.add_argument("--variants", nargs="+", default=["base"], help="base | views | mixed")
    parser.add_argument("--modes", nargs="+", default=None, help="the cohorts of every run")
    parser.add_argument("--protocols", nargs="+", default=None, choices=sorted(PROTOCOLS),
                        help="distillation protocols (default: none, the bundles' defaults)")  # fmt: skip
    parser.add_argument("--bundles", default=None, help="folder with msi/ and polyp/ (default: the source checkout's)")
    parser.add_argument("--runs-dir", default="runs/ablation", help="run folders (checkpoints: keep outside git)")
    parser.add_argument("--results-dir", default=None, help="run and grid summaries (default <runs-dir>/results; "
                        "docs/results to add committed runs)")  # fmt: skip
    parser.add_argument("--data-root", default=os.environ.get("MONAI_KDML_SHARED_DATA", "../shared/data"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra training overrides")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per run (0: none)")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--allow-mixed-commits", action="store_true", help="add runs to a cell made at another commit")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the grid summary")
    parser.add_argument("--recollect", action="store_true", help="rebuild finished runs' summaries from their folders")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands' overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    definition = GRIDS[args.grid_definition] if args.grid_definition else None
    if definition is not None:
        from monai_kdml.experiments.estimate import estimate_grid, format_estimate

        # the reference timings: committed summaries (--results-dir, else the source checkout's docs/results)
        reference = Path(args.results_dir) if args.results_dir else package_root() / "docs" / "results"
        print(format_estimate(args.grid_definition, definition, estimate_grid(definition, reference)))
        if args.estimate:
            return []
    elif args.estimate:
        parser.error("--estimate needs --grid-definition.")
    if not (args.grid or definition):
        parser.error("give --grid (and --tasks, --scale, ...) or --grid-definition.")
    ablation = Ablation(
        args.grid or args.grid_definition,
        args.tasks or (list(definition.tasks) if definition else ["msi"]),
        args.scale or (definition.scale if definition else "cpu"),
        args.seeds or (list(definition.seeds) if definition else [0, 1, 2]),
        args.presets, args.variants,
        args.modes or (list(definition.modes) if definition else list(MODES)),
        args.runs_dir, args.results_dir, args.bundles, args.data_root, _parse_set(args.set), args.bootstrap,
        args.nice, protocols=args.protocols or (list(definition.protocols) if definition else None),
        allow_mixed_commits=args.allow_mixed_commits,
        task_modes=dict(definition.task_modes) if definition and not args.modes else None,
    )  # fmt: skip
    if args.dry_run:
        for spec in ablation.specs():
            try:
                state = "finished" if ablation.done(spec) else "to run"
            except StaleRunError:
                state = "other settings"
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
