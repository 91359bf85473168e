"""The AMP path on a GPU: float16 autocast + grad scaler (resumable scaler state), bfloat16 without a scaler,
``channels_last``. Runs where CUDA exists (CI has none)."""

from __future__ import annotations

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.losses import KDMLLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(toy, amp: bool, **kwargs) -> KDMLTrainer:
    device = torch.device("cuda")
    teacher, students = toy.tiny_net(16, seed=0).to(device), [toy.tiny_net(8, seed=k).to(device) for k in (1, 2)]
    return KDMLTrainer(
        device=device,
        max_epochs=kwargs.pop("max_epochs", 3),
        train_data_loader=toy.loader(128, 32, shuffle=True),
        teacher=teacher,
        students=students,
        teacher_optimizer=torch.optim.Adam(teacher.parameters(), 1e-2),
        student_optimizers=[torch.optim.Adam(s.parameters(), 1e-2) for s in students],
        loss_function=KDMLLoss(temperature=2.0),
        amp=amp,
        decollate=False,
        **kwargs,
    )


def forward_dtypes(trainer: KDMLTrainer) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    record = lambda e: dtypes.append(e.state.output["pred_student_0"].dtype)  # noqa: E731
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, record)
    return dtypes


bf16 = pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False),
    reason="needs a GPU with native bfloat16",
)


def test_amp_trains_with_autocast_and_scaler(toy) -> None:
    trainer = make(toy, amp=True, amp_dtype="float16")
    dtypes = forward_dtypes(trainer)
    trainer.run()
    assert trainer.grad_scaler.is_enabled()
    assert dtypes[0] == torch.float16  # autocast ran the forward in half precision
    assert torch.isfinite(trainer.state.output["loss"])
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint
    fresh = make(toy, amp=True, amp_dtype="float16")
    fresh.load_state_dict(state)
    assert fresh.grad_scaler.get_scale() == trainer.grad_scaler.get_scale()


def test_amp_evaluator_matches_float32_closely(toy) -> None:
    trainer = make(toy, amp=False)
    trainer.run()
    outputs = {}
    for amp in (False, True):
        evaluator = KDMLEvaluator(
            "cuda", toy.loader(64, 64, seed=3), trainer.teacher, trainer.students, amp=amp, decollate=False
        )
        evaluator.run()
        outputs[amp] = evaluator.state.output["pred"].float()
    assert torch.allclose(outputs[False], outputs[True], atol=5e-2)


@bf16
def test_bfloat16_trains_without_a_scaler(toy) -> None:
    trainer = make(toy, amp=True, amp_dtype="bfloat16")
    dtypes = forward_dtypes(trainer)
    trainer.run()
    assert dtypes[0] == torch.bfloat16 and trainer.amp_dtype == torch.bfloat16
    assert not trainer.grad_scaler.is_enabled()  # bfloat16 keeps float32's range: nothing to scale
    assert torch.isfinite(trainer.state.output["loss"])
    state = trainer.state_dict()
    make(toy, amp=True, amp_dtype="bfloat16").load_state_dict(state)  # resumable with the (empty) scaler state


@bf16
def test_auto_picks_bfloat16_on_a_gpu_that_has_it(toy) -> None:
    trainer = make(toy, amp=True)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.grad_scaler.is_enabled()


@pytest.mark.parametrize("amp_dtype", ["float16", pytest.param("bfloat16", marks=bf16)])
def test_channels_last_with_amp_matches_without(toy, amp_dtype: str) -> None:
    """channels_last changes the layout only: the first iteration's loss matches the default layout's closely."""
    losses = {}
    for channels_last in (False, True):
        trainer = make(toy, amp=True, amp_dtype=amp_dtype, channels_last=channels_last, max_epochs=1, epoch_length=1)
        trainer.run()
        losses[channels_last] = trainer.state.output["loss"].float()
    assert torch.allclose(losses[False], losses[True], rtol=2e-2)
