"""Held-out evaluation: greedy accuracy per level, and avg@k / unbiased pass@k from k samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treerl.config import EvalConfig, RolloutConfig
from treerl.errors import warn
from treerl.parallel import Parallel
from treerl.rollout.engine import context_length, generate
from treerl.rundir import write_jsonl
from treerl.tasks.base import Grade, Problem, Task
from treerl.tasks.loaders import ALL_LEVELS


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def k_values(samples: int) -> list[int]:
    """1, 2, 4, ... up to and including `samples`."""
    ks = [k for k in (2**i for i in range(samples.bit_length())) if k <= samples]
    return sorted(set(ks + [samples]))


def eval_set(task: Task, cfg: EvalConfig) -> list[Problem]:
    """The held-out problems `evaluate` runs on: cfg.problems of each level in cfg.levels (default:
    all levels), each problem once however many of those levels hold it (a level-3 problem is also
    one of `all`). As multisets: a problem k times in one level's list and j times in another's is
    evaluated max(k, j) times."""
    chosen: list[Problem] = []
    taken: Counter[tuple[str, str]] = Counter()
    for level in cfg.levels or task.levels:
        listed: Counter[tuple[str, str]] = Counter()
        for problem in task.eval_problems(level, cfg.problems):
            key = (problem.level, problem.question)
            listed[key] += 1
            if listed[key] > taken[key]:
                chosen.append(problem)
                taken[key] += 1
    return chosen


def eval_work(task: Task, cfg: EvalConfig) -> int:
    """Number of generations `evaluate` will run, for a progress bar."""
    return len(eval_set(task, cfg)) * (1 + cfg.samples)


@dataclass(frozen=True)
class Answer:
    """A completion of evaluation, graded."""

    text: str
    correct: bool
    reward: float
    length: int
    """Tokens generated."""
    too_long: bool
    """The prompt left no room to generate: not generated, counted wrong."""


def completion_rows(
    problems: list[Problem], greedy: list[Answer], sampled: list[Answer], samples: int
) -> list[dict[str, Any]]:
    """The lines of eval.save_completions: for each problem its greedy answer (`sample` null), then
    its eval.samples sampled answers (`sample` 0, 1, ...; `sampled` holds them problem by problem),
    each with the problem and its grade."""
    rows = []
    for i, problem in enumerate(problems):
        mine = [(None, greedy[i])] + [(j, sampled[i * samples + j]) for j in range(samples)]
        rows += [
            {
                "id": problem.id,
                "level": problem.level,
                "question": problem.question,
                "reference": problem.reference,
                "sample": sample,
                "completion": answer.text,
                "correct": answer.correct,
                "reward": answer.reward,
                "tokens": answer.length,
                "too_long": answer.too_long,
            }
            for sample, answer in mine
        ]
    return rows


def _grade(
    model,
    tokenizer,
    task: Task,
    problems: list[Problem],
    cfg: EvalConfig,
    greedy: bool,
    generator: torch.Generator | None,
    advance: Callable[[int], None],
    rollout: RolloutConfig | None,
) -> list[Answer]:
    """Each problem's answer, graded. A prompt that leaves no room for eval.max_new_tokens in the
    model's context is not generated: it counts as wrong, with no text, length 0 and reward 0."""
    limit = context_length(model)
    answers: list[Answer] = []
    for start in range(0, len(problems), cfg.batch_size):
        chunk = problems[start : start + cfg.batch_size]
        ids = [
            tokenizer(task.prompt(p, tokenizer), add_special_tokens=False)["input_ids"]
            for p in chunk
        ]
        fits = [limit is None or len(prompt) + cfg.max_new_tokens <= limit for prompt in ids]
        gen = (
            generate(
                model,
                tokenizer,
                [prompt for prompt, ok in zip(ids, fits) if ok],
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                greedy=greedy,
                generator=generator,
                rollout=rollout,
            )
            if any(fits)
            else None
        )
        done = iter(zip(gen.texts, gen.completion_ids) if gen else [])
        for problem, ok in zip(chunk, fits):
            text, completion = next(done) if ok else ("", [])
            grade = task.grade(text, problem.reference) if ok else Grade(False, 0.0)
            answers.append(Answer(text, grade.correct, grade.reward, len(completion), not ok))
        advance(len(chunk))
    return answers


