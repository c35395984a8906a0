import math

import pytest
import torch

from treerl.algo.loss import AGGREGATIONS, KL_ESTIMATORS, clipped_policy_loss, dual_clip_policy_loss
from treerl.config import AlgoConfig


def ppo(
    ratio: float,
    advantage: float,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    loss=clipped_policy_loss,
    clip_ratio_c: float = 3.0,
):
    logp = torch.tensor([math.log(ratio)])
    algo = AlgoConfig(clip_low=clip_low, clip_high=clip_high, clip_ratio_c=clip_ratio_c)
    value, clipped = loss(logp, torch.zeros(1), torch.tensor([advantage]), algo)
    return value.item(), clipped.item()


def aggregate(values, mask, mode, total_seqs=None, total_tokens=None, norm_len=None):
    """An aggregation over one batch, or over a micro-batch of one whose totals are given."""
    seqs = mask.shape[0] if total_seqs is None else total_seqs
    tokens = float(mask.sum()) if total_tokens is None else total_tokens
    return AGGREGATIONS[mode](values, mask, seqs, tokens, norm_len)


def kl_penalty(logp, ref, estimator):
    return KL_ESTIMATORS[estimator](logp, ref)


def test_positive_advantage_clipped_above():
    # A=+1, r=1.5: max(-1.5, -min(1.5, 1.28)) = max(-1.5, -1.28) = -1.28, clipped
    loss, clipped = ppo(1.5, 1.0)
    assert loss == pytest.approx(-1.28) and clipped == 1.0


def test_negative_advantage_clipped_below():
    # A=-1, r=0.5: max(0.5, clip(0.5, 0.8, 1.28) = 0.8) = 0.8, clipped
    loss, clipped = ppo(0.5, -1.0)
    assert loss == pytest.approx(0.8) and clipped == 1.0


def test_positive_advantage_below_range_is_not_clipped():
    # A=+1, r=0.5: max(-0.5, -0.8) = -0.5: the pessimistic bound is the unclipped one
    loss, clipped = ppo(0.5, 1.0)
    assert loss == pytest.approx(-0.5) and clipped == 0.0


def test_ratio_inside_range_is_plain_policy_gradient():
    # A=2, r=1.1 inside [0.8, 1.28]: -2 * 1.1 = -2.2
    loss, clipped = ppo(1.1, 2.0)
    assert loss == pytest.approx(-2.2) and clipped == 0.0


def test_low_and_high_clip_are_separate():
    # upper bound follows clip_high only: 1 + 0.5 = 1.5 leaves r=1.5 unclipped -> -1.5
    assert ppo(1.5, 1.0, clip_low=0.2, clip_high=0.5) == pytest.approx((-1.5, 0.0))
    assert ppo(1.5, 1.0, clip_low=0.9, clip_high=0.28) == pytest.approx((-1.28, 1.0))
    # lower bound follows clip_low only: 1 - 0.4 = 0.6 -> max(0.5, 0.6) = 0.6
    assert ppo(0.5, -1.0, clip_low=0.4, clip_high=0.28) == pytest.approx((0.6, 1.0))
    assert ppo(0.5, -1.0, clip_low=0.2, clip_high=5.0) == pytest.approx((0.8, 1.0))


@pytest.mark.parametrize(
    "ratio, advantage, expected",
    [
        (
            5.0,
            -1.0,
            (3.0, 1.0),
        ),  # A < 0, r = 5: the clipped loss max(5, 1.28) = 5 is bounded by -A c = 3
        (
            2.0,
            -1.0,
            (2.0, 0.0),
        ),  # r = 2: max(2, 1.28) = 2 < 3, as the clipped loss (not clipped: r past 1.28
        # with A < 0 keeps the unclipped, pessimistic term)
        (0.5, -1.0, (0.8, 1.0)),  # the lower clip as before
        (5.0, 1.0, (-1.28, 1.0)),  # A > 0: exactly the clipped loss, never the dual bound
        (5.0, -2.0, (6.0, 1.0)),  # the bound scales with A: -A c = 2 x 3
    ],
)
def test_dual_clip_bounds_negative_advantage_terms(ratio, advantage, expected):
    assert ppo(ratio, advantage, loss=dual_clip_policy_loss) == pytest.approx(expected)
    if advantage > 0 or ratio < 3.0:  # where the bound is not reached, both losses agree
        assert ppo(ratio, advantage, loss=dual_clip_policy_loss) == pytest.approx(
            ppo(ratio, advantage)
        )


