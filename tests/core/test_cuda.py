"""The AMP path on a GPU: autocast + grad scaler, resumable scaler state. Runs where CUDA exists (CI has none)."""

from __future__ import annotations

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.losses import KDMLLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(toy, amp: bool) -> KDMLTrainer:
    device = torch.device("cuda")
    teacher, students = toy.tiny_net(16, seed=0).to(device), [toy.tiny_net(8, seed=k).to(device) for k in (1, 2)]
    return KDMLTrainer(
        device=device,
        max_epochs=3,
        train_data_loader=toy.loader(128, 32, shuffle=True),
        teacher=teacher,
        students=students,
        teacher_optimizer=torch.optim.Adam(teacher.parameters(), 1e-2),
        student_optimizers=[torch.optim.Adam(s.parameters(), 1e-2) for s in students],
        loss_function=KDMLLoss(temperature=2.0),
        amp=amp,
        decollate=False,
    )


def test_amp_trains_with_autocast_and_scaler(toy) -> None:
    trainer = make(toy, amp=True)
    dtypes: list[torch.dtype] = []
    record = lambda e: dtypes.append(e.state.output["pred_student_0"].dtype)  # noqa: E731
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, record)
    trainer.run()
    assert trainer.grad_scaler.is_enabled()
    assert dtypes[0] == torch.float16  # autocast ran the forward in half precision
    assert torch.isfinite(trainer.state.output["loss"])
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint
    fresh = make(toy, amp=True)
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
