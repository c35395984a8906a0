"""Per-sequence randomness: each sequence carries a 64-bit key, and the token at its t-th generated
position is drawn by inverse CDF at a uniform that hashes (key, t). A sequence's samples therefore
depend on the seed of the call, its place among the call's sequences and the model, never on which
other sequences share its batch or when they start and stop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GOLDEN, MIX_1, MIX_2 = -7046029254386353131, -4658895280553007687, -7723592293110705685
"""SplitMix64's constants (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB) as signed
64-bit ints."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    """Argmax instead of a draw (evaluation)."""
    entropy: bool = False
    """Also the entropy of each draw's distribution (tree.branch_at=entropy)."""


def _shift(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (arithmetic wraps): a well-spread hash of each
    value."""
    z = z + GOLDEN
    z = (z ^ _shift(z, 30)) * MIX_1
    z = (z ^ _shift(z, 27)) * MIX_2
    return z ^ _shift(z, 31)


def row_keys(
    generator: torch.Generator | None, rows: int, device: torch.device | str
) -> torch.Tensor:
    """A key per row: one draw from `generator` (the call's seed) hashed with the row's index."""
    base = (
        0
        if generator is None
        else int(torch.randint(-(2**62), 2**62, (), generator=generator, device=generator.device))
    )
    return mix(torch.arange(rows, device=device) * GOLDEN + base)


def child_keys(keys: torch.Tensor, child: torch.Tensor | int) -> torch.Tensor:
    """The key of a sequence's continuation number `child` (distinct numbers give independent
    keys)."""
    child = torch.as_tensor(child, device=keys.device).expand_as(keys)
    return mix(keys ^ mix(child))


def uniforms(keys: torch.Tensor, positions: torch.Tensor | int) -> torch.Tensor:
    """A uniform in [0, 1) per row from its key and the position of the token it samples."""
    positions = torch.as_tensor(positions, device=keys.device).expand_as(keys)
    return _shift(mix(keys ^ mix(positions)), 11).double() * 2.0**-53


CHUNK = 256
"""Tokens per chunk of the two-level inverse CDF."""


def first_past(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first index where the running sum `cdf` [B, N] of non-negative weights passes
    `target` [B, 1] >= 0 (held below the row's total, so that the index has weight)."""
    target = torch.minimum(target, torch.nextafter(cdf[:, -1:], torch.zeros_like(target)))
    return torch.searchsorted(cdf, target, right=True)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """[B, V] non-negative weights -> [B] the entropy in nats of the distribution w / Z they give,
    Z = sum_k w_k: H = log Z - sum_k w_k log w_k / Z (0 log 0 = 0), summed in float64."""
    total = weights.sum(-1, dtype=torch.float64)
    return total.log() - torch.xlogy(weights, weights).sum(-1, dtype=torch.float64) / total


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    u: torch.Tensor,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokens drawn from softmax(logits / T), nucleus-filtered, by inverse CDF at the uniforms `u`
    (`inverse_cdf`), their log-probs under softmax(logits / T) over the whole vocabulary, also with
    top_p < 1 (never renormalised over the nucleus: the update's new log-probs are of that
    distribution, so its ratio compares like with like; a drawn token's is never -inf), and with
    `with_entropy` the entropy of the distribution each token was drawn from (the nucleus,
    renormalised)."""
    probs = weights = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_weights, order = weights.sort(dim=-1, descending=True)
        drop = sorted_weights.cumsum(-1) - sorted_weights > top_p
        weights = torch.zeros_like(weights).scatter(
            -1, order, sorted_weights.masked_fill(drop, 0.0)
        )
    tokens = inverse_cdf(weights, u)
    logprobs = probs.gather(-1, tokens[:, None]).squeeze(-1).log()
    return tokens, logprobs, entropy(weights) if with_entropy else None


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of non-negative fp32 weights [B, V], the token k where the running sum of the weights
    passes target = u x total, u [B] in [0, 1): token k with probability w_k / sum(w) to float64's
    rounding (u, the target, the sums and the running sums are float64; fp32 sums and target, with u
    rounded to 24 bits, were 1.1e-3 off in total variation on a flat 152k-token vocabulary, and
    never drew a token below about 6e-8 late in the CDF).

    The total is the sum of the chunks' sums, CHUNK tokens a chunk (the last one padded with
    zeros). Over more than one chunk the search has two levels (`search_chunks`). Within one chunk
    it is that search's second level alone, with the same draws in half the operations: the chunk
    search would give chunk 0 with nothing before it, and a running sum adds term after term, so
    the padding changes none of its first V values."""
    rows, vocab = weights.shape
    padded = F.pad(weights, (0, -vocab % CHUNK)).view(rows, -1, CHUNK)
    chunk_sums = padded.sum(-1, dtype=torch.float64)  # [B, chunks]
    if vocab > CHUNK:
        return search_chunks(padded, chunk_sums, u)
    target = u.to(chunk_sums)[:, None] * chunk_sums
    return first_past(weights.double().cumsum(-1), target).squeeze(-1)


def search_chunks(padded: torch.Tensor, chunk_sums: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The two-level inverse CDF over weights in chunks, padded [B, chunks, CHUNK] with their sums
    chunk_sums [B, chunks] (float64): the chunk c where the running sum of the chunks' sums passes
    target = u x total, then the token within c where its running sum passes target - (sum of the
    chunks before c), clamped at 0 (rounding can take it below, which would pick the chunk's first
    token whatever its weight); only one chunk's running sum is taken per row."""
    rows = padded.shape[0]
    chunk_cdf = chunk_sums.cumsum(-1)
    target = u.to(chunk_cdf)[:, None] * chunk_cdf[:, -1:]
    chunk = first_past(chunk_cdf, target)  # [B, 1]
    before = chunk_cdf.gather(-1, chunk) - chunk_sums.gather(-1, chunk)
    within = padded.gather(1, chunk[:, :, None].expand(rows, 1, CHUNK)).squeeze(1)
    return (
        chunk * CHUNK + first_past(within.double().cumsum(-1), (target - before).clamp_min(0.0))
    ).squeeze(-1)


def pick(
    logits: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor | int,
    sampling: Sampling,
    u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each row's next token, its log-prob and (with sampling.entropy) the entropy of the
    distribution it was drawn from: the argmax (greedy: entropy 0), or a draw at the row's
    (key, position); `u`, where given, is uniforms(keys, positions) computed ahead."""
    logits = logits.float()
    if sampling.greedy:
        tokens = logits.argmax(-1)
        logprobs = F.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs, torch.zeros_like(logprobs) if sampling.entropy else None
    if u is None:
        u = uniforms(keys, positions)
    return sample_tokens(logits, sampling.temperature, sampling.top_p, u, sampling.entropy)
