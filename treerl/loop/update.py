"""The learner: optimizer steps on a step's training samples, with DASH's gradient filter (samples
whose advantage is near zero skip the forward and backward passes) and the loss of algo.* (policy
loss, aggregation, optional KL to a reference model, entropy bonus), each
looked up in its registry."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch.distributed.tensor import DTensor

from treerl.algo.advantages import ESTIMATORS
from treerl.algo.loss import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Aggregation,
    KLEstimator,
    PolicyLoss,
    k3,
)
from treerl.config import Config
from treerl.loop.batch import completion_logprobs, make_batch, scatter_completion_values
from treerl.loop.sharding import gradient_sync
from treerl.parallel import Parallel
from treerl.rollout.sampling import TreeShape
from treerl.rollout.tree import TrainingSample


class NonFiniteWeights(Exception):
    """An optimizer step left a weight that is not finite (the gradient was finite: the
    step was too large)."""


def weights_finite(policy: torch.nn.Module, par: Parallel) -> bool:
    """Whether every weight is finite, on every rank (each checks its own shard under FSDP2)."""
    flags = [
        torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()
        for p in policy.parameters()
    ]
    local = bool(torch.stack(flags).all()) if flags else True  # one device sync, not one per tensor
    return not par.max([not local])[0]


def trainable(sample: TrainingSample, cfg: Config) -> bool:
    """Whether a sample goes through forward and backward: always without train.filter_tau, else
    unless |A| <= tau (a NaN advantage is kept, so that its non-finite loss is seen and
    the update skipped)."""
    return cfg.train.filter_tau is None or not abs(sample.advantage) <= cfg.train.filter_tau


@dataclass
class OwnOld:
    """For samples another engine (vLLM) sampled, whose kernels round differently from the
    trainer's: the policy's own log-probs, taken before its first optimizer step, against the
    sampler's. With `use` they become the samples' old log-probs
    (rollout.vllm.old_logprobs=trainer); either way the gap is measured."""

    use: bool
    abs_diff: float = 0.0
    kl: float = 0.0
    tokens: float = 0.0

    def compare(
        self, sampler: torch.Tensor, own: torch.Tensor, mask: torch.Tensor
    ) -> list[list[float]]:
        """Add the gap over the masked tokens of [B, T] log-probs; each row's own log-probs."""
        on = mask.bool()
        self.abs_diff += float((sampler - own).abs()[on].sum())
        self.kl += float(
            k3(sampler, own)[on].sum()
        )  # KL(sampler || trainer) on the sampler's tokens
        self.tokens += float(on.sum())
        return [row[keep].tolist() for row, keep in zip(own.float(), on)]

    def metrics(self) -> dict[str, float]:
        return {
            "sampler/logprob_abs_diff": self.abs_diff / max(self.tokens, 1.0),
            "sampler/kl": self.kl / max(self.tokens, 1.0),
        }


@torch.no_grad()
def take_own_logprobs(
    policy, samples: list[TrainingSample], rows: list[int], cfg: Config, own: OwnOld
) -> None:
    """Measure (and with own.use, replace) the old log-probs of samples[rows] by the policy's
    forward, without gradients, train.micro_batch sequences a pass."""
    device = next(policy.parameters()).device
    for start in range(0, len(rows), cfg.train.micro_batch):
        part = rows[start : start + cfg.train.micro_batch]
        batch = make_batch(
            [samples[i].context_ids for i in part], [samples[i].segment_ids for i in part]
        ).to(device)
        logprobs, _ = completion_logprobs(
            policy, batch, cfg.rollout.temperature, chunk=cfg.train.logit_chunk
        )
        sampler = scatter_completion_values(
            [torch.tensor(samples[i].old_logprobs) for i in part], batch
        )
        for i, values in zip(part, own.compare(sampler, logprobs.float(), batch.completion_mask)):
            if own.use:
                samples[i] = replace(samples[i], old_logprobs=values)


STAND_IN = TrainingSample(
    path=(), context_ids=[0], segment_ids=[0], old_logprobs=[0.0], advantage=0.0, weight=0.0
)
"""Trained with weight 0 by a rank that has fewer passes to run than another, so that every rank
joins each gradient reduction."""


