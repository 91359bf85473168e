"""KDMLTrainer: event order, outputs, gradient isolation, frozen teacher, independent mode, errors, learning."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.losses import KDMLLoss


def adam(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=1e-2)


def make_trainer(toy, mode: str = "kdml", num_students: int = 2, max_epochs: int = 1, **kwargs) -> KDMLTrainer:
    teacher = kwargs.pop("teacher", toy.tiny_net(8, seed=0))
    students = kwargs.pop("students", [toy.tiny_net(4, seed=1 + k) for k in range(num_students)])
    teacher_optimizer = adam(teacher) if kwargs.get("teacher_mode", "online") == "online" else None
    return KDMLTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=kwargs.pop("train_data_loader", toy.loader(32, 8)),
        teacher=teacher,
        students=students,
        student_optimizers=[adam(s) for s in students],
        teacher_optimizer=kwargs.pop("teacher_optimizer", teacher_optimizer),
        loss_function=kwargs.pop("loss_function", KDMLLoss(temperature=2.0)),
        mode=mode,
        **kwargs,
    )


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor], exact: bool = True) -> bool:
    return all(torch.equal(x, y) if exact else torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_events_fire_in_order_once_per_iteration(toy) -> None:
    trainer = make_trainer(toy, train_data_loader=toy.loader(16, 8))
    seen: list[str] = []
    for event in IterationEvents:
        trainer.add_event_handler(event, lambda _e, ev=event: seen.append(ev.name))
    trainer.run()
    assert seen == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 2


def test_output_holds_every_network(toy) -> None:
    trainer = make_trainer(toy, decollate=False, train_data_loader=toy.loader(8, 8))
    trainer.run()
    out = trainer.state.output
    for key in ("image", "label", "pred", "pred_teacher", "pred_student_0", "pred_student_1", "loss"):
        assert key in out, key
    for net in ("teacher", "student_0", "student_1"):
        assert f"loss_{net}" in out and f"ce_{net}" in out
    for term in ("kd", "ml"):
        assert f"{term}_student_0" in out and f"{term}_student_1" in out
    # pred is the ensemble: softmax(pred) = mean of the students' probabilities
    mean_prob = (out["pred_student_0"].softmax(1) + out["pred_student_1"].softmax(1)) / 2
    assert torch.allclose(out["pred"].softmax(1), mean_prob, atol=1e-6)
    # loss is the backpropagated total: students' totals + the online teacher's
    total = out["loss_student_0"] + out["loss_student_1"] + out["loss_teacher"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [("independent", [], ["kd", "ml"]), ("kd", ["kd"], ["ml"]), ("ml", ["ml"], ["kd"]), ("kdml", ["kd", "ml"], [])],
)
def test_mode_switches_terms(toy, mode: str, present: list[str], absent: list[str]) -> None:
    trainer = make_trainer(toy, mode, decollate=False, train_data_loader=toy.loader(8, 8))
    trainer.run()
    for term in present:
        assert f"{term}_student_0" in trainer.state.output
    for term in absent:
        assert f"{term}_student_0" not in trainer.state.output


def test_teacher_gets_no_gradient_from_distillation(toy) -> None:
    """The online teacher's update is the same whether or not students distil from it (its objective is CE only)."""
    results = []
    for mode in ("independent", "kdml"):
        trainer = make_trainer(toy, mode, train_data_loader=toy.loader(32, 8), max_epochs=2)
        trainer.run()
        results.append(params(trainer.teacher))
    assert same(results[0], results[1])


