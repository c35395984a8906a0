"""See what training did: one self-contained HTML page that opens offline (`treerl report`), and
several runs on one page laid out the same way (`treerl compare`). The first screen says whether it
worked (held-out accuracy before and after per level; the run's steps, time, tokens and where the
time went; links to the saved trees), then the curves in a grid (PNG, matplotlib; one colour per
level in every plot, one line style per run), then the config, folded."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from treerl.config import flat, read_yaml_text  # noqa: E402
from treerl.errors import UserError  # noqa: E402
from treerl.rundir import REPORT_FILE, TREES_PAGE, RunDir, stalls  # noqa: E402
from treerl.tree_records import saved_trees  # noqa: E402
from treerl.viewer import pick_trees, render_trees  # noqa: E402

SMOOTH = 10
"""Per-step curves are drawn as a trailing mean over this many steps (the raw
values faintly behind)."""
TIMINGS = {
    "timing/rollout_s": "generation",
    "timing/reward_s": "grading and scoring",
    "timing/update_s": "update",
}
PHASE_COLOURS = ["#7f7f7f", "#c7a77d", "#3b3b3b", "#d9d9d9", "#9c755f", "#b0b0b0", "#e8d5b5"]
"""Where the time went, in neutral tones: the bright colours are the levels'."""
RUN_STYLES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
"""Several runs on one page: each run's line style, in every plot (colours stay the levels')."""


@dataclass
class RunData:
    name: str
    metrics: list[dict]
    evals: dict[str, dict]
    config: str
    timing: dict | None = None
    """timing.json: where a finished run's time went."""
    path: Path | None = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric, the steps where it is null left out."""
        rows = [(m["step"], m[key]) for m in self.metrics if m.get(key) is not None]
        return [s for s, _ in rows], [v for _, v in rows]

    def keys(self, prefix: str) -> list[str]:
        return sorted({k for m in self.metrics for k in m if k.startswith(prefix)})


def load_run(run_dir: Path) -> RunData:
    run = RunDir(run_dir)
    if not run.metrics_path.is_file():
        raise UserError(
            f"{run_dir} has no {run.metrics_path.name}; give the directory of a treerl train run"
        )
    return RunData(
        run_dir.name, run.metrics(), run.evals(), run.config_text(), run.timing(), run_dir
    )


def trailing_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def trained_levels(run: RunData) -> list[str]:
    """The run's curriculum.levels, easiest first as the config lists them ([] without a config)."""
    config = read_yaml_text(run.config) if run.config else None
    curriculum = config.get("curriculum") if isinstance(config, dict) else None
    levels = curriculum.get("levels") if isinstance(curriculum, dict) else None
    return [str(level) for level in levels] if isinstance(levels, list) else []


def level_colors(runs: list[RunData]) -> dict[str, str]:
    """One colour per level (and held-out group) in every plot, the same for every run, in level
    order, easiest first: held-out groups in the order evaluation wrote them (the task's levels,
    then subjects and `all`), then the levels trained on (curriculum.levels), then any other level a
    metric names. Plots draw, and so list in their legends, levels in this order."""
    names = [
        group for run in runs for step in sorted(run.evals, key=int) for group in run.evals[step]
    ]
    names += [level for run in runs for level in trained_levels(run)]
    names += [
        key.removeprefix("acc/") for run in runs for key in run.keys("acc/") if key != "acc/mean"
    ]
    names += [
        key.removeprefix("curriculum/share/")
        for run in runs
        for key in run.keys("curriculum/share/")
    ]
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def in_level_order(levels: list[str], colors: dict[str, str]) -> list[str]:
    """`levels` ordered as `colors` (level_colors) lists them: easiest first."""
    order = list(colors)
    return sorted(levels, key=order.index)


def run_style(runs: list[RunData], i: int) -> str:
    return list(RUN_STYLES)[i % len(RUN_STYLES)] if len(runs) > 1 else "-"


