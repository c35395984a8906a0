"""docs/science.md: its verdicts by hand, its JSON follows from its runs, and the page shows the
JSON's numbers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))
spec = importlib.util.spec_from_file_location("science", ROOT / "bench" / "science.py")
science = importlib.util.module_from_spec(spec)
spec.loader.exec_module(science)
RESULTS = json.loads((ROOT / "docs" / "results" / "science.json").read_text())
PAGE = (ROOT / "docs" / "science.md").read_text()


def row(arm: str, seed: int, hard: float, train_s: float = 100.0, length: float = 30.0) -> dict:
    return {
        "arm": arm,
        "seed": seed,
        "accuracy": {"hard": {"after": hard}},
        "train_s": train_s,
        "length": {"hard": {"after": length}},
    }


def claim(metric: str, paper_delta: float | None) -> dict:
    return {
        "paper": "p",
        "claim": "c",
        "paper_result": "r",
        "method": "m",
        "baseline": "b",
        "metric": metric,
        "paper_delta": paper_delta,
    }


@pytest.mark.parametrize(
    ("method", "baseline", "paper_delta", "mean", "verdict"),
    [
        ([50, 60, 70], [40, 65, 60], 2.9, 5.0, "paper's sign in 2 of 3 seeds"),
        ([50, 60, 70], [40, 50, 60], 2.9, 10.0, "same sign, every seed"),
        ([30, 40, 50], [40, 50, 60], 2.9, -10.0, "opposite sign, every seed"),
        ([30, 40, 50], [32, 41, 50], 0.0, -1.0, "same"),
        ([30, 40, 50], [40, 50, 60], 0.0, -10.0, "differs"),
        ([30, 40, 50], [40, 50, 60], None, -10.0, "-"),
    ],
)
def test_a_claim_on_accuracy_is_the_paired_change_in_points(
    method, baseline, paper_delta, mean, verdict
):
    rows = [row("m", s, v) for s, v in enumerate(method)] + [
        row("b", s, v) for s, v in enumerate(baseline)
    ]
    result = science.compare(rows, claim("hard", paper_delta))
    assert result["delta"]["mean"] == mean and result["verdict"] == verdict
    assert result["delta_unit"] == "points" and result["seeds"] == [0, 1, 2]


def test_time_and_length_are_relative_changes_over_the_seeds_both_arms_ran():
    rows = [
        row("m", 0, 0, train_s=20),
        row("m", 1, 0, train_s=30),
        row("b", 0, 0, train_s=100),
        row("b", 1, 0, train_s=100),
        row("b", 2, 0, train_s=100),
    ]
    result = science.compare(rows, claim("time", -83.0))
    # (20 - 100) / 100 and (30 - 100) / 100: -80% and -70%, seed 2 has no method run
    assert result["seeds"] == [0, 1] and result["delta"] == {"mean": -75.0, "sd": 7.1}
    assert result["delta_unit"] == "%" and result["verdict"] == "same sign, every seed"
    shorter = [row("m", 0, 0, length=27), row("b", 0, 0, length=30)]
    assert science.compare(shorter, claim("length", -18.0))["delta"]["mean"] == -10.0
    assert science.compare(rows, {**claim("hard", 1.0), "method": "absent"}) is None


def test_the_json_comparisons_follow_from_its_runs():
    recomputed = [
        r for r in (science.compare(RESULTS["runs"], c) for c in science.COMPARISONS) if r
    ]
    assert recomputed == RESULTS["comparisons"]
    assert {r["seed"] for r in RESULTS["runs"]} == {0, 1, 2}
    assert {r["arm"] for r in RESULTS["runs"]} == set(science.ARMS)


def test_the_page_shows_the_json_tables():
    assert science.premise_table(RESULTS["premises"]) in PAGE
    assert science.table(RESULTS["comparisons"]) in PAGE
    assert science.arm_table(RESULTS["runs"]) in PAGE
