"""E2H schedules, the r-score, ranks and Re-Schedule weights against hand-worked numbers; the
problem sampler."""

import json
import math
import random
import re

import pytest
import torch

from treerl.config import RolloutConfig, load_config
from treerl.curriculum import level_probs, loss_weight, r_score, ranks
from treerl.curriculum.reschedule import ScoreBook
from treerl.curriculum.rscore import greedy_choices, leaf_accuracy, pruning_choices, r_score_pruning
from treerl.curriculum.sampler import ProblemSampler, generated_pool
from treerl.curriculum.weights import QueryWeights
from treerl.errors import UserError
from treerl.rollout.tree import ReasoningTree
from treerl.tasks import get_task
from treerl.tasks.base import Problem

T = 100


def approx(values):
    return pytest.approx(values, abs=5e-6)


# E2H schedules, K = 4 levels, T = 100 steps, at t = 0, T/4, T/2, T


def test_balanced_is_uniform_throughout():
    for t in (0, 25, 50, 100):
        assert level_probs("balanced", t, T, 4) == [0.25] * 4


def test_classic_moves_through_k_equal_stages():
    assert [level_probs("classic", t, T, 4) for t in (0, 25, 50, 100)] == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]
    # K = 3 over 10 steps: floor(t * 3 / 10) -> stages [0, 3), [4, 6), [7, 10]
    assert [level_probs("classic", t, 10, 3).index(1) for t in range(11)] == [
        0,
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
        2,
    ]


def test_cosine_mirrors_the_linear_ramp():
    # t=0: a=1, p_k = (K-k)/Z with Z=10; t=T/2: a=1/2, p_k = (K+1)/(2Z) = 1/4;
    # t=T: a=0, p_k = (k+1)/Z
    assert level_probs("cosine", 0, T, 4) == approx([0.4, 0.3, 0.2, 0.1])
    # t=T/4: a = (1 + cos(pi/4))/2 = 0.8535534; p_0 = 0.4a + 0.1(1-a) = 0.3560660
    assert level_probs("cosine", 25, T, 4) == approx([0.3560660, 0.2853553, 0.2146447, 0.1439340])
    assert level_probs("cosine", 50, T, 4) == approx([0.25] * 4)
    assert level_probs("cosine", 100, T, 4) == approx([0.1, 0.2, 0.3, 0.4])


def test_gaussian_follows_its_mean_with_a_floor():
    # beta = sigma = 0.5, p_min = 2/(4*5) = 0.1, so p_k = 0.1 + 0.6 q_k
    # with q_k ~ exp(-2 (k - mu)^2)
    # t=0: mu=0, q ~ (1, e^-2, e^-8, e^-18) / 1.1356700
    assert level_probs("gaussian", 0, T, 4) == approx([0.6283216, 0.1715002, 0.1001772, 0.1000000])
    # t=T/4: mu = sqrt(1/4) * 3 = 1.5, q ~ (e^-4.5, e^-0.5, e^-0.5, e^-4.5) / 1.2352787
    assert level_probs("gaussian", 25, T, 4) == approx([0.1053957, 0.3946043, 0.3946043, 0.1053957])
    # t=T/2: mu = sqrt(1/2) * 3 = 2.1213203, (k - mu)^2 = (4.5, 1.2573593, 0.0147186, 0.7720779),
    # q ~ (0.0001234, 0.0808857, 0.9709918, 0.2134920) / 1.2654929
    assert level_probs("gaussian", 50, T, 4) == approx([0.1000585, 0.1383498, 0.5603701, 0.2012216])
    # t=T: mu=3, the mirror of t=0
    assert level_probs("gaussian", 100, T, 4) == approx(
        [0.1000000, 0.1001772, 0.1715002, 0.6283216]
    )


def test_gaussian_parameters():
    # p_min = 0: pure normalised Gaussian; K=2 at t=0: q ~ (1, e^-2)
    assert level_probs("gaussian", 0, T, 2, p_min=0.0) == approx(
        [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]
    )
    # beta = 1: mu moves linearly, at T/2 it is 1.5 of 0..3: symmetric
    p = level_probs("gaussian", 50, T, 4, beta=1.0)
    assert p == approx(p[::-1]) and sum(p) == pytest.approx(1.0)
    with pytest.raises(UserError, match="p_min must be in"):
        level_probs("gaussian", 0, T, 4, p_min=0.3)


