"""monai-kdml benchmark suite: every figure is a ratio of two things timed side by side in one process.

Run ``python benchmarks/run.py`` (see ``docs/benchmarks.md``). One module per measurement:

- :mod:`.overhead`: ``KDMLTrainer`` iterations against a hand-written loop doing the same work;
- :mod:`.pipeline`: one simultaneous epoch over a PNG tile pipeline against three separate trainings;
- :mod:`.scaling`: iteration time against the number of students;
- :mod:`.validation`: ``KDMLEvaluator`` against the networks' plain forward passes;
- :mod:`.deployment`: student ensemble against teacher (size, MACs, latency, throughput, memory);
- :mod:`.memory`: peak resident memory of a training step, each configuration in a fresh guarded process;
- :mod:`.threads`: OpenMP wait policy and thread count, with and without a competing CPU load;
- :mod:`.precision`: autocast and ``channels_last`` variants (CUDA only);
- :mod:`.grouped`: K identical students fused into one grouped-convolution network.
"""

SECTIONS = (
    "overhead",
    "pipeline",
    "scaling",
    "validation",
    "deployment",
    "memory",
    "threads",
    "precision",
    "grouped",
)
