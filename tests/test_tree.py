"""The reasoning tree and TreeRPO's step-level advantages, on small trees worked by hand."""

import pytest
import torch

from treerl.algo.treerpo import treerpo_advantages
from treerl.rollout.tree import Node, ReasoningTree


def test_values_back_up_as_means_of_children():
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])
    assert tree.node((0,)).value == 0.5  # mean(1, 0)
    assert tree.node((1, 0)).value == 0.5  # mean(0, 1)
    assert tree.node((1,)).value == 0.75  # mean(0.5, 1)
    assert tree.root.value == 0.625  # mean(0.5, 0.75): not the mean of the 5 leaves (0.6)
    assert tree.depth == 3
    assert [path for path, _ in tree.leaves()] == [(0, 0), (0, 1), (1, 0, 0), (1, 0, 1), (1, 1)]


def test_the_tree_is_exported_at_the_top_level():
    import treerl

    assert treerl.ReasoningTree is ReasoningTree
    # mean(1/2, mean(1/2, 1))
    assert treerl.ReasoningTree.from_leaf_rewards(
        [[1, 0], [[0, 1], 1]]
    ).root.value == pytest.approx(5 / 8)


def test_walk_visits_parents_before_children_in_order():
    tree = ReasoningTree.from_leaf_rewards([[1, 0], 1])
    assert [path for path, _ in tree.walk()] == [(), (0,), (0, 0), (0, 1), (1,)]


def test_bad_nesting_is_an_error():
    with pytest.raises(ValueError, match="at least one child"):
        ReasoningTree.from_leaf_rewards([[], 1])
    with pytest.raises(ValueError, match="root is a list"):
        ReasoningTree.from_leaf_rewards(1)


def test_bernoulli_advantages_by_hand():
    # root group: (0.5, 0.75), mu = 0.625, d = 0.625 * 0.375 = 0.234375
    # group under (0,): (1, 0), mu = 0.5, d = 0.25 -> +-2
    # group under (1,): (0.5, 1), mu = 0.75, d = 0.1875 -> -+4/3
    # group under (1, 0): (0, 1) -> -+2
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [[0, 1], 1]])
    adv = treerpo_advantages(tree)
    expected = {
        (0,): -0.125 / 0.234375,
        (1,): 0.125 / 0.234375,
        (0, 0): 2.0,
        (0, 1): -2.0,
        (1, 0): -4 / 3,
        (1, 1): 4 / 3,
        (1, 0, 0): -2.0,
        (1, 0, 1): 2.0,
    }
    assert adv.keys() == expected.keys()
    for path, value in expected.items():
        assert adv[path] == pytest.approx(value, rel=1e-5), path


def test_std_and_no_normalisation():
    tree = ReasoningTree.from_leaf_rewards([1, 0, 0, 0])  # mu = 0.25, population std = sqrt(3)/4
    std = treerpo_advantages(tree, norm="std")
    assert std[(0,)] == pytest.approx(0.75 / (3**0.5 / 4), rel=1e-5)
    assert std[(1,)] == pytest.approx(-0.25 / (3**0.5 / 4), rel=1e-5)
    none = treerpo_advantages(tree, norm="none")
    assert none == {(0,): 0.75, (1,): -0.25, (2,): -0.25, (3,): -0.25}


def test_weighting_by_groups_divides_a_trees_advantages_by_its_kept_groups():
    """Values (0.5, 0.53) at the root (spread 0.03 < 0.1: pruned), then (1, 0) and (0.6, 0.46): two
    kept groups. norm=none gives the mean differences +-0.5 and +-0.07; weighting=groups halves
    them: +-0.25, +-0.035."""
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [0.6, 0.46]])
    plain = treerpo_advantages(tree, norm="none")
    assert plain == pytest.approx({(0, 0): 0.5, (0, 1): -0.5, (1, 0): 0.07, (1, 1): -0.07})
    assert treerpo_advantages(tree, norm="none", weighting="groups") == pytest.approx(
        {(0, 0): 0.25, (0, 1): -0.25, (1, 0): 0.035, (1, 1): -0.035}
    )
    one_group = ReasoningTree.from_leaf_rewards([1, 0])
    assert treerpo_advantages(one_group, weighting="groups") == treerpo_advantages(one_group)


