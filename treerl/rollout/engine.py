"""Batched KV-cached sampling on any HF causal LM, returning the behaviour log-prob of every token. Llama-family
models run through the lean forward of `lean.py` (on a GPU, each decode step replayed as a CUDA graph), others
through their transformers forward.

Randomness is per sequence: each row carries a 64-bit key, and the token it samples at position t is drawn by
inverse CDF from a uniform that hashes (key, t). A sequence's samples therefore depend on the seed of the call,
its row and the model, never on which other sequences share its batch: finished rows can leave the batch (the
lean forward compacts it on the CPU) and the samples stay the same.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from treerl.models.lora import underlying
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
    model_class = type(underlying(getattr(model, "module", model)))   # DDP's and peft's forwards take **kwargs
    return cache_argument_of(model_class)  # type: ignore[arg-type]  # mypy: a class is not Hashable (mypy#11470)


@functools.cache
def cache_argument_of(model_class: type[torch.nn.Module]) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


GOLDEN, MIX_1, MIX_2 = -7046029254386353131, -4658895280553007687, -7723592293110705685
"""SplitMix64's constants (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB) as signed 64-bit ints."""


def _shift(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (arithmetic wraps): a well-spread hash of each value."""
    z = z + GOLDEN
    z = (z ^ _shift(z, 30)) * MIX_1
    z = (z ^ _shift(z, 27)) * MIX_2
    return z ^ _shift(z, 31)


def row_keys(generator: torch.Generator | None, rows: int, device: torch.device | str) -> torch.Tensor:
    """A key per row: one draw from `generator` (the call's seed) hashed with the row's index."""
    base = 0 if generator is None else int(torch.randint(-2**62, 2**62, (), generator=generator,
                                                         device=generator.device))
    return mix(torch.arange(rows, device=device) * GOLDEN + base)


def child_keys(keys: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
    """The key of a sequence's `child`-th continuation (the sequence itself continues as child 0)."""
    return mix(keys ^ mix(child))


def uniforms(keys: torch.Tensor, position: int) -> torch.Tensor:
    """A uniform in [0, 1) per row from its key and the position of the token it samples."""
    return _shift(mix(keys ^ mix(torch.full_like(keys, position))), 11).double() * 2.0**-53


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens drawn from softmax(logits / T), nucleus-filtered, by inverse CDF at the uniforms `u`, and their
    log-probs before filtering."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(u.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)   # the first token whose cdf passes u
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
    """Next-token logits of each active row; None only in `fork`, before its first feed."""
    lean: LeanDecoder | None
    keys: torch.Tensor
    """Each row's random key (see `uniforms`)."""
    order: torch.Tensor
    """The row each position holds: decoding keeps the unfinished rows first (`compact`); rows are permuted, never
    dropped, so that a finished row's prefix can still be forked."""
    active: int = -1
    """The positions [0, active) still decoding; -1: all."""

    def __post_init__(self) -> None:
        if self.active < 0:
            self.active = self.mask.shape[0]

    def positions_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Where the given rows are now."""
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(len(self.order), device=self.order.device)
        return inverse[rows]

    @property
    def generated(self) -> int:
        return self.mask.shape[1] - self.prompt_width

    def cached(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, [rows, kv heads, columns, head dim]."""
        if isinstance(self.cache, KVCache):   # when `lean` runs the model
            return self.cache.layers[layer]
        return self.cache.layers[layer].keys, self.cache.layers[layer].values


def prefill(model: PreTrainedModel, prompt_ids: list[list[int]], pad_id: int, room: int = 0,
            keys: torch.Tensor | None = None) -> DecodeState:
    """Encode the prompts; a prompt repeated in the batch (n samples of it) is encoded once and its KV cache
    copied to each of its rows. A lean cache gets room for `room` tokens to come. `keys`: each row's random key
    (default: the row's index hashed)."""
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
    rows = torch.arange(len(prompt_ids), device=device)
    return DecodeState(cache, mask, mask.sum(-1), ids.shape[1], logits.float().index_select(0, index), lean,
                       row_keys(None, len(prompt_ids), device) if keys is None else keys.to(device), rows)


def feed(model: PreTrainedModel, state: DecodeState, tokens: torch.Tensor,
         graphed: GraphedStep | None = None) -> None:
    """Append one token per active row to the state and compute their next logits, through `graphed` where
    given."""
    state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
    positions = state.prompt_lengths + state.generated - 1
    if graphed:
        logits = graphed(tokens, positions)
    elif state.lean:
        assert isinstance(state.cache, KVCache)
        state.cache.reserve(1)
        n = state.active
        cache = KVCache([(keys[:n], values[:n]) for keys, values in state.cache.layers], state.cache.width)
        logits = state.lean.forward(tokens[:n, None], positions[:n, None], cache, state.mask[:n].bool()[:, None, None])
        state.cache.width = cache.width
    else:
        logits = model(input_ids=tokens[:, None], attention_mask=state.mask, position_ids=positions[:, None],
                       use_cache=True, **{cache_argument(model): state.cache}).logits[:, -1]
    state.logits = logits.float()


COMPACT_SHARE = 8
"""Decoding compacts the batch once at least 1/COMPACT_SHARE of its active rows have finished (0: never)."""


def compact(state: DecodeState, finished: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Move the active rows that finished behind the ones still decoding, swapping only the rows that must move
    (their KV cache rows, mask, lengths, keys, logits and order, and `tokens`, one per active row), and shrink
    `active`; returns the tokens of the rows still active."""
    assert isinstance(state.cache, KVCache) and state.logits is not None
    keep = int((~finished).sum())
    holes = torch.nonzero(finished[:keep]).squeeze(-1)          # finished rows inside the new active block
    movers = torch.nonzero(~finished[keep:]).squeeze(-1) + keep  # unfinished rows behind it
    if len(holes):
        swap_from, swap_to = torch.cat([holes, movers]), torch.cat([movers, holes])
        for keys, values in state.cache.layers:
            for buffer in (keys, values):
                buffer.index_copy_(0, swap_to, buffer.index_select(0, swap_from))
        for tensor in (state.mask, state.prompt_lengths, state.keys, state.order, state.logits, tokens):
            tensor.index_copy_(0, swap_to, tensor.index_select(0, swap_from))
    state.active = keep
    state.logits = state.logits[:keep]
    return tokens[:keep]


def decode(model: PreTrainedModel, state: DecodeState, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to max_new_tokens tokens per row, [B, T] in the rows' order with pad after EOS, and their log-probs;
    advances the state. Rows that finish leave the batch (lean forward, not on a CUDA graph): later steps feed
    only the rows still decoding."""
    rows, device = state.mask.shape[0], state.mask.device
    out_tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logps = torch.zeros((rows, max_new_tokens), device=device)
    finished = torch.zeros(state.active, dtype=torch.bool, device=device)
    graphed = None
    if state.lean:
        assert isinstance(state.cache, KVCache)
        state.cache.reserve(max_new_tokens)
        if state.mask.is_cuda and max_new_tokens > 1:
            graphed = GraphedStep(state.lean, state.cache, state.mask)
    steps = 0
    for step in range(max_new_tokens):
        assert state.logits is not None
        if greedy:
            tokens = state.logits.argmax(-1)
            logp = F.log_softmax(state.logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        else:
            tokens, logp = sample_tokens(state.logits, temperature, top_p,
                                         uniforms(state.keys[:state.active], state.generated))
        tokens = tokens.masked_fill(finished, pad_id)
        where = state.order[:state.active]
        out_tokens[where, step], out_logps[where, step] = tokens, logp.float()
        steps = step + 1
        finished |= tokens == eos_id
        if finished.all():
            break
        if state.lean and not graphed and int(finished.sum()) * COMPACT_SHARE >= state.active:
            tokens = compact(state, finished, tokens)
            finished = torch.zeros(state.active, dtype=torch.bool, device=device)
        feed(model, state, tokens, graphed)
    return out_tokens[:, :steps], out_logps[:, :steps]


def fork(model: PreTrainedModel, states: list[DecodeState], picks: list[tuple[int, int, list[int]]],
         generated: int, room: int = 0) -> DecodeState:
    """A new state continuing rows of earlier states after their first `generated` tokens, without re-encoding
    their prefixes: picks are (state index, row, tokens generated so far), one per new row. The states must
    share the prompt width and have fed at least generated - 1 tokens; the last prefix token is fed again.
    A lean cache gets room for `room` tokens after it."""
    width = states[0].prompt_width + generated - 1
    device = states[0].mask.device
    runs = [(states[s], states[s].positions_of(torch.tensor([row for _, row, _ in run], device=device)))
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
    children: list[int] = []
    counts: dict[tuple[int, int], int] = {}
    for s, row, _ in picks:   # the n-th continuation of a row is its child n (the row itself continues as 0)
        counts[(s, row)] = counts.get((s, row), 0) + 1
        children.append(counts[(s, row)])
    child = torch.tensor(children, device=device)
    state = DecodeState(cache, picked(lambda source: source.mask[:, :width]),
                        picked(lambda source: source.prompt_lengths), states[0].prompt_width, logits=None, lean=lean,
                        keys=child_keys(picked(lambda source: source.keys), child),
                        order=torch.arange(len(picks), device=device))
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
    state = prefill(model, prompt_ids, pad, room=max_new_tokens,
                    keys=row_keys(generator, len(prompt_ids), next(model.parameters()).device))
    tokens, logps = decode(model, state, max_new_tokens, eos, pad, temperature, top_p, greedy)
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
