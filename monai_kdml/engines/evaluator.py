"""``KDMLEvaluator``: the teacher, each student and the deployable student ensemble in one validation pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import EnsembleEvaluator
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.inferers import Inferer
from monai.transforms import Transform
from monai.utils import ForwardMode
from torch import nn
from torch.utils.data import DataLoader

from monai_kdml.keys import ENSEMBLE, TEACHER, pred_key, student_name
from monai_kdml.networks.ensemble import StudentEnsemble

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum
    from ignite.metrics import Metric

__all__ = ["KDMLEvaluator"]


class KDMLEvaluator(EnsembleEvaluator):
    """MONAI's ``EnsembleEvaluator`` over ``[teacher, *students, ensemble]``.

    Predictions land in ``pred_teacher``, ``pred_student_<k>`` and ``pred`` (the ensemble, MONAI's default key, so
    post-transforms and metrics written for one network apply to the deployed model unchanged). Metrics per network
    are attached with output transforms that pick the key (see :mod:`monai_kdml.metrics`). The ensemble is the very
    module that is saved and exported, so what is validated is what is deployed. Arguments not listed follow
    :class:`monai.engines.EnsembleEvaluator`.

    Args:
        teacher: the teacher network.
        students: the ``K`` students.
        ensemble: the deployable ensemble; default ``StudentEnsemble(students)`` (mean probability). Detection
            passes its head-level ensemble.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable | DataLoader,
        teacher: nn.Module,
        students: Sequence[nn.Module],
        ensemble: nn.Module | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        mode: ForwardMode | str = ForwardMode.EVAL,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        if len(students) < 1:
            raise ValueError("`students` must hold at least one network.")
        ensemble = StudentEnsemble(students) if ensemble is None else ensemble
        names = [TEACHER] + [student_name(k) for k in range(len(students))] + [ENSEMBLE]
        device = torch.device(device) if isinstance(device, str) else device
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            networks=[teacher, *students, ensemble],
            pred_keys=[pred_key(name) for name in names],
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            # autocast on CUDA only: MONAI's evaluators hard-code the "cuda" autocast device
            amp=amp and device.type == "cuda",
            mode=mode,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.teacher = teacher
        self.students = list(students)
        self.ensemble = ensemble