def uses_reschedule(runs: list[RunData]) -> bool:
    """Whether any run weighted its queries (scores, or a weight other than 1):
    otherwise the plot is flat."""
    return any(
        run.series("reschedule/score_mean")[0]
        or any(w != 1.0 for w in run.series("reschedule/weight_mean")[1])
        for run in runs
    )


def curve(
    ax, steps: list[int], values: list[float], label: str, color=None, style: str = "-"
) -> None:
    (line,) = ax.plot(steps, trailing_mean(values), label=label, color=color, linestyle=style)
    ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.8, linestyle=style)


def plot_accuracy(ax, runs: list[RunData]) -> None:
    """Training accuracy of the sampled answers per level, and the mean reward."""
    colors = level_colors(runs)
    for i, run in enumerate(runs):
        prefix, style = f"{run.name}: " if len(runs) > 1 else "", run_style(runs, i)
        levels = [k.removeprefix("acc/") for k in run.keys("acc/") if k != "acc/mean"]
        for level in in_level_order(levels, colors):  # acc/mean is the reward's curve
            curve(ax, *run.series(f"acc/{level}"), f"{prefix}{level}", colors[level], style)
        curve(ax, *run.series("reward/mean"), f"{prefix}reward", "black", style)
    ax.set(title="training accuracy per level and reward", xlabel="step", ylim=(-0.02, 1.02))


def plot_eval(ax, runs: list[RunData]) -> None:
    """Held-out greedy accuracy per level at each evaluated step."""
    colors = level_colors(runs)
    for i, run in enumerate(runs):
        prefix, style = f"{run.name}: " if len(runs) > 1 else "", run_style(runs, i)
        steps = sorted(run.evals, key=int)
        groups = list(dict.fromkeys(g for step in steps for g in run.evals[step]))
        for group in groups:
            points = [
                (int(s), 100 * run.evals[s][group]["accuracy"])
                for s in steps
                if group in run.evals[s]
            ]
            ax.plot(
                *zip(*points),
                marker="o",
                label=f"{prefix}{group}",
                color=colors[group],
                linestyle=style,
            )
    ax.set(title="held-out accuracy (%)", xlabel="step", ylim=(-2, 102))


def plot_curriculum(ax, runs: list[RunData]) -> None:
    """Share of each level among the step's prompts (stacked), the schedule's p(t) dashed."""
    run, colors = runs[0], level_colors(runs)
    shares = [k.removeprefix("curriculum/share/") for k in run.keys("curriculum/share/")]
    levels = in_level_order(shares, colors)
    if levels:
        steps = run.series(f"curriculum/share/{levels[0]}")[0]
        ax.stackplot(
            steps,
            *[trailing_mean(run.series(f"curriculum/share/{lvl}")[1]) for lvl in levels],
            labels=levels,
            alpha=0.8,
            colors=[colors.get(lvl, f"C{i}") for i, lvl in enumerate(levels)],
        )
        bottom = [0.0] * len(steps)
        for lvl in levels:
            p = run.series(f"curriculum/p/{lvl}")[1]
            bottom = [b + q for b, q in zip(bottom, p)]
            ax.plot(steps, bottom, color="black", linestyle="--", linewidth=0.8)
    ax.set(
        title=(
            f"curriculum: level shares{' of ' + run.name if len(runs) > 1 else ''} "
            "(dashed: schedule)"
        ),
        xlabel="step",
        ylim=(0, 1),
    )


def plot_reschedule(ax, runs: list[RunData]) -> None:
    """Re-Schedule's mean loss weight and mean query score per step."""
    for i, run in enumerate(runs):
        prefix, style = f"{run.name}: " if len(runs) > 1 else "", run_style(runs, i)
        curve(ax, *run.series("reschedule/weight_mean"), f"{prefix}mean loss weight", "C8", style)
        if run.series("reschedule/score_mean")[0]:
            curve(ax, *run.series("reschedule/score_mean"), f"{prefix}mean score", "C9", style)
    ax.set(title="Re-Schedule weights and scores", xlabel="step")


def plot_length(ax, runs: list[RunData]) -> None:
    for i, run in enumerate(runs):
        curve(ax, *run.series("response_length/mean"), run.name, "black", run_style(runs, i))
    ax.set(title="mean response length (tokens)", xlabel="step")


