"""Where a run's time went: per-phase totals over metrics.jsonl plus evaluation and
checkpoints, as a table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STEP_PHASES = {
    "timing/rollout_s": "generation",
    "timing/reward_s": "grading and scoring",
    "timing/update_s": "update (forward, backward, optimizer)",
}


def time_summary(
    metrics: list[dict[str, Any]], eval_s: float, checkpoint_s: float, rescore_s: float = 0.0
) -> dict[str, Any]:
    """Seconds per phase over all logged steps, the other per-step work, and token throughputs;
    re-scoring (Re-Schedule's reschedule.rescore_*) only when the run did any."""
    steps = sum(m["timing/step_s"] for m in metrics)
    phases = {name: sum(m.get(key, 0.0) for m in metrics) for key, name in STEP_PHASES.items()}
    phases["other step work (sampling problems, metrics)"] = max(0.0, steps - sum(phases.values()))
    phases["evaluation"] = eval_s
    phases["checkpoints"] = checkpoint_s
    if rescore_s:
        phases["re-scoring queries"] = rescore_s
    generated = sum(m["tokens/generated"] for m in metrics)
    trained = sum(m["tokens/trained"] for m in metrics)
    return {
        "steps": len(metrics),
        "seconds": phases,
        "total_s": sum(phases.values()),
        "rollout_tok_s": generated / max(phases["generation"], 1e-9),
        "train_tok_s": trained / max(phases["update (forward, backward, optimizer)"], 1e-9),
    }


def print_time_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"where the time went ({summary['steps']} steps, {summary['total_s']:.0f} s)"
    )
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for name, seconds in summary["seconds"].items():
        table.add_row(
            name, f"{seconds:.1f}", f"{100 * seconds / max(summary['total_s'], 1e-9):.1f}%"
        )
    console.print(table)
    console.print(
        f"generation {summary['rollout_tok_s']:.0f} tokens/s, training "
        f"{summary['train_tok_s']:.0f} tokens/s (trained tokens per second of update)"
    )
