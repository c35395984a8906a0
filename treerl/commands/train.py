"""`treerl train`: the config (defaults <- --config or the resumed run's config.yaml <- overrides), the run
directory, then the training loop; under torchrun, in every process."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from treerl.config import load_config
from treerl.errors import UserError
from treerl.models import resolve_device
from treerl.parallel import close_parallel, init_parallel
from treerl.rundir import RunDir
from treerl.train.trainer import train


def run(args: argparse.Namespace) -> None:
    resumed = RunDir(Path(args.resume)) if args.resume else None
    if resumed and not resumed.config_path.is_file():
        raise UserError(f"--resume {args.resume}: no config.yaml there; give the directory of an earlier run")
    cfg = load_config(resumed.config_path if resumed else args.config, args.overrides)
    par = init_parallel(cfg.train.strategy, resolve_device(cfg.model.device))
    try:
        if resumed:
            run_dir = resumed.path
        else:
            run_dir = Path(args.out or cfg.output.dir or par.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}"))
            if RunDir(run_dir).config_path.exists():
                raise UserError(f"--out {run_dir} already holds a run; continue it with --resume {run_dir} "
                                "or choose another --out")
            cfg.output.dir = str(run_dir)
        train(cfg, run_dir, resume=resumed is not None, par=par)
        par.barrier()   # every rank is done (rank 0 writes the report last) before the process group goes
    finally:
        close_parallel()
    if par.main:
        print(f"run directory: {run_dir}")