def plot_time(ax, runs: list[RunData]) -> None:
    """Seconds per step in each phase (stacked); with several runs, each run's whole step."""
    if len(runs) == 1:
        run = runs[0]
        steps = run.series("timing/step_s")[0]
        ax.stackplot(
            steps,
            *[trailing_mean(run.series(key)[1]) for key in TIMINGS],
            labels=list(TIMINGS.values()),
            colors=PHASE_COLOURS[: len(TIMINGS)],
        )
    else:
        for i, run in enumerate(runs):
            curve(ax, *run.series("timing/step_s"), run.name, "black", run_style(runs, i))
    ax.set(title="where the time went (s per step)", xlabel="step")


def uses_curriculum(runs: list[RunData]) -> bool:
    """Whether any run sampled more than one level: otherwise every step is all one level."""
    return any(len(run.keys("curriculum/share/")) > 1 for run in runs)


DRAWN_WHEN: dict[str, Callable[[list[RunData]], bool]] = {
    "reschedule": uses_reschedule,
    "curriculum": uses_curriculum,
}
"""Plots drawn only when the runs have something to show in them."""
PLOTS: dict[str, Callable] = {
    "accuracy": plot_accuracy,
    "eval": plot_eval,
    "curriculum": plot_curriculum,
    "reschedule": plot_reschedule,
    "length": plot_length,
    "time": plot_time,
}


def draw(runs: list[RunData], folder: Path) -> dict[str, Path]:
    """One PNG per plot in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, plot in PLOTS.items():
        if not DRAWN_WHEN.get(name, lambda runs: True)(runs):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.8))
        plot(ax, runs)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


def eval_table(runs: list[RunData]) -> str:
    """Held-out accuracy (%) per level, first and last evaluation and the change, a
    row per run and level."""
    head = (
        "<tr>"
        + ("<th>run</th>" if len(runs) > 1 else "")
        + (
            "<th>level</th><th>problems</th><th>before</th>"
            "<th>after</th><th>change</th><th>length</th></tr>"
        )
    )
    rows = []
    for run in runs:
        if not run.evals:
            rows.append(f"<tr><td colspan='7'>{html.escape(run.name)}: no evaluation yet</td></tr>")
            continue
        first, last = min(run.evals, key=int), max(run.evals, key=int)
        for group, row in run.evals[last].items():
            before = 100 * run.evals[first].get(group, {}).get("accuracy", float("nan"))
            after = 100 * row["accuracy"]
            change = after - before
            tone = "up" if change > 0 else "down" if change < 0 else ""
            rows.append(
                "<tr>"
                + (f"<td>{html.escape(run.name)}</td>" if len(runs) > 1 else "")
                + f"<td>{html.escape(group)}</td><td>{row['problems']}</td><td>{before:.1f}</td>"
                f"<td>{after:.1f}</td><td class='{tone}'>{change:+.1f}</td>"
                f"<td>{row['response_length']:.1f}</td></tr>"
            )
    steps = ", ".join(
        f"{html.escape(run.name)}: step {min(run.evals, key=int)} to {max(run.evals, key=int)}"
        for run in runs
        if run.evals
    )
    return (
        f"<table class='levels'><caption>held-out accuracy (%), greedy ({steps})</caption>{head}"
        f"{''.join(rows)}</table>"
    )


def facts(run: RunData) -> dict[str, str]:
    """The run's size at a glance: steps, training time, tokens generated and trained."""
    step_s = sum(m.get("timing/step_s", 0.0) for m in run.metrics)
    total = run.timing["total_s"] if run.timing else step_s
    return {
        "steps": f"{len(run.metrics):,}",
        "time": f"{total / 60:.1f} min",
        "tokens generated": f"{sum(m.get('tokens/generated', 0) for m in run.metrics):,}",
        "tokens trained": f"{sum(m.get('tokens/trained', 0) for m in run.metrics):,}",
    }


