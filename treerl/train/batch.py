"""Packing prompt + completion token ids into padded batches, and per-token log-probs of completions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    """[B, T] prompt followed by completion, right-padded."""
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    """[B, T-1] float, 1 where the target token (input_ids[:, 1:]) belongs to the completion."""

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


def make_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int = 0) -> TokenBatch:
    """Right-padded prompt + completion; padding is masked out, so any valid id serves as pad_id."""
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros((len(prompt_ids), width - 1))
    for row, (prompt, comp) in enumerate(zip(prompt_ids, completion_ids)):
        ids[row, :len(prompt) + len(comp)] = torch.tensor(prompt + comp)
        attention[row, :len(prompt) + len(comp)] = 1
        completion[row, len(prompt) - 1:len(prompt) + len(comp) - 1] = 1.0
    return TokenBatch(ids, attention, completion)


def scatter_completion_values(values: list[torch.Tensor], batch: TokenBatch) -> torch.Tensor:
    """Place one value per completion token (e.g. behaviour log-probs) at its target position [B, T-1]."""
    out = torch.zeros_like(batch.completion_mask)
    flat = torch.cat(values).to(out)
    out[batch.completion_mask.bool()] = flat
    return out


def completion_logprobs(model: PreTrainedModel, batch: TokenBatch, temperature: float = 1.0,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(target | prefix) at every position [B, T-1] for logits / temperature, and optionally the entropy."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = logits.logsumexp(-1)
    targets = batch.input_ids[:, 1:]
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        probs = (logits - log_norm[..., None]).exp()
        entropy = log_norm - (probs * logits).sum(-1)
    return logprobs, entropy
