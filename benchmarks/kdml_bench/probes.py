"""Peak-memory probes: each configuration in a fresh process, watched and capped, so none can take the machine down.

Processes come from a ``forkserver`` that imported torch, MONAI and monai-kdml once and never ran an operator, so a
probe starts in milliseconds with the RSS of a fresh import, and no allocator or thread-pool state of the parent.
Two guards: the parent samples the child's ``VmRSS`` every 20 ms and kills it above the limit; the child caps its
own address space (``RLIMIT_AS`` = what it maps at start + the limit + slack), so a burst between two samples fails
an allocation instead of reaching the machine. A probe reports ``VmHWM`` (peak RSS, reset at its start).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import signal
import time
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from torch import nn

from kdml_bench.workloads import build_networks, build_one, kdml_trainer, synthetic_batches
from monai_kdml.apps.polyp.ensemble import RetinaNetHeadEnsemble
from monai_kdml.apps.polyp.networks import get_preset as get_detection_preset
from monai_kdml.networks import StudentEnsemble, build_network, get_preset

__all__ = ["GIB", "available_bytes", "build_deployable", "prestart", "run_probe"]

GIB = 1024**3
AS_SLACK = 3 * GIB
_CONTEXT: Any = None


def _status(pid: int | str, field: str) -> int | None:
    """A ``/proc/<pid>/status`` field in bytes (``None`` once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def available_bytes() -> int:
    """``MemAvailable`` of the machine."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        # the forkserver imports its preload modules before it applies the parent's sys.path: pass it in the env
        here = Path(__file__).resolve().parent
        paths = [str(here.parent), str(here.parents[1]), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["kdml_bench.probes"])
    return _CONTEXT


def prestart() -> None:
    """Start the forkserver now; it imports in the background until the first probe needs it."""
    _context()
    forkserver.ensure_running()


def run_probe(spec: dict[str, Any], limit_bytes: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run one probe (``spec["kind"]``: ``"train"`` or ``"infer"``) in a fresh guarded process.

    Returns:
        ``{"ok": True, "peak": bytes, "base": bytes, ...}``, or ``{"ok": False, "exceeded": bool, "error": str,
        "seen": largest sampled RSS}`` when the child was killed, ran out of address space or failed.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, limit_bytes, sender), daemon=True)
    proc.start()
    sender.close()
    seen, reason, reply = 0, "", None
    deadline = time.monotonic() + timeout_s
    while reply is None and proc.is_alive():
        rss = _status(proc.pid, "VmRSS") or 0
        seen = max(seen, rss)
        if rss > limit_bytes or time.monotonic() > deadline:
            reason = f"exceeded {limit_bytes / GIB:.1f} GiB" if rss > limit_bytes else f"timed out ({timeout_s:.0f} s)"
            os.kill(proc.pid, signal.SIGKILL)
            break
        if receiver.poll(0.02):
            try:
                reply = receiver.recv()
            except EOFError:
                break
    proc.join()
    if reply is None and not reason and receiver.poll():
        with contextlib.suppress(EOFError):
            reply = receiver.recv()
    if reply is not None:
        return reply
    return {
        "ok": False,
        "exceeded": reason.startswith("exceeded"),
        "error": reason or f"exit {proc.exitcode}",
        "seen": seen,
    }


def _child(spec: dict[str, Any], limit_bytes: int, conn: Any) -> None:
    try:
        mapped = _status("self", "VmSize") or 0
        resource.setrlimit(resource.RLIMIT_AS, (mapped + limit_bytes + AS_SLACK, resource.RLIM_INFINITY))
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        torch.set_num_threads(int(spec.get("threads", 1)))
        base = _status("self", "VmRSS") or 0
        device = torch.device(spec.get("device", "cpu"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        (_train if spec["kind"] == "train" else _infer)(spec, device)
        out = {"ok": True, "base": base, "peak": _status("self", "VmHWM") or 0}
        if device.type == "cuda":
            out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
        conn.send(out)
    except (MemoryError, RuntimeError) as err:
        text = str(err)
        exceeded = isinstance(err, MemoryError) or "alloc" in text.lower() or "out of memory" in text.lower()
        conn.send({"ok": False, "exceeded": exceeded, "error": text[:300], "seen": _status("self", "VmHWM") or 0})
    finally:
        conn.close()


def _train(spec: dict[str, Any], device: torch.device) -> None:
    """One step at batch 2 (allocates optimizer state; BatchNorm refuses one value per channel), then one at
    ``spec["batch"]``: kdml, teacher or student."""
    data = synthetic_batches(1, 2, spec["image_size"], device) + synthetic_batches(
        1, spec["batch"], spec["image_size"], device, seed=1
    )
    if spec["role"] == "kdml":
        kdml_trainer(build_networks(spec["preset"], spec["num_students"], device), data, device, epoch_length=2).run()
        return
    net, opt = build_one(spec["preset"], spec["role"], device)
    SupervisedTrainer(
        device,
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=nn.CrossEntropyLoss(),
        epoch_length=2,
    ).run()


def build_deployable(task: str, preset: str, role: str, num_students: int) -> nn.Module:
    """The ``"teacher"`` or the ``"ensemble"`` of ``num_students`` students of an MSI or polyp preset, in eval mode."""
    torch.manual_seed(0)
    if task == "polyp":
        det = get_detection_preset(preset)
        net: nn.Module = (
            det.build_teacher() if role == "teacher" else RetinaNetHeadEnsemble(det.build_students(num_students))
        )
    else:
        pair = get_preset(preset)
        net = (
            build_network(pair.teacher)
            if role == "teacher"
            else StudentEnsemble([build_network(pair.student) for _ in range(num_students)])
        )
    return net.eval()


def _infer(spec: dict[str, Any], device: torch.device) -> None:
    net = build_deployable(spec["task"], spec["preset"], spec["role"], spec["num_students"]).to(device)
    size = spec["image_size"]
    with torch.inference_mode():
        net(torch.rand(spec["batch"], 3, size, size, device=device))
