"""`treerl report` and `treerl compare`: a run's report page, and several runs
overlaid on one page."""

from __future__ import annotations

import argparse
from pathlib import Path

from treerl.report import write_comparison, write_report


def run(args: argparse.Namespace) -> None:
    print(f"report: {write_report(Path(args.run_dir))}")


def compare(args: argparse.Namespace) -> None:
    print(f"comparison: {write_comparison([Path(d) for d in args.run_dirs], Path(args.out))}")