@dataclass(frozen=True)
class Objective:
    """The loss of algo.*, each part looked up in its registry once: a wrong name
    fails before training."""

    policy_loss: PolicyLoss
    aggregation: Aggregation
    kl: KLEstimator
    norm_len: int
    """seq-mean-token-sum-norm's constant length: the tokens of one node (the whole
    budget in a flat tree)."""

    @classmethod
    def from_config(cls, cfg: Config) -> Objective:
        algo = cfg.algo
        return cls(
            POLICY_LOSSES.lookup(algo.policy_loss),
            AGGREGATIONS.lookup(algo.loss_agg),
            KL_ESTIMATORS.lookup(algo.kl_estimator),
            TreeShape.for_training(cfg, ESTIMATORS.lookup(algo.name).deep).step_tokens,
        )


def update(
    policy,
    reference,
    optimizer,
    samples: list[TrainingSample],
    cfg: Config,
    objective: Objective,
    generator: torch.Generator,
    par: Parallel = Parallel(),
    own: OwnOld | None = None,
) -> dict[str, float]:
    """train.epochs passes over the buffer, each in ceil(buffer / train.mini_batch) shuffled
    mini-batches of equal size, one optimizer step each, accumulated over train.micro_batch
    sequences per pass. Filtered samples skip the forward and backward passes, but the loss keeps
    its mini-batch's denominators (all its sequences and tokens), so dropping a zero-advantage
    sample leaves the gradient unchanged. Under torchrun each rank trains its own samples; the
    denominators, the number of passes and every skip are decided over all ranks, so the update is
    the one a single process would make from all ranks' samples.

    With `own` (samples from another engine): before the first optimizer step, the first
    mini-batch's forward gives its own old log-probs (its ratio is 1, as the policy still is the
    sampler's), and with own.use a forward without gradients gives the other mini-batches' first;
    the gap to the sampler's is in the metrics."""
    t = cfg.train
    samples = list(samples)
    kept = [trainable(sample, cfg) for sample in samples]
    sums: dict[str, float] = {"loss/policy": 0.0, "entropy": 0.0, "clip_frac": 0.0, "ppo_kl": 0.0}
    if reference is not None:
        sums["kl"] = 0.0
    sums["grad_norm"] = 0.0
    optimizer_steps = skipped = 0
    policy.train()
    buffer_size, kept_size, tokens_kept = par.sum(
        [len(samples), sum(kept), sum(len(s.segment_ids) for s, keep in zip(samples, kept) if keep)]
    )
    parts = max(1, math.ceil(buffer_size / t.mini_batch))
    for epoch in range(t.epochs):
        order = torch.randperm(len(samples), generator=generator, device=generator.device).tolist()
        minibatches = [order[i::parts] for i in range(parts)]
        if own is not None and own.use and epoch == 0:
            take_own_logprobs(
                policy,
                samples,
                [i for batch in minibatches[1:] for i in batch if kept[i]],
                cfg,
                own,
            )
        for m, minibatch in enumerate(minibatches):
            rows_kept = [i for i in minibatch if kept[i]]
            seqs, tokens, trained_rows, trained_tokens = par.sum(
                [
                    len(minibatch),
                    sum(len(samples[i].segment_ids) for i in minibatch),
                    len(rows_kept),
                    sum(len(samples[i].segment_ids) for i in rows_kept),
                ]
            )
            if not trained_rows:  # nothing with signal in this mini-batch: no step
                continue
            passes = int(par.max([math.ceil(len(rows_kept) / t.micro_batch)])[0])
            optimizer.zero_grad(set_to_none=True)
            step_sums = dict.fromkeys(sums, 0.0)
            for k in range(passes):
                indices = rows_kept[k * t.micro_batch : (k + 1) * t.micro_batch]
                fresh = own if epoch == 0 and m == 0 else None
                with gradient_sync(policy, sync=k == passes - 1):
                    pass_sums, own_logprobs = train_pass(
                        policy,
                        reference,
                        [samples[i] for i in indices],
                        cfg,
                        objective,
                        (seqs, tokens, trained_tokens),
                        par.world,
                        fresh,
                    )
                for key, value in pass_sums.items():
                    step_sums[key] += value
                if fresh is not None and fresh.use:  # later epochs see them as the old log-probs
                    for i, values in zip(indices, own_logprobs):
                        samples[i] = replace(samples[i], old_logprobs=values)
            step_sums.update(zip(step_sums, par.sum(list(step_sums.values()))))
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), t.max_grad_norm)
            step_sums["grad_norm"] = float(
                norm.full_tensor() if isinstance(norm, DTensor) else norm
            )
            if not all(math.isfinite(value) for value in step_sums.values()):
                optimizer.zero_grad(
                    set_to_none=True
                )  # a non-finite loss or gradient: skip this update
                skipped += 1
                continue
            optimizer.step()
            if not weights_finite(policy, par):
                raise NonFiniteWeights(
                    f"an optimizer step at lr {optimizer.param_groups[0]['lr']:g} left weights "
                    "that are not finite"
                )
            optimizer_steps += 1
            for key, value in step_sums.items():
                sums[key] += value
    optimizer.zero_grad(
        set_to_none=True
    )  # free the gradients before the next rollout needs the memory
    learner: dict[str, float] = {
        key: value / max(1, optimizer_steps) for key, value in sums.items()
    }
    learner["train/optimizer_steps"] = optimizer_steps
    learner["train/skipped_updates"] = skipped
    learner["tokens/trained"] = int(tokens_kept)
    learner["filter/dropped_frac"] = (1.0 - kept_size / buffer_size) if buffer_size else 0.0
    return {**learner, **(own.metrics() if own is not None else {})}


