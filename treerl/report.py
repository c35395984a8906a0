"""See what training did: a run's plots (PNG, matplotlib) and one self-contained HTML page that opens offline
(`treerl report`), and several runs overlaid on one page (`treerl compare`)."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from treerl.errors import UserError  # noqa: E402
from treerl.rundir import REPORT_FILE, RunDir  # noqa: E402

SMOOTH = 10
"""Per-step curves are drawn as a trailing mean over this many steps (the raw values faintly behind)."""
TIMINGS = {"timing/rollout_s": "generation", "timing/reward_s": "grading and scoring", "timing/update_s": "update"}


@dataclass
class RunData:
    name: str
    metrics: list[dict]
    evals: dict[str, dict]
    config: str

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric, the steps where it is null left out."""
        rows = [(m["step"], m[key]) for m in self.metrics if m.get(key) is not None]
        return [s for s, _ in rows], [v for _, v in rows]

    def keys(self, prefix: str) -> list[str]:
        return sorted({k for m in self.metrics for k in m if k.startswith(prefix)})


def load_run(run_dir: Path) -> RunData:
    run = RunDir(run_dir)
    if not run.metrics_path.is_file():
        raise UserError(f"{run_dir} has no {run.metrics_path.name}; give the directory of a treerl train run")
    return RunData(run_dir.name, run.metrics(), run.evals(), run.config_text())


def trailing_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def level_colors(runs: list[RunData]) -> dict[str, str]:
    """One colour per level (and group) in every plot of a single run: held-out groups in their order, then
    training levels; several runs overlaid keep matplotlib's cycle, so that the runs stay apart."""
    if len(runs) != 1:
        return {}
    run = runs[0]
    names = [group for step in sorted(run.evals, key=int) for group in run.evals[step]]
    names += [key.removeprefix("acc/") for key in run.keys("acc/") if key != "acc/mean"]
    names += [key.removeprefix("curriculum/share/") for key in run.keys("curriculum/share/")]
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def uses_reschedule(runs: list[RunData]) -> bool:
    """Whether any run weighted its queries (scores, or a weight other than 1): otherwise the plot is flat."""
    return any(run.series("reschedule/score_mean")[0] or any(w != 1.0 for w in run.series("reschedule/weight_mean")[1])
               for run in runs)


def curve(ax, steps: list[int], values: list[float], label: str, color=None) -> None:
    line, = ax.plot(steps, trailing_mean(values), label=label, color=color)
    ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.8)


def plot_accuracy(ax, runs: list[RunData]) -> None:
    """Training accuracy of the sampled answers per level, and the mean reward."""
    colors = level_colors(runs)
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        for key in (k for k in run.keys("acc/") if k != "acc/mean"):   # the mean is the reward's curve
            level = key.removeprefix("acc/")
            curve(ax, *run.series(key), f"{prefix}{level}", colors.get(level))
        curve(ax, *run.series("reward/mean"), f"{prefix}reward", "black" if colors else None)
    ax.set(title="training accuracy per level and reward", xlabel="step", ylim=(-0.02, 1.02))


def plot_eval(ax, runs: list[RunData]) -> None:
    """Held-out greedy accuracy per level at each evaluated step."""
    colors = level_colors(runs)
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        steps = sorted(run.evals, key=int)
        groups = list(dict.fromkeys(g for step in steps for g in run.evals[step]))
        for group in groups:
            points = [(int(s), 100 * run.evals[s][group]["accuracy"]) for s in steps if group in run.evals[s]]
            ax.plot(*zip(*points), marker="o", label=f"{prefix}{group}", color=colors.get(group))
    ax.set(title="held-out accuracy (%)", xlabel="step", ylim=(-2, 102))


def plot_curriculum(ax, runs: list[RunData]) -> None:
    """Share of each level among the step's prompts (stacked), the schedule's p(t) dashed."""
    run = runs[0]
    levels = [k.removeprefix("curriculum/share/") for k in run.keys("curriculum/share/")]
    if levels:
        steps = run.series(f"curriculum/share/{levels[0]}")[0]
        colors = level_colors(runs)
        ax.stackplot(steps, *[trailing_mean(run.series(f"curriculum/share/{lvl}")[1]) for lvl in levels],
                     labels=levels, alpha=0.8, colors=[colors.get(lvl, f"C{i}") for i, lvl in enumerate(levels)])
        bottom = [0.0] * len(steps)
        for lvl in levels:
            p = run.series(f"curriculum/p/{lvl}")[1]
            bottom = [b + q for b, q in zip(bottom, p)]
            ax.plot(steps, bottom, color="black", linestyle="--", linewidth=0.8)
    ax.set(title=f"curriculum: level shares{' of ' + run.name if len(runs) > 1 else ''} (dashed: schedule)",
           xlabel="step", ylim=(0, 1))


