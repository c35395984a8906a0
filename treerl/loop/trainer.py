"""The RL training loop: sample problems, roll out, verify, compute advantages, update,
log, evaluate, save."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from treerl.algo.advantages import ESTIMATORS, Estimator
from treerl.algo.treerpo import prune_tau
from treerl.config import RESUMABLE, Config, OutputConfig, build, changes, resumable
from treerl.curriculum.rscore import check_depth, greedy_choices
from treerl.curriculum.sampler import ProblemSampler, task_and_sampler
from treerl.curriculum.scoring import score_queries
from treerl.curriculum.weights import QueryWeights
from treerl.errors import RunStopped, UserError, warn
from treerl.eval import eval_set, eval_work, evaluate, print_eval
from treerl.loop.collect import Rollout, collect
from treerl.loop.metrics import memory_metrics, merged, step_metrics
from treerl.loop.sharding import sampling_model, unwrap
from treerl.loop.signals import stop_signals
from treerl.loop.state import RANK_SEED_STRIDE, TrainState
from treerl.loop.timing import print_time_summary, time_summary
from treerl.loop.update import NonFiniteWeights, Objective, OwnOld, update
from treerl.models import DTYPES, resolve_device, use_threads
from treerl.parallel import Parallel
from treerl.progress import progress_bar, step_done
from treerl.rollout.engine import backend_for, backend_name
from treerl.rollout.lean_backend import LeanBackend
from treerl.rollout.sampling import TreeShape, least_kv_gib
from treerl.rundir import IDLE_STEPS, RunDir, checkpoint_step, stall_begun
from treerl.tasks import check_levels
from treerl.tasks.base import Problem, Task
from treerl.tasks.loaders import save_dataset
from treerl.tasks.prompts import preview
from treerl.trackers import Trackers
from treerl.tree_records import tree_record


def mixed_precision(cfg: Config, device: torch.device):
    """torch.autocast in model.autocast's dtype, or nothing."""
    if cfg.model.autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[cfg.model.autocast])


def train_step(
    state: TrainState,
    task: Task,
    cfg: Config,
    step: int,
    estimator: Estimator,
    objective: Objective,
    par: Parallel,
) -> tuple[Rollout, dict[str, Any]]:
    """Roll out (sample, grade, score), update, and the step's metrics."""
    t0 = time.perf_counter()
    with sampling_model(state.policy) as sampling_policy, mixed_precision(cfg, par.device):
        rollout = collect(
            sampling_policy,
            state.tokenizer,
            task,
            cfg,
            step,
            estimator,
            state.rng,
            state.generator,
            state.sampler,
            state.weights,
            par,
        )
    t1 = time.perf_counter()
    lr = state.set_lr(cfg, step)
    other_engine = backend_name(unwrap(state.policy), cfg.rollout.backend) == "vllm"
    with mixed_precision(cfg, par.device):
        learner = update(
            state.policy,
            state.reference,
            state.optimizer,
            rollout.samples,
            cfg,
            objective,
            state.generator,
            par,
            OwnOld(cfg.rollout.vllm.old_logprobs == "trainer") if other_engine else None,
        )
    state.step = step
    t2 = time.perf_counter()
    metrics = step_metrics(
        step,
        merged(rollout, par),
        learner,
        {**rollout.timings, "timing/update_s": t2 - t1, "timing/step_s": t2 - t0},
        lr,
        cfg.curriculum.levels,
    )
    metrics["throughput/rollout_tok_s"] = metrics["tokens/generated"] / max(
        metrics["timing/rollout_s"], 1e-9
    )
    metrics["throughput/train_tok_s"] = (
        metrics["tokens/trained"] * cfg.train.epochs / max(metrics["timing/update_s"], 1e-9)
    )
    metrics.update(memory_metrics(par.device, par))
    state.sampler.observe(
        step,
        {
            level: metrics[f"acc/{level}"]
            for level in cfg.curriculum.levels
            if f"acc/{level}" in metrics
        },
    )  # every rank's prompts: all ranks agree
    return rollout, metrics


