"""Where a run's code and bundles come from: the bundles folder, the commit of the code, the library versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["code_commit", "default_bundles", "library_versions", "package_root"]


def default_bundles() -> Path:
    """The ``bundles/`` folder of the source checkout this package is imported from.

    Raises:
        FileNotFoundError: the package is installed without the repository's bundles: give ``--bundles``.
    """
    candidate = package_root() / "bundles"
    if not (candidate / "msi" / "train.json").is_file():
        raise FileNotFoundError(
            f"no bundles next to the monai_kdml package ({candidate}); give --bundles <folder holding msi/ and polyp/>."
        )
    return candidate


def package_root() -> Path:
    """The folder holding the imported ``monai_kdml`` package (a source checkout's root, or site-packages)."""
    import monai_kdml

    return Path(monai_kdml.__file__).resolve().parent.parent


def code_commit() -> str | None:
    """The git commit of the source checkout this package is imported from (``+dirty`` when tracked files under it
    differ from it), else the installed package's version (``monai-kdml==<v>``), else ``None``."""
    root = package_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "monai_kdml", "bundles"],
            cwd=root, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"monai-kdml=={version('monai-kdml')}"
        except PackageNotFoundError:
            return None


def library_versions() -> dict[str, str]:
    """Versions of what a run's numbers depend on: Python, torch, MONAI, Ignite, NumPy."""
    import platform

    import ignite
    import monai
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "ignite": ignite.__version__, "numpy": numpy.__version__}  # fmt: skip
