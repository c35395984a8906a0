"""`treerl` command line: train, eval, score, pretrain. User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from treerl.errors import RunStopped, UserError

OVERRIDES_HELP = "dotted config overrides, e.g. train.lr=1e-5 rollout.n=8 (see docs/config.md)"


def _train(args: argparse.Namespace) -> None:
    from treerl.config import dump_config, load_config
    from treerl.models import resolve_device
    from treerl.train.parallel import close_parallel, init_parallel
    from treerl.train.trainer import train

    if args.resume and not (Path(args.resume) / "config.yaml").is_file():
        raise UserError(f"--resume {args.resume}: no config.yaml there; give the directory of an earlier run")
    cfg = load_config(Path(args.resume) / "config.yaml" if args.resume else args.config, args.overrides)
    par = init_parallel(cfg.train.strategy, resolve_device(cfg.model.device))
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if par.main:
                dump_config(cfg, run_dir / "config.yaml")
        else:
            run_dir = Path(args.out or cfg.output.dir or par.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}"))
            if (run_dir / "config.yaml").exists():
                raise UserError(f"--out {run_dir} already holds a run; continue it with --resume {run_dir} "
                                "or choose another --out")
            cfg.output.dir = str(run_dir)
        train(cfg, run_dir, resume=bool(args.resume), par=par)
    finally:
        close_parallel()
    if par.main:
        print(f"run directory: {run_dir}")


def _eval(args: argparse.Namespace) -> None:
    import torch

    from treerl.config import load_config
    from treerl.eval import eval_work, evaluate, print_eval
    from treerl.models import load_policy, resolve_device
    from treerl.progress import progress_bar
    from treerl.tasks import check_levels, make_task
    from treerl.tasks.loaders import BENCHMARKS

    overrides = []
    if args.benchmark:
        if args.benchmark not in BENCHMARKS:
            raise UserError(f"--benchmark {args.benchmark}: not a benchmark; choose from {', '.join(BENCHMARKS)} "
                            "(for another file: task.name=math task.eval_data=PATH eval.levels=[all])")
        overrides += [f"task.name={BENCHMARKS[args.benchmark].task}", f"task.eval_data={args.benchmark}",
                      "eval.levels=[all]", "eval.problems=0"]
    if args.model:
        overrides.append(f"model.name_or_path={args.model}")
    if args.samples is not None:
        overrides.append(f"eval.samples={args.samples}")
    cfg = load_config(args.config, overrides + list(args.overrides))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    task = make_task(cfg.task)
    if cfg.eval.levels and not args.benchmark:
        check_levels(task, cfg.eval.levels, "eval.levels")
    model, tokenizer = load_policy(cfg.model.name_or_path, cfg.model.dtype, resolve_device(cfg.model.device),
                                   cfg.model.trust_remote_code)
    with progress_bar(cfg.output.progress and not args.json) as bar:
        job = bar.add_task("eval", total=eval_work(task, cfg.eval), info="")
        results = evaluate(model, tokenizer, task, cfg.eval, seed=cfg.seed, advance=lambda k: bar.advance(job, k))
    if args.json:
        print(json.dumps({"model": cfg.model.name_or_path, "task": task.name, "benchmark": args.benchmark,
                          "groups": results}, indent=2))
    else:
        print_eval(results, title=f"{cfg.model.name_or_path} on {args.benchmark or task.name} (accuracy %, greedy)")


def _pretrain(args: argparse.Namespace) -> None:
    from treerl.config import load_config
    from treerl.train.pretrain import PretrainConfig, pretrain

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    pretrain(load_config(args.config, overrides, PretrainConfig))


def _score(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from treerl.config import load_config
    from treerl.curriculum.score import score_queries

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    rows = score_queries(cfg, out, limit=args.limit)
    table = Table(title=f"r-scores of {len(rows)} queries -> {out}")
    for column in ("level", "queries", "mean r-score", "mean leaf accuracy", "mean leaves"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in cfg.curriculum.levels:
        mine = [row for row in rows if row["level"] == level]
        if mine:
            table.add_row(level, str(len(mine)), *(f"{sum(r[k] for r in mine) / len(mine):.3f}"
                                                   for k in ("r_score", "leaf_acc", "leaves")))
    Console().print(table)


def _report(args: argparse.Namespace) -> None:
    from treerl.report import write_report

    print(f"report: {write_report(Path(args.run_dir))}")


def _compare(args: argparse.Namespace) -> None:
    from treerl.report import write_comparison

    print(f"comparison: {write_comparison([Path(d) for d in args.run_dirs], Path(args.out))}")


def _tree(args: argparse.Namespace) -> None:
    from treerl.config import load_config
    from treerl.viewer import TREES_FILE, pick_tree, read_trees, render_tree, sample_tree_record

    if args.run:
        record = pick_tree(read_trees(Path(args.run) / TREES_FILE), args.step, args.problem)
    else:
        if not args.problem:
            raise UserError("give --problem ID to sample a tree, or --run RUN_DIR to show one saved in training")
        overrides = [*args.overrides, *([f"model.name_or_path={args.model}"] if args.model else []),
                     *([f"task.name={args.task}"] if args.task else [])]
        record = sample_tree_record(load_config(args.config, overrides), args.problem)
    out = Path(args.out or (Path(args.run) / "tree.html" if args.run else "tree.html"))
    out.write_text(render_tree(record))
    print(f"tree of problem {record['id']}: {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treerl", description="RL from verifiable rewards on reasoning trees.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy with RL (no arguments: the embedded demo)")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--out", help="run directory (default runs/<timestamp>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="accuracy per level (greedy), avg@k and pass@k (eval.samples=k)")
    ev.add_argument("--config", help="YAML config file")
    ev.add_argument("--model", help="'tiny', a run's checkpoint or any local HF causal LM directory")
    ev.add_argument("--benchmark", help="a math benchmark: math500, gsm8k, aime24, amc23, minerva_math, olympiadbench")
    ev.add_argument("--samples", type=int, help="k samples per problem for avg@k and pass@k (eval.samples)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    ev.set_defaults(func=_eval)

    sc = sub.add_parser("score", help="Re-Schedule: sample a tree per training query, write r-scores as JSONL")
    sc.add_argument("--config", help="YAML config file (model, task, curriculum.levels/pool_size, rscore.*)")
    sc.add_argument("--out", required=True, help="JSONL file to write (for reschedule.scores_file)")
    sc.add_argument("--limit", type=int, default=0, help="score only the first N queries (0 = all)")
    sc.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    sc.set_defaults(func=_score)

    rep = sub.add_parser("report", help="a run's plots (RUN_DIR/plots/*.png) and RUN_DIR/report.html")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.set_defaults(func=_report)

    cmp_ = sub.add_parser("compare", help="several runs overlaid on one HTML page")
    cmp_.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    cmp_.add_argument("--out", default="compare.html", help="HTML file to write (its plots go beside it)")
    cmp_.set_defaults(func=_compare)

    tr = sub.add_parser("tree", help="one reasoning tree as an HTML page: sampled now, or saved in training")
    tr.add_argument("--run", metavar="RUN_DIR", help="show a tree the run saved (output.save_trees=N)")
    tr.add_argument("--step", type=int, help="with --run: a tree of this step (default: the last saved)")
    tr.add_argument("--problem", metavar="ID", help="the problem's id (as in `treerl score` files and trees.jsonl)")
    tr.add_argument("--model", help="sample with this model: 'tiny', a checkpoint or a local HF directory")
    tr.add_argument("--task", help="the task of the problem (task.name)")
    tr.add_argument("--config", help="YAML config file (tree.*, rollout.n/max_new_tokens/temperature)")
    tr.add_argument("--out", help="HTML file to write (default tree.html, or RUN_DIR/tree.html)")
    tr.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    tr.set_defaults(func=_tree)

    pre = sub.add_parser("pretrain", help="rebuild the embedded tiny model by supervised warm-up")
    pre.add_argument("--config", help="YAML file of pretrain settings")
    pre.add_argument("--out", help="output directory for the HF model (default runs/pretrain)")
    pre.add_argument("overrides", nargs="*", help="e.g. steps=1200 level_mix.hard=0.05")
    pre.set_defaults(func=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":   # under torchrun every rank stops alike; rank 0 says why
            print(f"treerl: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"treerl: {stop}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("treerl: interrupted; what was written so far is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
