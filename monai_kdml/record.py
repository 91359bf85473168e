"""The trained-network record: ``models/network.json`` (:data:`RECORD_NAME`) beside ``models/model.pt``.

It holds everything the bundle's ``network_def`` needs to rebuild the deployed model, and what the run was trained
on (data source, seed, mode, cohorts), so that evaluation, inference and ``ckpt_export`` need nothing repeated, a
resume that contradicts the run is refused, and a folder of another bundle or weights of another run are named as
such (:func:`check_weights_file`) instead of failing on a missing key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist

__all__ = [
    "RECORD_NAME",
    "check_against_record",
    "check_weights_file",
    "data_source",
    "read_record",
    "record_differences",
    "resume_refusal",
    "run_record",
    "write_record",
]

logger = logging.getLogger(__name__)

RECORD_NAME = "network.json"
"""File name of the trained-network record in a bundle's ``models/`` folder."""
_DEMO = "synthetic demo data"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.__dict__ if hasattr(v, "__dict__") else str(v)))


def data_source(dataset_dir: str | os.PathLike | None) -> str:
    """What a run trains on, for its record: the data set folder as an absolute path, or the synthetic demo data."""
    return _DEMO if dataset_dir is None else str(Path(dataset_dir).expanduser().resolve())


def record_differences(record: Mapping[str, Any], configured: Mapping[str, Any]) -> list[str]:
    """``"`key`: trained with A, configured B"`` for each key of ``configured`` that ``record`` holds otherwise."""
    configured = _jsonable(dict(configured))
    return [
        f"`{key}`: trained with {record[key]!r}, configured {value!r}"
        for key, value in configured.items()
        if key in record and record[key] != value
    ]


def resume_refusal(ckpt_dir: str | Path, record: Mapping[str, Any]) -> str | None:
    """Why ``--resume true`` must not continue the run in ``ckpt_dir`` with ``record`` (``None`` when it may, or
    when there is no record to compare with): each key whose value differs, with the run's and this command's."""
    if not (Path(ckpt_dir) / RECORD_NAME).is_file():
        return None
    diffs = record_differences(read_record(ckpt_dir), record)
    if not diffs:
        return None
    return (
        f"`--resume true` would continue the run in {ckpt_dir} with other settings: "
        + "; ".join(diffs)
        + ". Resume with the run's own settings, or train a new run elsewhere (`--bundle_root <folder>`)."
    )