def groups(problems: list[Problem], overall: bool) -> dict[str, list[int]]:
    """Row indices per level, per subject ('subject:<name>') when rows have one, and with
    `overall` all of them."""
    out: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        out.setdefault(p.level, []).append(i)
    if all(
        level.isdigit() for level in out
    ):  # dataset levels 1..5: in order, whatever order the rows came in
        out = dict(sorted(out.items(), key=lambda item: int(item[0])))
    for i, p in sorted(enumerate(problems), key=lambda item: item[1].subject):
        if p.subject:
            out.setdefault(f"subject:{p.subject}", []).append(i)
    if overall:
        out[ALL_LEVELS] = list(range(len(problems)))
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    cfg: EvalConfig,
    seed: int = 0,
    advance: Callable[[int], None] = lambda n: None,
    par: Parallel = Parallel(),
    rollout: RolloutConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per level (and subject): accuracy (greedy), response_length, and with
    cfg.samples = k: avg@k, pass@j, sampled through rollout.backend. Under torchrun every rank
    grades its share of the problems and every rank returns the whole result. With
    cfg.save_completions, every completion and its grade is written there (rank 0)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + par.rank)
    problems = eval_set(task, cfg)
    mine = _grade(model, tokenizer, task, par.share(problems), cfg, True, None, advance, rollout)
    greedy = par.unshare(mine)
    too_long = [answer.too_long for answer in greedy]
    if any(too_long) and par.main:
        warn(
            f"{sum(too_long)} of {len(problems)} prompts leave no room for "
            f"eval.max_new_tokens={cfg.max_new_tokens} in the model's context of "
            f"{context_length(model)} tokens: not generated, counted wrong "
            "(too_long in the results)"
        )
    hits, sampled = None, []
    if cfg.samples:
        repeated = [p for p in problems for _ in range(cfg.samples)]
        sampled = par.unshare(
            _grade(
                model, tokenizer, task, par.share(repeated), cfg, False, generator, advance, rollout
            )
        )
        hits = np.array([a.correct for a in sampled]).reshape(len(problems), cfg.samples).sum(1)
    if cfg.save_completions and par.main:
        path = Path(cfg.save_completions).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, completion_rows(problems, greedy, sampled, cfg.samples))
    results: dict[str, dict[str, float]] = {}
    for name, rows in groups(problems, overall=ALL_LEVELS in (cfg.levels or task.levels)).items():
        row = {
            "problems": len(rows),
            "accuracy": float(np.mean([greedy[i].correct for i in rows])),
            "response_length": float(np.mean([greedy[i].length for i in rows])),
        }
        if any(too_long[i] for i in rows):
            row["too_long"] = sum(too_long[i] for i in rows)
        if hits is not None:
            row[f"avg@{cfg.samples}"] = float(hits[rows].mean() / cfg.samples)
            for k in k_values(cfg.samples):
                row[f"pass@{k}"] = float(
                    np.mean([pass_at_k(cfg.samples, int(hits[i]), k) for i in rows])
                )
        results[name] = row
    return results


def eval_table(
    results: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]] | None = None,
    title: str = "evaluation",
) -> Table:
    table = Table(title=title, caption="acc: greedy accuracy %; len: mean response tokens")
    table.add_column("group", no_wrap=True)
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
            cells.append(
                f"[{'green' if delta > 0 else 'red' if delta < 0 else 'white'}]{delta:+.1f}[/]"
            )
        cells += [f"{100 * row[key]:.1f}" for key in extra]
        cells.append(f"{row['response_length']:.1f}")
        table.add_row(*cells)
    return table


def print_eval(
    results: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]] | None = None,
    title: str = "evaluation",
    console: Console | None = None,
) -> None:
    console = console or Console()
    if not console.is_terminal:  # a log file or a pipe: as wide as the table needs, not 80 columns
        console.width = max(console.width, 160)
    console.print(eval_table(results, before, title))