def time_bar(run: RunData) -> str:
    """Where the time went as one bar of coloured shares (timing.json; the steps' phases
    for a run still going)."""
    phases = (
        run.timing["seconds"]
        if run.timing
        else {name: sum(m.get(key, 0.0) for m in run.metrics) for key, name in TIMINGS.items()}
    )
    total = sum(phases.values()) or 1.0
    parts = [
        (PHASE_COLOURS[i % len(PHASE_COLOURS)], name, seconds)
        for i, (name, seconds) in enumerate(phases.items())
        if seconds >= 0.005 * total
    ]  # 0% left out
    bar = "".join(
        f"<span style='width:{100 * seconds / total:.2f}%;background:{colour}' "
        f"title='{html.escape(name)}: {seconds:.1f} s'></span>"
        for colour, name, seconds in parts
    )
    legend = ", ".join(
        f"<i style='background:{colour}'></i>{html.escape(name)} {100 * seconds / total:.0f}% "
        f"({seconds:.0f} s)"
        for colour, name, seconds in parts
    )
    return f"<div class='bar'>{bar}</div><p class='legend'>{legend}</p>"


def trees_page(run: RunData) -> tuple[Path, list[dict]] | None:
    """RUN_DIR/trees.html from the trees the run saved (output.save_trees), and those
    trees; None when none."""
    if run.path is None or not RunDir(run.path).trees_path.is_file():
        return None
    saved = saved_trees(RunDir(run.path))
    if not saved:
        return None
    out = run.path / TREES_PAGE
    out.write_text(render_trees(*pick_trees(saved, None, None)), encoding="utf-8")
    return out, saved


def trees_links(run: RunData, page_dir: Path) -> str:
    """Links to the run's saved trees: the paged page, and each tree of the last saved
    step by its fragment."""
    written = trees_page(run)
    if written is None:
        return "<p>no trees saved (train with <code>output.save_trees=N</code> to keep some)</p>"
    out, saved = written
    href = html.escape(quote(os.path.relpath(out, page_dir)))
    step = saved[-1]["step"]
    fragment_step = (
        "" if step is None else step
    )  # the page names a tree saved without a step by step=''
    last = [t for t in saved if t["step"] == step]
    links = " ".join(
        f"<a href='{href}#step={fragment_step}&amp;problem={html.escape(quote(str(t['id'])))}'>"
        f"{html.escape(str(t['id'])[:10])} ({html.escape(str(t['level']))})</a>"
        for t in last
    )
    return (
        f"<p><a href='{href}'>{len(saved):,} saved reasoning trees</a>; the last step's "
        f"({'none' if step is None else step}): {links}</p>"
    )


def stall_warnings(run: RunData) -> str:
    """A warning for each stretch of steps in a row that trained no token,
    with its likely causes."""
    return "".join(
        f"<p class='warn'>{html.escape(stall.line())}</p>" for stall in stalls(run.metrics)
    )


def summary(runs: list[RunData], page_dir: Path) -> str:
    """The first screen: accuracy before and after, then per run whether it learned nothing for a
    while, its size, where the time went, its trees."""
    cards = []
    for run in runs:
        size = "".join(f"<div><b>{value}</b><br>{name}</div>" for name, value in facts(run).items())
        name = f"<h3>{html.escape(run.name)}</h3>" if len(runs) > 1 else ""
        cards.append(
            f"<div class='card'>{name}{stall_warnings(run)}<div class='facts'>{size}</div>"
            "<h4>where the time went</h4>"
            f"{time_bar(run)}{trees_links(run, page_dir)}</div>"
        )
    return f"<div class='summary'>{eval_table(runs)}<div class='cards'>{''.join(cards)}</div></div>"