def test_schedule_parameters_are_checked_by_name():
    with pytest.raises(
        UserError, match="schedule 'cosine' has no parameter 'beta'; it takes: none"
    ):
        level_probs("cosine", 0, T, 4, beta=0.5)
    with pytest.raises(UserError, match="has no parameter 'mu'; it takes: beta, sigma, p_min"):
        level_probs("gaussian", 0, T, 4, mu=1.0)
    with pytest.raises(UserError, match="unknown curriculum.name 'linear'"):
        level_probs("linear", 0, T, 4)


@pytest.mark.parametrize("schedule", ["balanced", "classic", "cosine", "gaussian"])
def test_every_schedule_is_a_distribution(schedule):
    for k in (1, 2, 3, 5):
        for t in range(0, 21):
            p = level_probs(schedule, t, 20, k)
            assert len(p) == k and min(p) >= 0 and sum(p) == pytest.approx(1.0)


# r-score


def test_r_score_greedy_on_a_small_tree():
    # leaves 1 0 | 0 1 1: ACC = 3/5. Gains: root +1/15 (via [[0,1],1]), (0,) +3/20, (1,) +1/15,
    # (1, 0) +3/20.
    # Pick (0,) (first of the tie, preorder) -> ACC 3/4; then the root, (1,) and (1,0) all gain 1/4:
    # the root wins.
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])
    assert greedy_choices(tree) == [((0,), 0, pytest.approx(0.15)), ((), 0, pytest.approx(0.25))]
    assert r_score(tree) == pytest.approx(0.4)
    assert r_score(tree, top_m=1) == pytest.approx(0.15)
    # reference: no root, no depth-1 node, no node whose children are all leaves -> nothing to pick
    assert r_score(tree, eligible="reference") == 0.0


def test_r_score_of_all_correct_and_all_wrong_trees_is_zero():
    assert r_score(ReasoningTree.from_leaf_rewards([[1, 1], [1, 1]])) == 0.0
    assert r_score(ReasoningTree.from_leaf_rewards([[0, 0], [0, [0, 0]]])) == 0.0


def test_r_score_on_an_unbalanced_tree_with_early_leaves():
    # A chain with an early EOS leaf at every depth: root -> X | 0, X -> Y | 0, Y -> Z | 0,
    # Z -> 1 | 0.
    # Leaves 1 0 0 0 0: ACC = 1/5. Every candidate gains 1/20 at first; preorder picks the root,
    # then X (+1/12), then Y (+1/6), then Z (+1/2): 1/20 + 1/12 + 1/6 + 1/2 = 4/5 = 1 - 1/5.
    tree = ReasoningTree.from_leaf_rewards([[[[1, 0], 0], 0], 0])
    assert [path for path, _, _ in greedy_choices(tree)] == [(), (0,), (0, 0), (0, 0, 0)]
    assert r_score(tree) == pytest.approx(0.8)
    assert r_score(tree, top_m=3) == pytest.approx(0.3)
    # reference: only Y = (0, 0) qualifies (depth 2, one inner child):
    # keep Z -> leaves 1 0 0 0 -> +1/20
    assert greedy_choices(tree, eligible="reference") == [((0, 0), 0, pytest.approx(0.05))]


def test_r_score_prefers_the_larger_gain_over_preorder():
    # root children: [0, 0] and [0, 1, 0, 0]; the root is first in preorder but (1,) gains more:
    # ACC = 1/6; (0,): keep a 0 -> 1/5 (+1/30); (1,): keep the 1 -> 1/3 (+1/6);
    # root: keep (1,) -> 1/4 (+1/12)
    tree = ReasoningTree.from_leaf_rewards([[0, 0], [0, 1, 0, 0]])
    assert greedy_choices(tree, top_m=1) == [((1,), 1, pytest.approx(1 / 6))]


def test_the_kept_child_is_the_one_of_highest_subtree_accuracy_as_the_reference_code():
    # root -> X -> P, Q; P -> leaf 1, R = [1, 1, 1, 0], S = [0, 0, 0, 0]; Q = [0, 0, 0, 0].
    # ACC = 4/13.
    # Only P is eligible under `reference`. The code keeps P's best child by accuracy, the lone leaf
    # 1 (100%): leaves 1 + Q's four 0s = 1/5 < 4/13, no gain, r-score 0. Keeping R instead (75%, but
    # 4 leaves) gives 3/8: a gain of 3/8 - 4/13 = 7/104 = 0.0673, which `child=gain` takes.
    tree = ReasoningTree.from_leaf_rewards([[[1, [1, 1, 1, 0], [0, 0, 0, 0]], [0, 0, 0, 0]]])
    assert r_score(tree, top_m=5, eligible="reference") == 0.0
    assert r_score(tree, top_m=5, eligible="reference", child="gain") == pytest.approx(7 / 104)
    assert greedy_choices(tree, 5, "reference", "gain") == [((0, 0), 1, pytest.approx(7 / 104))]


