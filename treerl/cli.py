"""The `treerl` command line: parses the arguments and runs the command's module in treerl.commands.
User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from treerl.errors import RunStopped, UserError

FILE_SYSTEM_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
}
"""A path the user gave that cannot be read or written: one line (the path, the
reason), exit code 2."""
OVERRIDES_HELP = "dotted config overrides, e.g. train.lr=1e-5 rollout.n=8 (see docs/config.md)"


def command(module: str, function: str = "run") -> Callable[[argparse.Namespace], None]:
    """treerl.commands.<module>.<function>, imported when the command runs (so that
    --help stays quick)."""

    def call(args: argparse.Namespace) -> None:
        getattr(importlib.import_module(f"treerl.commands.{module}"), function)(args)

    return call


class Parser(argparse.ArgumentParser):
    """argparse that refuses a bad argument in one line, like every other user mistake."""

    def error(self, message: str) -> NoReturn:
        say(f"treerl: error: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def add_config(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--config, which may be given several times: the files merge in order, then the overrides."""
    parser.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help=f"YAML config file{what} or a shipped config's name; repeat it to merge several in "
        "order (a later file's keys win), then the overrides",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="treerl", description="RL from verifiable rewards on reasoning trees.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train a policy with RL (no arguments: the embedded demo)")
    add_config(train)
    train.add_argument("--out", help="run directory (default runs/<timestamp>)")
    train.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint"
    )
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    train.set_defaults(func=command("train"))

    ev = sub.add_parser(
        "eval", help="accuracy per level (greedy), avg@k and pass@k (eval.samples=k)"
    )
    add_config(ev)
    ev.add_argument(
        "--model",
        help="'tiny', a run's checkpoint, any local HF causal LM directory or a Hub id in the "
        "local HF cache (model.allow_download=true downloads it)",
    )
    ev.add_argument(
        "--benchmark",
        help="a math benchmark: math500, gsm8k, aime24, amc23, minerva_math, olympiadbench, "
        "or a .jsonl / .parquet file with the fields problem and answer",
    )
    ev.add_argument(
        "--samples", type=int, help="k samples per problem for avg@k and pass@k (eval.samples)"
    )
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument(
        "--save-completions",
        metavar="FILE",
        help="write every completion with its grade to this JSONL file (eval.save_completions)",
    )
    ev.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    ev.set_defaults(func=command("evaluate"))

    sc = sub.add_parser(
        "score", help="Re-Schedule: sample a tree per training query, write r-scores as JSONL"
    )
    add_config(sc, " (model, task, curriculum.levels/pool_size, rscore.*)")
    sc.add_argument("--out", required=True, help="JSONL file to write (for reschedule.scores_file)")
    sc.add_argument("--limit", type=int, default=0, help="score only the first N queries (0 = all)")
    again = sc.add_mutually_exclusive_group()
    again.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (once all is scored)"
    )
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted scoring into --out: score only "
        "the queries its OUT.partial file does not hold",
    )
    sc.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    sc.set_defaults(func=command("score"))

    rep = sub.add_parser(
        "report", help="a run's plots (RUN_DIR/plots/*.png) and RUN_DIR/report.html"
    )
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.set_defaults(func=command("report"))

    cmp_ = sub.add_parser("compare", help="several runs overlaid on one HTML page")
    cmp_.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    cmp_.add_argument(
        "--out", default="compare.html", help="HTML file to write (its plots go beside it)"
    )
    cmp_.set_defaults(func=command("report", "compare"))

    tr = sub.add_parser(
        "tree", help="reasoning trees as an HTML page: saved in training, or one sampled now"
    )
    tr.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="show the trees the run saved (output.save_trees=N), paged; with "
        "--model, sample one of its problems anew with the run's config",
    )
    tr.add_argument(
        "--step",
        type=int,
        help="with --run: the trees of this step (default: every step's, as many "
        "of the newest as fit on one page)",
    )
    tr.add_argument(
        "--problem",
        metavar="ID",
        help="the problem's id (as in `treerl score` files and trees.jsonl) or any unique start of "
        "it (the report shows 10 characters)",
    )
    tr.add_argument(
        "--model",
        help="sample with this model: 'tiny', a checkpoint, a local HF directory or a Hub id",
    )
    tr.add_argument("--task", help="the task of the problem (task.name)")
    add_config(tr, " (tree.*, rollout.n/max_new_tokens/temperature)")
    tr.add_argument("--out", help="HTML file to write (default tree.html, or RUN_DIR/tree.html)")
    tr.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    tr.set_defaults(func=command("tree"))

    exp = sub.add_parser(
        "export", help="a run's checkpoint as a Hugging Face model folder with a model card"
    )
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--out", required=True, help="a new or empty directory for the model folder")
    exp.add_argument("--step", type=int, help="the checkpoint of this step (default: the newest)")
    exp.set_defaults(func=command("export"))

    pre = sub.add_parser("pretrain", help="rebuild the embedded tiny model by supervised warm-up")
    add_config(pre, " of pretrain settings")
    pre.add_argument("--out", help="output directory for the HF model (default runs/pretrain)")
    pre.add_argument("overrides", nargs="*", help="e.g. steps=1200 level_mix.hard=0.05")
    pre.set_defaults(func=command("pretrain"))
    return parser


def say(line: str) -> None:
    """One line on stderr, whatever it quotes: control characters, line breaks and undecodable bytes
    of a user's value are shown escaped, never sent to the terminal."""
    safe = "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)
    print(safe.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        if (
            os.environ.get("RANK", "0") == "0"
        ):  # under torchrun every rank stops alike; rank 0 says why
            say(f"treerl: error: {err}")
        return 2
    except RunStopped as stop:
        if os.environ.get("RANK", "0") == "0":
            say(f"treerl: {stop}")
        return 0
    except OSError as err:
        if err.errno not in FILE_SYSTEM_ERRORS:
            raise
        if os.environ.get("RANK", "0") == "0":
            say(f"treerl: error: {err.strerror}: {err.filename or ''}")
        return 2
    except KeyboardInterrupt:
        print("treerl: interrupted; what was written so far is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
