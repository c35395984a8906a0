"""Batched KV-cached sampling on any HF causal LM, returning the behaviour log-prob of every token. Llama-family
models run through the lean forward of `lean.py` (on a GPU, each decode step replayed as a CUDA graph), others
through their transformers forward."""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from treerl.rollout.lean import GraphedStep, KVCache, LeanDecoder, lean_decoder


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


def context_length(model: PreTrainedModel) -> int | None:
    """The most positions the model was built for (max_position_embeddings), or None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def cache_argument(model: PreTrainedModel) -> str:
    """The name of the forward's KV-cache argument: 'cache' in newer transformers, 'past_key_values' before."""
    model_class = type(getattr(model, "module", model))   # a DDP wrapper's forward takes **kwargs
    return cache_argument_of(model_class)  # type: ignore[arg-type]  # mypy: a class is not Hashable (mypy#11470)


@functools.cache
def cache_argument_of(model_class: type[torch.nn.Module]) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


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


@dataclass
class DecodeState:
    """A batch of sequences mid-generation: its KV cache and attention mask, both `width` wide, where the first
    `prompt_width` columns are the left-padded prompts and the rest the `generated` tokens fed so far."""
    cache: DynamicCache | KVCache
    """A KVCache when `lean` runs the model, else the transformers cache."""
    mask: torch.Tensor
    prompt_lengths: torch.Tensor
    prompt_width: int
    logits: torch.Tensor | None
    """Next-token logits of each row; None only in `fork`, before its first feed."""
    lean: LeanDecoder | None

    @property
    def generated(self) -> int:
        return self.mask.shape[1] - self.prompt_width

    def cached(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, [rows, kv heads, columns, head dim]."""
        if isinstance(self.cache, KVCache):   # when `lean` runs the model
            return self.cache.layers[layer]
        return self.cache.layers[layer].keys, self.cache.layers[layer].values


def prefill(model: PreTrainedModel, prompt_ids: list[list[int]], pad_id: int, room: int = 0) -> DecodeState:
    """Encode the prompts; a prompt repeated in the batch (n samples of it) is encoded once and its KV cache
    copied to each of its rows. A lean cache gets room for `room` tokens to come."""
    device = next(model.parameters()).device
    distinct: dict[tuple[int, ...], int] = {}
    index = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids], device=device)
    ids, mask = left_pad([list(p) for p in distinct], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lean = lean_decoder(model)
    if lean:
        cache = KVCache.empty(lean, ids.shape[0], ids.shape[1], like=lean.embed)
        width = ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # padding positions attend to themselves, so that no attention row is empty (NaN on some kernels)
        attend = causal & mask.bool()[:, None, :] | torch.eye(width, dtype=torch.bool, device=device)
        logits = lean.forward(ids, positions, cache, attend[:, None])
        cache = KVCache.gather([(cache, index)], cache.width, room)
    else:
        cache = DynamicCache()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_argument(model): cache}).logits[:, -1]
        cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                             for layer in cache.layers])
    mask = mask.index_select(0, index)
    return DecodeState(cache, mask, mask.sum(-1), ids.shape[1], logits.float().index_select(0, index), lean)


def feed(model: PreTrainedModel, state: DecodeState, tokens: torch.Tensor,
         graphed: GraphedStep | None = None) -> None:
    """Append one token per row to the state and compute the next logits, through `graphed` where given."""
    state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
    positions = state.prompt_lengths + state.generated - 1
    if graphed:
        logits = graphed(tokens, positions)
    elif state.lean:
        state.cache.reserve(1)
        logits = state.lean.forward(tokens[:, None], positions[:, None], state.cache,
                                    state.mask.bool()[:, None, None])
    else:
        logits = model(input_ids=tokens[:, None], attention_mask=state.mask, position_ids=positions[:, None],
                       use_cache=True, **{cache_argument(model): state.cache}).logits[:, -1]
    state.logits = logits.float()


def decode(model: PreTrainedModel, state: DecodeState, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to max_new_tokens tokens per row, [B, T] with pad after EOS, and their log-probs; advances the state."""
    finished = torch.zeros(state.mask.shape[0], dtype=torch.bool, device=state.mask.device)
    graphed = None
    if state.lean:
        state.cache.reserve(max_new_tokens)
        if state.mask.is_cuda and max_new_tokens > 1:
            graphed = GraphedStep(state.lean, state.cache, state.mask)
    tokens_per_step, logps_per_step = [], []
    assert state.logits is not None
    for _ in range(max_new_tokens):
        if greedy:
            tokens = state.logits.argmax(-1)
            logp = F.log_softmax(state.logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        else:
            tokens, logp = sample_tokens(state.logits, temperature, top_p, generator)
        tokens = tokens.masked_fill(finished, pad_id)
        tokens_per_step.append(tokens)
        logps_per_step.append(logp)
        finished |= tokens == eos_id
        if finished.all():
            break
        feed(model, state, tokens, graphed)
    return torch.stack(tokens_per_step, 1), torch.stack(logps_per_step, 1)


def fork(model: PreTrainedModel, states: list[DecodeState], picks: list[tuple[int, int, list[int]]],
         generated: int, room: int = 0) -> DecodeState:
    """A new state continuing rows of earlier states after their first `generated` tokens, without re-encoding
    their prefixes: picks are (state index, row, tokens generated so far), one per new row. The states must
    share the prompt width and have fed at least generated - 1 tokens; the last prefix token is fed again.
    A lean cache gets room for `room` tokens after it."""
    width = states[0].prompt_width + generated - 1
    device = states[0].mask.device
    runs = [(states[s], torch.tensor([row for _, row, _ in run], device=device))
            for s, run in itertools.groupby(picks, key=lambda pick: pick[0])]   # consecutive picks of one state

    def picked(per_state: Callable[[DecodeState], torch.Tensor]) -> torch.Tensor:
        """The picked rows of a tensor of each state, in the order of picks."""
        return torch.cat([per_state(source).index_select(0, rows) for source, rows in runs])

    def picked_cached(layer: int, kind: int) -> torch.Tensor:
        """The picked rows of one layer's keys (kind 0) or values (kind 1), their first `width` columns."""
        return picked(lambda source: source.cached(layer)[kind][:, :, :width])

    lean = states[0].lean
    if lean:
        cache = KVCache.gather([(source.cache, rows) for source, rows in runs], width, 1 + room)
    else:
        cache = DynamicCache(ddp_cache_data=[(picked_cached(layer, 0), picked_cached(layer, 1))
                                             for layer in range(len(states[0].cache.layers))])
    state = DecodeState(cache, picked(lambda source: source.mask[:, :width]),
                        picked(lambda source: source.prompt_lengths), states[0].prompt_width, logits=None, lean=lean)
    last = torch.tensor([tokens[generated - 1] for _, _, tokens in picks], device=device)
    feed(model, state, last)
    return state


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str] | list[list[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             generator: torch.Generator | None = None) -> Generation:
    """Complete each prompt once; repeat a prompt in `prompts` to sample it several times."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
                  for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    state = prefill(model, prompt_ids, pad, room=max_new_tokens)
    tokens, logps = decode(model, state, max_new_tokens, eos, pad, temperature, top_p, greedy, generator)
    model.train(was_training)
    return package(tokenizer, prompt_ids, tokens.cpu(), logps.cpu())


def package(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[list[int]], tokens: torch.Tensor,
            logps: torch.Tensor) -> Generation:
    """A Generation from decoded [B, T] tokens: each completion cut after its EOS."""
    eos = tokenizer.eos_token_id
    completions, logprobs, texts, done = [], [], [], []
    for row in range(len(prompt_ids)):
        seq = tokens[row].tolist()
        stop = seq.index(eos) + 1 if eos in seq else len(seq)
        completions.append(seq[:stop])
        logprobs.append(logps[row, :stop].clone())
        texts.append(tokenizer.decode(seq[:stop], skip_special_tokens=True))
        done.append(eos in seq)
    return Generation(prompt_ids, completions, logprobs, texts, done)