# k = 2, d = 4, 16 leaves; depth-2 nodes 1.1 (4/4 right), 1.2 (0/4), 2.1 ([1, 1], [0, 0]),
# 2.2 ([1, 0], [0, 0])
FULL = [[[[1, 1], [1, 1]], [[0, 0], [0, 0]]], [[[1, 1], [0, 0]], [[1, 0], [0, 0]]]]


def test_selection_r_score_of_a_full_tree_by_hand():
    # ACC 7/16. Step 1: 1.2, 2.1 and 2.2 each gain 7/14 - 7/16 = 1/16; the first breadth-first, 1.2,
    # is taken.
    # Step 2: 2.1 and 2.2 each gain 7/12 - 7/14 = 1/12: 2.1. Step 3: 2.2 gains 7/10 - 7/12 = 7/60.
    # Then keeping a child of 1.1 (both right) drops ACC: 5/8 < 7/10. Sum
    # 1/16 + 1/12 + 7/60 = 21/80.
    tree = ReasoningTree.from_leaf_rewards(FULL)
    assert greedy_choices(tree, 10, "reference") == [
        ((0, 1), 0, pytest.approx(1 / 16)),
        ((1, 0), 0, pytest.approx(1 / 12)),
        ((1, 1), 0, pytest.approx(7 / 60)),
    ]
    assert (
        r_score(tree, 10, "reference")
        == pytest.approx(21 / 80)
        == r_score(tree, 10, "reference", "gain")
    )
    assert r_score(tree, 2, "reference") == pytest.approx(7 / 48)


def test_pruning_r_score_of_a_full_tree_by_hand():
    # ACC 7/16. Removing 1.2 gives 7/12 (+7/48), 2.2 gives 6/12 (+3/48), 1.1 and 2.1 lose: remove
    # 1.2.
    # Then removing 2.2 gives 6/8 (+1/6), 2.1 gives 5/8 (+1/24): remove 2.2. Then 2.1: 4/4 (+1/4).
    # Removing the last subtree leaves no leaf, ACC 0: no gain. Sum 7/48 + 1/6 + 1/4 = 9/16.
    tree = ReasoningTree.from_leaf_rewards(FULL)
    assert pruning_choices(tree, 10, "reference") == [
        ((0, 1), pytest.approx(7 / 48)),
        ((1, 1), pytest.approx(1 / 6)),
        ((1, 0), pytest.approx(1 / 4)),
    ]
    assert r_score_pruning(tree, 10, "reference") == pytest.approx(9 / 16)
    assert r_score_pruning(tree, 2, "reference") == pytest.approx(15 / 48)
    assert (
        r_score_pruning(ReasoningTree.from_leaf_rewards([[1, 1], [1, 1]])) == 0.0
    )  # nothing to remove


def test_reference_eligibility_needs_trees_of_depth_four():
    from treerl.curriculum.rscore import check_depth

    check_depth("reference", 4, "the trees")
    check_depth("all", 1, "the trees")
    with pytest.raises(UserError, match="needs trees of depth 4 or more .* the trees are 3 deep"):
        check_depth("reference", 3, "the trees")


def test_leaf_accuracy():
    assert leaf_accuracy(ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])) == pytest.approx(
        0.6
    )
    assert (
        leaf_accuracy(ReasoningTree.from_leaf_rewards([0.5, 1])) == 0.5
    )  # partial credit is not correct


# ranks and weights


def test_ranks_put_the_highest_score_first_and_share_ties():
    assert ranks({"a": 0.5, "b": 0.5, "c": 0.1, "d": 0.9}) == {
        "d": 0.0,
        "a": 0.5,
        "b": 0.5,
        "c": 1.0,
    }
    assert ranks({"a": 0.3, "b": 0.2, "c": 0.1}) == {"a": 0.0, "b": 0.5, "c": 1.0}
    assert ranks({"a": 1.0}) == {"a": 0.5}


