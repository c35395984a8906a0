"""Batches of completions with their contexts, and the per-token log-probs of completions.

Each distinct context (the prompt, or a tree node's prompt + prefix) is encoded once per batch, however many
completions continue it: with n samples per prompt the prompt tokens cost 1/n of a forward and backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from treerl.rollout.engine import cache_argument, left_pad


@dataclass
class TokenBatch:
    context_ids: torch.Tensor
    """[U, C] the distinct contexts, left-padded."""
    context_mask: torch.Tensor
    context_index: torch.Tensor
    """[B] the context each completion continues."""
    completion_ids: torch.Tensor
    """[B, T] right-padded."""
    completion_mask: torch.Tensor
    """[B, T] float, 1 on completion tokens; per-token values (log-probs, losses) share this layout."""

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.context_ids, self.context_mask, self.context_index,
                                                    self.completion_ids, self.completion_mask)))


def make_batch(context_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int = 0) -> TokenBatch:
    """Contexts deduplicated and left-padded, completions right-padded; padding is masked out, so any valid id
    serves as pad_id."""
    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(context), len(distinct)) for context in context_ids]
    contexts, context_mask = left_pad([list(context) for context in distinct], pad_id)
    width = max(len(c) for c in completion_ids)
    ids = torch.full((len(completion_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completion_ids), width))
    for row, completion in enumerate(completion_ids):
        ids[row, :len(completion)] = torch.tensor(completion, dtype=torch.long)
        mask[row, :len(completion)] = 1.0
    return TokenBatch(contexts, context_mask, torch.tensor(index), ids, mask)


def scatter_completion_values(values: list[torch.Tensor], batch: TokenBatch) -> torch.Tensor:
    """Place one value per completion token (e.g. behaviour log-probs) in the batch's layout [B, T]."""
    out = torch.zeros_like(batch.completion_mask)
    out[batch.completion_mask.bool()] = torch.cat(values).to(out)
    return out


def completion_logits(model: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Logits predicting each completion token [B, T, V]: the contexts run once with their KV cache kept, which
    every completion of a context then attends to (a differentiable gather, so gradients reach the context)."""
    positions = (batch.context_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    first = model(input_ids=batch.context_ids, attention_mask=batch.context_mask, position_ids=positions,
                  use_cache=True, logits_to_keep=1, **{cache_argument(model): cache}).logits
    # index_select, not tensor[index]: the backward of indexing (index_put_ with accumulate) made two runs on
    # two CPU threads differ in the seventh digit; index_select's backward gives the same bits every time
    index, width = batch.context_index, batch.completion_ids.shape[1]
    first = first.index_select(0, index)
    cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                         for layer in cache.layers])
    # The last token predicts nothing that is trained, but one-token completions still run this second forward:
    # under DDP every rank must make the same number of forward calls.
    fed = max(1, width - 1)
    inputs = batch.completion_ids[:, :fed]
    mask = torch.cat([batch.context_mask[index], batch.completion_mask[:, :fed].long()], dim=1)
    positions = batch.context_mask.sum(-1)[index, None] + torch.arange(fed, device=inputs.device)
    rest = model(input_ids=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                 **{cache_argument(model): cache}).logits
    return torch.cat([first, rest[:, :width - 1]], dim=1)


def completion_logprobs(model: PreTrainedModel, batch: TokenBatch, temperature: float = 1.0,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token | prefix) of every completion token [B, T] for logits / temperature, and optionally the
    entropy of each of those distributions."""
    logits = completion_logits(model, batch).float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = logits.logsumexp(-1)
    logprobs = logits.gather(-1, batch.completion_ids[..., None]).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        probs = (logits - log_norm[..., None]).exp()
        entropy = log_norm - (probs * logits).sum(-1)
    return logprobs, entropy