def write_record(ckpt_dir: str | Path, record: Mapping[str, Any], resume: bool = False) -> Path:
    """Write ``record`` as ``<ckpt_dir>/network.json`` (atomically); on resume, check it against the one there.

    Raises:
        ValueError: resuming a run whose record differs (another data source, seed, mode, network, ...), naming
            each differing key with the run's and this command's value.
    """
    path = Path(ckpt_dir) / RECORD_NAME
    record = _jsonable(dict(record))
    if resume and path.is_file():
        refusal = resume_refusal(ckpt_dir, record)
        if refusal:
            raise ValueError(refusal)
        return path
    if idist.get_rank() != 0:  # one writer under DDP
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def run_record(
    record: Mapping[str, Any],
    cohorts: Sequence[str] | None = None,
    mode: str | None = None,
    seed: int | None = None,
    data: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``record`` plus what the run was trained as: ``mode`` and ``cohorts`` (when ``mode`` is given), ``seed`` and
    ``data`` (see :func:`data_source`) when given, and each ``extra`` value that is not ``None`` (e.g. mixed student
    architectures)."""
    out = dict(record)
    if mode is not None:
        out["cohorts"] = None if cohorts is None else [str(c) for c in cohorts]
        out["mode"] = str(mode)
    if seed is not None:
        out["seed"] = seed
    if data is not None:
        out["data"] = data
    out.update({key: value for key, value in extra.items() if value is not None})
    return out


def read_record(
    ckpt_dir: str | Path, fallback: Mapping[str, Any] | None = None, bundle: str | None = None
) -> dict[str, Any]:
    """The record in ``ckpt_dir``; ``fallback`` (with a warning) when there is none and a fallback is given.

    Args:
        ckpt_dir: the run's ``models/`` folder.
        fallback: the record of an untrained network, used when ``ckpt_dir`` has none.
        bundle: the bundle reading it (``"msi"``, ``"polyp"``): a record of another bundle is refused.

    Raises:
        FileNotFoundError: no record and no fallback.
        ValueError: an unreadable record, or one of another bundle.
    """
    path = Path(ckpt_dir) / RECORD_NAME
    if not path.is_file():
        if fallback is None:
            raise FileNotFoundError(f"{path} does not exist: train the bundle first (it writes this record).")
        if (Path(ckpt_dir) / "model.pt").is_file():
            logger.warning("%s has no %s: using the configuration's network settings.", ckpt_dir, path.name)
        return _jsonable(dict(fallback))
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the trained-network record ({err}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}.")
    if bundle is not None and record.get("bundle", bundle) != bundle:
        raise ValueError(
            f"{path} records a model of the {record['bundle']} bundle, not of the {bundle} bundle: point "
            f"`--bundle_root` (or `--ckpt_dir`) at a run of the {bundle} bundle."
        )
    return record


def check_against_record(record: Mapping[str, Any], **configured: Any) -> None:
    """Raise when a configured value contradicts the trained-network ``record`` (keys absent from it are skipped).

    Raises:
        ValueError: naming every differing key with the trained and the configured value.
    """
    diffs = record_differences(record, configured)
    if diffs:
        raise ValueError(
            "the configuration contradicts the trained model's record (models/network.json): "
            + "; ".join(diffs)
            + ". Drop these overrides (the record supplies them), or train a new model."
        )


def _student_count(keys: Sequence[str]) -> int:
    """Students in an ensemble's state dict: ``students.<i>.`` (MSI) or ``networks.<i>.`` (polyp) key prefixes."""
    return len({tuple(k.split(".", 2)[:2]) for k in keys if k.startswith(("students.", "networks."))})


def check_weights_file(path: str | os.PathLike, ckpt_dir: str | os.PathLike, kind: str = "ensemble") -> None:
    """Check that a weights file is what the record in ``ckpt_dir`` describes, before MONAI loads it.

    ``kind`` ``"ensemble"``: the deployed model (``model.pt``, a bare state dict with ``students.<i>.`` or
    ``networks.<i>.`` keys);
    ``"networks"``: the teacher and the students (``best_networks.pt``, ``{"teacher", "students"}``). The number of
    students must be the record's ``num_students``. Under ``python -m monai.bundle ckpt_export`` the file checked is
    the command's ``--ckpt_file``.

    Raises:
        ValueError: one line naming the file, the record and what disagrees (a training checkpoint in place of the
            model, another number of students, an unreadable file).
    """
    import torch

    from monai_kdml.commands import command_argument

    path = Path(command_argument("ckpt_file", "ckpt_export") or path)
    record_path = Path(ckpt_dir) / RECORD_NAME
    if not path.is_file():
        return  # MONAI names a missing file itself
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike: name the file
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {str(err)[:200]}).") from None
    if not isinstance(weights, Mapping):
        raise ValueError(f"{path}: expected a dict of weights, found a {type(weights).__name__}.")
    if kind == "ensemble":
        nested = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if nested:
            what = "a training checkpoint" if "optimizers" in weights else "a dict of networks"
            raise ValueError(
                f"{path} is not the deployed ensemble's weights but {what} (keys "
                f"{', '.join(map(str, list(weights)[:6]))}): use the model.pt a training run writes."
            )
        found = _student_count([str(k) for k in weights])
    elif kind == "networks":
        students = weights.get("students")
        if "teacher" not in weights or not isinstance(students, (list, tuple, Mapping)):
            raise ValueError(
                f"{path}: expected the teacher and students of a run ({{'teacher', 'students'}}), found keys "
                f"{list(weights)[:6]}."
            )
        found = len(students)
    else:
        raise ValueError(f"check_weights_file: `kind` must be 'ensemble' or 'networks', got {kind!r}.")
    try:
        record = json.loads(record_path.read_text())
        expected = int(record["num_students"]) * (1 if kind == "ensemble" else len(record.get("cohorts") or [None]))
    except (OSError, ValueError, KeyError, TypeError):
        return
    if found != expected:
        raise ValueError(
            f"{path} holds {found} students but {record_path} records {expected}: they come from different runs "
            "(use the files of one run together)."
        )