def test_dual_clip_bound_gets_no_gradient():
    logp = torch.log(torch.tensor([5.0, 2.0])).requires_grad_()
    loss, clipped = dual_clip_policy_loss(
        logp, torch.zeros(2), -torch.ones(2), AlgoConfig(clip_ratio_c=3.0)
    )
    loss.sum().backward()
    # the bounded token is the constant 3; the other is -A r = r with gradient r = 2
    assert clipped.tolist() == [1.0, 0.0]
    assert logp.grad.tolist() == pytest.approx([0.0, 2.0])


def test_clip_ratio_c_must_exceed_one():
    with pytest.raises(ValueError, match="clip_ratio_c"):
        AlgoConfig(clip_ratio_c=1.0)


def test_clipped_tokens_get_no_gradient():
    logp = torch.log(torch.tensor([1.5, 1.1])).requires_grad_()
    loss, clipped = clipped_policy_loss(logp, torch.zeros(2), torch.ones(2), AlgoConfig())
    loss.sum().backward()
    # d(-r)/d logp = -r for the unclipped token; the clipped one is constant
    assert clipped.tolist() == [1.0, 0.0]
    assert logp.grad[0].item() == 0.0
    assert logp.grad[1].item() == pytest.approx(-1.1)


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 10 / 4),  # (1+2+3+4) / 4 tokens
        ("seq-mean-token-mean", (2 + 4) / 2),  # means 6/3 and 4/1, averaged over 2 sequences
        ("seq-mean-token-sum-norm", 10 / (2 * 4)),  # token sum / (2 sequences x norm_len 4)
    ],
)
def test_aggregate_modes(mode, expected):
    assert aggregate(VALUES, MASK, mode, norm_len=4).item() == pytest.approx(expected)


def test_aggregate_ignores_masked_values():
    noisy = VALUES + torch.tensor([[0.0, 0.0, 0.0], [0.0, 100.0, -7.0]])
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(noisy, MASK, mode, norm_len=4).item() == pytest.approx(
            aggregate(VALUES, MASK, mode, norm_len=4).item()
        )


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_add_up_to_the_full_batch(mode):
    full = aggregate(VALUES, MASK, mode, norm_len=4)
    parts = sum(
        aggregate(
            VALUES[i : i + 1], MASK[i : i + 1], mode, total_seqs=2, total_tokens=4, norm_len=4
        )
        for i in range(2)
    )
    assert parts.item() == pytest.approx(full.item())


def test_sum_norm_needs_norm_len():
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")


def test_kl_k1_k2_and_k3_by_hand():
    logp, ref = torch.tensor([0.0]), torch.tensor([math.log(0.5)])
    # k1 = logp - ref = log 2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k2 = (logp - ref)^2 / 2 = (log 2)^2 / 2 = 0.24023
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(math.log(2) ** 2 / 2)
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.5 + log 2 - 1 = 0.19315
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)


def test_kl_zero_when_equal_and_k2_k3_non_negative():
    logp = torch.linspace(-5, 0, 11)
    assert torch.equal(kl_penalty(logp, logp.clone(), "k1"), torch.zeros(11))
    assert torch.equal(kl_penalty(logp, logp.clone(), "k3"), torch.zeros(11))
    assert torch.equal(kl_penalty(logp, logp.clone(), "k2"), torch.zeros(11))
    ref = torch.linspace(-4, -0.1, 11).flip(0)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()  # k1 is unbiased but not per-token non-negative