STYLE = """body{font-family:sans-serif;margin:1.5em 2em;max-width:1600px}
.summary{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.cards{flex:1;min-width:420px}
.card{border:1px solid #ddd;border-radius:6px;padding:0.6em 1em;margin-bottom:0.8em}
.facts{display:flex;gap:2em}.facts b{font-size:1.4em}h3,h4{margin:0.3em 0}
.bar{display:flex;height:1.3em;border-radius:4px;overflow:hidden}\
.bar span{display:block;height:100%}
.legend i{display:inline-block;width:0.8em;height:0.8em;margin:0 0.3em 0 0.6em}\
.legend{font-size:0.85em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:0.25em 0.7em;text-align:right}
.differ td{text-align:left}.differ{margin-bottom:1em}
caption{text-align:left;font-weight:bold;padding-bottom:0.3em}\
.up{color:#1a7f1a;font-weight:bold}.down{color:#c33}
.warn{background:#fff3d6;border-left:4px solid #d08a00;padding:0.4em 0.7em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:0.8em}
.grid img{width:100%;border:1px solid #eee}
pre{background:#f6f6f6;padding:1em;overflow:auto}summary{cursor:pointer;font-weight:bold}"""


CURVES_NOTE = (
    f"Each per-step curve is the mean of the last {SMOOTH} steps; the faint line behind it, in its "
    "colour, is the value of each step. Legends list levels easiest first."
)


def page(title: str, images: dict[str, Path], first_screen: str, config: str) -> str:
    """A self-contained page: the PNGs inlined as data URIs, no script, no external resource."""
    figures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for name, path in images.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{first_screen}"
        f"<h2>curves</h2><p>{CURVES_NOTE}</p><div class='grid'>{figures}</div>{config}"
        "</body></html>"
    )


def write_report(run_dir: Path) -> Path:
    """RUN_DIR/plots/*.png, RUN_DIR/trees.html (when trees were saved) and RUN_DIR/report.html."""
    run = load_run(run_dir)
    images = draw([run], run_dir / "plots")
    config = f"<details><summary>config</summary><pre>{html.escape(run.config)}</pre></details>"
    out = run_dir / REPORT_FILE
    out.write_text(
        page(
            f"treerl run {run.name} ({len(run.metrics)} steps)",
            images,
            summary([run], run_dir),
            config,
        )
    )
    return out


NOT_COMPARED = ("output.dir",)
"""Config keys that differ between any two runs (where each was written) and say nothing of how."""


def shown_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def config_differences(runs: list[RunData], run_dirs: list[Path]) -> str:
    """A table of the config keys whose values differ between the runs as they are now (config.yaml
    with the changes of every resume; a section inside a section key by key:
    rollout.vllm.max_num_seqs), a column per run; a key a run's config lacks shows as -."""
    configs = [flat(RunDir(path).config_data(), subsections=True) for path in run_dirs]
    keys = sorted({key for config in configs for key in config} - set(NOT_COMPARED))
    differ = [key for key in keys if len({shown_value(c.get(key, "-")) for c in configs}) > 1]
    if not differ:
        return "<p>The runs' configs are the same.</p>"
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td>"
        + "".join(f"<td>{html.escape(shown_value(c.get(key, '-')))}</td>" for c in configs)
        + "</tr>"
        for key in differ
    )
    return (
        "<table class='differ'><caption>config keys that differ</caption>"
        f"<tr><th>key</th>{head}</tr>{rows}</table>"
    )


def write_comparison(run_dirs: list[Path], out: Path) -> Path:
    """The runs on one page in out (an HTML file) laid out as a report, opening with the config keys
    that differ between them; its PNGs in a folder beside it."""
    runs = [load_run(path) for path in run_dirs]
    if len({run.name for run in runs}) < len(
        runs
    ):  # same folder names: tell them apart by the whole path
        for run, path in zip(runs, run_dirs):
            run.name = str(path)
    images = draw(runs, out.with_suffix("") / "plots")
    configs = "".join(
        f"<details><summary>config of {html.escape(run.name)}</summary>"
        f"<pre>{html.escape(run.config)}</pre></details>"
        for run in runs
    )
    styles = ", ".join(
        f"{html.escape(run.name)} {RUN_STYLES[run_style(runs, i)]}" for i, run in enumerate(runs)
    )
    first = (
        config_differences(runs, run_dirs)
        + summary(runs, out.parent)
        + f"<p>line styles in the plots: {styles}</p>"
    )
    out.write_text(page("treerl: " + " vs ".join(run.name for run in runs), images, first, configs))
    return out