def train_pass(
    policy,
    reference,
    rows: list[TrainingSample],
    cfg: Config,
    objective: Objective,
    totals: tuple[float, float, float],
    scale: float,
    own: OwnOld | None = None,
) -> tuple[dict[str, float], list[list[float]]]:
    """Forward and backward of scale x loss for these rows of a mini-batch whose totals (sequences,
    tokens, trained tokens, over every rank) normalise the loss; the metric sums of the rows. No
    rows: a stand-in pass that changes no gradient. DDP and FSDP2 average gradients over ranks, so
    scale is the world size. With `own` the forward's log-probs are compared with the rows' old ones
    (and with own.use replace them), and returned per row."""
    algo = cfg.algo
    total_seqs, total_tokens, trained_tokens = totals
    if not rows:
        rows, scale = [STAND_IN], 0.0
    device = next(policy.parameters()).device
    batch = make_batch([s.context_ids for s in rows], [s.segment_ids for s in rows]).to(device)
    mask = batch.completion_mask
    old = scatter_completion_values([torch.tensor(s.old_logprobs) for s in rows], batch)
    advantages = torch.tensor([s.advantage for s in rows], device=device)[:, None]
    weights = torch.tensor([s.weight for s in rows], device=device)[:, None]
    logprobs, entropy = completion_logprobs(
        policy,
        batch,
        cfg.rollout.temperature,
        with_entropy=True,
        chunk=cfg.train.logit_chunk,
        shared_contexts=not cfg.train.gradient_checkpointing,
    )
    assert entropy is not None
    own_logprobs: list[list[float]] = []
    if own is not None and scale:
        own_logprobs = own.compare(old, logprobs.detach().float(), mask)
        old = logprobs.detach() if own.use else old
    pg, clipped = objective.policy_loss(logprobs, old, advantages, algo)
    pg = pg * weights

    def agg(values: torch.Tensor) -> torch.Tensor:
        return objective.aggregation(values, mask, total_seqs, total_tokens, objective.norm_len)

    policy_loss = agg(pg)
    entropy_term = agg(entropy)
    loss = policy_loss - algo.entropy_coef * entropy_term if algo.entropy_coef else policy_loss
    sums = {}
    if reference is not None:
        with torch.no_grad():
            ref_logprobs, _ = completion_logprobs(
                reference, batch, cfg.rollout.temperature, chunk=cfg.train.logit_chunk
            )
        kl = agg(objective.kl(logprobs, ref_logprobs))
        loss = loss + algo.kl_coef * kl
        sums["kl"] = kl.item()
    (loss * scale).backward()
    sums["loss/policy"] = policy_loss.item()
    sums["entropy"] = entropy_term.item()
    sums["clip_frac"] = float((clipped * mask).sum()) / trained_tokens
    sums["ppo_kl"] = float(((old - logprobs.detach()) * mask).sum()) / trained_tokens
    return (sums if scale else dict.fromkeys(sums, 0.0)), own_logprobs
