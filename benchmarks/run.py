"""monai-kdml benchmark suite: ``python benchmarks/run.py [--smoke | --profile full] [--device cuda] [--out x.json]``.

Every figure is a ratio of two things timed side by side in this process (or in sibling processes), interleaved,
with the median and spread over repeats. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# no torch before the arguments are read: OpenMP reads its environment when torch loads
from kdml_bench.args import parse_args

if __name__ == "__main__":
    args = parse_args()
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    from kdml_bench.cli import main

    sys.exit(main(args))
