"""Clipped policy-ratio loss, KL estimators and loss aggregation (per-token values -> one scalar)."""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: LossAgg, *, total_seqs: float | None = None,
              total_tokens: float | None = None, norm_len: float | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] under `mask`.

    token-mean: sum over all tokens / number of tokens (DAPO).
    seq-mean-token-mean: mean over sequences of each sequence's token mean (GRPO paper).
    seq-mean-token-sum-norm: sum over all tokens / (sequences x norm_len), a constant length (Dr. GRPO).
    Pass the totals of the whole mini-batch when `values` is one micro-batch of it: the micro-batch
    results then add up to the mini-batch loss.
    """
    seqs = mask.shape[0] if total_seqs is None else total_seqs
    tokens = mask.sum() if total_tokens is None else total_tokens
    if mode == "token-mean":
        return (values * mask).sum() / max(float(tokens), 1.0)
    if mode == "seq-mean-token-mean":
        return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (the generation budget)")
        return (values * mask).sum() / (seqs * norm_len)
    raise ValueError(f"unknown loss aggregation '{mode}'")


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) and where clipping was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"]) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 and k3)."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator '{estimator}'")
