"""Everything a run carries from step to step, saved and restored by one object: the policy and its
optimizer, the random streams (problems; sampling, one per rank), the curriculum's position in its
pools, the query scores and the time spent outside the steps. A checkpoint holds all of it; a resume
gives the run an uninterrupted one would have."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from treerl.config import Config
from treerl.curriculum.sampler import ProblemSampler
from treerl.curriculum.weights import QueryWeights
from treerl.loop.sharding import full_state, load_optimizer_state, unwrap, wrap_policy
from treerl.models import load_policy
from treerl.models.lora import WithoutAdapters
from treerl.parallel import Parallel
from treerl.registry import Registry
from treerl.rundir import RunDir, load_trainer_state

RANK_SEED_STRIDE = 1_000_003
"""Rank r samples with seed + r x this stride (rank 0, like a single process,
with the seed itself)."""


LR_SCHEDULES: Registry[Callable[[float], float]] = Registry("train.lr_schedule")
"""The factor of train.lr after the warm-up, as a function of the progress p in [0, 1] through the
other steps: constant, or cosine decay to 10% of train.lr."""
LR_SCHEDULES.add("constant", lambda progress: 1.0)
LR_SCHEDULES.add("cosine", lambda progress: 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_factor(step: int, cfg: Config, horizon: int | None = None) -> float:
    """Linear warm-up, then train.lr_schedule over the remaining steps of the horizon (default
    train.steps); past it, the schedule's final value."""
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, (horizon or t.steps) - t.warmup_steps)
    return LR_SCHEDULES.lookup(t.lr_schedule)(min(1.0, progress))


@dataclass
class TrainState:
    policy: torch.nn.Module
    """The model, wrapped for data parallelism (DDP, FSDP2) under torchrun."""
    reference: torch.nn.Module | None
    """The frozen starting model for the KL term (algo.kl_coef > 0), under LoRA the
    base model; not saved."""
    tokenizer: object
    optimizer: torch.optim.Optimizer
    rng: random.Random
    """Which problems are drawn: the same on every rank."""
    generator: torch.Generator
    """This rank's sampling and shuffling stream."""
    sampler: ProblemSampler
    weights: QueryWeights
    horizon: int
    """The steps the learning-rate schedule spans: train.steps as the run began (a resume that
    changes train.steps keeps it)."""
    step: int = 0
    """Steps done."""
    spent: dict[str, float] = field(
        default_factory=lambda: {"eval": 0.0, "checkpoint": 0.0, "rescore": 0.0}
    )
    """Seconds of evaluation, checkpoints and re-scoring over the whole run, resumes included."""

    @classmethod
    def start(
        cls,
        cfg: Config,
        sampler: ProblemSampler,
        weights: QueryWeights,
        checkpoint: Path | None,
        par: Parallel,
        horizon: int | None = None,
    ) -> TrainState:
        """A fresh state from cfg.model, or the one saved in `checkpoint`; the learning rate's
        schedule spans `horizon` steps (default train.steps)."""
        torch.manual_seed(cfg.seed)
        m = cfg.model
        model, tokenizer = load_policy(
            str(checkpoint) if checkpoint else m.name_or_path,
            m.dtype,
            par.device,
            m.trust_remote_code,
            m.lora,
            allow_download=m.allow_download,
        )
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if cfg.train.compile:
            model.forward = torch.compile(model.forward, dynamic=True)
        policy = wrap_policy(model, par)
        reference = None
        if (
            cfg.algo.kl_coef > 0
        ):  # a LoRA run's reference is its base model: the adapters switched off
            reference = (
                WithoutAdapters(model)
                if isinstance(model, PeftModel)
                else load_policy(
                    m.name_or_path,
                    m.dtype,
                    par.device,
                    m.trust_remote_code,
                    allow_download=m.allow_download,
                )[0].eval()
            )
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        generator = torch.Generator(device=par.device).manual_seed(
            cfg.seed + RANK_SEED_STRIDE * par.rank
        )
        state = cls(
            policy,
            reference,
            tokenizer,
            optimizer,
            random.Random(cfg.seed),
            generator,
            sampler,
            weights,
            horizon or cfg.train.steps,
        )
        if checkpoint:
            state.restore(checkpoint, cfg.seed, par)
        return state

    def restore(self, checkpoint: Path, seed: int, par: Parallel) -> None:
        saved = load_trainer_state(checkpoint)
        load_optimizer_state(self.policy, self.optimizer, saved["optimizer"])
        self.rng.setstate(saved["rng"]["problems"])
        sampling = saved["rng"]["sampling"]
        if par.rank < len(sampling):
            self.generator.set_state(sampling[par.rank])
        else:  # resumed on more processes than the run was saved with: a fresh stream for this rank
            self.generator.manual_seed(seed + RANK_SEED_STRIDE * par.rank + saved["step"])
        self.sampler.load_state_dict(saved["curriculum"]["sampler"])
        self.weights.load_state_dict(saved["curriculum"]["scores"])
        self.step = saved["step"]
        self.spent = {
            **self.spent,
            **saved.get("spent", {}),
        }  # checkpoints from before 2026-12 have none

    def set_lr(self, cfg: Config, step: int) -> float:
        """The learning rate of training step `step` (1-based):
        train.lr x lr_factor(step - 1) over the horizon."""
        lr = cfg.train.lr * lr_factor(step - 1, cfg, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def save(self, run: RunDir, keep: int, par: Parallel) -> None:
        """Collective: every rank hands its part (sharded weights, its sampling
        stream); rank 0 writes."""
        model_state, optimizer_state = full_state(self.policy, self.optimizer)
        saved = {
            "optimizer": optimizer_state,
            "spent": self.spent,
            "rng": {
                "problems": self.rng.getstate(),
                "sampling": par.gather(self.generator.get_state()),
            },
            "curriculum": {
                "sampler": self.sampler.state_dict(),
                "scores": self.weights.state_dict(),
            },
        }
        if par.main:
            run.save_checkpoint(
                self.step, unwrap(self.policy), model_state, self.tokenizer, saved, keep=keep
            )
        par.barrier()
