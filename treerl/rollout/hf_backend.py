"""The transformers backend: sampling through the model's own forward and its DynamicCache, for
every model the lean forward does not cover, and the reference the lean backend is tested against.

It decodes level by level: all prompt sequences to the end, then the forks of each level, each fork
copying its prefix's KV cache from the batch that sampled it (no prefix is encoded twice, but each
fork holds its own copy)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from treerl.models.lora import underlying
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling, pick


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and attention mask, each sequence right-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def cache_argument(model: PreTrainedModel) -> str:
    """The name of the forward's KV-cache argument: 'cache' in newer transformers, 'past_key_values'
    before."""
    model_class = type(
        underlying(getattr(model, "module", model))
    )  # DDP's and peft's forwards take **kwargs
    # mypy: a class is not Hashable (mypy#11470)
    return cache_argument_of(model_class)  # type: ignore[arg-type]


@functools.cache
def cache_argument_of(model_class: type[torch.nn.Module]) -> str:
    return (
        "cache"
        if "cache" in inspect.signature(model_class.forward).parameters
        else "past_key_values"
    )


@dataclass
class Batch:
    """Sequences mid-generation: their KV cache and attention mask, both `width` wide, the first
    `prompt_width` columns the left-padded prompts, the rest the tokens generated so far
    (`generated` counts inherited ones)."""

    cache: DynamicCache
    mask: torch.Tensor
    prompt_lengths: torch.Tensor
    prompt_width: int
    generated: int
    logits: torch.Tensor
    keys: torch.Tensor
    sequences: list[int]
    """The call's sequence each row samples."""


class TransformersBackend:
    def __init__(self, model: PreTrainedModel):
        self.model = model

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Next-token logits after ids [B, T], appended to the cache."""
        return (
            self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument(self.model): cache},
            )
            .logits[:, -1]
            .float()
        )

    def prefill(self, prompts: list[list[int]], keys: torch.Tensor, pad_id: int) -> Batch:
        """The prompts encoded, a prompt repeated in the call once, its cache copied to each of its
        rows."""
        device = keys.device
        distinct: dict[tuple[int, ...], int] = {}
        index = torch.tensor(
            [distinct.setdefault(tuple(p), len(distinct)) for p in prompts], device=device
        )
        ids, mask = left_pad([list(p) for p in distinct], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache()
        logits = self.forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys.index_select(0, index), layer.values.index_select(0, index))
                for layer in cache.layers
            ]
        )
        mask = mask.index_select(0, index)
        return Batch(
            cache,
            mask,
            mask.sum(-1),
            ids.shape[1],
            0,
            logits.index_select(0, index),
            keys,
            list(range(len(prompts))),
        )

    def feed(self, batch: Batch, tokens: torch.Tensor) -> None:
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        positions = batch.prompt_lengths + batch.generated
        batch.logits = self.forward(tokens[:, None], batch.mask, positions[:, None], batch.cache)
        batch.generated += 1

    def decode(
        self, batch: Batch, steps: int, sampling: Sampling, eos_id: int
    ) -> list[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
        """Up to `steps` tokens per row (every row is fed until the last one stops), their log-probs
        and (with sampling.entropy) their draws' entropies."""
        tokens_out, logps_out, entropies_out = [], [], []
        finished = torch.zeros(len(batch.sequences), dtype=torch.bool, device=batch.keys.device)
        for step in range(steps):
            tokens, logps, entropies = pick(batch.logits, batch.keys, batch.generated, sampling)
            tokens_out.append(torch.where(finished, eos_id, tokens))
            logps_out.append(logps)
            if entropies is not None:
                entropies_out.append(entropies)
            finished |= tokens == eos_id
            if finished.all() or step == steps - 1:
                break
            self.feed(batch, tokens)
        ids, logps = torch.stack(tokens_out, 1).cpu(), torch.stack(logps_out, 1).float().cpu()
        entropies = torch.stack(entropies_out, 1).float().cpu() if entropies_out else None
        cut = [row.index(eos_id) + 1 if eos_id in row else len(row) for row in ids.tolist()]
        return [
            (row[:n], logps[r, :n], None if entropies is None else entropies[r, :n])
            for r, (row, n) in enumerate(zip(ids.tolist(), cut))
        ]

    def fork(
        self,
        source: Batch,
        rows: list[int],
        keys: torch.Tensor,
        prefixes: list[list[int]],
        sequences: list[int],
    ) -> Batch:
        """Rows of `source` continued after their first len(prefix) generated tokens (all equal):
        their cache up to the prefix's last token, which is fed again to give the next logits."""
        generated = len(prefixes[0])
        width = source.prompt_width + generated - 1
        index = torch.tensor(rows, device=source.keys.device)
        cache = DynamicCache(
            ddp_cache_data=[
                (
                    layer.keys[:, :, :width].index_select(0, index),
                    layer.values[:, :, :width].index_select(0, index),
                )
                for layer in source.cache.layers
            ]
        )
        batch = Batch(
            cache,
            source.mask[:, :width].index_select(0, index),
            source.prompt_lengths.index_select(0, index),
            source.prompt_width,
            generated - 1,
            source.logits,
            keys,
            sequences,
        )
        self.feed(batch, torch.tensor([prefix[-1] for prefix in prefixes], device=index.device))
        return batch

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        keys: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        eos_id: int,
        forks: Forks | None = None,
    ) -> list[Sequence]:
        batch = self.prefill(prompts, keys, eos_id)
        batches = [batch]
        sequences: list[Sequence] = []
        paths: list[list[int]] = []
        """Every generated token of each sequence, inherited ones included."""
        for prompt, (tokens, logps, entropies) in enumerate(
            self.decode(batch, max_new_tokens, sampling, eos_id)
        ):
            sequences.append(
                Sequence(
                    prompt, None, 0, 0, tokens, logps, tokens[-1] == eos_id, entropies=entropies
                )
            )
            paths.append(tokens)
        where = {seq: (0, row) for row, seq in enumerate(batch.sequences)}
        """The batch and row that sampled each sequence."""
        for level in range(1, forks.depth if forks and forks.branching > 1 else 0):
            assert forks is not None
            cut = level * forks.step_tokens
            alive = [
                s for s, seq in enumerate(sequences) if seq.start < cut < len(paths[s])
            ]  # went on after cut
            for b in sorted(
                {where[s][0] for s in alive}
            ):  # the forks of one source batch make one new batch
                sources = [
                    (s, child)
                    for s in alive
                    if where[s][0] == b
                    for child in range(1, forks.branching)
                ]
                mine = []
                for s, child in sources:
                    sequences.append(
                        Sequence(sequences[s].prompt, s, cut, child, [], torch.zeros(0), False)
                    )
                    paths.append(paths[s][:cut])
                    mine.append(len(sequences) - 1)
                rows = [where[s][1] for s, _ in sources]
                keys = torch.stack(
                    [
                        forks.child_key(batches[b].keys[row], level, child)
                        for row, (_, child) in zip(rows, sources)
                    ]
                )
                forked = self.fork(batches[b], rows, keys, [paths[n] for n in mine], mine)
                batches.append(forked)
                decoded = self.decode(forked, max_new_tokens - cut, sampling, eos_id)
                for row, (n, (tokens, logps, entropies)) in enumerate(zip(mine, decoded)):
                    where[n] = (len(batches) - 1, row)
                    sequences[n] = Sequence(
                        sequences[n].prompt,
                        sequences[n].parent,
                        cut,
                        sequences[n].child,
                        tokens,
                        logps,
                        tokens[-1] == eos_id,
                        entropies=entropies,
                    )
                    paths[n] = paths[n] + tokens
        return sequences
