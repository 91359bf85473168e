"""A training-step worker for :mod:`kdml_bench.threads`: started with its own environment, it times steps on request.

Protocol: argv[1] is a JSON spec (preset, image_size, batch, num_students, threads); it prints ``ready``, then for
each line ``N`` on stdin runs N steps and prints ``{"seconds": ...}``; ``quit`` ends it.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from kdml_bench.workloads import build_networks, kdml_loss, kdml_step, synthetic_batches


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec["threads"]))
    device = torch.device("cpu")
    nets = build_networks(spec["preset"], spec["num_students"], device)
    batch = synthetic_batches(1, spec["batch"], spec["image_size"], device)[0]
    loss = kdml_loss()
    kdml_step(nets, loss, batch["image"], batch["label"])
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        start = time.perf_counter()
        for _ in range(int(line)):
            kdml_step(nets, loss, batch["image"], batch["label"])
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
