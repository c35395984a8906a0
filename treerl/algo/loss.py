"""The learner's loss, each part registered by name: the policy loss (algo.policy_loss), the
aggregation of per-token values into one scalar (algo.loss_agg) and the KL estimator
(algo.kl_estimator)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from treerl.config import AlgoConfig
from treerl.registry import Registry

PolicyLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, AlgoConfig], tuple[torch.Tensor, torch.Tensor]
]
"""(logprobs, old_logprobs, advantages, algo) -> (per-token loss, where clipping took the gradient
away)."""
POLICY_LOSSES: Registry[PolicyLoss] = Registry("algo.policy_loss")

Aggregation = Callable[[torch.Tensor, torch.Tensor, float, float, float | None], torch.Tensor]
"""(values [B, T], mask [B, T], sequences, tokens, norm_len) -> scalar; the counts are the whole
mini-batch's."""
AGGREGATIONS: Registry[Aggregation] = Registry("algo.loss_agg")

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logprobs, ref_logprobs) -> per-token estimate of KL(pi || pi_ref) from samples of pi."""
KL_ESTIMATORS: Registry[KLEstimator] = Registry("algo.kl_estimator")


def _ratio_terms(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, algo: AlgoConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """-A r and -A clip(r, 1 - clip_low, 1 + clip_high), with r = exp(logprobs - old_logprobs)."""
    ratio = torch.exp(logprobs - old_logprobs)
    return -advantages * ratio, -advantages * ratio.clamp(1.0 - algo.clip_low, 1.0 + algo.clip_high)


@POLICY_LOSSES.register("clipped")
def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, algo: AlgoConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped loss with decoupled bounds (DAPO's clip-higher): max(-A r, -A clip(r,
    1 - clip_low, 1 + clip_high)) per token."""
    unclipped, clipped = _ratio_terms(logprobs, old_logprobs, advantages, algo)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


@POLICY_LOSSES.register("dual_clip")
def dual_clip_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, algo: AlgoConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-clip PPO (Ye et al., 2020), as verl's `vanilla` loss: the clipped loss, and where A < 0
    also at most -A c (c = algo.clip_ratio_c > 1), so that a token whose ratio has grown far past
    1 + clip_high no longer pushes with an unbounded weight."""
    unclipped, clipped = _ratio_terms(logprobs, old_logprobs, advantages, algo)
    loss = torch.maximum(unclipped, clipped)
    bound = -advantages * algo.clip_ratio_c
    negative = advantages < 0
    dual = negative & (loss > bound)
    return torch.where(negative, torch.minimum(loss, bound), loss), (
        (clipped > unclipped) | dual
    ).float()


@AGGREGATIONS.register("token-mean")
def token_mean(
    values: torch.Tensor, mask: torch.Tensor, seqs: float, tokens: float, norm_len: float | None
) -> torch.Tensor:
    """Sum over all tokens / number of tokens (DAPO)."""
    return (values * mask).sum() / max(float(tokens), 1.0)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    values: torch.Tensor, mask: torch.Tensor, seqs: float, tokens: float, norm_len: float | None
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the GRPO paper)."""
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    values: torch.Tensor, mask: torch.Tensor, seqs: float, tokens: float, norm_len: float | None
) -> torch.Tensor:
    """Sum over all tokens / (sequences x norm_len), a constant length: the generation budget
    (Dr. GRPO)."""
    if norm_len is None:
        raise ValueError("seq-mean-token-sum-norm needs norm_len (the generation budget)")
    return (values * mask).sum() / (seqs * norm_len)


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref (Schulman's k1: unbiased, high variance)."""
    return -(ref_logprobs - logprobs)


@KL_ESTIMATORS.register("k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(log pi - log pi_ref)^2 / 2 (Schulman's k2: biased, low variance)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """pi_ref / pi - log(pi_ref / pi) - 1 (Schulman's k3: unbiased, non-negative; GRPO's)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0
