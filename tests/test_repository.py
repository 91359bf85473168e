"""The README's two commands and CI agree; no data from ../shared is committed; run outputs stay out of git."""

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
    """Images, volumes and weights stay out of git; the only images are small result plots under docs/."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    images = [f for f in tracked if f.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff", ".nii.gz", ".pt"))]
    plots = [f for f in images if f.startswith("docs/") and f.endswith(".png")]
    assert [f for f in images if f not in plots] == []
    assert [f for f in plots if (REPO / f).stat().st_size > 300_000] == []  # a plot, not a frame or a tile


def test_run_outputs_are_ignored_by_git() -> None:
    """What the documented commands write (the default bundle_root runs/msi or runs/polyp, and an older checkout's
    ".") never shows as untracked."""
    paths = ["runs/msi/models/model.pt", "runs/polyp/eval/metrics.csv", "runs/msi/.cache/msi_demo/x.png"]
    paths += ["models/model.pt", "models/ensemble.ts", "eval/metrics.csv", ".cache/msi_demo/x.png"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == paths
    assert subprocess.run(["git", "ls-files", "models", "eval", ".cache"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout == ""  # fmt: skip


def test_the_guard_sees_files_written_into_the_tree(repo_state, tmp_path: Path) -> None:
    """The session guard (tests/conftest.py) notices a new file, and a rewrite inside an ignored output folder."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/models/\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"1")
    before = repo_state(tmp_path)
    assert before == repo_state(tmp_path)
    (tmp_path / "ensemble.ts").write_bytes(b"x")
    assert repo_state(tmp_path) - before == {"?? ensemble.ts"}
    (tmp_path / "ensemble.ts").unlink()
    (tmp_path / "models" / "model.pt").write_bytes(b"22")  # already ignored and listed: only its size/mtime tell
    assert len(repo_state(tmp_path) - before) == 1
    before = repo_state(tmp_path)
    (tmp_path / "new_test.py").write_text("")  # the developer's new code or an edit is not a test's output
    assert repo_state(tmp_path) == before


def test_user_docs_name_no_path_of_the_development_machine() -> None:
    """README, bundle READMEs and docs/ give placeholders (``/path/to/kvasir-seg``), never this machine's folders."""
    docs = [REPO / "README.md", *REPO.glob("bundles/*/README.md"), *REPO.glob("docs/*.md")]
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for path in docs
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "../shared/" in line or "/work/" in line
    ]
    assert not found, "\n".join(found)


def test_readme_states_one_time_per_main_command() -> None:
    """One figure per command, as a range with its conditions: the README and the bundle READMEs agree."""
    ranges = {}
    for name, path in (("msi", REPO / "README.md"), ("msi", REPO / "bundles/msi/README.md")):
        found = set(re.findall(r"(\d+(?:\.\d+)?-\d+(?:\.\d+)? minutes) on a 2-core CPU", path.read_text()))
        assert len(found) == 1, (path, found)
        ranges.setdefault(name, set()).update(found)
    assert len(ranges["msi"]) == 1, ranges
    polyp = set(
        re.findall(
            r"(\d+(?:\.\d+)?-\d+(?:\.\d+)? minutes) on a 2-core CPU", (REPO / "bundles/polyp/README.md").read_text()
        )
    )
    assert len(polyp) == 1, polyp
    for path in (REPO / "README.md", *REPO.glob("bundles/*/README.md")):
        vague = re.findall(r"about \d+ minutes|\d+-minute (?:main|demo)", path.read_text())
        assert not vague, (path, vague)
