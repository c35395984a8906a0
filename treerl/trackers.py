"""Experiment trackers: the step metrics and evaluations also go to TensorBoard (output.tensorboard)
and to Weights & Biases (output.wandb), each through its own library, installed
as an optional extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treerl.errors import UserError


class Trackers:
    """The trackers a config turns on; `log` and `log_eval` send to every one of them."""

    def __init__(self, output, run_dir: Path, config: dict[str, Any]):
        self.writer = self.wandb_run = None
        if output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "output.tensorboard needs the tensorboard package: pip "
                    "install 'treerl[trackers]'"
                ) from None
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if output.wandb:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "output.wandb needs the wandb package: pip install 'treerl[trackers]'"
                ) from None
            self.wandb_run = wandb.init(
                project=output.wandb_project,
                name=run_dir.name,
                dir=str(run_dir),
                config=config,
                mode=output.wandb_mode,
                id=run_dir.name.replace("/", "-"),
                resume="allow",
            )

    def log(self, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        scalars = {
            k: float(v)
            for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def log_eval(self, step: int, results: dict[str, dict[str, float]]) -> None:
        self.log(
            {
                "step": step,
                **{
                    f"eval/{group}/{key}": value
                    for group, row in results.items()
                    for key, value in row.items()
                },
            }
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
