"""`treerl pretrain`: rebuild the embedded tiny model by supervised warm-up."""

from __future__ import annotations

import argparse

from treerl.config import load_config
from treerl.loop.pretrain import PretrainConfig, pretrain


def run(args: argparse.Namespace) -> None:
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    pretrain(load_config(args.config, overrides, PretrainConfig))
