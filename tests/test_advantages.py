import math

import pytest

from treerl.algo.advantages import (
    ESTIMATORS,
    dr_grpo,
    grpo,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)
from treerl.errors import UserError
from treerl.registry import Registry
from treerl.rollout.tree import ReasoningTree


def flat(*rewards: float) -> ReasoningTree:
    """A depth-1 tree: n responses of one prompt, their rewards."""
    return ReasoningTree.from_leaf_rewards(list(rewards))


def values(advantages: dict[tuple[int, ...], float]) -> list[float]:
    assert list(advantages) == [
        (i,) for i in range(len(advantages))
    ]  # one per root child, in order
    return list(advantages.values())


def test_grpo_normalises_by_group_mean_and_unbiased_std():
    # mean 0.5; squared deviations 4 * 0.25 = 1; unbiased var 1/3; std sqrt(1/3)
    # (1 - 0.5) / sqrt(1/3) = 0.5 * sqrt(3) = 0.8660...
    expected = 0.5 * math.sqrt(3)
    assert values(grpo(flat(1, 0, 0, 1), eps=0.0)) == pytest.approx(
        [expected, -expected, -expected, expected]
    )
    # mean 3.5, deviations -0.5 x3, +1.5; unbiased var (3*0.25 + 2.25)/3 = 1
    assert values(grpo(flat(3, 3, 3, 5), eps=0.0)) == pytest.approx([-0.5, -0.5, -0.5, 1.5])


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1])
def test_equal_rewards_give_zero_advantage_without_nan(value):
    for estimator in (grpo, dr_grpo, rloo):
        assert values(estimator(flat(value, value, value, value))) == [0.0] * 4


def test_grpo_group_of_one_is_zero():
    assert values(grpo(flat(1))) == [0.0]


def test_dr_grpo_is_reward_minus_group_mean():
    # mean 0.5 -> +-0.5 (no std division); mean 0.5 -> 1.5, -0.5, -0.5, -0.5
    assert values(dr_grpo(flat(1, 0, 0, 1))) == [0.5, -0.5, -0.5, 0.5]
    assert values(dr_grpo(flat(2, 0, 0, 0))) == [1.5, -0.5, -0.5, -0.5]


def test_rloo_subtracts_the_mean_of_the_others():
    # r = (1, 0, 0, 1): each 1 has others (0, 0, 1), mean 1/3 -> 2/3;
    # each 0 has others (0, 1, 1) -> -2/3
    assert values(rloo(flat(1, 0, 0, 1))) == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # r = (2, 0, 1): 2 - 0.5 = 1.5; 0 - 1.5 = -1.5; 1 - 1 = 0  (= 3/2 x (r - mean 1))
    assert values(rloo(flat(2, 0, 1))) == pytest.approx([1.5, -1.5, 0.0])
    # a group of one has no baseline: A = r, as in verl
    assert values(rloo(flat(0.7))) == pytest.approx([0.7])


def test_a_flat_estimator_scores_the_root_children_of_any_tree():
    # values of the root's children: 0.5 (mean of 1, 0) and 1.0; Dr. GRPO: -0.25, +0.25, nothing
    # deeper
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [1]])
    assert dr_grpo(tree) == {(0,): -0.25, (1,): 0.25}


def test_every_estimator_declares_its_shape():
    assert {name: estimator.deep for name, estimator in ESTIMATORS.items()} == {
        "grpo": False,
        "dr_grpo": False,
        "rloo": False,
        "reinforce_pp": False,
        "reinforce_pp_baseline": False,
        "treerpo": True,
    }