def test_weights_move_from_simple_to_complex_queries():
    # linear: t=0 -> w = 0.5 + 1.5 (1 - rank); t=T -> w = 0.5 + 1.5 rank
    assert [loss_weight(r, 0, T, "linear") for r in (0.0, 0.5, 1.0)] == [2.0, 1.25, 0.5]
    assert [loss_weight(r, T, T, "linear") for r in (0.0, 0.5, 1.0)] == [0.5, 1.25, 2.0]
    # sigmoid: gamma(0) = 1/(1+e^5) = 0.0066929 -> 0.5 + 1.5 * 0.9933071 = 1.4899606 + 0.5
    assert loss_weight(0.0, 0, T, "sigmoid") == pytest.approx(1.9899606)
    assert loss_weight(1.0, T, T, "sigmoid") == pytest.approx(1.9899606)
    assert (
        loss_weight(0.0, 50, T, "sigmoid")
        == pytest.approx(1.25)
        == loss_weight(1.0, 50, T, "sigmoid")
    )
    assert loss_weight(0.25, 0, T, "linear", w_min=1.0, w_max=3.0) == pytest.approx(2.5)


def test_past_their_horizon_the_schedules_stay_at_their_end():
    """A resume that sets train.steps past the horizon T the run began with: t > T is taken as T.
    Before, cosine's a = (1 + cos(pi 1.5)) / 2 = 0.5 went back to p = (1/2, 1/2) at t = 1.5 T, and
    linear weights left [w_min, w_max] (gamma 1.5: w = 0.5 + 1.5 (-0.5 + 1.5 rank) = -0.25 for rank
    0)."""
    from treerl.curriculum.levels import make_schedule

    for name in ("classic", "cosine", "gaussian"):
        schedule = make_schedule(name, 10, 2, {})
        assert schedule.probs(15) == schedule.probs(10)
    assert make_schedule("cosine", 10, 2, {}).probs(15) == pytest.approx([1 / 3, 2 / 3])
    assert [loss_weight(r, 15, 10, "linear") for r in (0.0, 1.0)] == [0.5, 2.0]


def test_score_book_ranks_unseen_queries_at_the_median():
    book = ScoreBook({"a": 0.9, "b": 0.1})
    assert (book.rank("a"), book.rank("b"), book.rank("new")) == (0.0, 1.0, 0.5)
    book.update("c", 1.0)
    assert (book.rank("c"), book.rank("a"), book.rank("b")) == (0.0, 0.5, 1.0)
    restored = ScoreBook()
    restored.load_state_dict(book.state_dict())
    assert restored.rank("a") == 0.5


# the problem sampler


def test_a_pool_is_walked_once_per_pass_and_resumes_exactly():
    task = get_task("arithmetic")
    sampler = ProblemSampler(task, ["easy", "medium"], "balanced", {}, 10, pool_size=5)
    assert [len(sampler.pools[level]) for level in ("easy", "medium")] == [5, 5]
    rng = random.Random(0)
    first_pass = [sampler.next("easy", rng).id for _ in range(5)]
    assert sorted(first_pass) == sorted(p.id for p in sampler.pools["easy"])
    state, rng_state = sampler.state_dict(), rng.getstate()
    continued = [sampler.next("easy", rng).id for _ in range(7)]
    again = ProblemSampler(task, ["easy", "medium"], "balanced", {}, 10, pool_size=5)
    again.load_state_dict(state)
    rng.setstate(rng_state)
    assert [again.next("easy", rng).id for _ in range(7)] == continued
    assert sorted(continued[:5]) == sorted(first_pass)


def test_generated_pools_are_the_same_in_every_run_and_distinct():
    task = get_task("countdown")
    pool = generated_pool(task, "easy", 20)
    assert [p.id for p in pool] == [p.id for p in generated_pool(task, "easy", 20)]
    assert len({p.id for p in pool}) == 20


def test_classic_draws_only_the_current_stage():
    task = get_task("arithmetic")
    sampler = ProblemSampler(task, ["easy", "medium", "hard"], "classic", {}, 9)
    rng = random.Random(1)
    assert {p.level for p in sampler.draw(1, 30, rng)} == {"easy"}  # t = 0
    assert {p.level for p in sampler.draw(5, 30, rng)} == {"medium"}  # t = 4: floor(4*3/9) = 1
    assert {p.level for p in sampler.draw(9, 30, rng)} == {"hard"}  # t = 8: floor(8*3/9) = 2


# treerl score, and training from its file


def score_args(model_dir, out, *extra):
    return [
        "score",
        "--out",
        str(out),
        f"model.name_or_path={model_dir}",
        "output.progress=false",
        "train.threads=1",
        "curriculum.levels=[easy,medium]",
        "curriculum.pool_size=3",
        "rscore.branching=2",
        "rscore.depth=2",
        "rscore.step_tokens=4",
        "rollout.max_new_tokens=12",
        *extra,
    ]


