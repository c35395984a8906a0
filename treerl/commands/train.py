"""`treerl train`: the config (defaults <- --config <- overrides; on --resume the run's own config,
with the changes of earlier resumes, <- overrides), the run directory, the training loop (under
torchrun, in every process), then the report (rank 0): the loop draws no pages."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from treerl.config import load_config
from treerl.errors import UserError
from treerl.models import resolve_device
from treerl.parallel import close_parallel, init_parallel
from treerl.report import write_report
from treerl.rundir import RunDir
from treerl.train.trainer import train


def run(args: argparse.Namespace) -> None:
    if args.resume:
        resumed = RunDir(Path(args.resume))
        if not resumed.config_path.is_file():
            raise UserError(
                f"--resume {args.resume}: no config.yaml there; give the "
                "directory of an earlier run"
            )
        if args.config:
            raise UserError(
                "--resume continues with the run's own config.yaml: drop --config and override the "
                "keys a resume may change on the command line (for example train.steps=1000)"
            )
        cfg = load_config(None, args.overrides, base=resumed.config_data())
    else:
        cfg = load_config(args.config, args.overrides)
    par = init_parallel(cfg.train.strategy, resolve_device(cfg.model.device))
    try:
        if args.resume:
            run_dir = Path(args.resume)
        else:
            run_dir = Path(
                args.out
                or cfg.output.dir
                or par.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
            )
            cfg.output.dir = str(run_dir)
        train(cfg, run_dir, resume=bool(args.resume), par=par)
        if par.main:
            print(f"report: {write_report(run_dir)}")
        # every rank is done (rank 0 writes the report last) before the process group goes
        par.barrier()
    finally:
        close_parallel()
    if par.main:
        print(f"run directory: {run_dir}")