def rescore(
    state: TrainState, task: Task, cfg: Config, step: int, bar: Progress, par: Parallel
) -> None:
    """Score every query of the pools again with the current policy (Re-Schedule's score updates);
    each rank scores its share, on a stream of its own so that training's
    sampling stays as it was."""
    problems = state.sampler.problems()
    job = bar.add_task(f"re-score @ step {step}", total=len(problems), info="")
    generator = torch.Generator(device=par.device).manual_seed(
        cfg.seed + step + RANK_SEED_STRIDE * par.rank
    )
    with sampling_model(state.policy) as sampling_policy, mixed_precision(cfg, par.device):
        rows = score_queries(
            sampling_policy,
            state.tokenizer,
            task,
            par.share(problems),
            cfg,
            generator,
            scored=lambda rows: bar.advance(job, len(rows) * par.world),
        )
    bar.remove_task(job)
    field = state.weights.ranking.field if state.weights.ranking else "r_score"
    state.weights.update((row["id"], row[field]) for part in par.gather(rows) for row in part)


GENERATED_SAMPLE = 64
"""Problems of each level generated without end whose prompts stand for the level's in
the KV budget's check."""


def drawable(sampler: ProblemSampler) -> list[Problem]:
    """The training problems a step may draw: the finite pools, and a sample of GENERATED_SAMPLE
    fresh problems of each level generated without end (from a stream of its own: training's
    draws stay as they are)."""
    rng = random.Random(0)
    return [
        problem
        for level, pool in sampler.pools.items()
        for problem in (
            pool
            if pool is not None
            else [sampler.task.sample(level, rng) for _ in range(GENERATED_SAMPLE)]
        )
    ]


