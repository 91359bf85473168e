"""Teachers users have: an ensemble of frozen networks, a frozen teacher in bfloat16, a timm ViT teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.keys import network_names
from monai_kdml.losses import KDMLLoss, kd_kl_div
from monai_kdml.metrics import classification_metrics
from monai_kdml.networks import TeacherEnsemble, build_network, run_in_dtype


def adam(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=1e-2)


def frozen_trainer(toy, teacher: nn.Module, **kwargs) -> KDMLTrainer:
    students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    return KDMLTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=kwargs.pop("train_data_loader", toy.loader(16, 8)),
        teacher=teacher,
        students=students,
        student_optimizers=[adam(s) for s in students],
        loss_function=KDMLLoss(temperature=kwargs.pop("temperature", 1.0)),
        teacher_mode="frozen",
        decollate=False,
        **kwargs,
    )


def dense_net(seed: int, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, num_classes, 1))


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


class TestTeacherEnsemble:
    def test_kd_target_is_the_members_mean_probability(self, toy) -> None:
        members = [toy.tiny_net(8, num_classes=3, seed=s) for s in range(3)]
        teacher = TeacherEnsemble(members)
        x = torch.randn(5, 1, 8, 8)
        mean_p = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        logits = teacher(x)
        assert torch.allclose(logits.softmax(1), mean_p, atol=1e-6)
        # KD at T=1 is exactly KL(mean probability || student)
        student = torch.randn(5, 3, requires_grad=True)
        by_hand = (mean_p * (mean_p.log() - F.log_softmax(student, 1))).sum(1).mean()
        assert torch.allclose(kd_kl_div(student, logits), by_hand, atol=1e-6)
        # T=2 softens that mean distribution as one teacher's (documented convention)
        soft = F.softmax(mean_p.log() / 2, dim=1)
        by_hand_t2 = 4 * (soft * (soft.log() - F.log_softmax(student / 2, 1))).sum(1).mean()
        assert torch.allclose(kd_kl_div(student, logits, 2.0), by_hand_t2, atol=1e-6)

    def test_dense_logits(self) -> None:
        members = [dense_net(s) for s in range(2)]
        x = torch.randn(2, 1, 6, 7)
        logits = TeacherEnsemble(members)(x)
        assert logits.shape == (2, 3, 6, 7)
        mean_p = (members[0](x).softmax(1) + members[1](x).softmax(1)) / 2
        assert torch.allclose(logits.softmax(1), mean_p, atol=1e-6)

    def test_members_load_their_files_and_are_frozen(self, toy, tmp_path: Path) -> None:
        trained = [toy.tiny_net(8, seed=s) for s in range(2)]
        files = [tmp_path / f"fold{m}.pt" for m in range(2)]
        for net, path in zip(trained, files, strict=True):
            torch.save({"model": net.state_dict()}, path)
        teacher = TeacherEnsemble([toy.tiny_net(8, seed=10), toy.tiny_net(8, seed=11)], weights=files)
        for member, net in zip(teacher.members, trained, strict=True):
            assert torch.equal(member[0].weight, net[0].weight)
        assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
        torch.save(toy.tiny_net(4).state_dict(), files[1])
        with pytest.raises(ValueError, match=r"`weights\[1\]`: .*fold1\.pt does not hold weights for the teacher_1"):
            TeacherEnsemble([toy.tiny_net(8), toy.tiny_net(8)], weights=files)
        with pytest.raises(ValueError, match="one file \\(or None\\) per member"):
            TeacherEnsemble([toy.tiny_net(8)], weights=files)

    def test_same_module_twice_is_refused(self, toy) -> None:
        net = toy.tiny_net(8)
        with pytest.raises(ValueError, match="given twice"):
            TeacherEnsemble([net, net])

    def test_evaluator_scores_each_member_from_one_pass(self, toy) -> None:
        members = [toy.tiny_net(8, seed=s) for s in range(3)]
        calls = [0, 0, 0]
        for m, member in enumerate(members):
            member.register_forward_hook(lambda *_a, m=m: calls.__setitem__(m, calls[m] + 1))
        teacher = TeacherEnsemble(members)
        students = [toy.tiny_net(4, seed=5), toy.tiny_net(4, seed=6)]
        names = network_names(2, teacher_members=3)
        assert names[:4] == ["teacher", "teacher_0", "teacher_1", "teacher_2"]
        metrics = classification_metrics(names)
        key = {"ensemble_auc": metrics.pop("ensemble_auc")}
        evaluator = KDMLEvaluator(
            "cpu", toy.loader(16, 8), teacher, students, key_val_metric=key, additional_metrics=metrics
        )
        evaluator.run()
        out = evaluator.state.output[0]  # decollated: per-sample dicts
        assert calls == [2, 2, 2]  # two batches, each member once per batch
        fused = teacher.fuse([out[f"pred_teacher_{m}"][None] for m in range(3)])[0]
        assert torch.allclose(out["pred_teacher"], fused)
        for name in ("teacher", "teacher_0", "teacher_2", "ensemble"):
            assert 0.0 <= evaluator.state.metrics[f"{name}_auc"] <= 1.0
        assert "disagreement" in evaluator.state.metrics  # over the two students only

    def test_frozen_ensemble_distils_into_two_students(self, toy) -> None:
        teacher = TeacherEnsemble([toy.tiny_net(8, seed=s) for s in range(2)])
        before = params(teacher)
        trainer = frozen_trainer(toy, teacher)
        trainer.run()
        out = trainer.state.output
        assert torch.isfinite(out["loss"]) and "kd_student_0" in out
        assert all(torch.equal(a, b) for a, b in zip(before, params(teacher), strict=True))

    def test_online_ensemble_and_single_checkpoint_are_refused(self, toy, tmp_path: Path) -> None:
        teacher = TeacherEnsemble([toy.tiny_net(8, seed=s) for s in range(2)])
        students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
        with pytest.raises(ValueError, match="TeacherEnsemble is frozen by design"):
            KDMLTrainer("cpu", 1, toy.loader(8, 8), teacher, students, [adam(s) for s in students], KDMLLoss())
        with pytest.raises(ValueError, match=r"one file per member \(`TeacherEnsemble\(weights=...\)`\)"):
            frozen_trainer(toy, teacher, teacher_checkpoint=tmp_path / "t.pt")


class TestTeacherDtype:
    def test_run_in_dtype_casts_weights_not_the_interface(self, toy) -> None:
        net = toy.tiny_net(8, seed=0).eval()
        x = torch.randn(4, 1, 8, 8)
        expected = net(x)
        run_in_dtype(net, "bf16")
        assert net[0].weight.dtype == torch.bfloat16
        got = net(x)
        assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=0.05, rtol=0.05)
        run_in_dtype(net, torch.float32)  # undo: plain float32 module, no hooks left
        assert net[0].weight.dtype == torch.float32 and net(x).dtype == torch.float32
        assert not net._forward_pre_hooks and not net._forward_hooks

    def test_frozen_bfloat16_teacher_trains_students_and_evaluates(self, toy, tmp_path: Path) -> None:
        reference = toy.tiny_net(8, seed=0)
        torch.save(reference.state_dict(), tmp_path / "teacher.pt")
        teacher = toy.tiny_net(8, seed=3)
        trainer = frozen_trainer(toy, teacher, teacher_checkpoint=tmp_path / "teacher.pt", teacher_dtype="bfloat16")
        assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
        assert torch.equal(teacher[0].weight, reference[0].weight.to(torch.bfloat16))
        trainer.run()
        out = trainer.state.output
        assert out["pred_teacher"].dtype == torch.float32 and torch.isfinite(out["loss"])
        with torch.no_grad():
            assert torch.allclose(out["pred_teacher"], reference(out["image"]), atol=0.05, rtol=0.05)
        evaluator = KDMLEvaluator("cpu", toy.loader(8, 8), teacher, trainer.students, decollate=False)
        evaluator.run()
        assert evaluator.state.output["pred_teacher"].dtype == torch.float32

    def test_ensemble_members_each_run_in_bfloat16(self, toy) -> None:
        teacher = TeacherEnsemble([toy.tiny_net(8, seed=s) for s in range(2)])
        trainer = frozen_trainer(toy, teacher, teacher_dtype=torch.bfloat16)
        trainer.run()
        assert all(m[0].weight.dtype == torch.bfloat16 for m in teacher.members)
        evaluator = KDMLEvaluator("cpu", toy.loader(8, 8), teacher, trainer.students, decollate=False)
        evaluator.run()
        assert evaluator.state.output["pred_teacher_1"].dtype == torch.float32

    def test_refused_where_it_cannot_work(self, toy, tmp_path: Path) -> None:
        teacher = toy.tiny_net(8)
        students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
        with pytest.raises(ValueError, match="`teacher_dtype` needs teacher_mode='frozen'"):
            KDMLTrainer(
                "cpu",
                1,
                toy.loader(8, 8),
                teacher,
                students,
                [adam(s) for s in students],
                KDMLLoss(),
                adam(teacher),
                teacher_dtype="bfloat16",
            )
        torch.save(teacher.state_dict(), tmp_path / "t.pt")
        with pytest.raises(ValueError, match=r"float16.*CUDA only"):
            frozen_trainer(toy, teacher, teacher_checkpoint=tmp_path / "t.pt", teacher_dtype="float16")
        with pytest.raises(ValueError, match=r"`teacher_dtype`: By 'bfloat61', did you mean 'bfloat16'"):
            frozen_trainer(toy, teacher, teacher_checkpoint=tmp_path / "t.pt", teacher_dtype="bfloat61")


def test_frozen_timm_vit_teacher_distils_into_two_cnn_students(toy, tmp_path: Path) -> None:
    pytest.importorskip("timm")
    vit = {"in_channels": 1, "img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}
    foundation = build_network("timm:vit_tiny_patch16_224", **vit)
    torch.save(foundation.state_dict(), tmp_path / "vit.pth")  # timm's own state dict layout
    teacher = build_network("timm:vit_tiny_patch16_224", **vit)
    trainer = frozen_trainer(toy, teacher, teacher_checkpoint=tmp_path / "vit.pth", teacher_dtype="bfloat16")
    student_before = params(trainer.students[0])
    trainer.run()
    assert trainer.state.iteration == 2 and torch.isfinite(trainer.state.output["kd_student_0"])
    assert torch.equal(teacher.pos_embed, foundation.pos_embed.to(torch.bfloat16))  # frozen, never updated
    assert not all(torch.equal(a, b) for a, b in zip(student_before, params(trainer.students[0]), strict=True))
