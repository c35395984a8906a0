"""Batched KV-cached sampling on any HF causal LM, returning the behaviour log-prob of every token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


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


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens drawn from softmax(logits / T), nucleus-filtered, and their log-probs before filtering."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None) -> Generation:
    """Complete each prompt once; repeat a prompt in `prompts` to sample it several times."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
                  for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    was_training = model.training
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1] + 1
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    tokens_per_step, logps_per_step = [], []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if greedy:
            tokens = logits.argmax(-1)
            logp = F.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        else:
            tokens, logp = sample_tokens(logits, temperature, top_p, generator)
        tokens = tokens.masked_fill(finished, pad)
        tokens_per_step.append(tokens)
        logps_per_step.append(logp)
        finished |= tokens == eos
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    past_key_values=cache, use_cache=True)
        next_position = next_position + 1
    model.train(was_training)

    all_tokens = torch.stack(tokens_per_step, 1).cpu()
    all_logps = torch.stack(logps_per_step, 1).cpu()
    completions, logprobs, texts, done = [], [], [], []
    for row in range(len(prompt_ids)):
        seq = all_tokens[row].tolist()
        stop = seq.index(eos) + 1 if eos in seq else len(seq)
        completions.append(seq[:stop])
        logprobs.append(all_logps[row, :stop].clone())
        texts.append(tokenizer.decode(seq[:stop], skip_special_tokens=True))
        done.append(eos in seq)
    return Generation(prompt_ids, completions, logprobs, texts, done)
