"""The README's two commands and CI agree; no data from ../shared is committed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_run_and_test_commands() -> None:
    run, test = readme_commands()
    assert "pip install -e ." in run and "python -m monai.bundle run --config_file bundles/msi/train.json" in run
    assert 'pip install -e ".[test]"' in test and "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_no_image_data_is_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    images = [f for f in tracked if f.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff", ".nii.gz", ".pt"))]
    assert images == []