def check_kv_budget(
    state: TrainState, task: Task, cfg: Config, estimator: Estimator, par: Parallel
) -> None:
    """Before step 0: a rollout.kv_budget_gib that a sampling call of the run (lean backend) could
    run out of is refused in one line naming the least that fits, so that no run dies at a later
    step for it: a step's trees (a call's share of rollout.batch_prompts), an evaluation
    (eval.batch_size prompts) and the re-scoring trees (rscore.batch_prompts), each over
    its longest prompts."""
    model, budget = unwrap(state.policy), cfg.rollout.kv_budget_gib
    if not budget or backend_name(model, cfg.rollout.backend) != "lean":
        return
    backend = backend_for(model, cfg.rollout)
    assert isinstance(backend, LeanBackend)  # backend_name said lean
    share = -(-cfg.rollout.batch_prompts // par.world)
    flat_eval = TreeShape(1, 1, cfg.eval.max_new_tokens, cfg.eval.max_new_tokens)
    calls = {
        "a training step's trees": (
            drawable(state.sampler),
            min(cfg.rollout.generation_batch or share, share),
            TreeShape.for_training(cfg, estimator.deep),
        ),
        "an evaluation": (eval_set(task, cfg.eval), cfg.eval.batch_size, flat_eval),
    }
    if cfg.reschedule.rescore_every or cfg.reschedule.rescore_at:
        calls["the re-scoring trees"] = (
            state.sampler.problems(),
            cfg.rscore.batch_prompts,
            TreeShape.for_scoring(cfg),
        )
    needs = {
        name: least_kv_gib(backend, state.tokenizer, task, *call) for name, call in calls.items()
    }
    name, need = max(needs.items(), key=lambda item: item[1])
    if need > budget:
        raise UserError(
            f"rollout.kv_budget_gib={budget:g} is less than {name} can need: {need:g} GiB holds "
            "every prompt and tree node whose continuations may wait at once, and one sequence; "
            f"set rollout.kv_budget_gib={need:g} or more"
        )


def first_prompt(state: TrainState, task: Task) -> str:
    """The run's prompts as the model reads them, for its first lines: the first training level's
    first problem (of its pool, or generated from seed 0: training's draws stay as they are)."""
    level = state.sampler.levels[0]
    pool = state.sampler.pools[level]
    problem = pool[0] if pool else task.sample(level, random.Random(0))
    return preview(task.template, task.prompt(problem, state.tokenizer), state.tokenizer)


def data_recorded(cfg: Config, run: RunDir, par: Parallel) -> Config:
    """cfg with each datasets.Dataset of task.train_data and eval_data (given from Python) saved in
    the run directory (save_to_disk) and named by that folder: config.yaml says where the run's
    data is, so that --resume and `treerl eval` find it."""
    saved = {}
    for key in ("train_data", "eval_data"):
        data = getattr(cfg.task, key)
        if data is not None and not isinstance(data, str):
            folder = (run.path / "data" / key).resolve()
            if par.main:
                save_dataset(data, folder)
            saved[key] = str(folder)
    if not saved:
        return cfg
    par.barrier()
    return cfg.model_copy(update={"task": cfg.task.model_copy(update=saved)})


@contextmanager
def holding(run: RunDir, par: Parallel) -> Iterator[None]:
    """Rank 0 holds the run's lock while it trains; when another process holds it, every
    rank stops in one line."""
    with ExitStack() as stack:
        refusal = None
        if par.main:
            try:
                stack.enter_context(run.lock())
            except UserError as err:
                refusal = str(err)
        refusal = par.broadcast(refusal)
        if refusal:
            raise UserError(refusal)
        yield


def resume_point(
    run: RunDir, cfg: Config, par: Parallel
) -> tuple[Path | None, dict[str, tuple[Any, Any]]]:
    """The checkpoint a resume continues from (the newest intact one) and what the resume changes in
    the config: only keys a resume may change (config.RESUMABLE), and never train.steps below
    the steps already done."""
    changed = changes(build(Config, run.config_data()), cfg)
    refused = [key for key in changed if not resumable(key)]
    if refused:
        raise UserError(
            f"a resume cannot change {', '.join(refused)}: the run's steps were made with the "
            f"saved values. It may change {', '.join(RESUMABLE)}; start a new run for the rest"
        )
    checkpoint = par.broadcast(run.intact_checkpoint(warn) if par.main else None)
    done = checkpoint_step(checkpoint) if checkpoint else 0
    if cfg.train.steps < done:
        raise UserError(
            f"--resume {run.path}: the run has done {done} steps (checkpoint step_{done}); "
            f"train.steps={cfg.train.steps} is fewer. Give train.steps={done} or more"
        )
    return checkpoint, changed


def horizon_line(changed: dict[str, tuple[Any, Any]], horizon: int) -> str | None:
    """What a resume that changes train.steps does to the schedules, in one line (None when it keeps
    train.steps). The learning rate, the level schedule and Re-Schedule's weights keep the horizon
    the run began with: no step of the run's plan changes, and the steps past it run at the
    schedules' end values."""
    if "train.steps" not in changed:
        return None
    old, new = changed["train.steps"]
    past = f"; steps {horizon + 1} to {new} run at their end values" if new > horizon else ""
    return (
        f"train.steps {old} -> {new}: the learning rate, the level schedule and Re-Schedule's "
        f"weights keep the run's horizon of {horizon} steps{past}"
    )


def train(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    par: Parallel | None = None,
) -> dict[str, Any]:
    """Train from cfg into run_dir (or continue the run there); returns
    {'before': eval, 'after': eval}. Under torchrun, pass the Parallel of init_parallel: only rank
    0 writes and prints."""
    console = console or Console(quiet=par is not None and not par.main)
    par = par or Parallel(device=resolve_device(cfg.model.device))
    use_threads(cfg.train.threads)
    if cfg.rollout.batch_prompts < par.world:
        raise UserError(
            f"rollout.batch_prompts={cfg.rollout.batch_prompts} gives some of the {par.world} "
            f"processes no prompt; set it to at least {par.world}"
        )
    # every name, level and file the config refers to is looked up here, before a model is loaded
    estimator, objective = ESTIMATORS.lookup(cfg.algo.name), Objective.from_config(cfg)
    estimator.check(cfg.algo.params)
    run = RunDir(run_dir)
    horizon = (
        run.begun_with().get("train", {}).get("steps", cfg.train.steps)
        if resume
        else cfg.train.steps
    )
    task, sampler = task_and_sampler(cfg, horizon)
    check_levels(task, cfg.eval.levels or [], "eval.levels")
    pool = None if None in sampler.pools.values() else sampler.problems()
    weights = QueryWeights.from_config(
        cfg, TreeShape.for_training(cfg, estimator.deep).depth, pool, horizon
    )
    if weights.source:
        console.print(weights.source)
    if (cfg.reschedule.rescore_every or cfg.reschedule.rescore_at) and pool is None:
        raise UserError(
            f"re-scoring scores every query of the pools: task '{task.name}' generates problems "
            "without end, so set curriculum.pool_size=N"
        )
    if cfg.reschedule.rescore_every or cfg.reschedule.rescore_at:
        check_depth(
            cfg.rscore.eligible,
            TreeShape.for_scoring(cfg).depth,
            "the scoring trees (rscore.depth)",
        )
    if not resume:
        run.check_new()
    with run.disk_errors(), holding(run, par):
        checkpoint, changed = resume_point(run, cfg, par) if resume else (None, {})
        schedules = horizon_line(changed, horizon)
        state = TrainState.start(cfg, sampler, weights, checkpoint, par, horizon)
        check_kv_budget(state, task, cfg, estimator, par)
        console.print(first_prompt(state, task), markup=False, highlight=False, soft_wrap=True)
        cfg = data_recorded(cfg, run, par)
        if par.world > 1 and backend_name(unwrap(state.policy), cfg.rollout.backend) == "vllm":
            raise UserError(
                f"rollout.backend={cfg.rollout.backend} samples through vLLM, which treerl runs in "
                "one training process for now; under torchrun set rollout.backend=lean (or hf)"
            )
        par.barrier()  # every rank has looked at run_dir before rank 0 writes there
        if par.main and resume:
            run.truncate_to(state.step)  # what was logged after the checkpoint is redone
            run.record_resume(state.step, changed, schedules)
        elif par.main:
            run.write_config(cfg)
        if checkpoint:
            console.print(f"resuming {run_dir} from step {state.step}")
        if schedules:
            console.print(schedules)
        return run_steps(state, cfg, run, task, estimator, objective, console, par)


def run_steps(
    state: TrainState,
    cfg: Config,
    run: RunDir,
    task: Task,
    estimator: Estimator,
    objective: Objective,
    console: Console,
    par: Parallel,
) -> dict[str, Any]:
    """The loop: evaluate at step 0, then train_step by step up to train.steps, or up to the first
    step whose cumulative generated tokens reach train.max_tokens, with evaluations and checkpoints
    between; the final evaluation and checkpoint, the tables and timing.json (the train command
    then writes the report)."""

    def save() -> None:
        t0 = time.perf_counter()
        state.save(run, cfg.train.keep_checkpoints, par)
        state.spent["checkpoint"] += time.perf_counter() - t0

    trackers = Trackers(cfg.output if par.main else OutputConfig(), run.path, cfg.model_dump())
    with (
        stop_signals() as stop,
        progress_bar(cfg.output.progress and par.main) as bar,
        closing(trackers),
    ):

        def run_eval(step: int) -> None:
            t0 = time.perf_counter()
            job = bar.add_task(f"eval @ step {step}", total=eval_work(task, cfg.eval), info="")
            with sampling_model(state.policy) as sampling_policy, mixed_precision(cfg, par.device):
                results = evaluate(
                    sampling_policy,
                    state.tokenizer,
                    task,
                    cfg.eval,
                    seed=cfg.seed,
                    advance=lambda k: bar.advance(job, k * par.world),
                    par=par,
                    rollout=cfg.rollout,
                )
            bar.remove_task(job)
            if par.main:
                run.record_eval(step, results)
                trackers.log_eval(step, results)
            state.spent["eval"] += time.perf_counter() - t0

        if "0" not in par.broadcast(run.evals()):
            run_eval(0)
        job = bar.add_task("train", total=cfg.train.steps, completed=state.step, info="")
        bad_steps = 0
        recent: list[dict[str, Any]] = []  # the last steps' metrics, for stall_begun
        generated = par.broadcast(sum(m["tokens/generated"] for m in run.metrics()))
        for step in range(state.step + 1, cfg.train.steps + 1):
            if 0 < cfg.train.max_tokens <= generated:
                break  # the budget of generated tokens is spent
            if state.weights.rescore_due(step):
                t0 = time.perf_counter()
                rescore(state, task, cfg, step, bar, par)
                state.spent["rescore"] += time.perf_counter() - t0
            try:
                rollout, metrics = train_step(state, task, cfg, step, estimator, objective, par)
            except NonFiniteWeights as err:
                latest = run.latest_checkpoint()
                kept = (
                    f"the last good checkpoint is {latest}"
                    if latest
                    else "no checkpoint was written"
                )
                raise UserError(
                    f"step {step}: {err}, so the run stops without keeping them; {kept}. "
                    f"Lower train.lr and continue with --resume {run.path}"
                ) from None
            recent = [*recent, metrics][-IDLE_STEPS - 1 :]
            generated += metrics["tokens/generated"]
            if par.main:
                run.log(metrics)
                trackers.log(metrics)
                if stall := stall_begun(
                    recent
                ):  # steps in a row that trained nothing: say so, once
                    warn(stall.line())
            if par.main and cfg.output.save_trees:
                r = cfg.rscore
                run.save_trees(
                    [
                        tree_record(
                            p.tree,
                            p.problem,
                            state.tokenizer,
                            prune_tau(cfg.algo),
                            greedy_choices(p.tree, r.top_m, r.eligible, r.child),
                            step,
                            p.advantages,
                            p.weight,
                        )
                        for p in rollout.prompts[: cfg.output.save_trees]
                    ]
                )
            step_done(
                bar,
                job,
                f"reward {metrics['reward/mean']:.3f}  acc {metrics['acc/mean']:.3f}  "
                f"{metrics['timing/step_s']:.2f} s/step",
                cfg.output.log_every if par.main else 0,
            )
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                run_eval(step)
            saved = bool(cfg.train.save_every and step % cfg.train.save_every == 0)
            if saved:
                save()
            bad_steps = bad_steps + 1 if metrics["train/skipped_updates"] else 0
            if bad_steps >= cfg.train.max_bad_steps:
                if not saved:
                    save()
                raise UserError(
                    f"the loss or gradient was not finite in {bad_steps} steps in a row (up to "
                    f"step {step}), so their updates were skipped; the last good state is saved in "
                    f"{run.path}/checkpoints/step_{step}. Lower train.lr (or check the rewards) "
                    f"and continue with --resume {run.path}"
                )
            if par.max([stop.signal is not None])[
                0
            ]:  # one rank asked to stop: all stop after this step
                if not saved:
                    save()
                name = (
                    stop.signal.name if stop.signal is not None else "a signal to another process"
                )
                raise RunStopped(
                    f"stopped by {name} after step {step} of {cfg.train.steps}; the "
                    f"checkpoint is saved: continue with treerl train --resume {run.path}"
                )
        final = state.step
        if str(final) not in par.broadcast(run.evals()):
            run_eval(final)
    latest = par.broadcast(run.latest_checkpoint())
    if latest is None or latest.name != f"step_{final}":
        save()
    evals = par.broadcast(run.evals())
    before, after = evals["0"], evals[str(final)]
    print_eval(after, before, title=f"held-out accuracy (%), step 0 -> {final}", console=console)
    if par.main:
        timing = time_summary(
            run.metrics(), state.spent["eval"], state.spent["checkpoint"], state.spent["rescore"]
        )
        run.write_timing(timing)
        print_time_summary(timing, console)
    return {"before": before, "after": after}