def test_the_mean_difference_composes_with_pruning_and_weighting():
    """norm=none (A = v - mu) on the tree above: prune_tau=0.2 keeps only the group under (0,)
    (spread 1; (0.6, 0.46) spreads 0.14, the root (0.5, 0.53) 0.03): w = 1, A = +-0.5.
    prune_tau=0 keeps all three: the root mu = 0.515 gives -+0.015, then +-0.5 and +-0.07, all
    divided by w = 3. eps takes no part."""
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [0.6, 0.46]])
    assert treerpo_advantages(
        tree, prune_tau=0.2, norm="none", weighting="groups"
    ) == pytest.approx({(0, 0): 0.5, (0, 1): -0.5})
    assert treerpo_advantages(
        tree, prune_tau=0.0, norm="none", weighting="groups", eps=0.5
    ) == pytest.approx(
        {
            (0,): -0.005,
            (1,): 0.005,
            (0, 0): 0.5 / 3,
            (0, 1): -0.5 / 3,
            (1, 0): 0.07 / 3,
            (1, 1): -0.07 / 3,
        }
    )


def test_a_group_of_equal_values_weighs_nothing_even_when_kept():
    """[[1, 1], [1, 0]]: root values (1, 0.5), mu 0.75 -> +-0.25; under (1,) (1, 0) -> +-0.5; the
    group under (0,) has equal values: pruned at tau 0.1, kept at tau 0 with A = 0, and in neither
    case counted, so w = 2 both times. A tree whose groups are all pruned has no advantages."""
    tree = ReasoningTree.from_leaf_rewards([[1, 1], [1, 0]])
    kept = {(0,): 0.125, (1,): -0.125, (1, 0): 0.25, (1, 1): -0.25}
    assert treerpo_advantages(tree, norm="none", weighting="groups") == pytest.approx(kept)
    assert treerpo_advantages(
        tree, prune_tau=0.0, norm="none", weighting="groups"
    ) == pytest.approx({**kept, (0, 0): 0.0, (0, 1): 0.0})
    flat = ReasoningTree.from_leaf_rewards([[1, 1], [1, 1]])
    assert treerpo_advantages(flat, norm="none", weighting="groups") == {}


