"""`treerl pretrain`: supervised warm-up of the embedded tiny model on
synthetic worked solutions."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from pydantic import Field, field_validator

from treerl.config import EvalConfig, Section, config_yaml
from treerl.eval import evaluate, print_eval
from treerl.loop.batch import completion_logprobs, make_batch
from treerl.models import use_threads
from treerl.models.tiny import build_model, build_tokenizer
from treerl.progress import progress_bar, step_done
from treerl.rundir import write_atomic
from treerl.tasks import check_levels, get_task


class PretrainConfig(Section):
    seed: int = Field(0, description="initial weights and data")
    out: str = Field("runs/pretrain", description="output directory (`--out` sets it)")
    task: str = Field(
        "arithmetic",
        description=("task whose worked solutions are learned (arithmetic or countdown)"),
    )
    template: str | None = Field(
        None,
        description=(
            "prompt template; null = the task's default (train with the same `task.template`)"
        ),
    )
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(128, ge=1, description="problems per step")
    lr: float = Field(
        2e-3, gt=0.0, description=("peak AdamW learning rate (warm-up, then cosine to 10%)")
    )
    warmup_steps: int = Field(50, ge=0, description="learning-rate warm-up")
    hidden: int = Field(
        128, ge=16, description=("Qwen2 architecture: hidden size (intermediate size 3 x hidden)")
    )
    layers: int = Field(4, ge=1, description="Qwen2 architecture: decoder layers")
    heads: int = Field(4, ge=1, description="Qwen2 architecture: attention heads")
    level_mix: dict[str, float] = Field(
        default_factory=lambda: {"trivial": 0.25, "easy": 0.65, "medium": 0.07, "hard": 0.03},
        description=(
            "share of each level in the warm-up data; the hard levels get little, RL does the rest"
        ),
    )
    eval_problems: int = Field(
        200, ge=1, description=("held-out problems per level in the closing table")
    )
    eval_max_new_tokens: int = Field(64, ge=1, description="response budget of that evaluation")
    threads: int = Field(
        0, ge=0, description="torch CPU threads; 0 = the cores this process may use (its affinity)"
    )

    @field_validator("level_mix")
    @classmethod
    def _positive(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("needs non-negative weights with a positive sum")
        return mix


CHARSET_PROBLEMS = 500
"""Problems per level read to find the characters a task's prompts and solutions use."""


def task_characters(task, levels: list[str]) -> str:
    """Every character of the task's rendered prompts and worked solutions (a fixed sample per
    level), sorted: the tokenizer must cover them all, or the warm-up trains on <unk> and a reloaded
    tokenizer drops them."""
    base = build_tokenizer()
    rng = random.Random("charset")
    seen: set[str] = set()
    for level in levels:
        for _ in range(CHARSET_PROBLEMS):
            problem = task.sample(level, rng)
            seen.update(task.prompt(problem, base) + problem.solution)
    return "".join(sorted(seen))


def pretrain(cfg: PretrainConfig) -> dict:
    use_threads(cfg.threads)
    task = get_task(cfg.task, template=cfg.template)
    check_levels(task, list(cfg.level_mix), "level_mix")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "pretrain_config.yaml", config_yaml(cfg))
    tokenizer = build_tokenizer(task_characters(task, list(cfg.level_mix)))
    model = build_model(tokenizer, cfg.hidden, cfg.layers, cfg.heads, seed=cfg.seed)
    rng = random.Random(cfg.seed)
    levels, weights = zip(*cfg.level_mix.items())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / max(1, cfg.warmup_steps))
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
        ),
    )
    eos = tokenizer.eos_token_id
    start = time.time()
    model.train()
    with progress_bar() as bar:
        job = bar.add_task("pretrain", total=cfg.steps, info="")
        for _ in range(cfg.steps):
            problems = [
                task.sample(rng.choices(levels, weights)[0], rng) for _ in range(cfg.batch_size)
            ]
            texts = [task.prompt(p, tokenizer) for p in problems]
            prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
            targets = [
                tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [eos]
                for p in problems
            ]
            batch = make_batch(prompts, targets, tokenizer.pad_token_id)
            logprobs, _ = completion_logprobs(model, batch)
            loss = -(logprobs * batch.completion_mask).sum() / batch.completion_mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step_done(bar, job, f"loss {loss.item():.4f}")
    seconds = time.time() - start
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = evaluate(
        model,
        tokenizer,
        task,
        EvalConfig(problems=cfg.eval_problems, max_new_tokens=cfg.eval_max_new_tokens),
    )
    print_eval(results, title=f"warm-up model ({seconds / 60:.1f} min of training)")
    summary = {
        "train_seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval": results,
    }
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
