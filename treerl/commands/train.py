"""`treerl train`: the config (defaults <- the --config files in order <- overrides; on --resume the
run's own config, with the changes of earlier resumes, <- overrides), then treerl.api.train: the
run directory, the training loop (under torchrun, in every process), then the report (rank 0): the
loop draws no pages."""

from __future__ import annotations

import argparse
from pathlib import Path

from treerl.api import train
from treerl.config import load_config
from treerl.errors import UserError
from treerl.rundir import RunDir


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
    train(cfg, args.resume or args.out, resume=bool(args.resume))
