"""The one interface every sampler calls: a backend samples sequences from prompts, forking
continuations on the way. Three implement it: the lean forward over a paged KV cache
(`lean_backend.py`, Llama-family models), the transformers forward (`hf_backend.py`, every model)
and vLLM (`vllm_backend.py`, models at real size); `engine.backend_for` picks one (rollout.backend).

Forks follow TreeRPO's sampling: with `Forks(branching, depth, step_tokens)`, every sequence that
has generated l x step_tokens tokens (0 < l < depth, counting the tokens it inherited) without an
EOS gets branching - 1 continuations from there; each is a new sequence that inherits that prefix
and samples the rest of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from treerl.rollout.draws import Sampling, child_keys


@dataclass(frozen=True)
class Forks:
    branching: int
    depth: int
    step_tokens: int

    def child_key(self, key: torch.Tensor, level: int, child: int) -> torch.Tensor:
        """The key of continuation `child` (1 .. branching - 1) forked at `level`."""
        return child_keys(key, level * self.branching + child)


@dataclass
class Sequence:
    """One sampled sequence: the first ones continue the prompts, in order; forks follow."""

    prompt: int
    """Index of its prompt in the call."""
    parent: int | None
    """The sequence it continues (None: it starts at its prompt)."""
    start: int
    """Tokens inherited from the parent: it continues the parent's first `start` generated
    tokens."""
    child: int
    """Its number among the parent's continuations at `start` (1 .. branching - 1; 0 for a prompt's
    sequence)."""
    token_ids: list[int]
    """Its own sampled tokens, ending with EOS when it stopped."""
    logprobs: torch.Tensor
    """log pi(token) under softmax(logits / temperature) over the whole vocabulary, one per token,
    also with top_p < 1: the update's new log-probs are of that distribution, so its ratio compares
    like with like. vLLM's alone are of the renormalised top-p nucleus (what it reports); the update
    then takes its old log-probs from the trainer (rollout.vllm.old_logprobs=sampler with top_p < 1
    is refused)."""
    finished: bool
    """It stopped at EOS (False: it ran out of tokens)."""
    cached_tokens: int = 0
    """vLLM: the tokens of its prompt and inherited prefix that vLLM's prefix cache served (the
    other backends share prefixes by construction and leave 0)."""
    cacheable_tokens: int = 0
    """vLLM: those of the tokens above that fill whole KV blocks before the last one, which is all
    the cache can serve."""
    entropies: torch.Tensor | None = None
    """With Sampling.entropy (lean and transformers backends): the entropy in nats of the
    distribution each token was drawn from, one per token (softmax(logits / temperature), with
    top_p < 1 its nucleus renormalised)."""


class Backend(Protocol):
    def sample(
        self,
        prompts: list[list[int]],
        keys: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        eos_id: int,
        forks: Forks | None = None,
    ) -> list[Sequence]:
        """One sequence per prompt (repeat a prompt to sample it several times), each with its key,
        up to max_new_tokens tokens from its prompt, then the forks, each after the sequence it
        continues."""
        ...
