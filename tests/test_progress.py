from treerl.progress import LOG_LINES, progress_bar, step_done


def test_without_a_terminal_progress_is_logged_as_lines(capsys):
    with progress_bar() as bar:
        job = bar.add_task("train", total=100, info="")
        for step in range(100):
            step_done(bar, job, f"reward {step}")
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("train ") and "/100" in line
    ]
    assert lines[0] == "train 5/100  reward 4"
    assert len([line for line in lines if "━" not in line]) == LOG_LINES


def test_disabled_progress_prints_nothing(capsys):
    with progress_bar(enabled=False) as bar:
        job = bar.add_task("train", total=10, info="")
        for _ in range(10):
            step_done(bar, job, "x")
    assert capsys.readouterr().out == ""


def test_with_the_bar_off_a_line_every_log_every_steps(capsys):
    """Issue 31 item 9 (output.log_every): a batch job without progress bars still says how far it
    is (it printed nothing)."""
    with progress_bar(enabled=False) as bar:
        job = bar.add_task("train", total=7, info="")
        for step in range(7):
            step_done(bar, job, f"reward {step}", log_every=3)
    assert capsys.readouterr().out.splitlines() == ["train 3/7  reward 2", "train 6/7  reward 5"]
