"""The mode x protocol report: the default is chosen on validation only, and every table reads the right split."""

from __future__ import annotations

from monai_kdml.experiments.protocol_report import protocol_section, seed_values, validation_winner
from monai_kdml.experiments.tasks import MSI


def _run(protocol: str, seed: int, val: dict[str, float], test: dict[str, float]) -> dict:
    modes = list(val)
    return {
        "protocol": protocol,
        "seed": seed,
        "modes": modes,
        "validation": {m: {"ensemble": v} for m, v in val.items()},
        "test": {m: {"ensemble": {"auc": t}} for m, t in test.items()},
        "teacher": {"auc": 0.7},
        "epoch_seconds": [30.0, 32.0],
        "seconds": {"train": 60.0, "teacher_stage": 120.0 if protocol == "frozen" else 0.0},
    }


def _grid() -> list[dict]:
    runs = []
    for seed in range(3):
        runs.append(_run("today", seed, {"independent": 0.70, "kd": 0.71, "kdml": 0.72 + 0.001 * seed},
                         {"independent": 0.70, "kd": 0.70, "kdml": 0.80}))  # fmt: skip
        # ramp is better on validation, worse on test: the rule must still pick it
        runs.append(_run("ramp", seed, {"kd": 0.72, "kdml": 0.75 + 0.002 * seed}, {"kd": 0.60, "kdml": 0.61}))
        runs.append(_run("frozen", seed, {"kd": 0.70, "kdml": 0.74}, {"kd": 0.90, "kdml": 0.95}))
    return runs


def test_the_default_is_chosen_on_validation_never_on_test() -> None:
    winner, means = validation_winner(MSI, _grid())
    assert winner == "ramp"
    assert means["ramp"] > means["frozen"] > means["today"]


def test_a_protocol_missing_seeds_cannot_win_and_the_choice_says_so() -> None:
    runs = [r for r in _grid() if not (r["protocol"] == "ramp" and r["seed"] == 2)]
    assert validation_winner(MSI, runs)[0] == "frozen"
    text = "\n".join(protocol_section(MSI, runs))
    assert "Provisional: ramp still miss seeds" in text
    assert "Provisional" not in "\n".join(protocol_section(MSI, _grid()))


def test_modes_a_protocol_does_not_rerun_are_todays_seeds() -> None:
    values, borrowed = seed_values(_grid(), "ramp", "independent", "auc", "validation")
    assert borrowed and values == {0: 0.70, 1: 0.70, 2: 0.70}
    values, borrowed = seed_values(_grid(), "ramp", "kdml", "auc", "test")
    assert not borrowed and values == {0: 0.61, 1: 0.61, 2: 0.61}


def test_the_section_states_the_choice_the_comparisons_and_the_cost() -> None:
    text = "\n".join(protocol_section(MSI, _grid()))
    assert "**Chosen on validation: `ramp`**" in text
    assert "| kdml: ramp - today | +0.0310 |" in text  # validation: 0.752 - 0.721 on average
    assert "| kdml: ramp - today | -0.1900 |" in text  # test: 0.61 - 0.80
    assert "| frozen | kd, kdml | 31.0 | 1.0 | 2.0 |" in text
    assert "10 comparisons" in text  # 3 protocols x 2 other modes + 2 protocols x 2 distilling cohorts
