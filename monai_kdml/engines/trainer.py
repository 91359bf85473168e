"""``KDMLTrainer``: one teacher and K students trained on the same batches, in the same iterations."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.engines import Trainer, Workflow
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Transform
from monai.utils import CommonKeys
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_kdml.engines.amp_memory_format import channels_last_input, needs_grad_scaler, resolve_amp, to_channels_last
from monai_kdml.engines.checks import check_networks, check_output_shapes, check_teacher_dtype
from monai_kdml.engines.cohort_slices import detach, loss_entries, make_cohorts, pred_entries
from monai_kdml.engines.optimizers import trainable_optimizers
from monai_kdml.keys import TEACHER, Mode, TeacherMode, cohort_key
from monai_kdml.losses import DistillationLoss
from monai_kdml.networks.ensemble import combine_student_logits, unwrap_module
from monai_kdml.networks.precision import run_in_dtype
from monai_kdml.networks.student_cohorts import StudentCohorts
from monai_kdml.networks.teachers import TeacherEnsemble
from monai_kdml.networks.weights import load_pretrained
from monai_kdml.options import check_count

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum
    from ignite.metrics import Metric

__all__ = ["KDMLTrainer", "load_teacher_weights"]

logger = logging.getLogger(__name__)


class KDMLTrainer(Trainer):
    """Online knowledge distillation + peer mutual learning (Niyaz & Bathula, ISBI 2022) as a MONAI trainer.

    Each iteration (see ``docs/architecture.md``):

    1. prepare the batch once (it serves every network);
    2. forward the teacher and each student (``FORWARD_COMPLETED``);
    3. compute the loss dict: teacher = supervised; student k = supervised + KD to the detached teacher + ML to the
       detached peers, as ``mode`` selects (``LOSS_COMPLETED``);
    4. one backward of the sum (equal to K+1 separate ones because every cross-network target is detached)
       (``BACKWARD_COMPLETED``);
    5. step each trainable network's optimizer (``MODEL_COMPLETED``, where MONAI decollates, post-processes and
       computes metrics).

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (the student ensemble's logits), ``pred_teacher``,
    ``pred_student_<k>``, ``loss`` (the backpropagated total), ``loss_teacher``, ``loss_student_<k>`` and every term
    of the loss dict as ``<term>_<network>`` (e.g. ``kd_student_0``). Arguments not listed below follow
    :class:`monai.engines.SupervisedTrainer` in name and meaning.

    **Cohorts** (``cohorts=["independent", "kd", "ml", "kdml"]``): one run trains one teacher and one cohort of ``K``
    students per mode, on the same batches. ``students`` is then a :class:`~monai_kdml.networks.StudentCohorts`
    (``{mode: [K students]}``, built once by :func:`~monai_kdml.networks.build_cohorts`, which also holds ``mode``),
    or a flat list of ``len(cohorts) * K`` networks, cohort by cohort, with ``cohorts`` and ``mode`` given here; the
    optimizers follow the flat order. The loss is called once per
    cohort with that cohort's ``use_kd``/``use_ml``, so mutual learning stays within a cohort, and every key of a
    cohort carries its prefix (:func:`monai_kdml.keys.cohort_key`): ``kd/pred`` (its ensemble; there is no plain
    ``pred``), ``kd/pred_student_0``, ``kd/loss`` (its students' total), ``kd/loss_student_0``, ``kd/kd_student_0``.
    As the gradients of every network come from its own objective only, each cohort trains exactly as a single-mode
    run of its mode would, from the same initial weights and batches. A loss that draws random numbers (detection's
    hard-negative sampler) draws them, in every cohort's call, from one seed taken per iteration from torch's global
    generator, so all cohorts sample alike and none changes what later steps draw. ``mode`` names the cohort the
    teacher follows: the teacher's own terms (``loss_teacher``; with ``KDMLLoss(teacher_ensemble_weight > 0)`` its
    term towards the students' ensemble) come from that cohort's loss call, so with such a term only that cohort
    matches its single-mode run.

    Args:
        teacher: the teacher network, or a :class:`~monai_kdml.networks.TeacherEnsemble` of frozen networks (whose
            mean probability is the KD target; ``teacher_mode="frozen"`` only, weights given to the ensemble).
        students: ``K >= 1`` student networks (distinct modules; outputs of the teacher's shape), or a
            :class:`~monai_kdml.networks.StudentCohorts` (then without ``mode`` and ``cohorts`` here).
        student_optimizers: one optimizer per student, in the same order, each over its own student only.
        loss_function: :class:`monai_kdml.losses.KDMLLoss` or any module with its call contract
            ``(student_preds, teacher_pred, target, *, use_kd, use_ml) -> {"loss", "students", "teacher"}``
            (e.g. the detection loss in :mod:`monai_kdml.apps.polyp`).
        teacher_optimizer: the teacher's optimizer; required when ``teacher_mode="online"``, absent when frozen.
        mode: ``"independent"``, ``"kd"``, ``"ml"`` or ``"kdml"`` (see :class:`monai_kdml.keys.Mode`); default
            ``"kdml"``, or the mode of a ``StudentCohorts``.
        teacher_mode: ``"online"`` (trained in the same iterations) or ``"frozen"`` (pre-trained, eval mode, never
            updated; its weights come from ``teacher_checkpoint`` or were loaded by the caller).
        teacher_checkpoint: weights loaded into the teacher at construction (see :func:`load_teacher_weights`).
        teacher_dtype: run a frozen teacher in this dtype (``"bfloat16"``; ``"float16"`` on CUDA only): its parameters
            are cast once, its forward takes the batch in that dtype and hands float32 logits to the loss (see
            :func:`monai_kdml.networks.run_in_dtype`). ``None`` (default): float32.
        combine: fuses the students' predictions into ``pred``; default: mean class probability
            (:func:`monai_kdml.networks.combine_student_logits`). Give the evaluator's rule (the bundles pass the
            same ``fuse`` to both), so training-time and validation-time ``pred`` agree.
        cohorts: the modes of a cohort run (see above); ``None`` (default): one group of students trained in ``mode``.
        student_transform: a random batch transform (e.g. :class:`monai_kdml.data.BatchAugment`) drawn afresh for each
            student position ``k`` of every iteration: student ``k`` (of every cohort) sees its own view of the
            prepared inputs, the teacher the inputs as prepared. It must keep what the loss compares aligned:
            label-preserving for classification, photometric only for dense outputs (segmentation, detection).
        amp: mixed precision (``torch.autocast``) on CUDA; ignored, with one log line, on other devices (CPU
            autocast is slower than float32 on most CPUs).
        amp_dtype: the autocast dtype: ``"auto"`` (default: ``amp_kwargs["dtype"]`` if given, else bfloat16 where the
            GPU supports it natively, else float16), ``"bfloat16"`` or ``"float16"``. The grad scaler is enabled for
            float16 only (see :func:`monai_kdml.engines.amp_memory_format.resolve_amp`).
        channels_last: convert the networks' weights once to ``torch.channels_last`` (``channels_last_3d`` for 3-D
            networks) and every batch's inputs in each iteration; faster convolutions on tensor-core GPUs, same
            values.
        non_blocking: asynchronous host-to-device copies of the batch (with a ``pin_memory`` DataLoader on CUDA).
        compile: wrap the teacher and each student in ``torch.compile`` (with ``compile_kwargs``), after
            ``channels_last``; checkpoints keep the plain modules' weights.

    Raises:
        ValueError: at construction, for no students, an unknown ``mode``/``teacher_mode``, mutual learning with one
            student, a missing teacher optimizer or checkpoint, students/optimizers that do not pair up, an online
            teacher ensemble, a ``teacher_dtype`` on an online teacher (or float16 off CUDA), an ``amp_dtype``
            other than ``"auto"``, ``"bfloat16"`` or ``"float16"`` (or contradicting ``amp_kwargs``), or
            ``channels_last`` for a network mixing 2-D and 3-D convolutions.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable[Any] | DataLoader[Any],
        teacher: nn.Module,
        students: Sequence[nn.Module] | StudentCohorts,
        student_optimizers: Sequence[Optimizer],
        loss_function: DistillationLoss,
        teacher_optimizer: Optimizer | None = None,
        mode: Mode | str | None = None,
        teacher_mode: TeacherMode | str = TeacherMode.ONLINE,
        teacher_checkpoint: str | Path | None = None,
        teacher_dtype: torch.dtype | str | None = None,
        combine: Callable[[list[Any]], Any] | None = None,
        cohorts: Sequence[Mode | str] | None = None,
        student_transform: Callable[[Any], Any] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable[..., Any] = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable[..., Any] = default_metric_cmp_fn,
        train_handlers: Sequence[Any] | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = "auto",
        channels_last: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict[Any, str] | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict[str, Any] | None = None,
        amp_kwargs: dict[str, Any] | None = None,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
    ) -> None:
        # a StudentCohorts was built (and checked) once, with its mode and cohorts
        given = cohorts is not None or (
            mode is not None and Mode.parse(mode, "mode") != getattr(students, "mode", mode)
        )
        if isinstance(students, StudentCohorts) and given:
            raise ValueError("`students` is a StudentCohorts: give `mode` and `cohorts` to it, not the trainer.")
        students = StudentCohorts.split(students, cohorts, Mode.KDML if mode is None else mode)
        self.mode = students.mode or Mode.KDML
        self.teacher_mode = TeacherMode.parse(teacher_mode, "teacher_mode")
        check_count("max_epochs", max_epochs)
        self.cohorts = make_cohorts(students)
        check_networks(teacher, students, student_optimizers, teacher_optimizer, self.cohorts, self.teacher_mode)
        self.teacher_dtype = check_teacher_dtype(teacher_dtype, self.teacher_mode, device)
        is_ensemble = isinstance(unwrap_module(teacher), TeacherEnsemble)
        if is_ensemble and teacher_checkpoint is not None:
            raise ValueError(
                "`teacher_checkpoint`: a TeacherEnsemble takes one file per member (`TeacherEnsemble(weights=...)`)."
            )
        if self.teacher_mode == TeacherMode.FROZEN:
            # the weights come from `teacher_checkpoint` or were loaded by the caller (e.g. `load_pretrained`)
            if teacher_checkpoint is not None:
                load_teacher_weights(teacher, teacher_checkpoint)
            teacher.requires_grad_(False)
            if self.teacher_dtype is not None:
                # members one by one, so the evaluator's per-member forward passes take float32 batches too
                plain = unwrap_module(teacher)
                for network in plain.members if isinstance(plain, TeacherEnsemble) else [teacher]:
                    run_in_dtype(network, self.teacher_dtype)
        elif teacher_checkpoint is not None:
            load_teacher_weights(teacher, teacher_checkpoint)  # online teacher warm-started from a checkpoint
        # the autocast dtype goes to MONAI's amp_kwargs (torch.autocast's arguments), which every autocast here reads
        use_amp, amp_kwargs = resolve_amp(amp, amp_dtype, amp_kwargs, torch.device(device))
        if channels_last:  # before compile, so the compiled graphs see the final layout
            names = [TEACHER] + [name for cohort in self.cohorts for name in cohort.names()]
            to_channels_last([teacher, *students], names)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        if compile:
            kwargs = compile_kwargs or {}
            teacher = torch.compile(teacher, **kwargs)  # type: ignore[assignment]
            students = students.map(lambda s: torch.compile(s, **kwargs))  # type: ignore[arg-type,return-value]
        self.teacher = teacher
        self.students = students
        self.teacher_optimizer = teacher_optimizer if self.teacher_mode == TeacherMode.ONLINE else None
        self.student_optimizers = list(student_optimizers)
        self.loss_function = loss_function
        self.combine = combine_student_logits if combine is None else combine
        self.student_transform = student_transform
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.optim_set_to_none = optim_set_to_none
        self.compile = compile
        self.channels_last = channels_last
        # one autocast/scaler path for every device: both are no-ops unless AMP runs on CUDA
        self.use_amp = use_amp
        if amp and not self.use_amp:
            logger.info("amp=True has no effect on device %s: training in float32.", self.state.device)
        self.amp_dtype: torch.dtype | None = self.amp_kwargs.get("dtype") if use_amp else None
        # float16 only: bfloat16 needs no loss scaling, and a disabled scaler's step is a plain optimizer step
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(use_amp, self.amp_kwargs))
        self._shapes_checked = False
        device_type = self.state.device.type if self.state.device is not None else "cpu"
        self._rng_devices = [self.state.device] if device_type == "cuda" else []

    @property
    def trainable_optimizers(self) -> list[Optimizer]:
        """The optimizers stepped each iteration: the online teacher's (if any), then each student's."""
        return trainable_optimizers(self.teacher_optimizer, self.student_optimizers)

    def run(self) -> None:  # type: ignore[override]
        # skip Trainer.run, which would replace the (resumable) grad scaler with a fresh one on every call
        Workflow.run(self)

    def _iteration(self, engine: KDMLTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One iteration for every network; returns ``engine.state.output`` (keys in the class docstring)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        # 1. one batch serves every network (with `student_transform`, one random view of it per student position)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        # networks and losses get plain tensors: MetaTensor's Python dispatch of every op cost 6-10 % of a step
        # (docs/benchmarks.md); the output keeps the MetaTensors, whose meta the metrics and writers read
        net_inputs, loss_targets = _plain(inputs), _plain(targets)
        if engine.channels_last:  # the inputs only: MONAI's to_kwargs would convert the labels too, which are not 4-D
            net_inputs = channels_last_input(net_inputs)
        student_inputs = engine._student_inputs(net_inputs)
        engine.state.output = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets}
        online = engine.teacher_optimizer is not None
        for optimizer in engine.trainable_optimizers:
            optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with torch.autocast(engine.state.device.type, enabled=engine.use_amp, **engine.amp_kwargs):
            # 2. one forward per network
            engine.teacher.train(online)
            # a teacher in its own dtype runs outside autocast, which would recast its bfloat16 weights
            teacher_autocast = engine.use_amp and engine.teacher_dtype is None
            teacher_cast = torch.autocast(engine.state.device.type, enabled=teacher_autocast, **engine.amp_kwargs)
            with torch.set_grad_enabled(online), teacher_cast:
                teacher_pred = engine.inferer(net_inputs, engine.teacher, *args, **kwargs)
            student_preds = []
            for k, student in enumerate(engine.students):
                student.train()
                view = student_inputs[k % len(student_inputs)]
                student_preds.append(engine.inferer(view, student, *args, **kwargs))
            if not engine._shapes_checked:
                names = [name for cohort in engine.cohorts for name in cohort.names()]
                check_output_shapes(teacher_pred, student_preds, names)
                engine._shapes_checked = True
            engine.state.output.update(pred_entries(teacher_pred, student_preds, engine.cohorts))
            with torch.no_grad():
                for cohort in engine.cohorts:  # each cohort's ensemble: `pred`, or `<mode>/pred` in a cohort run
                    preds = student_preds[cohort.start : cohort.stop]
                    engine.state.output[cohort_key(cohort.name, CommonKeys.PRED)] = engine.combine(
                        [detach(p) for p in preds]
                    )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)

            # 3. the loss dict of each cohort (its students learn from the labels, the teacher and each other only);
            # the total is what one backward needs
            # a loss may draw random numbers (detection's hard-negative sampler): every cohort's call gets the same
            # stream, seeded by one draw per iteration, so no cohort changes what the others or later steps draw
            seed = int(torch.randint(0, 2**62, ()).item())
            totals, teacher_terms = [], None
            for cohort in engine.cohorts:
                with torch.random.fork_rng(devices=engine._rng_devices):
                    torch.manual_seed(seed)
                    terms = engine.loss_function(
                        student_preds[cohort.start : cohort.stop],
                        teacher_pred,
                        loss_targets,
                        use_kd=cohort.mode.uses_kd,
                        use_ml=cohort.mode.uses_ml,
                    )
                totals.append(terms["loss"])
                followed = cohort.mode == engine.mode  # the cohort whose call gives the teacher's own terms
                teacher_terms = terms.get("teacher") if followed else teacher_terms
                engine.state.output.update(loss_entries(terms, cohort, teacher=followed))
            total = totals[0]
            for value in totals[1:]:
                total = total + value
            if online and teacher_terms is not None:
                total = total + teacher_terms["loss"]
            engine.state.output[CommonKeys.LOSS] = total
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        # 4. one backward: targets of KD/ML are detached, so each network gets exactly its own objective's gradient
        engine.grad_scaler.scale(total).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        # 5. step every trainable network
        for optimizer in engine.trainable_optimizers:
            engine.grad_scaler.step(optimizer)
        engine.grad_scaler.update()
        engine.state.output[CommonKeys.LOSS] = total.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _student_inputs(self, inputs: Any) -> list[Any]:
        """``[inputs]``, or one fresh ``student_transform`` view per student position of a cohort."""
        if self.student_transform is None:
            return [inputs]
        size = self.cohorts[0].stop - self.cohorts[0].start
        with torch.no_grad():
            return [self.student_transform(inputs) for _ in range(size)]

    def state_dict(self) -> OrderedDict[str, Any]:
        """Ignite's engine state (iteration, epoch, ...) plus the AMP grad scaler, so a resumed run is exact."""
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        scaler_state = state.pop("grad_scaler", None)
        super().load_state_dict(state)
        if scaler_state and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(scaler_state)


def _plain(x: Any) -> Any:
    """A MetaTensor's data as a plain tensor (no copy); anything else as it is."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def load_teacher_weights(teacher: nn.Module, checkpoint: str | Path) -> None:
    """Load pre-trained teacher weights: :func:`monai_kdml.networks.load_pretrained`, strict, quoting
    ``teacher_checkpoint`` in errors.

    Accepts a plain ``state_dict`` of the teacher or a checkpoint dict holding it under ``"teacher"`` (what
    monai-kdml's bundles save), ``"model"``, ``"network"`` or ``"state_dict"``.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        ValueError: the file holds no weights that fit the teacher (nothing is then loaded).
    """
    load_pretrained(teacher, checkpoint, config_key="teacher_checkpoint", name=TEACHER)
