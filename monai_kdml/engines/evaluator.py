"""``KDMLEvaluator``: the teacher, each student and the deployable student ensemble in one validation pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Transform
from monai.utils import CommonKeys, ForwardMode
from torch import nn
from torch.utils.data import DataLoader

from monai_kdml.engines.amp_memory_format import channels_last_input, resolve_amp, to_channels_last
from monai_kdml.keys import ENSEMBLE, TEACHER, cohort_key, pred_key, student_name, teacher_member_name
from monai_kdml.networks.ensemble import StudentEnsemble, unwrap_module
from monai_kdml.networks.student_cohorts import StudentCohorts
from monai_kdml.networks.teachers import TeacherEnsemble

if TYPE_CHECKING:
    from ignite.engine import EventEnum
    from ignite.metrics import Metric

__all__ = ["KDMLEvaluator"]


class KDMLEvaluator(Evaluator):
    """One validation pass that scores the teacher, every student and their ensemble on the same batches.

    Each iteration (mirroring :class:`~monai_kdml.engines.KDMLTrainer`):

    1. prepare the batch once;
    2. run the teacher and each student once through the inferer (a
       :class:`~monai_kdml.networks.TeacherEnsemble`: each member once, fused with its ``fuse``);
    3. fuse the students' predictions into the ensemble's with ``combine`` (no second pass through the students),
       or, when ``combine`` is ``None``, run ``ensemble`` as a network of its own (``FORWARD_COMPLETED``,
       ``MODEL_COMPLETED``).

    Predictions land in ``pred_teacher``, ``pred_teacher_<m>`` (members of a teacher ensemble), ``pred_student_<k>``
    and ``pred`` (the ensemble, MONAI's default key, so
    post-transforms and metrics written for one network apply to the deployed model unchanged). Entries of the batch
    named in ``batch_keys`` (e.g. the datalist's ``"patient"`` ids) are copied into the output, so metrics see them.
    Arguments not listed follow :class:`monai.engines.Evaluator`; score members with
    ``classification_metrics(network_names(K, teacher_members=M))``.

    In a cohort run of :class:`~monai_kdml.engines.KDMLTrainer`, ``students`` is the run's
    :class:`~monai_kdml.networks.StudentCohorts` (or a flat list of the ``K`` students of each cohort in turn, with
    ``cohorts``); each network still runs once, and every cohort's predictions land under its
    prefix: ``kd/pred_student_<k>`` and ``kd/pred`` (its ensemble); score them with
    ``classification_metrics(network_names(K, cohorts=cohorts))``.

    Args:
        teacher: the teacher network or a ``TeacherEnsemble``.
        students: the ``K`` students, or a :class:`~monai_kdml.networks.StudentCohorts`.
        ensemble: the deployable ensemble; default ``StudentEnsemble(students)``. It is what ``model.pt`` saves.
            With ``cohorts``: one per cohort, in order (default: a ``StudentEnsemble`` of each cohort's students).
        combine: maps the students' predictions (a list, in order) to the ensemble's prediction. Default: the
            ensemble's own rule when it is a :class:`~monai_kdml.networks.StudentEnsemble` (its ``fuse`` method),
            else ``None``, which runs ``ensemble`` through the inferer.
        batch_keys: batch entries copied into ``engine.state.output``.
        cohorts: the modes of a cohort run given as a flat list, or ``None`` (one group, or a ``StudentCohorts``).
        amp: autocast on CUDA (ignored elsewhere), in ``amp_dtype``: ``"auto"`` (default), ``"bfloat16"`` or
            ``"float16"``, as in :class:`~monai_kdml.engines.KDMLTrainer`.
        channels_last: convert the networks to ``channels_last`` (a no-op when the trainer already did) and each
            batch's inputs.
        compile: run the teacher and each student through ``torch.compile`` (with ``compile_kwargs``); the members of
            a teacher ensemble and an ensemble run as a network of its own stay uncompiled.

    Raises:
        ValueError: no students, ``cohorts`` that are not distinct modes or do not split the students evenly,
            not one ensemble per cohort, or a bad ``amp_dtype`` (see the trainer).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable[Any] | DataLoader[Any],
        teacher: nn.Module,
        students: Sequence[nn.Module] | StudentCohorts,
        ensemble: nn.Module | Sequence[nn.Module] | None = None,
        combine: Callable[[list[Any]], Any] | None = None,
        batch_keys: Sequence[str] = (),
        cohorts: Sequence[str] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable[..., Any] = default_prepare_batch,
        iteration_update: Callable[..., Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable[..., Any] = default_metric_cmp_fn,
        val_handlers: Sequence[Any] | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = "auto",
        channels_last: bool = False,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        mode: ForwardMode | str = ForwardMode.EVAL,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict[Any, str] | None = None,
        decollate: bool = True,
        to_kwargs: dict[str, Any] | None = None,
        amp_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(students, StudentCohorts) and cohorts is not None:
            raise ValueError("`students` is a StudentCohorts: it names its cohorts; leave `cohorts` out.")
        students = StudentCohorts.split(students, cohorts, mode=None)
        names = students.names
        size = students.size
        groups = list(students.groups.values())
        if ensemble is None:
            ensembles: list[nn.Module] = [StudentEnsemble(g) for g in groups]
        elif isinstance(ensemble, nn.Module):
            ensembles = [ensemble]
        else:
            ensembles = list(ensemble)
        if len(ensembles) != len(names):
            raise ValueError(f"`ensemble`: {len(ensembles)} networks for {len(names)} cohorts; give one per cohort.")
        device = torch.device(device) if isinstance(device, str) else device
        use_amp, amp_kwargs = resolve_amp(amp, amp_dtype, amp_kwargs, device)
        if channels_last:
            to_channels_last([teacher, *students], [TEACHER] + [student_name(k) for k in range(len(students))])
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            # autocast on CUDA only: MONAI's evaluators hard-code the "cuda" autocast device
            amp=use_amp,
            mode=mode,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        if compile:  # wrappers over the same modules: what the handlers save stays the plain networks
            kwargs = compile_kwargs or {}
            teacher = torch.compile(teacher, **kwargs)  # type: ignore[assignment]
            students = students.map(lambda s: torch.compile(s, **kwargs))  # type: ignore[arg-type,return-value]
        self.teacher = teacher
        self.students = students
        self.channels_last = channels_last
        self.compile = compile
        self.cohorts = names if students.cohorts is not None else None
        self.ensembles = ensembles
        self.ensemble = ensembles[0]  # the single-mode run's deployable ensemble
        # per cohort: its ensemble and the rule fusing its students' predictions (None: run the ensemble itself)
        self.combines = [
            combine if combine is not None else e.fuse if isinstance(e, StudentEnsemble) else None for e in ensembles
        ]
        self.combine = self.combines[0]
        self.batch_keys = list(batch_keys)
        self.inferer = SimpleInferer() if inferer is None else inferer
        self._cohort_names = names
        self.names = [TEACHER] + [cohort_key(c, student_name(k)) for c in names for k in range(size)]

    @property
    def networks(self) -> list[nn.Module]:
        """``[teacher, *students]``, the networks run once per batch."""
        return [self.teacher, *self.students]

    def _iteration(self, engine: KDMLEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """Predictions of every network and of the ensemble for one batch; returns ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        # 1. one batch serves every network
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        output: dict[str, Any] = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets}
        # the networks get a plain tensor (MetaTensor dispatch cost 13 % here); the output keeps the MetaTensor
        inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if engine.channels_last:
            inputs = channels_last_input(inputs)
        for key in engine.batch_keys:
            if key not in batchdata:
                raise ValueError(f"`batch_keys`: the batch has no '{key}' entry (keys: {sorted(batchdata)}).")
            output[key] = batchdata[key]
        engine.state.output = output
        with torch.autocast("cuda", enabled=engine.amp, **engine.amp_kwargs):
            # 2. one forward per network (per member of a teacher ensemble, fused without a second pass)
            preds = []
            for name, network in zip(engine.names, engine.networks, strict=True):
                plain = unwrap_module(network)
                if name == TEACHER and isinstance(plain, TeacherEnsemble):
                    members = []
                    for m, member in enumerate(plain.members):
                        with engine.mode(member):
                            members.append(engine.inferer(inputs, member, *args, **kwargs))
                        output[pred_key(teacher_member_name(m))] = members[-1]
                    with torch.no_grad():
                        preds.append(plain.fuse(members))
                else:
                    with engine.mode(network):
                        preds.append(engine.inferer(inputs, network, *args, **kwargs))
                output[pred_key(name)] = preds[-1]
            # 3. each cohort's ensemble, fused from its students' predictions when a rule is known
            size = engine.students.size
            for c, (cohort, ensemble) in enumerate(zip(engine._cohort_names, engine.ensembles, strict=True)):
                key, combine = pred_key(cohort_key(cohort, ENSEMBLE)), engine.combines[c]
                if combine is not None:
                    with torch.no_grad():
                        output[key] = combine(preds[1 + c * size : 1 + (c + 1) * size])
                else:
                    with engine.mode(ensemble):
                        output[key] = engine.inferer(inputs, ensemble, *args, **kwargs)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by MONAI at MODEL_COMPLETED (ignite stores what is returned)