def test_ml_term_of_one_student_does_not_move_the_other(toy) -> None:
    """Student 1 trained in ml mode with student 0 vs. with a different student 0: the first step of student 0's
    update differs only through its own objective; here we check student 0's gradient from student 1's term is zero."""
    students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    batch = next(iter(toy.loader(8, 8)))
    logits = [s(batch["image"]) for s in students]
    out = KDMLLoss(ce_weight=0.0, kd_weight=0.0)(logits, None, batch["label"], use_ml=True)
    out["students"]["ml"][1].backward()
    assert all(p.grad is None for p in students[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in students[1].parameters())


def test_frozen_teacher_is_bit_identical_after_training(toy, tmp_path) -> None:
    teacher = toy.tiny_net(8, seed=0)
    ckpt = tmp_path / "teacher.pt"
    torch.save({"teacher": teacher.state_dict()}, ckpt)
    fresh = toy.tiny_net(8, seed=123)  # different init: the trainer must load the checkpoint
    trainer = make_trainer(toy, "kdml", teacher=fresh, teacher_mode="frozen", teacher_checkpoint=ckpt, max_epochs=2)
    before = params(fresh)
    assert same(before, params(teacher))
    trainer.run()
    assert same(before, params(fresh))
    assert not fresh.training
    assert "loss_teacher" in trainer.state.output[0]  # still reported, never optimised


def test_independent_mode_equals_training_each_network_alone(toy) -> None:
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    alone = [copy.deepcopy(n) for n in (teacher, *students)]
    trainer = make_trainer(
        toy, "independent", teacher=teacher, students=students, train_data_loader=toy.loader(32, 8), max_epochs=2
    )
    trainer.run()
    for joint, net in zip((teacher, *students), alone, strict=True):
        SupervisedTrainer(
            device="cpu",
            max_epochs=2,
            train_data_loader=toy.loader(32, 8),
            network=net,
            optimizer=adam(net),
            loss_function=nn.CrossEntropyLoss(),
        ).run()
        assert same(params(joint), params(net), exact=False)


def test_kdml_learns_toy_problem(toy) -> None:
    torch.manual_seed(0)
    teacher, students = toy.tiny_net(16, seed=0), [toy.tiny_net(8, seed=1), toy.tiny_net(8, seed=2)]
    trainer = make_trainer(
        toy,
        "kdml",
        teacher=teacher,
        students=students,
        max_epochs=15,
        train_data_loader=toy.loader(256, 32, shuffle=True),
    )
    trainer.run()
    evaluator = KDMLEvaluator("cpu", toy.loader(256, 64, seed=7), teacher, students, decollate=False)
    correct: dict[str, int] = {}

    @evaluator.on(Events.ITERATION_COMPLETED)
    def count(engine: KDMLEvaluator) -> None:
        out = engine.state.output
        for key in ("pred_teacher", "pred_student_0", "pred_student_1", "pred"):
            correct[key] = correct.get(key, 0) + int((out[key].argmax(1) == out["label"]).sum())

    evaluator.run()
    for key, n in correct.items():
        assert n / 256 > 0.8, (key, n / 256)  # chance is 0.5


def test_amp_on_cpu_warns_nothing(toy) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(toy, amp=True, train_data_loader=toy.loader(8, 8))
        trainer.run()
    messages = [str(w.message) for w in caught if "amp" in str(w.message).lower() or "cuda" in str(w.message).lower()]
    assert messages == []
    assert not trainer.grad_scaler.is_enabled()


def test_output_shape_mismatch_is_named_at_first_iteration(toy) -> None:
    trainer = make_trainer(toy, students=[toy.tiny_net(4, seed=1), toy.tiny_net(4, num_classes=3, seed=2)])
    with pytest.raises(ValueError, match=r"student_1 output shape \(8, 3\) differs from the teacher's \(8, 2\)"):
        trainer.run()
    assert trainer.state.iteration == 1


def test_dense_segmentation_logits(toy) -> None:
    """Pixel-wise distillation through the same trainer (conv nets without pooling)."""

    class SegSet(toy.BlobDataset):
        def __getitem__(self, i: int) -> dict:
            item = super().__getitem__(i)
            return {"image": item["image"], "label": (item["image"] > 1.0).long()}

    def seg_net(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

    data = torch.utils.data.DataLoader(SegSet(16), batch_size=8)
    trainer = make_trainer(toy, teacher=seg_net(0), students=[seg_net(1), seg_net(2)], train_data_loader=data)
    trainer.run()
    assert trainer.state.output[0]["pred"].shape == (2, 8, 8)
    assert torch.isfinite(torch.tensor(trainer.state.output[0]["loss"]))


class TestConstructionErrors:
    def test_no_students(self, toy) -> None:
        with pytest.raises(ValueError, match=r"`students`.*at least one"):
            make_trainer(toy, students=[])

    def test_unknown_mode(self, toy) -> None:
        with pytest.raises(ValueError, match=r"`mode`.*did you mean"):
            make_trainer(toy, "kdl")

    def test_unknown_teacher_mode(self, toy) -> None:
        with pytest.raises(ValueError, match="`teacher_mode`"):
            make_trainer(toy, teacher_mode="frozn")

    @pytest.mark.parametrize("mode", ["ml", "kdml"])
    def test_mutual_learning_with_one_student(self, toy, mode: str) -> None:
        with pytest.raises(ValueError, match="at least 2 `students`"):
            make_trainer(toy, mode, num_students=1)

    def test_one_student_without_ml_is_fine(self, toy) -> None:
        make_trainer(toy, "kd", num_students=1, train_data_loader=toy.loader(8, 8)).run()

    def test_frozen_teacher_loaded_by_the_caller_needs_no_checkpoint(self, toy) -> None:
        teacher = toy.tiny_net(8, seed=0)
        before = params(teacher)
        make_trainer(toy, teacher=teacher, teacher_mode="frozen", train_data_loader=toy.loader(8, 8)).run()
        assert same(params(teacher), before) and not any(p.requires_grad for p in teacher.parameters())

    def test_frozen_teacher_missing_file(self, toy, tmp_path) -> None:
        with pytest.raises(FileNotFoundError, match="teacher_checkpoint"):
            make_trainer(toy, teacher_mode="frozen", teacher_checkpoint=tmp_path / "missing.pt")

    def test_frozen_teacher_wrong_weights(self, toy, tmp_path) -> None:
        torch.save(toy.tiny_net(4).state_dict(), tmp_path / "small.pt")
        with pytest.raises(ValueError, match="does not hold weights for the teacher"):
            make_trainer(toy, teacher_mode="frozen", teacher_checkpoint=tmp_path / "small.pt")

    def test_online_teacher_needs_optimizer(self, toy) -> None:
        with pytest.raises(ValueError, match="`teacher_optimizer` is required"):
            make_trainer(toy, teacher_optimizer=None)

    def test_optimizer_count(self, toy) -> None:
        students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
        with pytest.raises(ValueError, match="one optimizer per student"):
            KDMLTrainer(
                "cpu",
                1,
                toy.loader(8, 8),
                toy.tiny_net(),
                students,
                [adam(students[0])],
                KDMLLoss(),
                adam(toy.tiny_net()),
            )

    def test_optimizer_over_wrong_network(self, toy) -> None:
        teacher, students = toy.tiny_net(8), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
        with pytest.raises(ValueError, match="optimizer of student_0 holds parameters of student_1"):
            KDMLTrainer(
                "cpu",
                1,
                toy.loader(8, 8),
                teacher,
                students,
                [adam(students[1]), adam(students[1])],
                KDMLLoss(),
                adam(teacher),
            )

    def test_same_module_twice(self, toy) -> None:
        student = toy.tiny_net(4)
        with pytest.raises(ValueError, match="student_0 and student_1 are the same module object"):
            make_trainer(toy, students=[student, student])


def test_compile_wraps_networks_and_ensemble_unwraps_them(toy) -> None:
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    trainer = make_trainer(
        toy,
        teacher=teacher,
        students=students,
        compile=True,
        compile_kwargs={"backend": "eager"},
        train_data_loader=toy.loader(8, 8),
    )
    trainer.run()
    assert all(hasattr(s, "_orig_mod") for s in trainer.students)
    from monai_kdml.networks import StudentEnsemble

    ensemble = StudentEnsemble(trainer.students)
    assert all(a is b for a, b in zip(ensemble.students, students, strict=True))  # plain modules, loadable anywhere


def tiny_resnet(seed: int) -> nn.Module:
    from monai.networks.nets import ResNet

    torch.manual_seed(seed)
    return ResNet("basic", [1, 1, 1, 1], [4, 4, 8, 8], spatial_dims=2, n_input_channels=3, num_classes=2)


def test_channels_last_gives_the_same_losses_and_converts_networks_and_inputs(toy) -> None:
    """The memory format changes where values live, not what is computed: two iterations of a tiny ResNet teacher
    and students give the same losses (to float tolerance), with the weights and the inputs in channels_last."""
    losses: dict[bool, torch.Tensor] = {}
    # three channels: a one-channel tensor is contiguous in both layouts, which would prove nothing
    rgb = [{"image": d["image"].repeat(3, 1, 1), "label": d["label"]} for d in toy.BlobDataset(16)]
    for channels_last in (False, True):
        layouts: list[bool] = []
        teacher, students = tiny_resnet(0), [tiny_resnet(1), tiny_resnet(2)]
        trainer = make_trainer(
            toy,
            teacher=teacher,
            students=students,
            channels_last=channels_last,
            train_data_loader=torch.utils.data.DataLoader(rgb, batch_size=8),
        )
        record = lambda _m, args, out=layouts: out.append(args[0].is_contiguous(memory_format=torch.channels_last))  # noqa: E731
        teacher.register_forward_pre_hook(record)
        seen: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e, out=seen: out.append(e.state.output[0]["loss"]))
        trainer.run()
        losses[channels_last] = torch.tensor(seen)
        conv = next(m for m in teacher.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert layouts == [channels_last] * 2
    assert len(losses[True]) == 2
    assert torch.allclose(losses[False], losses[True], rtol=1e-5, atol=1e-6)


def test_channels_last_refuses_a_network_mixing_2d_and_3d_convolutions(toy) -> None:
    mixed = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv3d(2, 2, 1))
    with pytest.raises(ValueError, match="`channels_last`: student_0 has both 2-D"):
        make_trainer(toy, students=[mixed, toy.tiny_net(4, seed=2)], channels_last=True)


class TestAmpDtype:
    """The autocast dtype and the grad scaler, decided without a GPU (:func:`resolve_amp` is what the engines call)."""

    cuda = torch.device("cuda")

    @pytest.mark.parametrize(
        ("amp_dtype", "expected", "scaler"),
        [("float16", torch.float16, True), ("fp16", torch.float16, True), ("bfloat16", torch.bfloat16, False)],
    )
    def test_scaler_only_for_float16(self, amp_dtype, expected, scaler) -> None:
        from monai_kdml.engines.amp_memory_format import needs_grad_scaler, resolve_amp

        use_amp, kwargs = resolve_amp(True, amp_dtype, None, self.cuda)
        assert use_amp and kwargs == {"dtype": expected}
        assert needs_grad_scaler(use_amp, kwargs) is scaler

    @pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
    def test_auto_is_bfloat16_where_supported(self, monkeypatch, bf16, expected) -> None:
        from monai_kdml.engines.amp_memory_format import resolve_amp

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        assert resolve_amp(True, "auto", None, self.cuda) == (True, {"dtype": expected})
        # an explicit amp_kwargs dtype (MONAI's own way) is kept under "auto"
        assert resolve_amp(True, "auto", {"dtype": torch.float16}, self.cuda)[1]["dtype"] == torch.float16

    def test_cpu_ignores_amp_and_its_dtype(self) -> None:
        from monai_kdml.engines.amp_memory_format import needs_grad_scaler, resolve_amp

        use_amp, kwargs = resolve_amp(True, "bfloat16", None, torch.device("cpu"))
        assert not use_amp and kwargs == {} and not needs_grad_scaler(use_amp, kwargs)

    @pytest.mark.parametrize("bad", ["float8", "float32", 3])
    def test_bad_dtype_is_named(self, toy, bad) -> None:
        with pytest.raises(ValueError, match="`amp_dtype`"):
            make_trainer(toy, amp=True, amp_dtype=bad)

    def test_contradicting_amp_kwargs(self) -> None:
        from monai_kdml.engines.amp_memory_format import resolve_amp

        with pytest.raises(ValueError, match="contradicts `amp_kwargs`"):
            resolve_amp(True, "bfloat16", {"dtype": torch.float16}, self.cuda)

    def test_trainer_on_cpu_keeps_the_scaler_off_and_evaluator_accepts_the_options(self, toy) -> None:
        trainer = make_trainer(toy, amp=True, amp_dtype="float16", train_data_loader=toy.loader(8, 8))
        assert not trainer.use_amp and trainer.amp_dtype is None and not trainer.grad_scaler.is_enabled()
        evaluator = KDMLEvaluator(
            "cpu", toy.loader(8, 8), trainer.teacher, trainer.students, amp=True, amp_dtype="bfloat16",
            channels_last=True, decollate=False,
        )  # fmt: skip
        evaluator.run()
        assert not evaluator.amp and evaluator.state.output["pred"].dtype == torch.float32


def test_bundle_switches_read_fire_strings_and_name_bad_values() -> None:
    from monai_kdml.bundle import check_loader_workers, flag
    from monai_kdml.engines.amp_memory_format import resolve_amp

    # python-fire passes `--amp false` on as the string "false", which would count as set
    assert flag("false", "amp") is False and flag("True", "amp") is True and flag(False, "amp") is False
    with pytest.raises(ValueError, match="`compile` must be true or false, got 'yes'"):
        flag("yes", "compile")
    with pytest.raises(ValueError, match=r"`amp_dtype` must be one of \['auto', 'bfloat16', 'float16'\]"):
        resolve_amp(True, "float8", None, torch.device("cpu"))
    with pytest.raises(ValueError, match="`persistent_workers` keeps DataLoader worker processes"):
        check_loader_workers(num_workers=0, persistent_workers=True)
    check_loader_workers(num_workers=2, persistent_workers=True)
