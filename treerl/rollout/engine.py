"""Sampling completions: `generate` completes prompts through the backend that suits the model
(`backend_for`), returning the behaviour log-prob of every token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.rollout.backend import Backend, Forks, Sequence
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.hf_backend import TransformersBackend
from treerl.rollout.lean import lean_decoder
from treerl.rollout.lean_backend import LeanBackend


@dataclass
class Generation:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Sampled tokens, ending with EOS when the sequence stopped."""
    logprobs: list[torch.Tensor]
    """log pi(token) under the sampling distribution (logits / temperature), one per completion token."""
    texts: list[str]
    finished: list[bool]
    """Whether each sequence stopped at EOS (False: it ran out of max_new_tokens)."""


def backend_for(model: PreTrainedModel, kv_budget_gib: float = 0.0) -> Backend:
    """The lean backend where the lean forward covers the model, else the transformers backend. Both read the
    model's parameters where they are, so a backend made before an update samples from the updated weights; a
    KV budget (GiB, 0 = what each call needs) bounds the lean backend's cache."""
    decoder = lean_decoder(model)
    return LeanBackend(decoder, kv_budget_gib) if decoder else TransformersBackend(model)


def context_length(model: PreTrainedModel) -> int | None:
    """The most positions the model was built for (max_position_embeddings), or None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def sample_sequences(model: PreTrainedModel, prompt_ids: list[list[int]], *, max_new_tokens: int,
                     sampling: Sampling, eos_id: int, generator: torch.Generator | None, kv_budget_gib: float = 0.0,
                     forks: Forks | None = None) -> list[Sequence]:
    """Each prompt sampled once (and forked into trees with `forks`) in eval mode, each row keyed from one draw
    of `generator`; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        keys = row_keys(generator, len(prompt_ids), next(model.parameters()).device)
        return backend_for(model, kv_budget_gib).sample(prompt_ids, keys, max_new_tokens, sampling, eos_id, forks)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None, kv_budget_gib: float = 0.0) -> Generation:
    """Complete each prompt once; repeat a prompt in `prompts` to sample it several times."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
                  for p in prompts]
    sequences = sample_sequences(model, prompt_ids, max_new_tokens=max_new_tokens,
                                 sampling=Sampling(temperature, top_p, greedy), eos_id=tokenizer.eos_token_id,
                                 generator=generator, kv_budget_gib=kv_budget_gib)
    completions = [seq.token_ids for seq in sequences]
    return Generation(prompt_ids, completions, [seq.logprobs for seq in sequences],
                      [tokenizer.decode(ids, skip_special_tokens=True) for ids in completions],
                      [seq.finished for seq in sequences])