def plot_reschedule(ax, runs: list[RunData]) -> None:
    """Re-Schedule's mean loss weight and mean query score per step."""
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        curve(ax, *run.series("reschedule/weight_mean"), f"{prefix}mean loss weight")
        if run.series("reschedule/score_mean")[0]:
            curve(ax, *run.series("reschedule/score_mean"), f"{prefix}mean score")
    ax.set(title="Re-Schedule weights and scores", xlabel="step")


def plot_length(ax, runs: list[RunData]) -> None:
    for run in runs:
        curve(ax, *run.series("response_length/mean"), run.name)
    ax.set(title="mean response length (tokens)", xlabel="step")


def plot_time(ax, runs: list[RunData]) -> None:
    """Seconds per step in each phase (stacked); with several runs, each run's whole step."""
    if len(runs) == 1:
        run = runs[0]
        steps = run.series("timing/step_s")[0]
        ax.stackplot(steps, *[trailing_mean(run.series(key)[1]) for key in TIMINGS], labels=list(TIMINGS.values()),
                     alpha=0.8)
    else:
        for run in runs:
            curve(ax, *run.series("timing/step_s"), run.name)
    ax.set(title="where the time went (s per step)", xlabel="step")


DRAWN_WHEN: dict[str, Callable[[list[RunData]], bool]] = {"reschedule": uses_reschedule}
"""Plots drawn only when the runs have something to show in them."""
PLOTS: dict[str, Callable] = {"accuracy": plot_accuracy, "eval": plot_eval, "curriculum": plot_curriculum,
                              "reschedule": plot_reschedule, "length": plot_length, "time": plot_time}


def draw(runs: list[RunData], folder: Path) -> dict[str, Path]:
    """One PNG per plot in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, plot in PLOTS.items():
        if not DRAWN_WHEN.get(name, lambda runs: True)(runs):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6))
        plot(ax, runs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


def eval_table(run: RunData) -> str:
    if not run.evals:
        return "<p>no evaluation yet</p>"
    first, last = min(run.evals, key=int), max(run.evals, key=int)
    rows = "".join(f"<tr><td>{html.escape(group)}</td><td>{row['problems']}</td>"
                   f"<td>{100 * run.evals[first].get(group, {}).get('accuracy', float('nan')):.1f}</td>"
                   f"<td>{100 * row['accuracy']:.1f}</td><td>{row['response_length']:.1f}</td></tr>"
                   for group, row in run.evals[last].items())
    return (f"<table><tr><th>group</th><th>n</th><th>step {first}</th><th>step {last}</th><th>length</th></tr>"
            f"{rows}</table>")


def page(title: str, images: dict[str, Path], body: str) -> str:
    """A self-contained page: the PNGs inlined as data URIs, no script, no external resource."""
    figures = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,'
                      f'{base64.b64encode(path.read_bytes()).decode()}"></figure>' for name, path in images.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1500px}"
            "figure{display:inline-block;margin:0.5em}img{max-width:680px}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}"
            f"pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{figures}{body}</body></html>")


def write_report(run_dir: Path) -> Path:
    """RUN_DIR/plots/*.png and RUN_DIR/report.html."""
    run = load_run(run_dir)
    images = draw([run], run_dir / "plots")
    body = (f"<h2>final evaluation</h2>{eval_table(run)}"
            f"<h2>config</h2><pre>{html.escape(run.config)}</pre>")
    out = run_dir / REPORT_FILE
    out.write_text(page(f"treerl run {run.name} ({len(run.metrics)} steps)", images, body))
    return out


def write_comparison(run_dirs: list[Path], out: Path) -> Path:
    """The runs overlaid in out (an HTML file); its PNGs in a folder beside it."""
    runs = [load_run(path) for path in run_dirs]
    if len({run.name for run in runs}) < len(runs):   # same folder names: tell them apart by the whole path
        for run, path in zip(runs, run_dirs):
            run.name = str(path)
    images = draw(runs, out.with_suffix("") / "plots")
    body = "".join(f"<h2>{html.escape(run.name)}: final evaluation</h2>{eval_table(run)}" for run in runs)
    out.write_text(page("treerl: " + " vs ".join(run.name for run in runs), images, body))
    return out
