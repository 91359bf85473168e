"""The one bundle-test harness: run a bundle as a user does (``python -m monai.bundle run`` in a subprocess, or
``torchrun``), or in-process through MONAI's ``ConfigWorkflow`` when a test needs to look at parsed objects."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[2]
# real data beside the checkout; MONAI_KDML_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("MONAI_KDML_SHARED_DATA", REPO.parent / "shared" / "data"))
# one thread and passive OpenMP waits in every child: xdist runs two tests at once on 2 cores
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


class BundleRunner:
    """One of the repository's bundles (``bundles/<name>``), run from the repository root.

    Training runs get ``teacher_stage false`` unless a test sets it or asks for ``bundle_defaults``: most tests are
    about checkpoints, data and logs, which the one-stage online run exercises in half the time; the default two-stage
    path has its own tests (``test_teacher_stage.py``).

    Args:
        name: ``"msi"`` or ``"polyp"``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = REPO / "bundles" / name

    def config_arg(self, config: str | Sequence[str]) -> str:
        """The ``--config_file`` value: one path, or MONAI's list syntax for layered files."""
        names = [config] if isinstance(config, str) else list(config)
        files = [str(self.dir / c) for c in names]
        return files[0] if len(files) == 1 else repr(files)

    def cli(
        self,
        *args: str,
        config: str | Sequence[str] = "train.json",
        torchrun: int = 0,
        command: str = "run",
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
        bundle_defaults: bool = False,
    ) -> subprocess.CompletedProcess:
        """``python -m monai.bundle <command> --config_file ... <args>`` (``torchrun`` with ``torchrun`` ranks).

        ``command`` may carry positional arguments, e.g. ``"ckpt_export network_def"``; ``bundle_defaults`` keeps the
        bundle's ``teacher_stage``.

        Returns the finished process (stdout and stderr captured as text); ``check`` raises with the log tail.
        """
        launcher = [sys.executable, "-m"]
        if torchrun:
            port = str(29500 + os.getpid() % 400)  # xdist workers must not share a rendezvous port
            launcher += ["torch.distributed.run", f"--nproc_per_node={torchrun}", f"--master_port={port}", "-m"]
        names = [config] if isinstance(config, str) else list(config)
        if command == "run" and names[0] == "train.json" and not bundle_defaults and not _sets("teacher_stage", args):
            args = (*args, "--teacher_stage", "false")
        cmd = [*launcher, "monai.bundle", *command.split(), "--config_file", self.config_arg(config), *args]
        result = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, **CHILD_ENV, **(env or {})}, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def workflow(
        self, config: str | Sequence[str] = "train.json", workflow_type: str = "train", run: bool = True, **override
    ) -> ConfigWorkflow:
        """The bundle in-process: initialise (checking its properties), run and finalise; returns the workflow.

        ``teacher_stage`` is false unless given: stage 1 runs only from a ``python -m monai.bundle`` command line."""
        names = [config] if isinstance(config, str) else list(config)
        if names[0] == "train.json":
            override.setdefault("teacher_stage", False)
        files = [str(self.dir / c) for c in names]
        workflow = ConfigWorkflow(
            config_file=files if len(files) > 1 else files[0],
            meta_file=str(self.dir / "metadata.json"),
            workflow_type=workflow_type,
            logging_file=False,  # keep pytest's log capture (the bundle's logging.conf would replace root handlers)
            **override,
        )
        workflow.initialize()
        assert workflow.check_properties() == []
        if run:
            workflow.run()
            workflow.finalize()
        return workflow


def _sets(key: str, args: Sequence[str]) -> bool:
    """Whether command-line ``args`` set ``--key`` (``--key value`` or ``--key=value``)."""
    return any(a == f"--{key}" or a.startswith(f"--{key}=") for a in args)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where the README's commands run)."""
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real tiles and frames; tests skip cleanly without it)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def msi_bundle() -> BundleRunner:
    """The MSI bundle."""
    return BundleRunner("msi")


@pytest.fixture(scope="session")
def polyp_bundle() -> BundleRunner:
    """The polyp bundle."""
    return BundleRunner("polyp")