def test_groups_whose_values_spread_less_than_tau_are_pruned():
    # root group (0.5, 0.53): spread 0.03 < 0.1 -> dropped; (1, 0) and (0.6, 0.46):
    # spread 1 and 0.14 -> kept
    tree = ReasoningTree.from_leaf_rewards([[1, 0], [0.6, 0.46]])
    assert set(treerpo_advantages(tree)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(treerpo_advantages(tree, prune_tau=0.2)) == {(0, 0), (0, 1)}
    assert set(treerpo_advantages(tree, prune_tau=0.0)) == {
        (0,),
        (1,),
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }
    all_equal = ReasoningTree.from_leaf_rewards([[1, 1], [0, 0]])
    assert set(treerpo_advantages(all_equal)) == {(0,), (1,)}  # only the root group differs


def test_unknown_norm_is_an_error():
    from treerl.errors import UserError

    with pytest.raises(UserError, match="unknown algo.params.norm 'zscore'"):
        treerpo_advantages(ReasoningTree.from_leaf_rewards([1, 0]), norm="zscore")


def test_prefix_and_text_ids_follow_the_path():
    root = Node(
        children=[
            Node(
                token_ids=[5, 6], children=[Node(token_ids=[7], reward=1.0), Node([8], reward=0.0)]
            )
        ]
    )
    tree = ReasoningTree(root, prompt_ids=[1, 2])
    tree.backup()
    assert tree.prefix_ids((0,)) == [1, 2]
    assert tree.prefix_ids((0, 1)) == [1, 2, 5, 6]
    assert tree.text_ids((0, 1)) == [5, 6, 8]
    assert tree.root.value == 0.5


def sample(policy, prompts, seed=0, generator=None, **kwargs):
    from treerl.rollout.tree import sample_trees

    model, tokenizer = policy
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    generator = generator or torch.Generator().manual_seed(seed)
    return sample_trees(model, tokenizer, ids, generator=generator, **kwargs)


def test_depth_one_is_plain_sampling(policy):
    from treerl.rollout.engine import generate

    trees, _ = sample(
        policy, ["1+2\n", "7-3+1\n"], branching=3, depth=1, step_tokens=6, temperature=0.9
    )
    gen = generate(
        *policy,
        ["1+2\n"] * 3 + ["7-3+1\n"] * 3,
        max_new_tokens=6,
        temperature=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    leaves = [node.token_ids for tree in trees for _, node in tree.leaves()]
    assert leaves == gen.completion_ids


def test_every_inner_node_has_n_children_and_every_token_is_used_once(policy):
    trees, stats = sample(
        policy, ["1+2\n", "5+5-1\n"], branching=3, depth=3, step_tokens=4, temperature=1.0
    )
    total = 0
    for tree in trees:
        for path, node in tree.walk():
            total += len(node.token_ids)
            if path:
                assert 1 <= len(node.token_ids) <= 4
                assert len(node.logprobs) == len(node.token_ids)
            if node.children:
                assert len(node.children) == 3 and not node.finished, path
            elif path:
                assert node.finished or len(path) == 3, path
    assert total == stats.generated_tokens
    assert stats.prefix_tokens_saved > 0


def test_the_last_level_holds_the_rest_of_the_response(policy):
    """Re-Schedule's scoring tree: branch every step_tokens down to depth d, then one full
    completion."""
    trees, stats = sample(
        policy,
        ["1+2\n", "5+5-1\n"],
        branching=2,
        depth=2,
        step_tokens=3,
        max_new_tokens=12,
        temperature=1.0,
    )
    deepest = 0
    for tree in trees:
        for path, node in tree.walk():
            if len(path) == 1 and node.children:
                assert len(node.token_ids) == 3
            if len(path) == 2:
                assert 1 <= len(node.token_ids) <= 9 and not node.children
                deepest = max(deepest, len(node.token_ids))
        assert all(len(tree.text_ids(path)) <= 12 for path, _ in tree.leaves())
    assert deepest > 3  # some completion ran past one step
    with pytest.raises(ValueError, match="leaves nothing for depth 3"):
        sample(policy, ["1+2\n"], branching=2, depth=3, step_tokens=4, max_new_tokens=8)


def test_forked_continuations_score_like_a_fresh_forward_pass(policy):
    """The log-probs stored while sampling from a forked cache equal those of re-encoding the whole
    prefix."""
    from treerl.loop.batch import completion_logprobs, make_batch

    model, tokenizer = policy
    trees, _ = sample(
        policy, ["3+4-2\n", "9\n"], branching=2, depth=3, step_tokens=3, temperature=0.8, seed=3
    )
    contexts, segments, stored = [], [], []
    for tree in trees:
        for path, node in tree.walk():
            if path:
                contexts.append(tree.prefix_ids(path))
                segments.append(node.token_ids)
                stored.append(torch.tensor(node.logprobs))
    batch = make_batch(contexts, segments, tokenizer.pad_token_id)
    with torch.no_grad():
        fresh, _ = completion_logprobs(model, batch, 0.8)
    for i, values in enumerate(stored):
        assert torch.allclose(fresh[i, batch.completion_mask[i].bool()], values, atol=1e-4), i


def test_each_kept_node_is_a_sample_whose_mask_covers_only_its_segment():
    from treerl.loop.batch import make_batch

    def leaf(ids, reward):
        return Node(token_ids=ids, logprobs=[-0.5] * len(ids), reward=reward, finished=True)

    root = Node(
        children=[
            Node(
                token_ids=[10, 11],
                logprobs=[-1.0, -1.0],
                children=[leaf([12], 1.0), leaf([13, 14], 0.0)],
            ),
            leaf([20, 21, 22], 0.0),
        ]
    )
    tree = ReasoningTree(root, prompt_ids=[1, 2, 3])
    tree.backup()
    samples = tree.training_samples(treerpo_advantages(tree))
    # root group (0.5, 0): mu 0.25, d = 0.1875 -> +-4/3; group under (0,): (1, 0) -> +-2
    assert [(s.path, s.context_ids, s.segment_ids) for s in samples] == [
        ((0,), [1, 2, 3], [10, 11]),
        ((0, 0), [1, 2, 3, 10, 11], [12]),
        ((0, 1), [1, 2, 3, 10, 11], [13, 14]),
        ((1,), [1, 2, 3], [20, 21, 22]),
    ]
    assert [s.advantage for s in samples] == pytest.approx([4 / 3, 2.0, -2.0, -4 / 3], rel=1e-5)
    batch = make_batch([s.context_ids for s in samples], [s.segment_ids for s in samples])
    # each distinct context is encoded once; the mask marks exactly each segment's tokens
    assert batch.context_ids.tolist() == [[0, 0, 1, 2, 3], [1, 2, 3, 10, 11]]
    assert batch.context_index.tolist() == [0, 1, 1, 0]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert batch.completion_ids.tolist() == [[10, 11, 0], [12, 0, 0], [13, 14, 0], [20, 21, 22]]


def test_fork_points_by_hand():
    """Steps of 3 tokens: the level-1 window is positions 1..3, level 2's 4..6. Sequence 0 (start
    0) forks at 2 (entropy 2.0 of 0.5, 2.0, 1.0; position 0's 9 is out of every window: a node keeps
    one token at least) and at 6 (0.1, 0.3, 0.3: the last of equal ones); sequence 1's flat window
    forks at 3, where `fixed` does, and it ends before level 2's; sequence 2 stops inside level 1's
    window and never forks; sequence 3, forked from 0 at 2, forks first at level 2, at 4 (0.9).
    With top_k = 1 each tree keeps its highest: (0, 2) of 2.0 over (1, 3) of 1.0, then (3, 4) of
    0.9 over (0, 6) of 0.3."""
    from treerl.rollout.tree import fork_point, fork_points

    assert fork_point(torch.tensor([0.5, 2.0, 1.0]), 1) == 2
    assert fork_point(torch.tensor([0.1, 0.3, 0.3]), 4) == 6
    entropies = [
        torch.tensor([9.0, 0.5, 2.0, 1.0, 0.1, 0.3, 0.3, 5.0]),
        torch.tensor([0.0, 1.0, 1.0, 1.0]),
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([9.0, 0.5, 0.7, 0.2, 0.9, 0.4, 0.1]),
    ]
    starts, trees = [0, 0, 0, 2], [0, 0, 1, 0]
    assert fork_points(starts, entropies, trees, 1, 3, 0) == [(0, 2), (1, 3)]
    assert fork_points(starts, entropies, trees, 2, 3, 0) == [(0, 6), (3, 4)]
    assert fork_points(starts, entropies, trees, 1, 3, 1) == [(0, 2)]
    assert fork_points(starts, entropies, trees, 2, 3, 1) == [(3, 4)]


def nodes_of(trees):
    """Every node of the trees: (tree, path, token ids, log-probs)."""
    return [
        (t, path, node.token_ids, node.logprobs)
        for t, tree in enumerate(trees)
        for path, node in tree.walk()
    ]


def test_fixed_branching_samples_what_it_sampled_before_branch_at_existed(policy):
    """The tokens and the bytes of the log-probs of a fixed-branching tree, as the code before
    tree.branch_at sampled them (commit ec79f11; this test's one torch thread, CPU)."""
    import hashlib

    trees, stats = sample(
        policy, ["3+4-2\n"], 7, branching=2, depth=3, step_tokens=3, temperature=0.8
    )
    nodes = [(path, ids) for _, path, ids, _ in nodes_of(trees) if path]
    assert nodes == [
        ((0,), [3, 46, 55]),
        ((0, 0), [71, 19, 23]),
        ((0, 0, 0), [73, 29, 47]),
        ((0, 0, 1), [28, 9, 20]),
        ((0, 1), [44, 52, 51]),
        ((0, 1, 0), [9, 35, 14]),
        ((0, 1, 1), [51, 62, 82]),
        ((1,), [15, 0, 18]),
        ((1, 0), [69, 23, 24]),
        ((1, 0, 0), [26, 40, 58]),
        ((1, 0, 1), [24, 16, 0]),
        ((1, 1), [49, 83, 83]),
        ((1, 1, 0), [32, 13, 51]),
        ((1, 1, 1), [28, 71, 71]),
    ]
    logprobs = torch.tensor([x for *_, lps in nodes_of(trees) for x in lps], dtype=torch.float32)
    assert hashlib.sha256(logprobs.numpy().tobytes()).hexdigest() == (
        "7040f6ee1b0b4e4772f7c32e66ceb4474f8c1243576a83e86502b5675326452d"
    )
    assert (stats.generated_tokens, stats.prefix_tokens_saved) == (42, 66)


def entropy_trees(policy, seed=4, **kwargs):
    """Entropy-branching trees of two prompts, 3 children every node, 3 levels of 4 tokens."""
    shape = dict(branching=3, depth=3, step_tokens=4, temperature=1.0, branch_at="entropy")
    return sample(policy, ["1+2\n", "5+5-1\n"], seed, **{**shape, **kwargs})


def first_children(tree, child):
    """The path from the root's child `child` down its first children to a leaf: the rollout that
    was sampled first from the prompt."""
    path = (child,)
    while tree.node(path).children:
        path += (0,)
    return path


def test_entropy_branching_forks_in_each_step_at_its_most_uncertain_token(policy):
    """Every inner node at depth d ends at a token of the window (d - 1) s + 1 .. d s and has N
    children; every generated token is in one node; the first rollouts are those fixed branching
    samples from the same seed; and each fork point is the window's highest entropy of the
    distribution sampled from, as a fresh forward of the whole response computes it."""
    from treerl.loop.batch import completion_logprobs, make_batch
    from treerl.rollout.tree import fork_point

    model, tokenizer = policy
    trees, stats = entropy_trees(policy)
    fixed, _ = entropy_trees(policy, branch_at="fixed")
    total = 0
    for tree, same_seed in zip(trees, fixed):
        for path, node in tree.walk():
            total += len(node.token_ids)
            if path and node.children:
                assert 4 * (len(path) - 1) < len(tree.text_ids(path)) <= 4 * len(path), path
                assert len(node.children) == 3 and not node.finished, path
        for child in range(3):
            path = first_children(tree, child)
            assert tree.text_ids(path) == same_seed.text_ids(first_children(same_seed, child))
            batch = make_batch([tree.prompt_ids], [tree.text_ids(path)], tokenizer.pad_token_id)
            with torch.no_grad():
                _, entropy = completion_logprobs(model, batch, 1.0, with_entropy=True)
            for level in range(1, len(path)):
                window = entropy[0, 4 * (level - 1) + 1 : 4 * level + 1]
                assert len(tree.text_ids(path[:level])) == fork_point(window, 4 * level - 3)
    assert total == stats.generated_tokens
    assert 0 < stats.prefix_tokens_saved < stats.prefix_tokens_inherited


def test_entropy_branching_is_exact_and_resumable(policy):
    """The same seed gives the same trees, bit for bit, and leaves the generator where fixed
    branching leaves it (one draw per call), so a resumed run samples on as it would have. With
    top_k = 1, one node of each tree forks per level."""
    first, again = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    trees, _ = entropy_trees(policy, generator=first)
    assert nodes_of(trees) == nodes_of(entropy_trees(policy, generator=again)[0])
    fixed = torch.Generator().manual_seed(9)
    entropy_trees(policy, generator=fixed, branch_at="fixed")
    assert torch.equal(first.get_state(), fixed.get_state())
    for tree in entropy_trees(policy, seed=9, branch_top_k=1)[0]:
        forked = [path for path, node in tree.walk() if path and node.children]
        assert 1 <= len(forked) <= 2 and len(tree.root.children) == 3


def test_entropy_branching_with_vllm_is_refused_in_one_line(policy, monkeypatch):
    from treerl.errors import UserError
    from treerl.rollout import tree

    monkeypatch.setattr(tree, "backend_name", lambda model, choice: "vllm")
    with pytest.raises(UserError, match=r"^tree.branch_at=entropy needs the entropy of every draw"):
        entropy_trees(policy)