@pytest.mark.slow
def test_score_writes_one_row_per_query_and_training_reads_it(model_dir, tmp_path, capsys):
    import json

    from treerl.cli import main
    from treerl.config import load_config
    from treerl.loop import trainer

    out = tmp_path / "scores.jsonl"
    assert main(score_args(model_dir, out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {row["level"] for row in rows} == {"easy", "medium"}
    for row in rows:
        assert (
            0.0 <= row["r_score"] <= 1.0 - row["leaf_acc"] + 1e-9
        )  # the greedy can at most fix every leaf
        assert 2 <= row["leaves"] <= 4 and 0.0 <= row["rank"] <= 1.0
    assert sorted(row["rank"] for row in rows) == sorted(
        ranks({r["id"]: r["r_score"] for r in rows}).values()
    )
    assert "r-scores of 6 queries" in capsys.readouterr().out

    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "output.progress=false",
            "train.threads=1",
            "train.steps=2",
            "rollout.batch_prompts=2",
            "rollout.n=2",
            "rollout.max_new_tokens=8",
            "eval.problems=2",
            "curriculum.levels=[easy,medium]",
            "curriculum.pool_size=3",
            "reschedule.rank_by=rscore",
            f"reschedule.scores_file={out}",
        ],
    )
    trainer.train(cfg, tmp_path / "run")
    metrics = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(m["reschedule/score_mean"] is not None for m in metrics)


def test_score_needs_a_fixed_pool_for_generated_tasks(model_dir, tmp_path, capsys):
    from treerl.cli import main

    assert main(score_args(model_dir, tmp_path / "s.jsonl", "curriculum.pool_size=0")) == 2
    assert "set curriculum.pool_size=N" in capsys.readouterr().err
    assert main(score_args(model_dir, tmp_path / "s.jsonl", "rscore.depth=4")) == 2
    assert "never reaches depth 4" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()


