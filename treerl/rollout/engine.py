"""Sampling completions: `generate` completes prompts through the backend rollout.backend names
(`backend_for`), returning the behaviour log-prob of every token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import RolloutConfig
from treerl.errors import UserError
from treerl.rollout.backend import Backend, Forks, Sequence
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.hf_backend import TransformersBackend
from treerl.rollout.lean import lean_decoder
from treerl.rollout.lean_backend import LeanBackend
from treerl.rollout.vllm_backend import INSTALL, VllmBackend, vllm_installed


@dataclass
class Generation:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Sampled tokens, ending with EOS when the sequence stopped."""
    logprobs: list[torch.Tensor]
    """log pi(token) under the sampling distribution (logits / temperature), one per completion
    token."""
    texts: list[str]
    finished: list[bool]
    """Whether each sequence stopped at EOS (False: it ran out of max_new_tokens)."""


def device_type(model: PreTrainedModel) -> str:
    return next(model.parameters()).device.type


def backend_name(model: PreTrainedModel, choice: str) -> str:
    """The backend rollout.backend names for this model. `auto`: vLLM for a model on a GPU when vLLM
    is installed, else the lean backend where its forward covers the model, else hf. On 2 CPU cores
    vLLM sampled the tiny model at 0.72x the lean backend's speed, and a 41M model at 1.17x with
    spread lengths in little memory but 0.70x in a GRPO step (bench/backends.py,
    docs/results/backends_cpu.json): on the CPU, auto keeps the lean backend. `lean` only where the
    lean forward covers the model."""
    if choice == "auto":
        if vllm_installed() and device_type(model) == "cuda":
            return "vllm"
        return "lean" if lean_decoder(model) else "hf"
    if choice == "vllm" and not vllm_installed():
        raise UserError(INSTALL)
    if choice == "lean" and lean_decoder(model) is None:
        raise UserError(
            f"rollout.backend=lean: treerl's lean forward does not cover {type(model).__name__}; "
            "use rollout.backend=hf (its transformers forward) or vllm"
        )
    return choice


def backend_for(model: PreTrainedModel, rollout: RolloutConfig | None = None) -> Backend:
    """The backend of rollout.backend for the model (default settings without `rollout`). Each reads
    the model's parameters where they are, so a backend made before an update samples from the
    updated weights; the KV budget (rollout.kv_budget_gib) bounds the lean backend's cache."""
    rollout = rollout or RolloutConfig()
    name = backend_name(model, rollout.backend)
    if name == "vllm":
        return VllmBackend(model, rollout.vllm)
    decoder = lean_decoder(model) if name == "lean" else None
    return LeanBackend(decoder, rollout.kv_budget_gib) if decoder else TransformersBackend(model)


def context_length(model: PreTrainedModel) -> int | None:
    """The most positions the model was built for (max_position_embeddings), or None when its config
    does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def sample_sequences(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int,
    generator: torch.Generator | None,
    rollout: RolloutConfig | None = None,
    forks: Forks | None = None,
    keys: torch.Tensor | None = None,
) -> list[Sequence]:
    """Each prompt sampled once (and forked into trees with `forks`) in eval mode, each row keyed
    from one draw of `generator` (or by its given key); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        if keys is None:
            keys = row_keys(generator, len(prompt_ids), next(model.parameters()).device)
        return backend_for(model, rollout).sample(
            prompt_ids, keys, max_new_tokens, sampling, eos_id, forks
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str] | list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    rollout: RolloutConfig | None = None,
) -> Generation:
    """Complete each prompt once, through rollout.backend (default settings without `rollout`);
    repeat a prompt in `prompts` to sample it several times."""
    prompt_ids = [
        tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
        for p in prompts
    ]
    sequences = sample_sequences(
        model,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        sampling=Sampling(temperature, top_p, greedy),
        eos_id=tokenizer.eos_token_id,
        generator=generator,
        rollout=rollout,
    )
    completions = [seq.token_ids for seq in sequences]
    return Generation(
        prompt_ids,
        completions,
        [seq.logprobs for seq in sequences],
        [tokenizer.decode(ids, skip_special_tokens=True) for ids in completions],
        [seq.finished for seq in sequences],
    )
