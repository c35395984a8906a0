import math

import pytest
import torch

from treerl.algo.advantages import ADVANTAGES, compute_advantages
from treerl.errors import UserError


def test_grpo_normalises_by_group_mean_and_unbiased_std():
    adv = compute_advantages("grpo", torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    # mean 0.5; squared deviations 4 * 0.25 = 1; unbiased var 1/3; std sqrt(1/3)
    # (1 - 0.5) / sqrt(1/3) = 0.5 * sqrt(3) = 0.8660...
    expected = 0.5 * math.sqrt(3)
    assert torch.allclose(adv, torch.tensor([[expected, -expected, -expected, expected]]), atol=1e-6)


def test_grpo_groups_are_independent():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 5.0]])
    adv = compute_advantages("grpo", rewards, eps=0.0)
    # second row: mean 3.5, deviations -0.5 x3, +1.5; unbiased var (3*0.25 + 2.25)/3 = 1
    assert torch.allclose(adv[1], torch.tensor([-0.5, -0.5, -0.5, 1.5]), atol=1e-6)
    assert torch.allclose(adv[0], compute_advantages("grpo", rewards[:1], eps=0.0)[0])


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1])
def test_grpo_equal_rewards_give_zero_advantage(value):
    adv = compute_advantages("grpo", torch.full((2, 4), value))
    assert not torch.isnan(adv).any()
    assert torch.equal(adv, torch.zeros(2, 4))


def test_grpo_group_of_one_is_zero():
    adv = compute_advantages("grpo", torch.tensor([[1.0], [0.0]]))
    assert torch.equal(adv, torch.zeros(2, 1))


def test_dr_grpo_is_reward_minus_group_mean():
    adv = compute_advantages("dr_grpo", torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]]))
    # row 0: mean 0.5 -> +-0.5 (no std division); row 1: mean 0.5 -> 1.5, -0.5, -0.5, -0.5
    assert torch.allclose(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.5, -0.5, -0.5, -0.5]]))


def test_unknown_estimator_lists_available_names():
    with pytest.raises(UserError) as err:
        compute_advantages("grpoo", torch.zeros(1, 2))
    message = str(err.value)
    assert "grpoo" in message
    for name in ADVANTAGES:
        assert name in message
    assert {"grpo", "dr_grpo"} <= set(ADVANTAGES)


@pytest.mark.parametrize("override, message", [
    ("curriculum.name=hardest_first", "unknown curriculum.name 'hardest_first'; available: balanced, classic, cosine, gaussian"),
    ("task.name=chess", "unknown task.name 'chess'; available: arithmetic, blocksworld, countdown, gsm8k, math"),
])
def test_every_registry_names_the_config_key_and_the_choices(override, message, capsys, tmp_path):
    from treerl.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), override]) == 2
    assert capsys.readouterr().err.strip() == f"treerl: error: {message}"
    assert not (tmp_path / "run").exists()  # checked before anything is written