def test_score_out_is_checked_before_any_work(tmp_path, capsys):
    """A path in a run directory, a directory, an existing file without --overwrite, a --resume with
    nothing to resume: refused in one line before the model loads (it does not exist here), and
    nothing is written."""
    from treerl.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name, text in [
        ("config.yaml", "seed: 0\n"),
        ("metrics.jsonl", '{"step": 1}\n'),
        (".lock", ""),
    ]:
        (run / name).write_text(text)
    (tmp_path / "dir").mkdir()
    (tmp_path / "old.jsonl").write_text("kept\n")
    cases = [
        ([str(run / "metrics.jsonl")], f"is in the run directory {run}"),
        ([str(run / "checkpoints" / "s.jsonl")], f"is in the run directory {run}"),
        ([str(run)], f"is in the run directory {run}"),
        ([str(tmp_path / "dir")], "is a directory; give the file to write"),
        ([str(tmp_path / "old.jsonl")], "exists; give --overwrite to replace it"),
        ([str(tmp_path / "new.jsonl"), "--resume"], "new.jsonl.partial does not exist"),
        ([str(tmp_path / "old.jsonl"), "--resume"], "old.jsonl is complete and"),
    ]
    for out, why in cases:
        assert (
            main(
                [
                    "score",
                    "--out",
                    *out,
                    "model.name_or_path=/no/such/model",
                    "curriculum.pool_size=2",
                ]
            )
            == 2
        )
        assert why in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "old.jsonl", "run"]
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and (
        tmp_path / "old.jsonl"
    ).read_text() == "kept\n"
    assert not list((tmp_path / "dir").iterdir()) and not list((run / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_failed_scoring_keeps_its_batches_and_resume_gives_the_uninterrupted_file(
    model_dir, tmp_path, capsys, monkeypatch
):
    """Five queries in batches of two; the disk fills while the second batch is written. OUT.partial
    keeps the first batch; --resume (after a kill tore its last line) scores the other three as the
    uninterrupted scoring did (the same rows, the same generator state after each batch) and writes
    the same file."""
    import errno

    import treerl.commands.score as score
    from treerl.cli import main

    def limited(out, *flags, extra=()):
        sampled = [
            "rscore.batch_prompts=2",
            "rollout.temperature=2.0",
        ]  # hot sampling: the draws show in the rows
        return ["score", *flags, "--limit", "5", *score_args(model_dir, out, *sampled, *extra)[1:]]

    appended, fail_at = [], [0]

    def append(path, records):
        appended.extend(records)
        if len(appended) == fail_at[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, records)

    real_append = score.append_jsonl
    monkeypatch.setattr(score, "append_jsonl", append)
    whole, out = tmp_path / "whole.jsonl", tmp_path / "scores.jsonl"
    assert main(limited(whole)) == 0 and not (tmp_path / "whole.jsonl.partial").exists()
    uninterrupted = appended[:]
    assert [len(batch["rows"]) for batch in uninterrupted] == [2, 2, 1]
    appended.clear()
    fail_at[0] = 2
    assert main(limited(out)) == 2
    err = capsys.readouterr().err
    assert (
        f"cannot write {out}.partial: No space left on device; the queries scored before are kept"
        in err
    )
    assert (
        "treerl score --resume" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    )
    partial = tmp_path / "scores.jsonl.partial"
    kept = [json.loads(line) for line in partial.read_text().splitlines()]
    assert kept[0]["settings"]["limit"] == 5 and kept[1:] == uninterrupted[:1]
    assert main(limited(out)) == 2
    assert "holds an interrupted scoring" in capsys.readouterr().err
    assert main(limited(out, "--resume", extra=["rscore.top_m=3"])) == 2
    assert (
        "was scored with rscore.top_m=4, not 3; resume with the same settings"
        in capsys.readouterr().err
    )
    with partial.open("a") as f:
        f.write('{"rows": [{"id": ')  # a kill in the middle of a line
    appended.clear()
    fail_at[0] = 0
    assert main(limited(out, "--resume")) == 0
    assert appended == uninterrupted[1:]
    assert out.read_text() == whole.read_text() and not partial.exists()
    assert main(["score", "--overwrite", "--limit", "1", *score_args(model_dir, whole)[1:]]) == 0
    assert len(whole.read_text().splitlines()) == 1


def test_a_bad_score_file_names_its_line(tmp_path):
    from treerl.curriculum.scores import RANKINGS, read_scores

    path = tmp_path / "scores.jsonl"
    path.write_text('{"id": "a", "r_score": 0.5, "leaf_acc": 0.25}\n\n{"id": "b", "leaf_acc": 1}\n')
    assert read_scores(str(path), RANKINGS["acc"]) == {"a": 0.25, "b": 1.0}
    path.write_text('{"id": "a", "r_score": 0.5, "leaf_acc": 0.25}\n{"id": "b"}\n')
    with pytest.raises(UserError, match=r"scores.jsonl:2: not a score row .* 'r_score'"):
        read_scores(str(path), RANKINGS["rscore"])
    with pytest.raises(UserError, match="does not exist"):
        read_scores(str(tmp_path / "missing.jsonl"), RANKINGS["rscore"])
    with pytest.raises(UserError, match="needs reschedule.scores_file"):
        load_config(None, ["reschedule.rank_by=rscore"])


def test_a_score_file_with_nan_strings_booleans_or_repeated_ids_is_refused_by_line(tmp_path):
    from treerl.curriculum.scores import RANKINGS, read_scores

    path = tmp_path / "scores.jsonl"
    good = '{"id": "a", "r_score": 0.5}\n'
    for bad, why in [
        ('{"id": "b", "r_score": NaN}', "'r_score' is NaN, not a finite number"),
        ('{"id": "b", "r_score": Infinity}', "'r_score' is Infinity, not a finite number"),
        ('{"id": "b", "r_score": "0.5"}', "'r_score' is \"0.5\", not a finite number"),
        ('{"id": "b", "r_score": true}', "'r_score' is true, not a finite number"),
        ('{"id": 7, "r_score": 0.5}', "'id' is 7, not a string"),
        ('["b", 0.5]', "not a score row"),
        ('{"id": "a", "r_score": 0.25}', "id 'a' was scored on line 1 already"),
    ]:
        path.write_text(good + bad + "\n")
        with pytest.raises(UserError, match=f"scores.jsonl:2: {re.escape(why)}"):
            read_scores(str(path), RANKINGS["rscore"])


def coverage_config(path, *extra):
    return load_config(
        None, ["reschedule.rank_by=rscore", f"reschedule.scores_file={path}", *extra]
    )


def test_a_score_file_must_cover_the_pool_unless_told(tmp_path):
    """Ranks are taken among the pool's queries: ids of another pool are left out, unscored queries
    rank 0.5."""
    pool = [Problem(f"q{i}", "1", "easy") for i in range(4)]
    ids = [problem.id for problem in pool]
    path = tmp_path / "scores.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": i, "r_score": s}) + "\n"
            for i, s in [(ids[0], 0.1), (ids[2], 0.3), ("other", 0.9)]
        )
    )
    with pytest.raises(
        UserError,
        match=r"has scores for 2 of 4 queries, and 1 for queries not in the pool, fewer "
        r"than reschedule.min_coverage=1: .* set reschedule.min_coverage=0.5 to",
    ):
        QueryWeights.from_config(coverage_config(path), 1, pool)
    weights = QueryWeights.from_config(
        coverage_config(path, "reschedule.min_coverage=0.5"), 1, pool
    )
    assert (
        weights.source
        == f"reschedule: scores for 2 of 4 queries, and 1 for queries not in the pool from {path}"
    )
    assert [weights.book.rank(i) for i in ids] == [
        1.0,
        0.5,
        0.0,
        0.5,
    ]  # q2 (0.3) the simplest, q0 (0.1) the last
    path.write_text("")
    with pytest.raises(UserError, match=r"has scores for 0 of 4 queries, fewer than"):
        QueryWeights.from_config(coverage_config(path, "reschedule.min_coverage=0.01"), 1, pool)
    with pytest.raises(
        UserError, match="generates problems without end: set curriculum.pool_size=N"
    ):
        QueryWeights.from_config(coverage_config(path), 1, None)