def test_unknown_estimator_lists_available_names():
    with pytest.raises(UserError) as err:
        ESTIMATORS.lookup("grpoo")
    assert str(err.value) == (
        "unknown algo.name 'grpoo'; available: dr_grpo, grpo, reinforce_pp, "
        "reinforce_pp_baseline, rloo, treerpo"
    )
    assert isinstance(ESTIMATORS, Registry)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "curriculum.name=hardest_first",
            "unknown curriculum.name 'hardest_first'; available: balanced, classic, cosine, "
            "gaussian, mastery",
        ),
        (
            "task.name=chess",
            "unknown task.name 'chess'; available: arithmetic, blocksworld, countdown, gsm8k, "
            "math, or MODULE:NAME from your own code",
        ),
        (
            "algo.name=ppo",
            "unknown algo.name 'ppo'; available: dr_grpo, grpo, reinforce_pp, "
            "reinforce_pp_baseline, rloo, treerpo",
        ),
        (
            "algo.params.norm=zscore",
            "unknown algo.params.norm 'zscore'; available: bernoulli, none, std",
        ),
        ("reschedule.mix=step", "unknown reschedule.mix 'step'; available: linear, sigmoid"),
        (
            "reschedule.rank_by=length",
            "unknown reschedule.rank_by 'length'; available: acc, off, rscore, rscore_prune",
        ),
        (
            "task.template=chat",
            "unknown task.template 'chat'; available: boxed, plain, think, or a format string with "
            "{problem}",
        ),
        (
            "train.lr_schedule=linear",
            "unknown train.lr_schedule 'linear'; available: constant, cosine",
        ),
        ("rscore.eligible=leaves", "unknown rscore.eligible 'leaves'; available: all, reference"),
        ("rscore.child=first", "unknown rscore.child 'first'; available: accuracy, gain"),
        (
            "algo.params.beta=1",
            "algo.params: estimator 'grpo' has no parameter 'beta'; it takes: eps",
        ),
        ("algo.policy_loss=gspo", "unknown algo.policy_loss 'gspo'; available: clipped, dual_clip"),
        (
            "algo.loss_agg=sum",
            "unknown algo.loss_agg 'sum'; available: seq-mean-token-mean, seq-mean-token-sum-norm, "
            "token-mean",
        ),
        ("algo.kl_estimator=k4", "unknown algo.kl_estimator 'k4'; available: k1, k2, k3"),
        ("tree.branch_at=random", "unknown tree.branch_at 'random'; available: entropy, fixed"),
    ],
)
def test_every_registry_names_the_config_key_and_the_choices(override, message, capsys, tmp_path):
    from treerl.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), override]) == 2
    assert capsys.readouterr().err.strip() == f"treerl: error: {message}"
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_reinforce_pp_normalises_over_every_response_of_the_step():
    """Two prompts, rewards (1, 0) and (1, 1): over the four, mean 0.75, squared deviations 0.0625
    x3 + 0.5625 = 0.75, Bessel var 0.25, std 0.5: A = +0.5 for each 1 and -1.5 for the 0. A
    per-prompt GRPO would give the second prompt 0 and the first +-0.707."""
    assert [values(a) for a in reinforce_pp([flat(1, 0), flat(1, 1)], eps=0.0)] == [
        [0.5, -1.5],
        [0.5, 0.5],
    ]


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_normalises_over_the_step():
    """(1, 0) -> (0.5, -0.5); (1, 1) -> (0, 0); (1, 0, 0, 0) -> (0.75, -0.25 x3). Over these eight:
    mean 0, sum of squares 0.25 x2 + 0.5625 + 0.0625 x3 = 1.25, Bessel var 1.25 / 7, std 0.422577:
    A = x / 0.422577."""
    std = (1.25 / 7) ** 0.5
    out = reinforce_pp_baseline([flat(1, 0), flat(1, 1), flat(1, 0, 0, 0)], eps=0.0)
    assert [values(a) for a in out] == [
        pytest.approx([0.5 / std, -0.5 / std]),
        [0.0, 0.0],
        pytest.approx([0.75 / std] + [-0.25 / std] * 3),
    ]


def test_an_estimator_takes_only_its_own_parameters_with_its_defaults():
    treerpo = ESTIMATORS.lookup("treerpo")
    assert treerpo.params({"norm": "std"}) == {
        "prune_tau": 0.1,
        "norm": "std",
        "eps": 1e-6,
        "weighting": "none",
    }
    assert ESTIMATORS.lookup("dr_grpo").params({}) == {}
    with pytest.raises(
        UserError, match="algo.params: estimator 'dr_grpo' has no parameter 'eps'; it takes: none"
    ):
        ESTIMATORS.lookup("dr_grpo").advantages([flat(1, 0)], {"eps": 0.1})


def test_a_name_registered_twice_is_refused():
    with pytest.raises(ValueError, match="algo.name 'grpo' is registered already"):
        ESTIMATORS.add("grpo", ESTIMATORS["grpo"])
    with pytest.raises(ValueError, match="a registry for algo.name exists already"):
        Registry("algo.name")
