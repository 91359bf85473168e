"""Figures, tables and the run record: what every section returns, how it prints, how runs are compared."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdml_bench.timing import stats

__all__ = ["Figure", "SectionResult", "Table", "compare_runs", "format_run", "load_run", "write_run"]


@dataclass
class Figure:
    """One ratio (or other quantity) with its spread over repeats and, optionally, a target.

    Args:
        name: what is divided by what, e.g. ``"KDMLTrainer / hand-written loop"``.
        values: one value per repeat (paired, interleaved measurements).
        target: upper bound the median should not exceed (``None``: reported only).
        unit: ``"x"`` for ratios, else a unit such as ``"ms"``.
        note: one line of context (sizes, what the baseline is).
    """

    name: str
    values: list[float]
    target: float | None = None
    unit: str = "x"
    note: str = ""

    def record(self) -> dict[str, Any]:
        s = stats(self.values)
        verdict = "" if self.target is None or math.isnan(s["median"]) else self._verdict(s["median"])
        return {
            "name": self.name,
            "unit": self.unit,
            **s,
            "target": self.target,
            "verdict": verdict,
            "note": self.note,
            "values": [float(v) for v in self.values],
        }

    def _verdict(self, median: float) -> str:
        assert self.target is not None
        return "holds" if median <= self.target else f"misses by {100 * (median / self.target - 1):.1f} %"


@dataclass
class Table:
    """A detail table (e.g. peak memory per preset and batch size), printed as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def record(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


@dataclass
class SectionResult:
    """What one section measured: figures for the summary table, detail tables and raw details."""

    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "figures": [f.record() for f in self.figures],
            "tables": [t.record() for t in self.tables],
            "details": self.details,
            "skipped": self.skipped,
        }


def _num(x: float, unit: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if unit == "x" else f"{x:.3g}"


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in columns]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]


def format_run(run: dict[str, Any]) -> str:
    """The summary table of every figure, then each section's detail tables, as Markdown text."""
    meta = run["meta"]
    policy = meta["env"].get("OMP_WAIT_POLICY") or "unset"
    head = [
        f"monai-kdml benchmarks, profile `{meta['profile']}`, device {meta['device']}, torch {meta['torch']}, "
        f"clock {meta['clock']}, {meta['torch_threads']} intra-op threads, OMP_WAIT_POLICY={policy}",
        f"load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']} ({meta['cpu_count']} CPUs), "
        f"{meta['seconds']:.0f} s",
        "",
    ]
    rows = []
    for section, result in run["sections"].items():
        if result["skipped"]:
            rows.append([section, f"skipped: {result['skipped']}", "", "", "", "", ""])
        for f in result["figures"]:
            spread = f"{_num(f['q1'], f['unit'])}..{_num(f['q3'], f['unit'])}"
            extremes = f"{_num(f['min'], f['unit'])}..{_num(f['max'], f['unit'])}"
            target = "" if f["target"] is None else f"<= {f['target']:g}"
            median = _num(f["median"], f["unit"]) + ("" if f["unit"] == "x" else f" {f['unit']}")
            rows.append([section, f["name"], median, spread, extremes, target, f["verdict"]])
    lines = head + _markdown(["section", "figure", "median", "IQR", "min-max", "target", "verdict"], rows)
    for section, result in run["sections"].items():
        for table in result["tables"]:
            lines += ["", f"{section}: {table['title']}", "", *_markdown(table["columns"], table["rows"])]
    return "\n".join(lines) + "\n"


def write_run(run: dict[str, Any], out: Path | None, append: Path | None) -> None:
    """Write the run as JSON to ``out`` and/or append it as one line to the JSON-lines file ``append``."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(run, indent=1, allow_nan=True))
    if append is not None:
        append.parent.mkdir(parents=True, exist_ok=True)
        with append.open("a") as fh:
            fh.write(json.dumps(run, allow_nan=True) + "\n")


def load_run(path: Path) -> dict[str, Any]:
    """A run written by :func:`write_run`: a JSON file, or the last line of a JSON-lines file."""
    text = path.read_text().strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])


def compare_runs(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Median of every figure in both runs and their quotient (new / old), as a Markdown table."""
    rows = []
    for section, result in new["sections"].items():
        before = {f["name"]: f for f in old.get("sections", {}).get(section, {}).get("figures", [])}
        for f in result["figures"]:
            b = before.get(f["name"])
            change = f["median"] / b["median"] if b and b["median"] else float("nan")
            rows.append(
                [
                    section,
                    f["name"],
                    _num(b["median"], f["unit"]) if b else "-",
                    _num(f["median"], f["unit"]),
                    _num(change, "x"),
                ]
            )
    title = f"comparison: old load {old['meta']['loadavg_start']} vs new load {new['meta']['loadavg_start']}"
    return "\n".join([title, "", *_markdown(["section", "figure", "old", "new", "new / old"], rows)]) + "\n"