def test_training_refuses_a_score_file_of_a_limited_scoring_before_loading_a_model(
    tmp_path, capsys
):
    from treerl.cli import main
    from treerl.curriculum.sampler import task_and_sampler

    cfg = load_config(None, ["curriculum.levels=[easy,medium]", "curriculum.pool_size=3"])
    first = task_and_sampler(cfg)[1].problems()[0]
    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps({"id": first.id, "level": first.level, "r_score": 0.5}) + "\n")
    args = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "model.name_or_path=/no/such/model",
        "curriculum.pool_size=3",
        "curriculum.levels=[easy,medium]",
        "reschedule.rank_by=rscore",
        f"reschedule.scores_file={scores}",
    ]
    assert main(args) == 2
    assert (
        "has scores for 1 of 6 queries, fewer than reschedule.min_coverage=1"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_reference_eligibility_on_shallow_trees_is_refused_before_anything_runs(
    model_dir, tmp_path, capsys
):
    from treerl.cli import main

    online = ["reschedule.rank_by=rscore", "reschedule.scores=online", "rscore.eligible=reference"]
    assert (
        main(["train", "--out", str(tmp_path / "run"), f"model.name_or_path={model_dir}", *online])
        == 2
    )
    assert "are 1 deep" in capsys.readouterr().err  # GRPO's depth-1 trees
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "run"),
                f"model.name_or_path={model_dir}",
                *online,
                "algo.name=treerpo",
                "tree.depth=3",
            ]
        )
        == 2
    )
    assert "are 3 deep" in capsys.readouterr().err
    assert (
        main(
            score_args(
                model_dir,
                tmp_path / "s.jsonl",
                "rscore.eligible=reference",
                "rscore.depth=3",
                "rscore.step_tokens=2",
            )
        )
        == 2
    )
    assert "needs trees of depth 4" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.jsonl").exists()


def test_a_leaf_is_right_when_any_of_its_rollouts_is(monkeypatch):
    """rscore.rollouts (the reference code's rollout_times): more completions from each deepest
    leaf's last branch point, depth x step_tokens tokens in; a leaf that ended before that point
    keeps its one outcome."""
    import treerl.curriculum.scoring as scoring
    from treerl.rollout.engine import Generation
    from treerl.rollout.sampling import TreeShape
    from treerl.rollout.tree import Node
    from treerl.tasks.base import Grade

    class Digits:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(map(str, ids))

    class EndsInEight:
        def grade(self, text, reference):
            return Grade(text.endswith("8"), 0.0)

    long_leaf = Node(token_ids=[3, 4, 5, 6], correct=False)
    short_leaf = Node(token_ids=[3, 9], correct=False, finished=True)
    tree = ReasoningTree(
        Node(children=[Node(token_ids=[1, 2], children=[long_leaf, short_leaf])]), prompt_ids=[0]
    )
    calls = []

    def fake_generate(model, tokenizer, contexts, **kwargs):
        calls.append((contexts, kwargs["max_new_tokens"]))
        return Generation(contexts, [[7], [8]], [], ["", ""], [True, True])

    monkeypatch.setattr(scoring, "generate", fake_generate)
    shape = TreeShape(branching=2, depth=2, step_tokens=2, max_new_tokens=8)
    scoring.extra_rollouts(
        None,
        Digits(),
        EndsInEight(),
        [tree],
        [Problem("q", "r", "easy")],
        shape,
        2,
        RolloutConfig(),
        None,
    )
    assert calls == [
        ([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]], 4)
    ]  # two rollouts from prompt + 4 generated tokens
    assert (
        long_leaf.correct is True and short_leaf.correct is False
    )  # "12348" is right; the short leaf untouched


