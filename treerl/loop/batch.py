"""Batches of completions with their contexts, and the per-token log-probs of completions.

Each distinct context (the prompt, or a tree node's prompt + prefix) is encoded once per batch,
however many completions continue it: with n samples per prompt the prompt tokens cost 1/n of a
forward and backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel

from treerl.errors import UserError
from treerl.rollout.hf_backend import cache_argument, left_pad


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
    """[B, T] float, 1 on completion tokens; per-token values (log-probs,
    losses) share this layout."""

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            *(
                t.to(device)
                for t in (
                    self.context_ids,
                    self.context_mask,
                    self.context_index,
                    self.completion_ids,
                    self.completion_mask,
                )
            )
        )


def make_batch(
    context_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int = 0
) -> TokenBatch:
    """Contexts deduplicated and left-padded, completions right-padded; padding is masked out, so
    any valid id serves as pad_id."""
    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(context), len(distinct)) for context in context_ids]
    contexts, context_mask = left_pad([list(context) for context in distinct], pad_id)
    width = max(len(c) for c in completion_ids)
    ids = torch.full((len(completion_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completion_ids), width))
    for row, completion in enumerate(completion_ids):
        ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        mask[row, : len(completion)] = 1.0
    return TokenBatch(contexts, context_mask, torch.tensor(index), ids, mask)


def scatter_completion_values(values: list[torch.Tensor], batch: TokenBatch) -> torch.Tensor:
    """Place one value per completion token (e.g. behaviour log-probs) in the
    batch's layout [B, T]."""
    out = torch.zeros_like(batch.completion_mask)
    out[batch.completion_mask.bool()] = torch.cat(values).to(out)
    return out


POSTPROCESSED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config attributes of models whose forward changes the logits after the output head (Gemma's soft
cap, Cohere's and Granite's scales): their log-probs cannot be computed from the final
hidden states alone."""


def completion_states(
    model: PreTrainedModel, batch: TokenBatch, hidden: bool = False, shared_contexts: bool = True
) -> torch.Tensor:
    """Logits predicting each completion token [B, T, V], or with `hidden` the final hidden states
    [B, T, H] that the output head turns into them. The contexts run once with their KV cache kept,
    which every completion of a context then attends to (a differentiable gather, so gradients reach
    the context); without `shared_contexts` (activation checkpointing drops caches), each completion
    runs with its own copy of its context in one pass."""

    def outputs(**kwargs) -> torch.Tensor:
        if not hidden:
            return model(**kwargs).logits
        kwargs["logits_to_keep"] = torch.zeros(
            0, dtype=torch.long, device=batch.completion_ids.device
        )
        return model(**kwargs, output_hidden_states=True).hidden_states[-1]

    if not shared_contexts:
        index, width = batch.context_index, batch.completion_ids.shape[1]
        mask = torch.cat(
            [batch.context_mask.index_select(0, index), batch.completion_mask.long()], dim=1
        )
        ids = torch.cat([batch.context_ids.index_select(0, index), batch.completion_ids], dim=1)
        start = (
            batch.context_ids.shape[1] - 1
        )  # the last context position predicts the first completion token
        return outputs(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        )[:, start : start + width]

    positions = (batch.context_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    first = outputs(
        input_ids=batch.context_ids,
        attention_mask=batch.context_mask,
        position_ids=positions,
        use_cache=True,
        **({} if hidden else {"logits_to_keep": 1}),
        **{cache_argument(model): cache},
    )
    first = first[:, -1:]
    # index_select, not tensor[index]: the backward of indexing (index_put_ with accumulate) made
    # two runs on two CPU threads differ in the seventh digit; index_select's backward gives the
    # same bits every time
    index, width = batch.context_index, batch.completion_ids.shape[1]
    first = first.index_select(0, index)
    cache = DynamicCache(
        ddp_cache_data=[
            (layer.keys.index_select(0, index), layer.values.index_select(0, index))
            for layer in cache.layers
        ]
    )
    # The last token predicts nothing that is trained, but one-token completions still run this
    # second forward: under DDP every rank must make the same number of forward calls.
    fed = max(1, width - 1)
    inputs = batch.completion_ids[:, :fed]
    mask = torch.cat([batch.context_mask[index], batch.completion_mask[:, :fed].long()], dim=1)
    positions = batch.context_mask.sum(-1)[index, None] + torch.arange(fed, device=inputs.device)
    rest = outputs(
        input_ids=inputs,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_argument(model): cache},
    )
    return torch.cat([first, rest[:, : width - 1]], dim=1)


def token_stats(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token) [B, T] of logits / temperature at `ids`, and optionally each
    distribution's entropy."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = logits.logsumexp(-1)
    logprobs = logits.gather(-1, ids[..., None]).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        probs = (logits - log_norm[..., None]).exp()
        entropy = log_norm - (probs * logits).sum(-1)
    return logprobs, entropy


def completion_logprobs(
    model: PreTrainedModel,
    batch: TokenBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int = 0,
    shared_contexts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token | prefix) of every completion token [B, T] for logits / temperature, and
    optionally the entropy of each of those distributions. With `chunk` > 0, the output head runs on
    about `chunk` tokens at a time from the final hidden states, and each chunk's logits are
    recomputed in the backward pass instead of kept: no [tokens x vocabulary] tensor is ever whole
    (train.logit_chunk). `shared_contexts`: see `completion_states`."""
    if not chunk:
        return token_stats(
            completion_states(model, batch, shared_contexts=shared_contexts),
            batch.completion_ids,
            temperature,
            with_entropy,
        )
    module = getattr(model, "module", model)  # a DDP wrapper's model
    if any(getattr(module.config, name, None) for name in POSTPROCESSED_LOGITS):
        raise UserError(
            f"train.logit_chunk: a {module.config.model_type} model changes its logits after the "
            "output head, so they cannot be computed in chunks; set train.logit_chunk=0"
        )
    head = module.get_output_embeddings()
    hidden = completion_states(model, batch, hidden=True, shared_contexts=shared_contexts)
    columns = max(1, chunk // max(1, hidden.shape[0]))

    def stats(h: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return token_stats(F.linear(h, head.weight, head.bias), ids, temperature, with_entropy)

    parts = [
        checkpoint(
            stats,
            hidden[:, start : start + columns],
            batch.completion_ids[:, start : start + columns],
            use_reentrant=False,
        )
        for start in range(0, hidden.shape[1], columns)
    ]
    logprobs = torch.cat([lp for lp, _ in parts], dim=1)
    entropy = torch.cat([e for _, e in parts if e is not None], dim=1) if with_entropy else None
    return logprobs, entropy
