"""The one progress bar style of treerl (rich), silenced when output is not shown."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_LINES = 20


def progress_bar(enabled: bool = True) -> Progress:
    """Use as `with progress_bar() as bar: job = bar.add_task(name, total=N, info="")`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


def step_done(bar: Progress, job: TaskID, info: str, log_every: int = 0) -> None:
    """Advance a job by one; where no live bar can be drawn (a log file, CI), print a line every 5%;
    with the bar off (output.progress=false), a line every `log_every` steps (0: none)."""
    bar.update(job, advance=1, info=info)
    task = bar.tasks[bar.task_ids.index(job)]
    done = int(task.completed)
    if bar.disable:
        due = log_every > 0 and done % log_every == 0
    else:
        due = not bar.console.is_terminal and done % max(1, int(task.total or 1) // LOG_LINES) == 0
    if due:
        bar.console.print(f"{task.description} {done}/{int(task.total or 0)}  {info}")