def test_rescoring_is_due_at_the_steps_asked_for():
    cfg = load_config(
        None,
        ["reschedule.rank_by=acc", "reschedule.rescore_every=3", "reschedule.rescore_at=[1,5]"],
    )
    weights = QueryWeights.from_config(cfg, tree_depth=1)
    assert [step for step in range(1, 12) if weights.rescore_due(step)] == [1, 4, 5, 7, 10]
    with pytest.raises(UserError, match="set reschedule.rank_by too"):
        load_config(None, ["reschedule.rescore_every=3"])


@pytest.mark.slow
def test_training_rescores_every_query_of_the_pool_with_the_current_policy(
    model_dir, tmp_path, monkeypatch
):
    import treerl.loop.trainer as trainer

    seen = []
    real = trainer.score_queries

    def spy(model, tokenizer, task, problems, cfg, generator, scored=lambda rows: None):
        seen.append(len(problems))
        return real(model, tokenizer, task, problems, cfg, generator, scored)

    monkeypatch.setattr(trainer, "score_queries", spy)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "train.steps=3",
            "rollout.batch_prompts=2",
            "rollout.n=2",
            "rollout.max_new_tokens=6",
            "eval.problems=1",
            "eval.levels=[easy]",
            "output.progress=false",
            "train.threads=1",
            "curriculum.pool_size=3",
            "reschedule.rank_by=rscore",
            "reschedule.rescore_at=[1,3]",
            "rscore.branching=2",
            "rscore.depth=2",
            "rscore.step_tokens=2",
            "rscore.max_new_tokens=6",
        ],
    )
    trainer.train(cfg, tmp_path / "run")
    assert seen == [6, 6]  # two levels x 3 problems, before steps 1 and 3
    scores = torch.load(
        tmp_path / "run" / "checkpoints" / "step_3" / "trainer_state.pt", weights_only=True
    )["curriculum"]["scores"]["scores"]
    assert len(scores) == 6
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert timing["seconds"]["re-scoring queries"] > 0


def test_the_mastery_schedule_moves_on_when_the_current_levels_accuracy_passes_the_threshold():
    """threshold 0.75, window 2: level 0's accuracies 0.5 then 1.0 average 0.75, so it moves to
    level 1; an accuracy of level 0 seen later changes nothing; level 1's 0.9 then 0.5 average 0.7
    (stay), then 0.5 and 1.0 average 0.75 (move to 2, the last, where it stays)."""
    from treerl.curriculum.levels import make_schedule

    schedule = make_schedule("mastery", 10, 3, {"threshold": 0.75, "window": 2})
    seen = [schedule.probs(0)]
    for step, accuracy in enumerate([{0: 0.5}, {0: 1.0}, {0: 1.0}, {1: 0.9}, {1: 0.5}], start=1):
        schedule.observe(step, accuracy)
        seen.append(schedule.probs(step))
    assert seen == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]]
    again = make_schedule("mastery", 10, 3, {"threshold": 0.75, "window": 2})
    again.load_state_dict(schedule.state_dict())
    for s in (schedule, again):
        s.observe(6, {1: 1.0})
        s.observe(7, {2: 1.0})
        s.observe(8, {2: 1.0})
    assert schedule.probs(8) == again.probs(8) == [0, 0, 1]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"threshold": 0.0}, "mastery needs 0 < threshold <= 1 and a whole window >= 1"),
        ({"window": 1.5}, "mastery needs 0 < threshold <= 1 and a whole window >= 1"),
        (
            {"beta": 1.0},
            "curriculum.params: schedule 'mastery' has no parameter 'beta'; it takes: threshold, "
            "window",
        ),
    ],
)
def test_the_mastery_schedule_refuses_bad_parameters(params, message):
    from treerl.curriculum.levels import make_schedule

    with pytest.raises(UserError, match=message):
        make_schedule("mastery", 10, 3, params)
