"""Held-out evaluation: greedy accuracy per level, and avg@k / unbiased pass@k from k samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import EvalConfig
from treerl.rollout.engine import generate
from treerl.tasks.base import Problem, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def k_values(samples: int) -> list[int]:
    """1, 2, 4, ... up to and including `samples`."""
    ks = [k for k in (2 ** i for i in range(samples.bit_length())) if k <= samples]
    return sorted(set(ks + [samples]))


def _correct(model, tokenizer, task: Task, problems: list[Problem], cfg: EvalConfig, greedy: bool,
             generator: torch.Generator | None, advance: Callable[[int], None]) -> tuple[list[bool], list[int]]:
    correct, lengths = [], []
    for start in range(0, len(problems), cfg.batch_size):
        chunk = problems[start:start + cfg.batch_size]
        gen = generate(model, tokenizer, [p.prompt for p in chunk], max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, greedy=greedy, generator=generator)
        correct += [task.is_correct(text, p) for text, p in zip(gen.texts, chunk)]
        lengths += [len(c) for c in gen.completion_ids]
        advance(len(chunk))
    return correct, lengths


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, cfg: EvalConfig,
             seed: int = 0, advance: Callable[[int], None] = lambda n: None) -> dict[str, dict[str, float]]:
    """Metrics per level: accuracy (greedy), response_length, and with cfg.samples = k: avg@k, pass@j."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    for level in cfg.levels or task.levels:
        problems = task.eval_problems(level, cfg.problems)
        correct, lengths = _correct(model, tokenizer, task, problems, cfg, True, None, advance)
        row = {"problems": len(problems), "accuracy": float(np.mean(correct)),
               "response_length": float(np.mean(lengths))}
        if cfg.samples:
            repeated = [p for p in problems for _ in range(cfg.samples)]
            hits, _ = _correct(model, tokenizer, task, repeated, cfg, False, generator, advance)
            per_problem = np.array(hits).reshape(len(problems), cfg.samples).sum(1)
            row[f"avg@{cfg.samples}"] = float(per_problem.mean() / cfg.samples)
            for k in k_values(cfg.samples):
                row[f"pass@{k}"] = float(np.mean([pass_at_k(cfg.samples, int(c), k) for c in per_problem]))
        results[level] = row
    return results


def eval_work(task: Task, cfg: EvalConfig) -> int:
    """Number of generations `evaluate` will run, for a progress bar."""
    return len(cfg.levels or task.levels) * cfg.problems * (1 + cfg.samples)


def eval_table(results: dict[str, dict[str, float]], before: dict[str, dict[str, float]] | None = None,
               title: str = "evaluation") -> Table:
    table = Table(title=title, caption="acc: greedy accuracy %; len: mean response tokens")
    table.add_column("level", no_wrap=True)
    table.add_column("n", justify="right")
    if before is not None:
        table.add_column("before", justify="right")
    table.add_column("acc", justify="right")
    if before is not None:
        table.add_column("change", justify="right")
    extra = [key for key in next(iter(results.values())) if "@" in key]
    for key in extra:
        table.add_column(key, justify="right")
    table.add_column("len", justify="right")
    for level, row in results.items():
        cells = [level, str(int(row["problems"]))]
        if before is not None:
            cells.append(f"{100 * before[level]['accuracy']:.1f}")
        cells.append(f"{100 * row['accuracy']:.1f}")
        if before is not None:
            delta = 100 * (row["accuracy"] - before[level]["accuracy"])
            cells.append(f"[{'green' if delta > 0 else 'red' if delta < 0 else 'white'}]{delta:+.1f}[/]")
        cells += [f"{100 * row[key]:.1f}" for key in extra]
        cells.append(f"{row['response_length']:.1f}")
        table.add_row(*cells)
    return table


def print_eval(results: dict[str, dict[str, float]], before: dict[str, dict[str, float]] | None = None,
               title: str = "evaluation", console: Console | None = None) -> None:
    (console or Console()).print(eval_table(results, before, title))
