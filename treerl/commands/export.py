"""`treerl export RUN --out DIR`: a run's checkpoint as a Hugging Face model folder that
`AutoModelForCausalLM.from_pretrained(DIR)` loads (a LoRA run's adapters merged into their base
weights), with a model card (README.md) that holds the run's config, data and held-out table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from treerl.config import Config, LoraSettings, build, config_yaml
from treerl.errors import UserError
from treerl.models import load_policy
from treerl.rundir import RunDir, checkpoint_step, damage

CARD = "README.md"


def chosen_checkpoint(run: RunDir, step: int | None) -> Path:
    """The checkpoint of `step`, or the newest; refused in one line when there is none, or when it
    does not match its manifest (the run itself is left as it is)."""
    found = [c for c in run.checkpoints() if step is None or checkpoint_step(c) == step]
    if not found:
        saved = ", ".join(c.name for c in run.checkpoints()) or "none"
        which = f"step_{step}" if step is not None else "a checkpoint"
        raise UserError(f"{run.path} has no {which} to export (checkpoints: {saved})")
    why = damage(found[-1])
    if why is not None:
        raise UserError(
            f"{found[-1]} is damaged ({why}); export another with --step (checkpoints: "
            f"{', '.join(c.name for c in run.checkpoints())})"
        )
    return found[-1]


def check_out(out: Path) -> None:
    """The export goes into a new or empty directory, so that nothing of the user's is
    overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty directory; give a new one")


def held_out_table(evals: dict[str, Any], step: int) -> str:
    """Held-out greedy accuracy (%) per level: at step 0 and at the exported step (or the last
    evaluation before it), as a Markdown table."""
    done = sorted(int(s) for s in evals if int(s) <= step)
    if not done:
        return "No held-out evaluation was recorded."
    first, last = evals[str(done[0])], evals[str(done[-1])]
    rows = []
    for group, row in last.items():
        before = 100 * first.get(group, {}).get("accuracy", float("nan"))
        rows.append(f"| {group} | {row['problems']} | {before:.1f} | {100 * row['accuracy']:.1f} |")
    return "\n".join(
        [
            f"| level | problems | step {done[0]} | step {done[-1]} |",
            "|---|---|---|---|",
            *rows,
        ]
    )


def model_card(cfg: Config, run: RunDir, step: int) -> str:
    """The model card: what was trained from what, on which data, the held-out table and the
    config (YAML front matter for the Hub)."""
    task, levels = cfg.task, ", ".join(cfg.curriculum.levels)
    data = [
        f"- task: `{task.name}`, template `{task.template or 'the task default'}`",
        f"- levels trained on: {levels}",
        f"- training data: `{task.train_data or 'the task default'}`",
        f"- held-out data: `{task.eval_data or 'the task default'}`",
    ]
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            f"tags: [treerl, reinforcement-learning, rlvr, {cfg.algo.name}]",
            "---",
            f"# {run.path.name}",
            "",
            f"Trained with treerl ({cfg.algo.name}, reinforcement learning from verifiable "
            f"rewards) from `{cfg.model.name_or_path}`: step {step} of {cfg.train.steps}"
            + (", LoRA adapters merged into the weights." if cfg.model.lora.r else "."),
            "",
            "## Data",
            "",
            *data,
            "",
            "## Held-out accuracy (%, greedy)",
            "",
            held_out_table(run.evals(), step),
            "",
            "## Config",
            "",
            "```yaml",
            config_yaml(cfg).rstrip(),
            "```",
            "",
        ]
    )


def export(run_dir: Path, out: Path, step: int | None = None) -> Path:
    """Write the checkpoint of `step` (default: the newest) of the run in run_dir as a Hugging
    Face model folder with its model card into `out`."""
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise UserError(f"{run_dir} has no config.yaml; give the directory of a treerl train run")
    check_out(out)
    checkpoint = chosen_checkpoint(run, step)
    cfg = build(Config, run.config_data())
    model, tokenizer = load_policy(
        str(checkpoint),
        cfg.model.dtype,
        "cpu",
        cfg.model.trust_remote_code,
        LoraSettings(r=0),  # a LoRA run's adapters merged into the base weights
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / CARD).write_text(model_card(cfg, run, checkpoint_step(checkpoint)), encoding="utf-8")
    return out


def run(args: argparse.Namespace) -> None:
    print(f"model folder: {export(Path(args.run_dir), Path(args.out), args.step)}")
